// The docs' own examples, run as written against the real `dist/cli.js serve`, its dockerd builders and registry:
// - README "Run the control plane yourself": every line of its sh block, in order (serve on ports the kernel picks);
// - README "Any other CI, or a shell": its sh block as one script, whatever it holds (part of it is rewritten by
//   others: this test reads it fresh and fails when the section or its block is gone);
// - examples/github/*.yml through the harness's GitHub runner (the bundled action entries, as the runner runs them),
//   examples/gitlab under gitlab-ci-local, examples/circleci/config.yml through the harness's CircleCI runner.
// Swapped, and nothing else: the endpoint (the test's serve), the token (the org token the README's steps create, where
// an example uses OIDC), the CLI where the plugins default to the unpublished @buildcloud/ci, and a pushed tag in
// registry.example.com (unreachable) for the org registry's one ref the job may write (its cache-to). examples/app's
// `FROM busybox:1.36` cannot come from Docker Hub here: a first job of each pipeline (its "seed") builds busybox:1.36
// from the static busybox onto the pipeline's builder, where the example's build finds it (examples/app/Dockerfile).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import YAML from 'yaml';
import { docker, startServer, CLI, ROOT, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { githubJobEnv, requireNode24, runStep, type JobContext, type StepResult } from '../../harness/github-runner';
import { dotenvReport, initRepo, requireGitlabCiLocal, runGitlabCiLocal } from '../../harness/gitlab-runner';
import { context as circleContext, loadOrb, runWorkflow, type Config } from '../../harness/circleci-runner';
import { startRunnerEngine, stopRunnerEngine, type RunnerEngine } from '../helpers/runner-engine';

const README = path.join(ROOT, 'README.md');

// ---- reading the README -------------------------------------------------------------------------------------

/** The text of the `## heading` section (to the next `## `); throws naming the heading when it is missing. */
export function readmeSection(markdown: string, heading: string): string {
  const start = markdown.indexOf(`\n## ${heading}\n`);
  if (start === -1) throw new Error(`README.md has no "## ${heading}" section: the docs-examples test runs it`);
  const rest = markdown.slice(start + 1);
  const next = rest.indexOf('\n## ', 4);
  return next === -1 ? rest : rest.slice(0, next);
}

/** The ```sh blocks of a section; throws naming the section when it has none. */
export function shellBlocks(section: string, heading: string): string[] {
  const blocks = [...section.matchAll(/^```(?:sh|bash|shell)\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  if (!blocks.length) throw new Error(`README.md's "## ${heading}" section has no \`\`\`sh block: the docs-examples test runs it`);
  return blocks;
}

// ---- the machine the docs are run on ------------------------------------------------------------------------

let server: ServerProcess;
let work: string;
let bin: string; // holds `buildcloud`, as `npm install --global .` puts it on PATH
let token = '';
let busyboxCtx: string;
let engine: RunnerEngine | null = null;

function sh(script: string, env: NodeJS.ProcessEnv, cwd: string): { status: number | null; out: string; stdout: string } {
  const r = spawnSync('bash', ['-eo', 'pipefail', '-c', script], { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, out: `${r.stdout}${r.stderr}`, stdout: r.stdout };
}

const baseEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
  PATH: `${bin}:${process.env.PATH}`,
  HOME: path.join(work, 'home'),
  BUILDCLOUD_STATE_DIR: server.stateDir,
  ...extra
});

/**
 * A first job of a pipeline: `buildcloud setup --json` with the pipeline's identity (`identityEnv`, as its CI sets
 * it), then busybox:1.36 built onto the builder from the static busybox (examples/app's base, offline). Returns what
 * ends it: `buildcloud report` with the session setup printed.
 */
async function seedPipeline(identityEnv: Record<string, string>): Promise<{ dockerHost: string; end: () => void }> {
  const env = baseEnv({ ...identityEnv, BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token, BUILDCLOUD_JOB_ID: 'seed' });
  const r = spawnSync(process.execPath, [CLI, 'setup', '--json'], { env, encoding: 'utf8', cwd: work });
  if (r.status !== 0) throw new Error(`seed setup failed: ${r.stderr}`);
  const setup = JSON.parse(r.stdout) as { outputs: { 'docker-host': string }; env: Record<string, string> };
  const built = docker(['build', '-q', '-t', 'busybox:1.36', busyboxCtx], { ...env, ...setup.env });
  if (built.status !== 0) throw new Error(`seeding busybox:1.36 failed: ${built.out}`);
  return {
    dockerHost: setup.outputs['docker-host'],
    end: () => {
      const rep = spawnSync(process.execPath, [CLI, 'report'], { env: { ...env, ...setup.env }, encoding: 'utf8', cwd: work });
      if (rep.status !== 0) throw new Error(`seed report failed: ${rep.stderr}`);
    }
  };
}

beforeAll(async () => {
  requireNode24();
  requireGitlabCiLocal();
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-docs-'));
  fs.mkdirSync(path.join(work, 'home'));
  bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'buildcloud'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} "$@"\n`, { mode: 0o755 });
  busyboxCtx = path.join(work, 'busybox');
  await makeBusyboxContext(busyboxCtx, 'ENV PATH=/bin\nCMD ["/bin/sh"]');
});

afterAll(async () => {
  await stopRunnerEngine(engine);
  if (server) expect(await server.stop()).toBe(0);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

// ---- README: get the CLI ----------------------------------------------------------------------------------

describe('README "Get the CLI"', () => {
  test("the runners' block packs @buildcloud/ci and installs a `buildcloud` on PATH", () => {
    const HEADING = 'Get the CLI';
    const blocks = shellBlocks(readmeSection(fs.readFileSync(README, 'utf8'), HEADING), HEADING);
    const runner = blocks.find((b) => b.includes('npm run pack-ci'));
    if (!runner) throw new Error('README "Get the CLI" has no block with `npm run pack-ci`');
    // swapped: the output directory (the README's is /tmp/buildcloud-ci) and npm's global prefix (this machine's)
    const out = path.join(work, 'ci-package');
    const prefix = path.join(work, 'npm-global');
    const r = sh(runner.replaceAll('/tmp/buildcloud-ci', out), { ...process.env, npm_config_prefix: prefix, npm_config_offline: 'true' }, ROOT);
    if (r.status !== 0) throw new Error(`README's runner block failed (exit ${r.status}):\n${r.out}`);
    expect(r.out).toContain(path.join(out, 'buildcloud-ci-0.1.0.tgz'));
    const help = spawnSync(path.join(prefix, 'bin/buildcloud'), ['--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/setup/);
    // No package by these names on npm yet: the README says so rather than offering `npx buildcloud`.
    expect(readmeSection(fs.readFileSync(README, 'utf8'), HEADING)).toContain('Not on npm yet');
    expect(fs.readFileSync(README, 'utf8')).not.toMatch(/^npx buildcloud/m);
  });
});

// ---- README: run the control plane yourself ----------------------------------------------------------------

describe('README "Run the control plane yourself", line by line', () => {
  const HEADING = 'Run the control plane yourself';
  const lines = () =>
    shellBlocks(readmeSection(fs.readFileSync(README, 'utf8'), HEADING), HEADING)[0]
      .split('\n')
      .map((l) => l.replace(/\s+#.*$/, '').trim())
      .filter(Boolean);

  test('serve, then every admin and usage line succeeds and says what the README says it does', async () => {
    const [serveLine, ...rest] = lines();
    // serve as written, on ports the kernel picks (the README's are fixed) and --json for the test to read them.
    const m = /^buildcloud serve((?: .*)?)$/.exec(serveLine);
    if (!m) throw new Error(`the block's first line is not \`buildcloud serve\`: ${serveLine}`);
    server = await startServer(['--idle-timeout', '60s', '--grace', '2s', ...m[1].trim().split(/\s+/).filter(Boolean)]);
    expect(rest.length).toBeGreaterThanOrEqual(5);
    const outputs: Record<string, string> = {};
    for (const line of rest) {
      const r = sh(line, baseEnv(), work);
      if (r.status !== 0) throw new Error(`README line failed (exit ${r.status}): ${line}\n${r.out}`);
      outputs[line] = r.stdout;
      if (/admin token create/.test(line)) token = r.stdout.trim();
    }
    const out = (re: RegExp) => Object.entries(outputs).find(([l]) => re.test(l))?.[1] ?? '';
    expect(out(/admin org create acme --minutes 600/)).toBe("Created org 'acme' with 600 build minutes.\n");
    expect(token).toMatch(/^bct_[A-Za-z0-9]{12}_[A-Za-z0-9]{32,128}$/);
    expect(out(/admin trust add/)).toMatch(/^Trusted for 'acme': tokens from https:\/\/token\.actions\.githubusercontent\.com with repository_owner = acme/);
    expect(out(/admin bucket add/)).toMatch(
      /^Added bucket #2 of 600 build minutes to 'acme' with note 'invoice 2026-114' \(1200 build minutes bought in all\)\.\n$/
    );
    expect(out(/admin bucket list/)).toMatch(/^Org 'acme': 2 buckets, 1200 build minutes left of 1200 build minutes bought\n/);
    expect(out(/admin org show/)).toContain('  limits     max builders 4, max leases 20, overdraft 0 build minutes\n');
    expect(out(/admin org show/)).toMatch(
      / {2}trust {6}1 trust rule\n {4}#1 {2}issuer https:\/\/token\.actions\.githubusercontent\.com {2}aud buildcloud {2}repository_owner=acme\n {2}tokens {5}1 token\n {4}\S+ {2}'/
    );
    expect(out(/usage --org acme$/)).toMatch(/^Org 'acme', \d{4}-\d\d\n {2}minutes {3}0 used this month; 0 used, 1200 left of 1200 bought\n/);
    expect(out(/usage --org acme --pipeline/)).toMatch(/^Pipeline '\S+' of org 'acme': no leases\./);
    expect(out(/usage --org acme --project acme\/app/)).toMatch(/^Project 'acme\/app' of org 'acme', \d{4}-\d\d: no leases\./);
  });

  test('the admin token without an org, or naming a missing org, says what to pass or create', () => {
    expect(token).not.toBe(''); // the README's steps ran
    const admin = fs.readFileSync(path.join(server.stateDir, 'admin-token'), 'utf8').trim();
    const setup = (extra: Record<string, string>) =>
      spawnSync(process.execPath, [CLI, 'setup'], {
        env: baseEnv({ BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: admin, BUILDCLOUD_PROJECT: 'acme/app', ...extra }),
        encoding: 'utf8',
        cwd: work
      });
    const noOrg = setup({});
    expect(noOrg.status).not.toBe(0);
    expect(noOrg.stderr).toContain('Missing org: the admin token acts for any org, so name one: pass --org ORG (BUILDCLOUD_ORG; the org input).');
    const missing = setup({ BUILDCLOUD_ORG: 'nope' });
    expect(missing.stderr).toContain("Org 'nope' not found: create it with `buildcloud admin org create nope --minutes N`.");
    expect(noOrg.stderr + missing.stderr).not.toContain(admin);
  });
});

// ---- README: any other CI, or a shell ----------------------------------------------------------------------

describe('README "Any other CI, or a shell"', () => {
  const HEADING = 'Any other CI, or a shell';

  test('its sh block runs as written (endpoint and registry swapped) and pushes the image', async () => {
    expect(token).not.toBe('');
    const block = shellBlocks(readmeSection(fs.readFileSync(README, 'utf8'), HEADING), HEADING)[0];
    // The pipeline's identity as a shell CI would give it, so the seed job shares the recipe's builder.
    const identity = { BUILDCLOUD_PROJECT: 'acme/app', BUILDCLOUD_PIPELINE_ID: `docs-shell-${process.pid}`, BUILDCLOUD_BRANCH: 'main' };
    const seed = await seedPipeline(identity);
    const app = path.join(work, 'shell-app');
    fs.cpSync(path.join(ROOT, 'examples/app'), app, { recursive: true });
    try {
      // The tag the recipe may push: the org registry's one writable ref of this project and branch.
      const setup = spawnSync(process.execPath, [CLI, 'setup', '--json'], {
        env: baseEnv({ ...identity, BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token, BUILDCLOUD_JOB_ID: 'probe' }),
        encoding: 'utf8',
        cwd: app
      });
      const probe = JSON.parse(setup.stdout) as { outputs: { 'cache-to': string }; env: Record<string, string> };
      spawnSync(process.execPath, [CLI, 'report'], { env: baseEnv({ ...identity, ...probe.env }), cwd: app });
      const pushTo = probe.outputs['cache-to'];
      expect(pushTo).toMatch(/\/acme\/acme\/app\/cache:main$/);
      const script = block.replace(/https?:\/\/[a-z0-9.-]*example\.com(?::\d+)?/g, server.info.http).replace(/registry\.example\.com\/[^\s"'`]+/g, pushTo);
      const r = sh(script, baseEnv({ ...identity, BUILDCLOUD_TOKEN: token, BUILDCLOUD_ENDPOINT: server.info.http }), app);
      if (r.status !== 0) throw new Error(`README's shell recipe failed (exit ${r.status}):\n${script}\n---\n${r.out}`);
      expect(r.out).toMatch(/sha256:[0-9a-f]{64}/); // pushed: the digest is reported
      // The project's usage now counts the recipe's build (the README's `usage --project` line, run again).
      const u = sh('buildcloud usage --org acme --project acme/app', baseEnv(), work);
      expect(u.stdout).toMatch(
        /^Project 'acme\/app' of org 'acme', \d{4}-\d\d\n {2}leases {4}\d+ \(\d+ active\) in 1 pipeline, [\d.]+ build minutes? billed\n {2}builds {4}1 \(1 succeeded, 0 failed\)\n/
      );
    } finally {
      seed.end();
    }
  });
});

// ---- examples/github ---------------------------------------------------------------------------------------

interface Workflow {
  jobs: Record<string, { strategy?: { matrix?: Record<string, unknown[]> }; steps: WorkflowStep[] }>;
}
interface WorkflowStep {
  id?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
}

// Steps no offline runner can run: docker/build-push-action needs the buildx plugin, which Debian's docker 20.10
// client here does not have. Listed, so a new example that cannot run here is a failure, not a silent skip.
const NOT_RUNNABLE_HERE: Record<string, string> = {
  'build-push-action.yml': 'docker/build-push-action needs the docker buildx plugin (not in Debian 12)'
};

type Scope = { matrix: Record<string, string>; steps: Record<string, Record<string, string>>; env: Record<string, string> };

/** ${{ }} of the examples: github.*, vars.*, matrix.*, steps.<id>.outputs.*, and `x == 'y'`. */
function evaluate(expr: string, s: Scope): string {
  const eq = /^(.+?)\s*==\s*'([^']*)'$/.exec(expr);
  if (eq) return String(evaluate(eq[1].trim(), s) === eq[2]);
  const [head, ...rest] = expr.split('.');
  if (head === 'github') {
    const k = rest.join('.');
    if (k === 'sha') return s.env.GITHUB_SHA;
    if (k === 'event_name') return s.env.GITHUB_EVENT_NAME;
    throw new Error(`example uses github.${k}: teach the test its value`);
  }
  if (head === 'vars' && rest[0] === 'BUILDCLOUD_ENDPOINT') return server.info.http; // swapped: the endpoint
  if (head === 'matrix') return s.matrix[rest[0]] ?? '';
  if (head === 'steps' && rest[1] === 'outputs') return s.steps[rest[0]]?.[rest.slice(2).join('.')] ?? '';
  throw new Error(`example uses \${{ ${expr} }}: teach the test its value`);
}
const interpolate = (v: unknown, s: Scope) => String(v).replace(/\$\{\{\s*(.+?)\s*\}\}/g, (_, e: string) => evaluate(e, s));

interface LegResult {
  failed: string | null;
  setup: Record<string, string>;
  build: Record<string, string>;
  runOutput: string;
}

/** One job of a workflow (one matrix leg), step by step as the runner runs it; the setup's post step always. */
async function runLeg(file: string, steps: WorkflowStep[], runId: string, index: number, matrix: Record<string, string>): Promise<LegResult> {
  const temp = fs.mkdtempSync(path.join(work, `gha-${runId}-${index}-`));
  const workspace = path.join(temp, 'workspace');
  fs.mkdirSync(workspace);
  const eventPath = path.join(temp, 'event.json');
  fs.writeFileSync(eventPath, JSON.stringify({ repository: { id: 712345678, default_branch: 'main', full_name: 'acme/widget-api' } }));
  const ctx: JobContext = {
    env: githubJobEnv({ runId, job: 'image', eventPath, temp, home: path.join(work, 'home-gha'), workspace }),
    expressions: { 'github.job': 'image', 'strategy.job-index': String(index), 'job.check_run_id': `${runId}${index}`, 'github.token': 'ghs_test' },
    runnerTemp: temp,
    workspace
  };
  const scope: Scope = { matrix, steps: {}, env: ctx.env };
  const result: LegResult = { failed: null, setup: {}, build: {}, runOutput: '' };
  let post: { with: Record<string, string>; state: Record<string, string> } | null = null;
  const stepCtx = (): JobContext => ({ ...ctx, env: { ...ctx.env } });
  for (const step of steps) {
    if (result.failed) break;
    const withInputs = Object.fromEntries(Object.entries(step.with ?? {}).map(([k, v]) => [k, interpolate(v, scope)]));
    let r: StepResult | null = null;
    if (step.uses?.startsWith('actions/checkout@')) {
      fs.cpSync(path.join(ROOT, 'examples'), path.join(workspace, 'examples'), { recursive: true });
    } else if (step.uses === 'buildcloud-dev/buildcloud@v1') {
      withInputs.endpoint = withInputs.endpoint.replace(/^https:\/\/buildcloud\.example\.com:7644$/, server.info.http); // swapped
      withInputs.token ??= token; // swapped: an org token for the job's OIDC token
      r = await runStep(path.join(ROOT, 'action.yml'), 'main', withInputs, stepCtx());
      Object.assign(ctx.env, r.env);
      post = { with: withInputs, state: r.state };
      result.setup = r.outputs;
      scope.steps.__setup = r.outputs;
    } else if (step.uses === 'buildcloud-dev/buildcloud/build@v1') {
      // swapped: a pushed tag goes to the org registry's one writable ref, registry.example.com being unreachable
      if (withInputs.push === 'true') withInputs.tags = withInputs.tags.replace(/registry\.example\.com\/\S+/g, scope.steps.__setup['cache-to']);
      r = await runStep(path.join(ROOT, 'build/action.yml'), 'main', withInputs, stepCtx());
      result.build = r.outputs;
    } else if (step.run !== undefined) {
      const out = sh(interpolate(step.run, scope), { ...ctx.env, ...step.env }, workspace);
      result.runOutput += out.out;
      if (out.status !== 0) result.failed = `${file}: run step failed: ${out.out}`;
    } else {
      throw new Error(`${file}: no offline runner for step ${JSON.stringify(step.uses)}; list it in NOT_RUNNABLE_HERE with the reason`);
    }
    if (r && step.id) scope.steps[step.id] = r.outputs;
    if (r?.failed) result.failed = `${file}: ${step.uses} failed:\n${r.stdout.slice(-3000)}`;
  }
  if (post) {
    const p = await runStep(path.join(ROOT, 'action.yml'), 'post', post.with, stepCtx(), post.state);
    if (p.failed && !result.failed) result.failed = `${file}: post step failed:\n${p.stdout.slice(-3000)}`;
  }
  return result;
}

async function runGithubExample(file: string, runId: string): Promise<LegResult[]> {
  const wf = YAML.parse(fs.readFileSync(path.join(ROOT, 'examples/github', file), 'utf8')) as Workflow;
  const legs: Promise<LegResult>[] = [];
  for (const job of Object.values(wf.jobs)) {
    const matrix = job.strategy?.matrix ?? {};
    const keys = Object.keys(matrix);
    const combos: Record<string, string>[] = keys.reduce<Record<string, string>[]>(
      (acc, k) => acc.flatMap((c) => (matrix[k] as unknown[]).map((v) => ({ ...c, [k]: String(v) }))),
      [{}]
    );
    combos.forEach((m, i) => legs.push(runLeg(file, job.steps, runId, i, m)));
  }
  return Promise.all(legs);
}

describe('examples/github', () => {
  test('every workflow file is run here or listed with the reason it cannot be', () => {
    const files = fs.readdirSync(path.join(ROOT, 'examples/github')).filter((f) => f.endsWith('.yml'));
    expect(files.filter((f) => !NOT_RUNNABLE_HERE[f]).sort()).toEqual(['build.yml', 'matrix.yml']);
  });

  test.each([
    ['build.yml', '8101'],
    ['matrix.yml', '8102']
  ])('%s: every job succeeds through the bundled action entries', async (file, runId) => {
    expect(token).not.toBe('');
    // The GitHub pipeline key is repository_id/run_id/run_attempt; the seed job is a step of the same run.
    const eventPath = path.join(work, `event-${runId}.json`);
    fs.writeFileSync(eventPath, JSON.stringify({ repository: { id: 712345678, default_branch: 'main', full_name: 'acme/widget-api' } }));
    const gh: Record<string, string> = githubJobEnv({ runId, job: 'seed', eventPath, temp: work, home: path.join(work, 'home') });
    delete gh.PATH; // keeps the seed's PATH (with `buildcloud`)
    const seed = await seedPipeline(gh);
    let legs: LegResult[];
    try {
      legs = await runGithubExample(file, runId);
    } finally {
      seed.end();
    }
    for (const l of legs) if (l.failed) throw new Error(l.failed);
    for (const l of legs) {
      expect(l.setup['docker-host']).toBe(seed.dockerHost); // the pipeline's one builder
      expect(Number(l.build['total-steps'])).toBeGreaterThanOrEqual(7);
    }
    if (file === 'build.yml') {
      expect(legs).toHaveLength(1);
      expect(legs[0].build.digest).toMatch(/^sha256:[0-9a-f]{64}$/); // pushed
      expect(legs[0].runOutput).toBe(`${legs[0].build['cached-steps']} of ${legs[0].build['total-steps']} steps came from the org cache\n`);
    } else {
      expect(legs).toHaveLength(4);
    }
  });
});

// ---- examples/gitlab ---------------------------------------------------------------------------------------

describe('examples/gitlab', () => {
  test('.gitlab-ci.yml: four build jobs and release-notes pass under gitlab-ci-local', async () => {
    expect(token).not.toBe('');
    const repo = path.join(work, 'gitlab');
    fs.mkdirSync(path.join(repo, 'plugins/gitlab/templates'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'plugins/gitlab/templates'), path.join(repo, 'plugins/gitlab/templates'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'examples/gitlab/.gitlab-ci.yml'), path.join(repo, '.gitlab-ci.yml'));
    // The app's rootfs.tar is generated (its .gitignore says by which helper); then the app as committed.
    const app = path.join(repo, 'examples/gitlab/app');
    await makeBusyboxContext(app, '');
    fs.cpSync(path.join(ROOT, 'examples/gitlab/app'), app, { recursive: true });
    initRepo(repo);
    const run = await runGitlabCiLocal(repo, {
      variables: { BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token },
      inputs: { cli: `${process.execPath} ${CLI}` }, // swapped: the unpublished @buildcloud/ci
      timeoutMs: 600_000
    });
    for (const j of ['build-api', 'build-worker', 'build-web', 'build-migrations', 'release-notes']) {
      if (run.results[j] !== 'PASS') throw new Error(`job ${j}: ${run.results[j] ?? 'did not run'}\n${run.output.slice(-6000)}`);
    }
    const api = dotenvReport(repo, 'build-api');
    expect(run.log('release-notes').join('\n')).toContain(`api image ${api.BUILDCLOUD_IMAGE_ID} built on ${api.BUILDCLOUD_DOCKER_HOST}`);
  });
});

// ---- examples/circleci -------------------------------------------------------------------------------------

describe('examples/circleci', () => {
  test("config.yml: the smoke test runs the loaded image in the job's own engine, then the four image jobs build", async () => {
    expect(token).not.toBe('');
    engine = await startRunnerEngine(); // the machine executor's own Docker engine
    // Pipeline values are substituted when CircleCI compiles the config, everywhere in it (the harness does so only in
    // orb parameters).
    const revision = 'ed0bda2d7456f4a2cd60870072e1fe79864a49a1';
    const text = fs.readFileSync(path.join(ROOT, 'examples/circleci/config.yml'), 'utf8').replace(/<<\s*pipeline\.git\.revision\s*>>/g, revision);
    const config = YAML.parse(text) as Config;
    const cli = `${process.execPath} ${CLI}`;
    // swapped: the unpublished @buildcloud/ci, on every buildcloud/* step and job
    const withCli = (step: unknown): unknown => {
      if (step && typeof step === 'object') {
        const [name, args] = Object.entries(step)[0];
        if (name.startsWith('buildcloud/')) return { [name]: { ...(args as object), cli } };
      }
      return typeof step === 'string' && step.startsWith('buildcloud/') ? { [step]: { cli } } : step;
    };
    const jobs = config.jobs as Record<string, { steps: unknown[] }>;
    for (const j of Object.values(jobs)) j.steps = j.steps.map(withCli);
    const wf = (config.workflows as Record<string, { jobs: unknown[] }>).images;
    wf.jobs = wf.jobs.map((j) => {
      const out = withCli(j) as Record<string, Record<string, unknown>>;
      const [name, args] = Object.entries(out)[0] ?? [];
      // The four image jobs push, in parallel, to registry.example.com (unreachable). The org registry has one
      // writable ref per project and branch, so four parallel pushes cannot all go there: they build without it.
      if (args && typeof args === 'object' && args.push === true) args.push = false;
      return name ? out : j;
    });
    const workflowId = '9c1f7a52-3b7e-4d2a-8f61-0e5b9d4c2a17';
    const checkout = path.join(work, 'circleci-checkout');
    fs.cpSync(path.join(ROOT, 'examples'), path.join(checkout, 'examples'), { recursive: true });
    const seed = await seedPipeline({
      CIRCLECI: 'true',
      CIRCLE_WORKFLOW_ID: workflowId,
      CIRCLE_PIPELINE_ID: '5e0c3d7a-1111-4c2b-9a3e-7d5f8b1c2e4a',
      CIRCLE_PROJECT_USERNAME: 'acme',
      CIRCLE_PROJECT_REPONAME: 'widget-api',
      CIRCLE_REPOSITORY_URL: 'git@github.com:acme/widget-api.git',
      CIRCLE_BRANCH: 'main',
      CIRCLE_BUILD_NUM: '1',
      CIRCLE_JOB: 'seed',
      CIRCLE_SHA1: revision,
      CIRCLE_USERNAME: 'jdoe'
    });
    let result;
    try {
      result = await runWorkflow(circleContext(config, { orbs: { buildcloud: loadOrb() } }), 'images', {
        workRoot: path.join(work, 'circleci'),
        workflowId,
        checkoutFrom: checkout,
        projectUsername: 'acme',
        projectReponame: 'widget-api',
        branch: 'main',
        contexts: { buildcloud: { BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token, DOCKER_HOST: engine.host } }
      });
    } finally {
      seed.end();
    }
    for (const [name, r] of Object.entries(result)) {
      if (r === 'blocked' || r.status !== 'success') {
        const detail = r === 'blocked' ? 'blocked' : r.steps.map((s) => `${s.status}: ${s.output.slice(-1500)}`).join('\n');
        throw new Error(`circleci job ${name}: ${detail}`);
      }
    }
    const smoke = result['smoke-test'];
    if (smoke === 'blocked') throw new Error('smoke-test blocked');
    const ran = smoke.steps.find((s) => /docker run --rm/.test(JSON.stringify(s.step)));
    expect(ran?.output).toContain('routes: /, /healthz'); // examples/app/src, cat by the api image's CMD
    expect(Object.keys(result).sort()).toEqual(['api', 'migrations', 'smoke-test', 'web', 'worker']);
  });
});
