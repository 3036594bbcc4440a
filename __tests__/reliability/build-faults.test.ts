// The build path under faults (issue 14), against the real `buildcloud serve`, its dockerd builders, its embedded
// registry and the runner CLI run as a shell CI job runs it (setup, build, report):
// - the org cache's registry slow (the docker-registry process stopped with SIGSTOP: it accepts and never answers)
//   and down (killed): the build runs without the org cache, with one warning saying so, succeeds, and claims no
//   cache hit it did not get; a build between the two, with the registry answering again, does hit the cache (so
//   the assertions above can fail); and one whose registry stalls once its image is written, before its cache
//   export: the push is stopped at BUILDCLOUD_CACHE_EXPORT_TIMEOUT with a warning, and it succeeds;
// - a builder lost mid-build (its dockerd killed with SIGKILL while a RUN step runs): the job fails, non-zero, with
//   the platform's error (build-failure.ts BUILDER_LOST and what to do), not a Dockerfile step error; the pipeline's
//   next job gets another builder and builds.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, waitFor, CLI, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { reportScenario } from '../helpers/reliability';
import { BUILDER_LOST } from '../../src/core/build-failure';

let server: ServerProcess;
let token: string;
let work: string;
let ctx: string; // three steps, quick: the registry scenarios
let slowCtx: string; // a RUN step that says it started, then sleeps a minute: the builder-lost scenario

const STEPS = 3;
const PROBE_TIMEOUT_S = 2;
const EXPORT_TIMEOUT_S = 10;
const UNAVAILABLE = /the org cache \(registry \S+\) is unavailable/g;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: NodeJS.ProcessEnv, onStderr?: (all: string) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { env, cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => {
      stderr += d;
      onStderr?.(stderr);
    });
    p.on('error', reject);
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

// A shell CI job's environment: nothing of this test's own.
function jobEnv(pipeline: string, jobId: string): NodeJS.ProcessEnv {
  const home = fs.mkdtempSync(path.join(work, `${pipeline}-${jobId}-`));
  return {
    PATH: process.env.PATH,
    HOME: home,
    RUNNER_TEMP: home,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/app',
    BUILDCLOUD_BRANCH: 'main',
    BUILDCLOUD_DEFAULT_BRANCH: 'main',
    BUILDCLOUD_PIPELINE_ID: `${pipeline}-${process.pid}`,
    BUILDCLOUD_JOB_ID: jobId,
    BUILDCLOUD_DOCKER: DOCKER,
    BUILDCLOUD_CACHE_PROBE_TIMEOUT: String(PROBE_TIMEOUT_S),
    BUILDCLOUD_CACHE_EXPORT_TIMEOUT: String(EXPORT_TIMEOUT_S)
  };
}

interface Job {
  build: Run;
  report: Run;
  values: Record<string, unknown> | null; // build --json's last line
  builder: string;
  buildMs: number;
  buildEndedAt: number;
}

/** setup, build (--json), report, as one CI job; `onBuildStderr` sees the build's output as it comes. */
async function job(pipeline: string, jobId: string, context: string, onBuildStderr?: (all: string) => void): Promise<Job> {
  const env = jobEnv(pipeline, jobId);
  const s = await run(['setup', '--json'], env);
  if (s.status !== 0) throw new Error(`setup exited ${s.status}:\n${s.stderr}`);
  const out = JSON.parse(s.stdout.trim().split('\n').pop()!);
  const jobEnvAfter = { ...env, ...out.env };
  const builder = builderOf(jobId);
  const t0 = Date.now();
  const b = await run(['build', '--context', context, '--json'], jobEnvAfter, onBuildStderr);
  const buildEndedAt = Date.now();
  const buildMs = buildEndedAt - t0;
  const r = await run(['report'], jobEnvAfter);
  let values: Record<string, unknown> | null = null;
  try {
    values = JSON.parse(b.stdout.trim().split('\n').pop() ?? '');
  } catch {
    values = null;
  }
  return { build: b, report: r, values, builder, buildMs, buildEndedAt };
}

/** serve's log lines (JSON) with message `msg`. */
function serveLog(msg: string): Record<string, unknown>[] {
  return server
    .stderr()
    .split('\n')
    .filter((l) => l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The builder serve leased to job `jobId` (its "lease provisioned" log line). */
function builderOf(jobId: string): string {
  const line = serveLog('lease provisioned')
    .filter((l) => l.jobId === jobId)
    .pop();
  if (!line) throw new Error(`serve logged no lease for job ${jobId}`);
  return (line.builders as string[])[0];
}

/** The pid of the registry serve started ("embedded registry ready"). */
function registryPid(): number {
  const line = serveLog('embedded registry ready').pop();
  if (!line) throw new Error("serve logged no 'embedded registry ready' line");
  return line.pid as number;
}

/** The pids of dockerd processes whose command line names builder `id` (its config and data live under its id). */
function dockerdOf(id: string): number[] {
  const pids: number[] = [];
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (path.basename(argv[0]) === 'dockerd' && argv.some((a) => a.includes(id))) pids.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-build-faults-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  ctx = path.join(work, 'ctx');
  await makeBusyboxContext(ctx, `RUN echo deps > /deps.txt\nCOPY app.txt /app.txt\n`);
  fs.writeFileSync(path.join(ctx, 'app.txt'), `app ${process.pid}\n`);
  slowCtx = path.join(work, 'slow');
  await makeBusyboxContext(slowCtx, `RUN echo step-started && sleep 60 && echo step-ended\n`);
});

afterAll(async () => {
  const pid = server ? registryPid() : 0;
  if (pid && alive(pid)) process.kill(pid, 'SIGCONT'); // never leave it stopped, whatever failed
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

const cachedSteps = (j: Job) => Number(j.values?.['cached-steps']);
const unavailableWarnings = (j: Job) => (j.build.stderr.match(UNAVAILABLE) ?? []).length;

describe('the org cache registry slow, then down', () => {
  test('builds proceed without the org cache, with one warning, succeed, and claim no cache hit', async () => {
    // Seed the org cache (a fresh pipeline's builder: nothing local), then each scenario on a pipeline of its own.
    const seed = await job('seed', 'seed', ctx);
    expect({ status: seed.build.status, stderr: seed.build.status === 0 ? '' : seed.build.stderr }).toEqual({ status: 0, stderr: '' });
    expect(seed.build.stderr).toContain('org cache exported');

    const pid = registryPid();
    expect(alive(pid)).toBe(true);
    process.kill(pid, 'SIGSTOP'); // slow: connections are accepted by the kernel, nothing answers
    let slow: Job;
    try {
      slow = await job('slow', 'slow', ctx);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // The registry answers again: a build now hits the cache the seed exported (what the two faulty builds did not get).
    const healed = await job('healed', 'healed', ctx);

    // Stalls after the build: the probe passed, the cache was imported and the image written (BuildKit's "naming
    // to"), then the registry stops answering before the cache export is pushed. The push is stopped at
    // BUILDCLOUD_CACHE_EXPORT_TIMEOUT; the build succeeds. (A stall while BuildKit still pulls imported layers hangs
    // the docker build itself: not bounded yet, see the report of issue 14 helper C.)
    let stalled = false;
    let stall: Job;
    try {
      stall = await job('stall', 'stall', ctx, (all) => {
        if (stalled || !/^#\d+ naming to \S+/m.test(all)) return;
        stalled = true;
        process.kill(pid, 'SIGSTOP');
      });
    } finally {
      process.kill(pid, 'SIGCONT');
    }

    process.kill(pid, 'SIGKILL'); // down
    await waitFor('the registry to exit', async () => !alive(pid) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] === 'Z');
    await waitFor("serve to log the registry's exit", async () => serveLog('embedded registry exited unexpectedly').length > 0);
    const down = await job('down', 'down', ctx);

    reportScenario({
      scenario: 'org cache registry slow or down',
      injected:
        "the embedded docker-registry serve started was stopped (SIGSTOP: accepts, never answers) for one job's build, again for another's once its image was written, then killed (SIGKILL) before a third's; each job on a fresh pipeline builder, the org cache seeded before",
      checked: `both builds exit 0 with exactly one 'org cache … is unavailable' warning, 0 cached steps and no cache export; a build in between, registry answering, hits the cache; one whose registry stalls once its image is written succeeds, its cache export stopped at ${EXPORT_TIMEOUT_S} s with a warning; probe timeout ${PROBE_TIMEOUT_S} s`,
      figures: {
        buildsOk: [seed, slow, healed, stall, down].filter((j) => j.build.status === 0).length,
        buildsFailed: [seed, slow, healed, stall, down].filter((j) => j.build.status !== 0).length,
        slowBuildMs: slow.buildMs,
        downBuildMs: down.buildMs,
        slowWarnings: unavailableWarnings(slow),
        downWarnings: unavailableWarnings(down),
        slowCachedSteps: cachedSteps(slow),
        stallBuildMs: stall.buildMs,
        stallCachedSteps: cachedSteps(stall),
        healedCachedSteps: cachedSteps(healed),
        downCachedSteps: cachedSteps(down)
      }
    });

    for (const [what, j] of [
      ['slow', slow],
      ['down', down]
    ] as const) {
      expect({ what, status: j.build.status, stderr: j.build.status === 0 ? '' : j.build.stderr }).toEqual({ what, status: 0, stderr: '' });
      expect({ what, warnings: unavailableWarnings(j) }).toEqual({ what, warnings: 1 });
      expect(j.values).toMatchObject({ 'total-steps': STEPS, 'cached-steps': 0, 'cache-ratio': 0 });
      expect(j.build.stderr).toMatch(new RegExp(`build success in [\\d.]+ s, 0 of ${STEPS} steps cached\\n`));
      expect(j.build.stderr).not.toContain('org cache exported');
      expect(j.report.status).toBe(0);
    }
    expect(slow.build.stderr).toContain(`no answer within ${PROBE_TIMEOUT_S.toFixed(1)} s`);
    // Slow costs the probe's timeout, not BuildKit's: well under what a hung cache import would take.
    expect(slow.buildMs).toBeLessThan(60_000);
    expect(healed.build.status).toBe(0);
    expect(cachedSteps(healed)).toBe(STEPS);
    expect(unavailableWarnings(healed)).toBe(0);
    // The stall: imported (cache hits it really got), the export stopped at its limit with a warning, success.
    expect(stalled).toBe(true);
    expect({ status: stall.build.status, stderr: stall.build.status === 0 ? '' : stall.build.stderr }).toEqual({ status: 0, stderr: '' });
    expect(stall.build.stderr).toContain(`did not finish within ${EXPORT_TIMEOUT_S} s (BUILDCLOUD_CACHE_EXPORT_TIMEOUT) and was stopped`);
    expect(stall.build.stderr).not.toContain('org cache exported');
    expect(cachedSteps(stall)).toBe(STEPS);
    expect(stall.buildMs).toBeLessThan(EXPORT_TIMEOUT_S * 1000 + 45_000);
  }, 360_000); // five jobs, each a fresh builder
});

describe('a builder lost mid-build (its dockerd killed)', () => {
  test("the job fails with the platform's error, not a Dockerfile error; the pipeline's next job gets a new builder", async () => {
    let killedAt = 0;
    let killed: number[] = [];
    let lostBuilder = '';
    const lost = await job('lost', 'lost-1', slowCtx, (all) => {
      if (killedAt || !/^#\d+ [\d.]+ step-started$/m.test(all)) return;
      killedAt = Date.now();
      lostBuilder = builderOf('lost-1');
      killed = dockerdOf(lostBuilder);
      for (const p of killed) process.kill(p, 'SIGKILL');
    });
    const next = await job('lost', 'lost-2', ctx);
    const errorLine = lost.build.stderr.split('\n').find((l) => l.includes(BUILDER_LOST)) ?? '';

    reportScenario({
      scenario: 'builder lost mid-build',
      injected: "SIGKILL to the builder's dockerd while the job's RUN step ran (after its first output line)",
      checked: `the build exits non-zero with '${BUILDER_LOST}' and what to do, no Dockerfile step error; report exits 0; the pipeline's next job gets another builder and its build succeeds`,
      figures: {
        dockerdKilled: killed.length,
        lostBuildExit: String(lost.build.status),
        buildEndedAfterKillMs: killedAt ? lost.buildEndedAt - killedAt : -1,
        nextBuildExit: String(next.build.status),
        nextBuilderIsNew: next.builder !== lostBuilder,
        buildsOk: [lost, next].filter((j) => j.build.status === 0).length,
        buildsFailed: [lost, next].filter((j) => j.build.status !== 0).length
      }
    });

    expect(killed.length).toBe(1);
    expect(lost.build.status).toBe(1);
    expect(errorLine).toContain(`${BUILDER_LOST} (step [2/2] RUN echo step-started && sleep 60 && echo step-ended was running)`);
    expect(errorLine).toContain('rerun the job: its next run gets a new builder');
    expect(lost.build.stderr).not.toMatch(/executor failed running|step \[\S+\] .* failed:/);
    expect(lost.values).toMatchObject({ 'total-steps': 2, 'cached-steps': 0 });
    expect(lost.report.status).toBe(0);
    expect(next.builder).not.toBe(lostBuilder);
    expect({ status: next.build.status, stderr: next.build.status === 0 ? '' : next.build.stderr }).toEqual({ status: 0, stderr: '' });
  });
});
