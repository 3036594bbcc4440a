// Runs a JavaScript action's bundled entry the way the GitHub runner does (used by the demo and the tests): node24, INPUT_* from `with` and the
// action.yml defaults (expressions evaluated against a job context), fresh file-command files per step
// (GITHUB_OUTPUT, GITHUB_STATE, GITHUB_ENV, GITHUB_PATH, GITHUB_STEP_SUMMARY), env from earlier steps' GITHUB_ENV,
// and STATE_* from the main step in the post step.
import { spawn } from 'child_process';
import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import YAML from 'yaml';

// The repository root: the parent of harness/ when run from source (tests), of dist/ when bundled into the CLI.
export const ROOT = process.env.BUILDCLOUD_ROOT || path.resolve(__dirname, '..');
export const NODE24 = path.join(ROOT, '.tools/node24/node_modules/.bin/node');

export function requireNode24(): void {
  if (!fs.existsSync(NODE24))
    throw new Error(`GitHub runs actions on node24; ${NODE24} is missing. scripts/setup.sh installs it (npm install --prefix .tools/node24 node@24).`);
}

export interface StepResult {
  code: number | null;
  stdout: string;
  outputs: Record<string, string>;
  state: Record<string, string>;
  env: Record<string, string>;
  summary: string;
  failed: boolean; // ::error:: printed (core.setFailed) or non-zero exit
  warnings: string[];
}

// The runner's file-command parser: NAME=VALUE, or NAME<<DELIM ... DELIM (whichever of = and << comes first).
export function parseFileCommands(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!line) continue;
    const eq = line.indexOf('=');
    const hd = line.indexOf('<<');
    if (hd !== -1 && (eq === -1 || hd < eq)) {
      const name = line.slice(0, hd);
      const delim = line.slice(hd + 2);
      const value: string[] = [];
      i++;
      while (i < lines.length && lines[i] !== delim) value.push(lines[i++]);
      if (i >= lines.length) throw new Error(`Matching delimiter not found: ${delim}`);
      out[name] = value.join('\n');
    } else if (eq > 0) {
      out[line.slice(0, eq)] = line.slice(eq + 1);
    } else {
      throw new Error(`Unable to process file command: ${line}`);
    }
  }
  return out;
}

export interface JobContext {
  env: Record<string, string>; // the job's environment (GITHUB_*, RUNNER_*)
  expressions: Record<string, string>; // e.g. { 'github.job': 'build', 'strategy.job-index': '0', 'github.token': 'x' }
  runnerTemp: string;
  workspace?: string; // the checkout (GITHUB_WORKSPACE): the runner starts every step there; default: this process's
}

function evaluateDefault(value: string, ctx: JobContext): string {
  return value.replace(/\$\{\{\s*([^}]+?)\s*\}\}/g, (_, expr: string) => ctx.expressions[expr] ?? '');
}

export function inputEnv(actionYml: string, withInputs: Record<string, string>, ctx: JobContext): Record<string, string> {
  const action = YAML.parse(fs.readFileSync(actionYml, 'utf8')) as { inputs?: Record<string, { default?: unknown }> };
  const env: Record<string, string> = {};
  for (const [name, def] of Object.entries(action.inputs ?? {})) {
    const v = name in withInputs ? withInputs[name] : evaluateDefault(String(def.default ?? ''), ctx);
    env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] = v;
  }
  for (const name of Object.keys(withInputs)) {
    if (!(name in (action.inputs ?? {}))) throw new Error(`Unexpected input '${name}' for ${actionYml}`);
  }
  return env;
}

export async function runStep(
  actionYml: string,
  phase: 'main' | 'post',
  withInputs: Record<string, string>,
  ctx: JobContext,
  state: Record<string, string> = {},
  opts: { signalAfter?: (stdout: string) => boolean } = {}
): Promise<StepResult> {
  const action = YAML.parse(fs.readFileSync(actionYml, 'utf8'));
  if (action.runs.using !== 'node24') throw new Error(`${actionYml}: runs.using is ${action.runs.using}, expected node24`);
  const entry = path.resolve(path.dirname(actionYml), action.runs[phase]);
  const dir = path.join(ctx.runnerTemp, '_runner_file_commands');
  fs.mkdirSync(dir, { recursive: true });
  const files = Object.fromEntries(
    ['GITHUB_OUTPUT', 'GITHUB_STATE', 'GITHUB_ENV', 'GITHUB_PATH', 'GITHUB_STEP_SUMMARY'].map((k) => {
      const f = path.join(dir, `${k.toLowerCase()}_${randomUUID()}`);
      fs.writeFileSync(f, '');
      return [k, f];
    })
  );
  const stateEnv = Object.fromEntries(Object.entries(state).map(([k, v]) => [`STATE_${k}`, v]));
  const env = { ...ctx.env, ...inputEnv(actionYml, withInputs, ctx), ...stateEnv, ...files, RUNNER_TEMP: ctx.runnerTemp };
  const child = spawn(NODE24, [entry], { env, cwd: ctx.workspace, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let signalled = false;
  const onData = (d: Buffer) => {
    stdout += d.toString();
    if (!signalled && opts.signalAfter?.(stdout)) {
      signalled = true;
      child.kill('SIGINT'); // what the runner sends a cancelled step first
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  const read = (k: string) => parseFileCommands(fs.readFileSync(files[k], 'utf8'));
  const failed = code !== 0 || /^::error::/m.test(stdout);
  const warnings = [...stdout.matchAll(/^::warning::(.*)$/gm)].map((m) => m[1]);
  return {
    code,
    stdout,
    outputs: read('GITHUB_OUTPUT'),
    state: read('GITHUB_STATE'),
    env: read('GITHUB_ENV'),
    summary: fs.readFileSync(files.GITHUB_STEP_SUMMARY, 'utf8'),
    failed,
    warnings
  };
}

// The environment of a GitHub Actions job for a push (or pull request) of one run.
export function githubJobEnv(o: {
  runId: string;
  job: string;
  attempt?: string;
  repoId?: string;
  repo?: string;
  branch?: string;
  eventPath: string;
  temp: string;
  home: string;
  workspace?: string; // GITHUB_WORKSPACE; default: `temp`
  extra?: Record<string, string>;
}): Record<string, string> {
  const repo = o.repo ?? 'acme/widget-api';
  return {
    PATH: process.env.PATH ?? '',
    HOME: o.home,
    CI: 'true',
    GITHUB_ACTIONS: 'true',
    GITHUB_REPOSITORY: repo,
    GITHUB_REPOSITORY_ID: o.repoId ?? '712345678',
    GITHUB_REPOSITORY_OWNER: repo.split('/')[0],
    GITHUB_REPOSITORY_OWNER_ID: '98765432',
    GITHUB_RUN_ID: o.runId,
    GITHUB_RUN_NUMBER: '1',
    GITHUB_RUN_ATTEMPT: o.attempt ?? '1',
    GITHUB_JOB: o.job,
    GITHUB_WORKFLOW: 'CI',
    GITHUB_EVENT_NAME: 'push',
    GITHUB_EVENT_PATH: o.eventPath,
    GITHUB_REF: `refs/heads/${o.branch ?? 'main'}`,
    GITHUB_REF_NAME: o.branch ?? 'main',
    GITHUB_REF_TYPE: 'branch',
    GITHUB_SHA: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
    GITHUB_ACTOR: 'jdoe',
    GITHUB_SERVER_URL: 'https://github.com',
    GITHUB_API_URL: 'https://api.github.com',
    GITHUB_WORKSPACE: o.workspace ?? o.temp,
    RUNNER_OS: 'Linux',
    RUNNER_ARCH: 'X64',
    RUNNER_NAME: 'GitHub Actions 12',
    RUNNER_ENVIRONMENT: 'github-hosted',
    RUNNER_TEMP: o.temp,
    ...o.extra
  };
}
