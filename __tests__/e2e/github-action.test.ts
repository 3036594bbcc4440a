// The GitHub Action for real: the bundled dist/ main, build and post entries run the way the runner runs them
// (node24, INPUT_*, file commands, STATE_* in post) against the real control plane, dockerd and registry.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { adminSetup, startServer, waitFor, ROOT, type ServerProcess } from '../helpers/server';
import { githubJobEnv, requireNode24, runStep, type JobContext, type StepResult } from '../../harness/github-runner';
import { makeBusyboxContext } from '../helpers/busybox-context';
import type { UsageReport } from '../../src/contract/http-api';

const ACTION = path.join(ROOT, 'action.yml');
const BUILD = path.join(ROOT, 'build/action.yml');
const DOCKERFILE = [
  'RUN echo "deps v1" > /deps.txt && sleep 1',
  'RUN cat /deps.txt > /layer2.txt',
  'COPY app.txt /app.txt',
  'RUN cat /app.txt /deps.txt > /built.txt'
].join('\n');

let server: ServerProcess;
let token: string;
let work: string;
let workspace: string;

function dockerdAlive(builderId: string): boolean {
  return spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .stdout.split('\n')
    .some((l) => l.includes('dockerd') && l.includes(builderId));
}

async function usage(): Promise<UsageReport> {
  const res = await fetch(`${server.info.http}/v1/orgs/acme/usage`, { headers: { authorization: `Bearer ${token}` } });
  return (await res.json()) as UsageReport;
}

// One job: its own RUNNER_TEMP and context; steps share the env the runner builds from GITHUB_ENV.
class Job {
  ctx: JobContext;
  env: Record<string, string> = {};
  state: Record<string, string> = {};
  constructor(runId: string, jobIndex: number, opts: { home?: string; extra?: Record<string, string> } = {}) {
    const temp = fs.mkdtempSync(path.join(work, `runner-${runId}-${jobIndex}-`));
    const eventPath = path.join(temp, 'event.json');
    fs.writeFileSync(eventPath, JSON.stringify({ repository: { id: 712345678, default_branch: 'main', full_name: 'acme/widget-api' } }));
    this.ctx = {
      env: githubJobEnv({ runId, job: 'build', eventPath, temp, home: opts.home ?? path.join(work, 'home'), extra: opts.extra }),
      expressions: { 'github.job': 'build', 'strategy.job-index': String(jobIndex), 'job.check_run_id': `${runId}${jobIndex}`, 'github.token': 'ghs_test' },
      runnerTemp: temp
    };
  }
  private merged(): JobContext {
    return { ...this.ctx, env: { ...this.ctx.env, ...this.env } };
  }
  async main(inputs: Record<string, string>): Promise<StepResult> {
    const r = await runStep(ACTION, 'main', inputs, this.merged());
    Object.assign(this.env, r.env);
    this.state = r.state;
    return r;
  }
  build(inputs: Record<string, string>): Promise<StepResult> {
    return runStep(BUILD, 'main', inputs, this.merged());
  }
  post(inputs: Record<string, string>): Promise<StepResult> {
    return runStep(ACTION, 'post', inputs, this.merged(), this.state);
  }
}

beforeAll(async () => {
  requireNode24();
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-gha-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '1']);
  token = adminSetup(server.stateDir, 'acme', 120);
  workspace = path.join(work, 'workspace');
  fs.mkdirSync(workspace);
  await makeBusyboxContext(workspace, DOCKERFILE);
  fs.writeFileSync(path.join(workspace, 'app.txt'), 'app v1\n');
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
});

describe('the GitHub Action, run the way the runner runs it', () => {
  test('two jobs of one pipeline share a builder; build, post, summary, usage; nothing left behind', async () => {
    const inputs = { endpoint: server.info.grpc, token };
    const a = new Job('1001', 0);
    const b = new Job('1001', 1);
    const ma = await a.main(inputs);
    expect(ma.failed).toBe(false);
    const mb = await b.main(inputs);
    expect(mb.failed).toBe(false);

    // Outputs and env for later steps.
    expect(ma.outputs['docker-host']).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(mb.outputs['docker-host']).toBe(ma.outputs['docker-host']);
    expect(mb.outputs['lease-id']).not.toBe(ma.outputs['lease-id']);
    expect(ma.outputs.builder).not.toBe('');
    expect(ma.outputs.builder).not.toBe(mb.outputs.builder); // matrix legs never collide on local names
    expect(ma.outputs['cache-to']).toBe(`${server.info.registry}/acme/acme/widget-api/cache:main`);
    expect(ma.outputs['cache-from'].split('\n')).toContain(ma.outputs['cache-to']);
    expect(ma.outputs.platforms).toMatch(/^linux\//);
    expect(ma.outputs.fallback).toBe('false');
    expect(a.env.DOCKER_HOST).toBe(ma.outputs['docker-host']);
    expect(a.env.DOCKER_TLS_VERIFY).toBe('1');
    expect(a.env.BUILDCLOUD_SESSION).toBeTruthy();
    // The token never reaches the log; the lease's key is masked and on disk 0600.
    // (::add-mask:: lines are the masking commands themselves; the runner never prints them.)
    const printed = ma.stdout
      .split('\n')
      .filter((l) => !l.startsWith('::add-mask::'))
      .join('\n');
    expect(printed).not.toContain(token);
    const certDir = a.env.DOCKER_CERT_PATH;
    expect(fs.statSync(certDir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(certDir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(ma.stdout).toMatch(/::add-mask::/);

    const built = await a.build({ context: workspace, tags: 'acme/widget-api:ci' });
    expect(built.failed).toBe(false);
    expect(Number(built.outputs['total-steps'])).toBeGreaterThanOrEqual(4);
    expect(Number(built.outputs['cached-steps'])).toBe(0);
    expect(Number(built.outputs.duration)).toBeGreaterThan(0);

    const pa = await a.post(inputs);
    expect(pa.failed).toBe(false);
    expect(pa.summary).toMatch(/Build Cloud/);
    expect(pa.summary).toContain(ma.outputs['lease-id']);
    expect(pa.stdout).toMatch(/released lease/);
    expect(fs.existsSync(certDir)).toBe(false);
    // Job b still holds the builder.
    const builderId = (await leaseBuilder(mb.outputs['lease-id']))!;
    expect(dockerdAlive(builderId)).toBe(true);
    const pb = await b.post(inputs);
    expect(pb.failed).toBe(false);
    await waitFor('builder destroyed after the last job and the grace period', async () => !dockerdAlive(builderId));

    const u = await usage();
    expect(u.builds.count).toBe(1);
    expect(u.leases.count).toBeGreaterThanOrEqual(2);
  });

  test("a second pipeline's build shows cached steps from the first", async () => {
    fs.writeFileSync(path.join(workspace, 'app.txt'), 'app v2\n'); // a code change: only the last two steps rebuild
    const inputs = { endpoint: server.info.grpc, token };
    const j = new Job('1002', 0);
    expect((await j.main(inputs)).failed).toBe(false);
    const built = await j.build({ context: workspace, tags: 'acme/widget-api:ci' });
    expect(built.failed).toBe(false);
    expect(built.stdout).toMatch(/importing cache manifest/);
    expect(Number(built.outputs['cached-steps'])).toBeGreaterThanOrEqual(2);
    expect(Number(built.outputs['cache-ratio'])).toBeGreaterThan(0);
    const p = await j.post(inputs);
    expect(p.summary).toMatch(/cached/i);
    const u = await usage();
    expect(u.builds.count).toBe(2);
    expect(u.builds.withCachedStepShare).toBe(0.5);
  });

  test('metering that cannot be sent survives to a later job and is counted once', async () => {
    const home = path.join(work, 'home-offline');
    const down = new Job('1003', 0, { home });
    const inputs = { endpoint: server.info.grpc, token };
    expect((await down.main({ ...inputs, 'metering-endpoint': 'http://127.0.0.1:9' })).failed).toBe(false);
    expect((await down.build({ context: workspace })).failed).toBe(false);
    const p = await down.post({ ...inputs, 'metering-endpoint': 'http://127.0.0.1:9' });
    expect(p.failed).toBe(false); // metering trouble warns, never fails
    expect(p.warnings.join('\n')).toMatch(/metering/i);
    const spool = path.join(home, '.cache/buildcloud/spool/acme');
    expect(fs.readdirSync(spool).filter((f) => f.endsWith('.json')).length).toBe(2); // the build and the job record
    expect((await usage()).builds.count).toBe(2);

    const later = new Job('1004', 0, { home });
    const m = await later.main(inputs);
    expect(m.stdout).toMatch(/sent 2 usage records left by earlier jobs/);
    expect(fs.readdirSync(spool).filter((f) => f.endsWith('.json')).length).toBe(0);
    await later.post(inputs);
    expect((await usage()).builds.count).toBe(3);
  });

  test('bad input fails the step with a message naming the input; post has nothing to release', async () => {
    const j = new Job('1005', 0);
    const m = await j.main({ endpoint: server.info.grpc, token, scope: 'everything' });
    expect(m.failed).toBe(true);
    expect(m.stdout).toMatch(/Invalid input 'scope': 'everything'\. Expected one of: pipeline, job\./);
    const p = await j.post({ endpoint: server.info.grpc, token });
    expect(p.failed).toBe(false);
    expect(p.stdout).toMatch(/nothing to release/);
    const noAuth = new Job('1006', 0);
    const m2 = await noAuth.main({ endpoint: server.info.grpc });
    expect(m2.failed).toBe(true);
    expect(m2.stdout).toMatch(/id-token: write/);
  });
});

async function leaseBuilder(leaseId: string): Promise<string | null> {
  const { TestClient } = await import('../helpers/server');
  const c = new TestClient(server.info.grpc, token);
  try {
    return (await c.get(leaseId)).builders[0]?.builderId ?? null;
  } finally {
    c.close();
  }
}
