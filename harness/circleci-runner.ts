// Runs CircleCI configuration the way CircleCI does, on this machine, since no CircleCI runner works offline.
//
// Config time (what `circleci config process` shows): `<< parameters.x >>` is a TEXT substitution into the YAML
// values of the component that declares x, with defaults applied and types, enums and required parameters checked;
// a value that is exactly one reference keeps its type (booleans, integers, steps, executors). Orb commands are
// expanded with their own parameters, which a job passes on explicitly; executors are resolved; `when`/`unless`
// step conditions are evaluated; workflow-only keys (name, requires, context, ...) are taken off a job invocation.
//
// Run time: a job gets its own HOME and working directory (~/project), CircleCI's variables (CIRCLECI=true,
// CIRCLE_WORKFLOW_ID, ...) and a $BASH_ENV file. Each `run` step is a fresh `<shell> -c <command>` with the job's and
// the step's `environment:`. The shell is the step's `shell:`, else the job's or executor's, else CircleCI's default
// on Linux: `/bin/bash -eo pipefail` when the image has /bin/bash, otherwise `/bin/sh -eo pipefail` (configuration
// reference, "Default shell options"; not a login shell). BASH_ENV is in the environment, and non-interactive bash
// sources it before the command, which is the mechanism CircleCI relies on (so it is not prepended a second time);
// /bin/sh does not (CircleCI's docs: "The $BASH_ENV workaround only works with bash"). An image without bash
// (Alpine-based ones: see imageHasBash) is imitated on this host: `sh` is busybox's ash, and PATH holds busybox's
// applets, node and the docker client and no bash, so a step that needs bash fails here as it would there. After a
// failed step only `when: always` / `on_fail` steps run; store_artifacts always runs and copies what it finds.
import { spawn, spawnSync } from 'child_process';
import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import YAML from 'yaml';
import { ROOT } from './github-runner';

export const ORB_FILE = path.join(ROOT, 'plugins/circleci/orb.yml');

type Obj = Record<string, unknown>;
export interface ParamDecl {
  type: string;
  default?: unknown;
  description?: string;
  enum?: string[];
}
export interface Component {
  description?: string;
  parameters?: Record<string, ParamDecl>;
  [key: string]: unknown;
}
export interface Orb {
  version?: unknown;
  description?: string;
  display?: Obj;
  commands?: Record<string, Component>;
  jobs?: Record<string, Component>;
  executors?: Record<string, Component>;
  examples?: Record<string, { description?: string; usage: Config }>;
}
export interface Config {
  version?: unknown;
  orbs?: Record<string, Orb | string>;
  commands?: Record<string, Component>;
  jobs?: Record<string, Component>;
  executors?: Record<string, Component>;
  workflows?: Record<string, { jobs: unknown[] }>;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function loadOrb(file = ORB_FILE): Orb {
  return YAML.parse(fs.readFileSync(file, 'utf8')) as Orb;
}

// ---- config time ---------------------------------------------------------------------------------------------

interface Scope {
  label: string; // '' for the config itself, the alias for an orb
  commands: Record<string, Component>;
  jobs: Record<string, Component>;
  executors: Record<string, Component>;
}

export interface Context {
  config: Config;
  orbs: Record<string, Orb>; // by alias
  pipeline: Record<string, string | number | boolean>; // pipeline values: git.revision, number, ...
}

/** A config with its orbs: inline orbs are taken as they are; a registry reference needs `orbs[alias]` given. */
export function context(config: Config, opts: { orbs?: Record<string, Orb>; pipeline?: Context['pipeline'] } = {}): Context {
  const orbs: Record<string, Orb> = {};
  for (const [alias, o] of Object.entries(config.orbs ?? {})) {
    if (typeof o === 'object' && o) orbs[alias] = o;
    else if (opts.orbs?.[alias]) orbs[alias] = opts.orbs[alias];
    else throw new ConfigError(`orb ${alias} (${String(o)}) cannot be fetched offline: pass it in opts.orbs`);
  }
  const pipeline = { id: randomUUID(), number: 1, 'git.branch': 'main', 'git.revision': 'ed0bda2d7456f4a2cd60870072e1fe79864a49a1', ...opts.pipeline };
  return { config, orbs, pipeline };
}

const scopeOf = (label: string, c: Config | Orb): Scope => ({ label, commands: c.commands ?? {}, jobs: c.jobs ?? {}, executors: c.executors ?? {} });

function lookup(ctx: Context, scope: Scope, kind: 'commands' | 'jobs' | 'executors', ref: string): { comp: Component; scope: Scope } | null {
  const slash = ref.indexOf('/');
  if (slash === -1) return scope[kind][ref] ? { comp: scope[kind][ref], scope } : null;
  const alias = ref.slice(0, slash);
  const orb = ctx.orbs[alias];
  const comp = orb?.[kind]?.[ref.slice(slash + 1)];
  return orb && comp ? { comp, scope: scopeOf(alias, orb) } : null;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function checkType(v: unknown, d: ParamDecl, where: string): void {
  const bad = (expected: string) => new ConfigError(`${where}: expected ${expected}, got ${JSON.stringify(v)}`);
  switch (d.type) {
    case 'string':
      if (typeof v !== 'string') throw bad('a string');
      return;
    case 'boolean':
      if (typeof v !== 'boolean') throw bad('a boolean');
      return;
    case 'integer':
      if (!Number.isInteger(v)) throw bad('an integer');
      return;
    case 'enum':
      if (typeof v !== 'string' || !(d.enum ?? []).includes(v)) throw bad(`one of ${(d.enum ?? []).join(', ')}`);
      return;
    case 'env_var_name':
      if (typeof v !== 'string' || !ENV_NAME.test(v)) throw bad('an environment variable name');
      return;
    case 'steps':
      if (!Array.isArray(v)) throw bad('a list of steps');
      return;
    case 'executor':
      if (typeof v !== 'string' && !(v && typeof v === 'object' && 'name' in v)) throw bad('an executor');
      return;
    default:
      throw new ConfigError(`${where}: unknown parameter type '${d.type}'`);
  }
}

/** The values a component runs with: arguments checked against its declaration, defaults for the rest. */
export function resolveParameters(decls: Record<string, ParamDecl> | undefined, given: Obj, where: string): Obj {
  const out: Obj = {};
  for (const k of Object.keys(given)) if (!decls?.[k]) throw new ConfigError(`${where}: unknown parameter '${k}'`);
  for (const [name, d] of Object.entries(decls ?? {})) {
    const has = given[name] !== undefined;
    if (!has && !('default' in d)) throw new ConfigError(`${where}: missing required parameter '${name}'`);
    const v = has ? given[name] : d.default;
    checkType(v, d, `${where}: parameter '${name}'`);
    out[name] = v;
  }
  return out;
}

const REF = /(\\?)<<\s*(parameters|pipeline)\.([A-Za-z0-9_.-]+)\s*>>/g;
const WHOLE = /^<<\s*(parameters|pipeline)\.([A-Za-z0-9_.-]+)\s*>>$/;

/** `<< parameters.x >>` and `<< pipeline.x >>` replaced in every string value below `node` (not in keys). */
export function substitute(node: unknown, values: Obj, ctx: Pick<Context, 'pipeline'>, where: string): unknown {
  const value = (kind: string, name: string): unknown => {
    if (kind === 'pipeline') {
      if (!(name in ctx.pipeline)) throw new ConfigError(`${where}: unknown pipeline value '${name}'`);
      return ctx.pipeline[name];
    }
    if (!(name in values)) throw new ConfigError(`${where}: '${name}' is used but not declared as a parameter`);
    return values[name];
  };
  if (typeof node === 'string') {
    if (/<<\s*include\(/.test(node)) throw new ConfigError(`${where}: <<include()>> works only in orb sources packed by circleci orb pack`);
    const whole = WHOLE.exec(node);
    if (whole) return value(whole[1], whole[2]);
    return node.replace(REF, (m, escaped: string, kind: string, name: string) => {
      if (escaped) return m.slice(1);
      const v = value(kind, name);
      if (v !== null && typeof v === 'object') throw new ConfigError(`${where}: '${name}' (steps or an executor) cannot be part of a string`);
      return String(v);
    });
  }
  if (Array.isArray(node)) return node.map((n) => substitute(n, values, ctx, where));
  if (node && typeof node === 'object') {
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, substitute(v, values, ctx, where)]));
  }
  return node;
}

function truthy(c: unknown, where: string): boolean {
  if (c && typeof c === 'object' && !Array.isArray(c)) {
    const [op, arg] = Object.entries(c)[0] ?? [];
    if (op === 'not') return !truthy(arg, where);
    if (op === 'and') return (arg as unknown[]).every((x) => truthy(x, where));
    if (op === 'or') return (arg as unknown[]).some((x) => truthy(x, where));
    if (op === 'equal') return (arg as unknown[]).every((x) => JSON.stringify(x) === JSON.stringify((arg as unknown[])[0]));
    throw new ConfigError(`${where}: unsupported condition ${JSON.stringify(c)}`);
  }
  return !(c === false || c === null || c === undefined || c === 0 || c === '' || (typeof c === 'number' && isNaN(c)));
}

export type When = 'on_success' | 'on_fail' | 'always';
export interface RunStep {
  type: 'run';
  name: string;
  command: string;
  environment: Record<string, string>;
  when: When;
  shell?: string;
  workingDirectory?: string;
  origin: string[]; // the commands it came from, outermost first
}
export interface NativeStep {
  type: 'checkout' | 'store_artifacts' | 'store_test_results';
  name: string;
  args: Obj;
  when: When;
  origin: string[];
}
export type Step = RunStep | NativeStep;

const NATIVE: Record<string, When> = { checkout: 'on_success', store_artifacts: 'always', store_test_results: 'always' };

const envValues = (e: unknown): Record<string, string> =>
  Object.fromEntries(Object.entries((e ?? {}) as Obj).map(([k, v]) => [k, v === null || v === undefined ? '' : String(v)]));

function expandSteps(steps: unknown, scope: Scope, ctx: Context, origin: string[]): Step[] {
  if (!Array.isArray(steps)) throw new ConfigError(`${origin.join(' > ') || 'job'}: steps must be a list`);
  const out: Step[] = [];
  for (const raw of steps) {
    const [key, arg] = typeof raw === 'string' ? [raw, {}] : (Object.entries((raw ?? {}) as Obj)[0] ?? ['', null]);
    if (raw && typeof raw === 'object' && Object.keys(raw).length !== 1)
      throw new ConfigError(`${origin.join(' > ')}: a step has exactly one key: ${JSON.stringify(raw)}`);
    if (key === 'run') {
      const r = (typeof arg === 'string' ? { command: arg } : arg) as Obj;
      if (typeof r.command !== 'string') throw new ConfigError(`${origin.join(' > ')}: run needs a command`);
      if (r.background) throw new ConfigError(`${origin.join(' > ')}: background steps are not emulated`);
      out.push({
        type: 'run',
        name: typeof r.name === 'string' && r.name ? r.name : r.command.split('\n')[0],
        command: r.command,
        environment: envValues(r.environment),
        when: (r.when as When) ?? 'on_success',
        shell: r.shell as string | undefined,
        workingDirectory: r.working_directory as string | undefined,
        origin
      });
    } else if (key in NATIVE) {
      out.push({ type: key as NativeStep['type'], name: key, args: (arg ?? {}) as Obj, when: NATIVE[key], origin });
    } else if (key === 'when' || key === 'unless') {
      const w = arg as { condition: unknown; steps: unknown[] };
      if (truthy(w.condition, origin.join(' > ')) === (key === 'when')) out.push(...expandSteps(w.steps, scope, ctx, origin));
    } else if (key === 'steps') {
      out.push(...expandSteps(arg, scope, ctx, origin)); // a steps parameter spliced in
    } else {
      const found = lookup(ctx, scope, 'commands', key);
      if (!found) throw new ConfigError(`${origin.join(' > ') || 'job'}: unknown step or command '${key}'`);
      const ref = key.includes('/') || !scope.label ? key : `${scope.label}/${key}`;
      const values = resolveParameters(found.comp.parameters, (arg ?? {}) as Obj, ref);
      const body = substitute(found.comp.steps, values, ctx, ref);
      out.push(...expandSteps(body, found.scope, ctx, [...origin, ref]));
    }
  }
  return out;
}

export interface Executor {
  image?: string;
  resourceClass?: string;
  environment: Record<string, string>;
  workingDirectory?: string;
  shell?: string;
}

function executorOf(body: Obj, scope: Scope, ctx: Context, where: string): Executor {
  let e = body;
  if (body.executor !== undefined) {
    const inv = (typeof body.executor === 'string' ? { name: body.executor } : body.executor) as Obj;
    const name = String(inv.name);
    const found = lookup(ctx, scope, 'executors', name);
    if (!found) throw new ConfigError(`${where}: unknown executor '${name}'`);
    const { name: _n, ...args } = inv;
    const values = resolveParameters(found.comp.parameters, args, `executor ${name}`);
    const { parameters: _p, description: _d, ...rest } = found.comp;
    e = substitute(rest, values, ctx, `executor ${name}`) as Obj;
  }
  const docker = Array.isArray(e.docker) ? (e.docker[0] as Obj) : undefined;
  if (!docker && !e.machine && !e.macos) throw new ConfigError(`${where}: no executor (docker, machine, macos or executor)`);
  return {
    image: docker?.image as string | undefined,
    resourceClass: e.resource_class as string | undefined,
    environment: { ...envValues(docker?.environment), ...envValues(e.environment) },
    workingDirectory: e.working_directory as string | undefined,
    shell: e.shell as string | undefined
  };
}

export interface ExpandedJob {
  ref: string;
  parameters: Obj;
  executor: Executor;
  environment: Record<string, string>; // executor's, then the job's own
  workingDirectory: string;
  shell?: string;
  steps: Step[];
}

/** A job with its arguments, expanded the way CircleCI compiles it. pre/post steps come from the config's scope. */
export function expandJob(ctx: Context, ref: string, args: Obj = {}, extra: { preSteps?: unknown[]; postSteps?: unknown[] } = {}): ExpandedJob {
  const top = scopeOf('', ctx.config);
  const found = lookup(ctx, top, 'jobs', ref);
  if (!found) throw new ConfigError(`unknown job '${ref}'`);
  const parameters = resolveParameters(found.comp.parameters, args, ref);
  const { parameters: _p, description: _d, ...rest } = found.comp;
  const body = substitute(rest, parameters, ctx, ref) as Obj;
  const executor = executorOf(body, found.scope, ctx, ref);
  const steps = [
    ...expandSteps(extra.preSteps ?? [], top, ctx, ['pre-steps']),
    ...expandSteps(body.steps, found.scope, ctx, ref.includes('/') ? [ref] : []),
    ...expandSteps(extra.postSteps ?? [], top, ctx, ['post-steps'])
  ];
  return {
    ref,
    parameters,
    executor,
    environment: { ...executor.environment, ...envValues(body.environment) },
    workingDirectory: (body.working_directory as string) ?? executor.workingDirectory ?? '~/project',
    shell: (body.shell as string) ?? executor.shell,
    steps
  };
}

export interface WorkflowJob {
  name: string;
  requires: string[];
  contexts: string[];
  job: ExpandedJob;
}

const WORKFLOW_KEYS = new Set(['name', 'requires', 'context', 'filters', 'type', 'pre-steps', 'post-steps', 'serial-group', 'override-with']);

/** The jobs of a workflow, each expanded; errors are the ones CircleCI would give when compiling the config. */
export function expandWorkflow(ctx: Context, workflow: string): WorkflowJob[] {
  const wf = ctx.config.workflows?.[workflow];
  if (!wf) throw new ConfigError(`unknown workflow '${workflow}'`);
  const out: WorkflowJob[] = [];
  for (const entry of wf.jobs) {
    const [ref, inv] = typeof entry === 'string' ? [entry, {} as Obj] : (Object.entries(entry as Obj)[0] as [string, Obj | null]);
    const o = (inv ?? {}) as Obj;
    if (o.matrix) throw new ConfigError(`${ref}: matrix jobs are not emulated`);
    if (o.type === 'approval') continue;
    const args = Object.fromEntries(Object.entries(o).filter(([k]) => !WORKFLOW_KEYS.has(k)));
    const name = (o.name as string) ?? ref;
    if (out.some((j) => j.name === name)) throw new ConfigError(`workflow ${workflow}: two jobs named '${name}': give each a name`);
    const contexts = o.context === undefined ? [] : Array.isArray(o.context) ? o.context.map(String) : [String(o.context)];
    const job = expandJob(ctx, ref, args, { preSteps: o['pre-steps'] as unknown[], postSteps: o['post-steps'] as unknown[] });
    out.push({ name, requires: ((o.requires as string[]) ?? []).map(String), contexts, job });
  }
  for (const j of out) for (const r of j.requires) if (!out.some((x) => x.name === r)) throw new ConfigError(`${j.name} requires unknown job '${r}'`);
  return out;
}

// ---- run time ------------------------------------------------------------------------------------------------

export interface RunOptions {
  workRoot: string; // jobs get directories under it
  workflowId?: string;
  pipelineId?: string;
  jobName?: string;
  buildNum?: number;
  projectUsername?: string;
  projectReponame?: string;
  branch?: string;
  sha?: string;
  username?: string;
  organizationId?: string;
  env?: Record<string, string>; // project variables and contexts: below the executor's and the job's environment
  checkoutFrom?: string; // the repository `checkout` copies into the working directory
  stepTimeoutMs?: number; // CircleCI's no_output_timeout is 10 minutes
  log?: (line: string) => void;
  bash?: boolean; // whether the executor's image has /bin/bash; default: imageHasBash(the executor's image)
}

export interface StepResult {
  step: Step;
  status: 'success' | 'failed' | 'skipped';
  exitCode: number | null;
  output: string;
  startedAt: number;
  endedAt: number;
}

export interface Artifact {
  path: string; // as given, resolved against the working directory
  destination: string;
  stored: string; // where the harness copied it ('' when nothing was found)
  files: string[]; // relative to stored
}

export interface JobResult {
  name: string;
  status: 'success' | 'failed';
  steps: StepResult[];
  artifacts: Artifact[];
  env: Record<string, string>; // the job's environment before any step ran
  exported: Record<string, string>; // what a step after the last one would see ($BASH_ENV sourced)
  bashEnvFile: string;
  home: string;
  workingDirectory: string;
  startedAt: number;
  endedAt: number;
}

let buildNum = 1000;

/**
 * Whether a Docker image is taken to have /bin/bash. Alpine-based images (alpine, node:22-alpine, docker:cli...)
 * and busybox ship only busybox's /bin/sh; every other image here (cimg/*, the orb's default executor) has bash, as
 * do machine executors (no image).
 */
export function imageHasBash(image: string | undefined): boolean {
  if (!image) return true;
  const name = image.toLowerCase();
  return !/alpine/.test(name) && !/^(docker\.io\/)?(library\/)?(busybox|docker)(:|@|$)/.test(name);
}

export const executorHasBash = (job: ExpandedJob, opts: RunOptions): boolean => opts.bash ?? imageHasBash(job.executor.image);

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];
let noBashDir = '';

/** busybox on this host (Debian: apt-get install busybox-static); it stands in for an image's /bin/sh without bash. */
export function busybox(): string {
  const found = BUSYBOX_CANDIDATES.find((p) => fs.existsSync(p));
  if (!found) throw new Error('busybox is needed to imitate an executor without bash: apt-get install -y busybox-static');
  return found;
}

/**
 * PATH of an executor without bash: one directory (made once per process) with busybox's applets, node and
 * Debian's docker client (/usr/bin/docker: the 20.10 one that builds with BuildKit; ENVIRONMENT.md), and no bash.
 */
export function noBashPath(): string {
  if (noBashDir) return noBashDir;
  const bb = busybox();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-nobash-bin-'));
  const applets = spawnSync(bb, ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'bash') fs.symlinkSync(bb, path.join(dir, a));
  fs.symlinkSync(process.execPath, path.join(dir, 'node'));
  if (fs.existsSync('/usr/bin/docker')) fs.symlinkSync('/usr/bin/docker', path.join(dir, 'docker'));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  noBashDir = dir;
  return dir;
}

/**
 * The argv a run step's command is given to (`-c <command>` follows): its `shell:`, else the job's, else CircleCI's
 * default for the image. Without bash, `sh`/`ash` is busybox's and a bash shell is missing: null.
 */
export function stepShell(step: RunStep, job: ExpandedJob, hasBash: boolean): string[] | null {
  const argv = (step.shell ?? job.shell ?? (hasBash ? '/bin/bash -eo pipefail' : '/bin/sh -eo pipefail')).split(/\s+/).filter(Boolean);
  if (hasBash) return argv;
  const prog = path.basename(argv[0]);
  if (prog === 'bash') return null;
  return prog === 'sh' || prog === 'ash' ? [busybox(), 'sh', ...argv.slice(1)] : argv;
}

export function jobEnv(job: ExpandedJob, opts: RunOptions, dirs: { home: string; bashEnv: string }): Record<string, string> {
  const user = opts.projectUsername ?? 'acme';
  const repo = opts.projectReponame ?? 'widget-api';
  const num = String(opts.buildNum ?? ++buildNum);
  const bash = executorHasBash(job, opts);
  const builtins: Record<string, string> = {
    PATH: bash ? (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin') : noBashPath(),
    HOME: dirs.home,
    USER: process.env.USER ?? 'root',
    SHELL: bash ? '/bin/bash' : '/bin/sh',
    LANG: 'C.UTF-8',
    BASH_ENV: dirs.bashEnv,
    CI: 'true',
    CIRCLECI: 'true',
    CIRCLE_BRANCH: opts.branch ?? 'main',
    CIRCLE_BUILD_NUM: num,
    CIRCLE_BUILD_URL: `https://circleci.com/gh/${user}/${repo}/${num}`,
    CIRCLE_JOB: opts.jobName ?? job.ref,
    CIRCLE_NODE_INDEX: '0',
    CIRCLE_NODE_TOTAL: '1',
    CIRCLE_ORGANIZATION_ID: opts.organizationId ?? '8f3b2c1d-4e5a-4b6c-9d7e-0a1b2c3d4e5f',
    CIRCLE_PIPELINE_ID: opts.pipelineId ?? randomUUID(),
    CIRCLE_PROJECT_ID: '2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5',
    CIRCLE_PROJECT_USERNAME: user,
    CIRCLE_PROJECT_REPONAME: repo,
    CIRCLE_REPOSITORY_URL: `git@github.com:${user}/${repo}.git`,
    CIRCLE_SHA1: opts.sha ?? 'ed0bda2d7456f4a2cd60870072e1fe79864a49a1',
    CIRCLE_USERNAME: opts.username ?? 'jdoe',
    CIRCLE_WORKFLOW_ID: opts.workflowId ?? randomUUID(),
    CIRCLE_WORKFLOW_JOB_ID: randomUUID(),
    CIRCLE_WORKFLOW_WORKSPACE_ID: opts.workflowId ?? randomUUID(),
    CIRCLE_WORKING_DIRECTORY: job.workingDirectory
  };
  return { ...builtins, ...opts.env, ...job.environment };
}

const tilde = (p: string, home: string) => (p === '~' ? home : p.startsWith('~/') ? path.join(home, p.slice(2)) : p);

function exec(
  argv: string[],
  cwd: string,
  env: Record<string, string>,
  timeoutMs: number,
  onLine?: (l: string) => void
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    // stdin is /dev/null: with a socket there (node's default), Debian's bash would take itself for an sshd session
    // and read ~/.bashrc instead of $BASH_ENV.
    const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    const onData = (d: Buffer) => {
      const s = d.toString();
      output += s;
      if (onLine) for (const l of s.split('\n')) if (l) onLine(l);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    const timer = setTimeout(() => {
      output += `\nharness: step timed out after ${timeoutMs} ms\n`;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: 127, output: output + String(err) });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

function listFiles(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
}

/** Runs an expanded job: steps in order, `when:` honoured, artifacts copied under the job's directory. */
export async function runExpandedJob(job: ExpandedJob, opts: RunOptions): Promise<JobResult> {
  const name = opts.jobName ?? job.ref;
  fs.mkdirSync(opts.workRoot, { recursive: true });
  const dir = fs.mkdtempSync(path.join(opts.workRoot, `${name.replace(/[^A-Za-z0-9_.-]+/g, '-')}-`));
  const home = path.join(dir, 'home');
  const bashEnv = path.join(dir, '.bash_env');
  fs.mkdirSync(home, { recursive: true });
  fs.writeFileSync(bashEnv, '');
  const env = jobEnv(job, opts, { home, bashEnv });
  const bash = executorHasBash(job, opts);
  const workdir = path.resolve(home, tilde(job.workingDirectory, home));
  fs.mkdirSync(workdir, { recursive: true });
  const results: StepResult[] = [];
  const artifacts: Artifact[] = [];
  const startedAt = Date.now();
  let failed = false;
  const log = (l: string) => opts.log?.(`[${name}] ${l}`);

  for (const step of job.steps) {
    const runs = step.when === 'always' || (step.when === 'on_fail' ? failed : !failed);
    const t0 = Date.now();
    if (!runs) {
      results.push({ step, status: 'skipped', exitCode: null, output: '', startedAt: t0, endedAt: t0 });
      continue;
    }
    log(`== ${step.name}`);
    let code: number | null = 0;
    let output = '';
    if (step.type === 'run') {
      const cwd = step.workingDirectory ? path.resolve(workdir, tilde(step.workingDirectory, home)) : workdir;
      fs.mkdirSync(cwd, { recursive: true });
      const shell = stepShell(step, job, bash);
      if (shell) ({ code, output } = await exec([...shell, '-c', step.command], cwd, { ...env, ...step.environment }, opts.stepTimeoutMs ?? 600_000, log));
      else [code, output] = [127, `${(step.shell ?? job.shell ?? '').split(/\s+/)[0]}: not found (the executor's image has no bash)\n`];
    } else if (step.type === 'checkout') {
      const dest = step.args.path ? path.resolve(workdir, tilde(String(step.args.path), home)) : workdir;
      if (opts.checkoutFrom) fs.cpSync(opts.checkoutFrom, dest, { recursive: true });
      output = opts.checkoutFrom ? `checked out ${opts.checkoutFrom}` : 'nothing to check out';
    } else {
      const src = path.resolve(workdir, tilde(String(step.args.path ?? ''), home));
      const destination = String(step.args.destination ?? path.basename(src));
      const stored = path.join(dir, 'artifacts', destination);
      if (step.type === 'store_artifacts' && fs.existsSync(src)) {
        fs.cpSync(src, stored, { recursive: true });
        const files = fs.statSync(stored).isDirectory() ? listFiles(stored) : [''];
        artifacts.push({ path: src, destination, stored, files });
        output = `uploaded ${files.length} file(s)`;
      } else {
        if (step.type === 'store_artifacts') artifacts.push({ path: src, destination, stored: '', files: [] });
        output = `no artifact files found at ${src}`;
      }
    }
    const ok = code === 0;
    if (!ok) failed = true;
    results.push({ step, status: ok ? 'success' : 'failed', exitCode: code, output, startedAt: t0, endedAt: Date.now() });
  }

  // What a further step would see: bash sources $BASH_ENV, then prints its environment. stdin must not be a
  // socket (node's default pipes are): Debian's bash then takes itself for an sshd session and reads ~/.bashrc
  // instead of $BASH_ENV. Without bash: what a step sees after `. "$BASH_ENV"`, the line such a step needs.
  const printArgs = bash ? ['/bin/bash', '-c', 'env -0'] : [busybox(), 'sh', '-c', '[ ! -f "$BASH_ENV" ] || . "$BASH_ENV"; env -0'];
  const printed = spawnSync(printArgs[0], printArgs.slice(1), { cwd: workdir, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).stdout ?? '';
  const exported = Object.fromEntries(
    printed
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])
  );
  return {
    name,
    status: failed ? 'failed' : 'success',
    steps: results,
    artifacts,
    env,
    exported,
    bashEnvFile: bashEnv,
    home,
    workingDirectory: workdir,
    startedAt,
    endedAt: Date.now()
  };
}

export function runJob(ctx: Context, ref: string, args: Obj, opts: RunOptions): Promise<JobResult> {
  return runExpandedJob(expandJob(ctx, ref, args), opts);
}

export interface WorkflowRunOptions extends Omit<RunOptions, 'jobName' | 'buildNum' | 'env'> {
  projectEnv?: Record<string, string>;
  contexts?: Record<string, Record<string, string>>;
}

export type WorkflowResult = Record<string, JobResult | 'blocked'>;

/** One workflow: a job starts when every job it requires succeeded; jobs without that wait run in parallel. */
export async function runWorkflow(ctx: Context, workflow: string, opts: WorkflowRunOptions): Promise<WorkflowResult> {
  const jobs = expandWorkflow(ctx, workflow);
  const workflowId = opts.workflowId ?? randomUUID();
  const pipelineId = opts.pipelineId ?? randomUUID();
  const done = new Map<string, Promise<JobResult | 'blocked'>>();
  const start = (j: WorkflowJob): Promise<JobResult | 'blocked'> => {
    const existing = done.get(j.name);
    if (existing) return existing;
    const p = (async () => {
      const deps = await Promise.all(j.requires.map((r) => start(jobs.find((x) => x.name === r)!)));
      if (deps.some((d) => d === 'blocked' || d.status !== 'success')) return 'blocked' as const;
      const env: Record<string, string> = { ...opts.projectEnv };
      for (const c of j.contexts) {
        if (!opts.contexts?.[c]) throw new ConfigError(`${j.name}: context '${c}' is not defined`);
        Object.assign(env, opts.contexts[c]);
      }
      return runExpandedJob(j.job, { ...opts, workflowId, pipelineId, jobName: j.name, env });
    })();
    done.set(j.name, p);
    return p;
  };
  const results = await Promise.all(jobs.map(start));
  return Object.fromEntries(jobs.map((j, i) => [j.name, results[i]]));
}

export function stepNamed(r: JobResult, name: string): StepResult {
  const s = r.steps.find((x) => x.step.name === name);
  if (!s) throw new Error(`job ${r.name} has no step '${name}': ${r.steps.map((x) => x.step.name).join(', ')}`);
  return s;
}

export function describeJob(r: JobResult): string {
  return r.steps.map((s) => `--- ${s.step.name}: ${s.status} (${s.exitCode})\n${s.output}`).join('\n');
}

export const tmpRoot = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));
