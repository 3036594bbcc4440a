// Two jobs of one pipeline whose builds share only their first steps, on their shared builder (Docker Engine 20.10,
// BuildKit 0.8). Job y starts while job x runs the shared slow step: BuildKit runs that step once, y waits for it and
// then prints it CACHED, though nothing was in any cache when y began. Those steps are deduplicated for y, never
// cached (build-dedup.ts reads the builder's build-cache records before and after each build). A third job built
// after both is served from the builder's cache: its steps are cached, none deduplicated (issue 11, case 8 and the
// partial overlaps a review found).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, TestClient, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { resolveDocker, type BuildOptions, type ResolvedDocker } from '../../src/core/docker-cli';
import { cleanupRunner, configureRunner, runnerName, type RunnerConfig } from '../../src/core/runner-config';
import { runBuild, type BuildResult } from '../../src/core/build';
import { parseProgress } from '../../src/core/build-progress';
import type { LeaseMsg } from '../../src/contract/grpc';

const SHARED = 'FROM scratch\nADD rootfs.tar /\nRUN echo deps > /deps.txt && sleep 4\nRUN echo two > /two\n';
const X = `${SHARED}RUN echo x > /which\n`;
const Y = `${SHARED}RUN echo y > /which\n`;
// The same with a build argument in the slow step: BuildKit shows the step with the value in its name.
const SHARED_ARG = 'FROM scratch\nADD rootfs.tar /\nARG V\nRUN echo "$V" > /v && sleep 4\n';
const XA = `${SHARED_ARG}RUN echo xa > /which\n`;
const YA = `${SHARED_ARG}RUN echo ya > /which\n`;
const SLOW_ARG = /^#\d+ \[2\/3\] RUN echo "7" > \/v/m;
// x's shared slow step, as BuildKit's plain progress names it when it starts.
const SLOW = /^#\d+ \[2\/4\] RUN echo deps/m;

let server: ServerProcess;
let client: TestClient;
let docker: ResolvedDocker;
let work: string;
const leases: LeaseMsg[] = [];
const cfgs: RunnerConfig[] = [];

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-dedup-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '30s']);
  client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  docker = await resolveDocker({ ...process.env, BUILDCLOUD_DOCKER: DOCKER });
  for (const [name, body] of [
    ['x', X],
    ['y', Y],
    ['xa', XA],
    ['ya', YA]
  ]) {
    const ctx = path.join(work, name);
    await makeBusyboxContext(ctx, '');
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), body);
  }
});

afterAll(async () => {
  for (const c of cfgs) await cleanupRunner(c, docker).catch(() => undefined);
  for (const l of leases) await client?.release(l.id).catch(() => undefined);
  client?.close();
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

async function job(jobId: string, pipeline = 'repo/dedup/1'): Promise<{ lease: LeaseMsg; cfg: RunnerConfig }> {
  const identity = { provider: 'local', project: 'acme/dedup', branch: 'main', defaultBranch: 'main', actor: 'dev' };
  const lease = await client.provision({ pipelineKey: pipeline, jobId, identity });
  leases.push(lease);
  const cfg = await configureRunner(lease, runnerName(['local', identity.project, lease.pipelineKey, jobId]), { tempRoot: path.join(work, 'tmp'), docker });
  cfgs.push(cfg);
  return { lease, cfg };
}

const opts = (name: string, buildArgs: Record<string, string> = {}): BuildOptions => ({
  context: path.join(work, name),
  tags: [],
  buildArgs,
  push: false,
  platforms: [],
  exportCache: false
});

const statuses = (r: BuildResult) => r.steps.map((s) => s.status);

test('job y waited for the steps job x was running: deduplicated for y, not cached; a later job is served from the cache', async () => {
  const x = await job('x');
  const y = await job('y');
  expect(y.lease.builders[0].builderId).toBe(x.lease.builders[0].builderId); // one pipeline builder

  const lines: Record<string, string[]> = { x: [], y: [] };
  let slowSeen!: () => void;
  const slow = new Promise<void>((resolve) => (slowSeen = resolve));
  const rx = runBuild(opts('x'), x.cfg, x.lease, docker, {
    onLine: (l) => {
      lines.x.push(l);
      if (SLOW.test(l)) slowSeen();
    },
    trapSignals: false
  });
  await slow; // y starts while x's slow step runs: the order is set by the test
  const ry = runBuild(opts('y'), y.cfg, y.lease, docker, { onLine: (l) => lines.y.push(l), trapSignals: false });
  const [a, b] = await Promise.all([rx, ry]);
  for (const [name, r] of [
    ['x', a],
    ['y', b]
  ] as const) {
    expect({ job: name, status: r.status, output: r.status === 'success' ? '' : lines[name].slice(-40).join('\n') }).toEqual({
      job: name,
      status: 'success',
      output: ''
    });
  }

  // What BuildKit printed: x ran every step; y printed the three shared ones CACHED.
  expect(parseProgress(lines.x.join('\n')).steps.map((s) => s.status)).toEqual(['done', 'done', 'done', 'done']);
  expect(parseProgress(lines.y.join('\n')).steps.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'done']);
  // What y reports: the ADD x had finished before y began came from the builder's cache; the two steps x was running
  // (and had not begun) when y began were run by x while y waited.
  expect(a).toMatchObject({ totalSteps: 4, cachedSteps: 0, deduplicatedSteps: 0 });
  expect(statuses(b)).toEqual(['cached', 'deduplicated', 'deduplicated', 'done']);
  expect(b).toMatchObject({ totalSteps: 4, cachedSteps: 1, deduplicatedSteps: 2, cacheRatio: 0.25 });
  expect(b.warnings).toEqual([]);

  // The control: a third job builds y's Dockerfile after both ended; every step was in the builder's cache.
  const z = await job('z');
  expect(z.lease.builders[0].builderId).toBe(x.lease.builders[0].builderId);
  const c = await runBuild(opts('y'), z.cfg, z.lease, docker, { trapSignals: false });
  expect(c.status).toBe('success');
  expect(c).toMatchObject({ totalSteps: 4, cachedSteps: 4, deduplicatedSteps: 0 });
});

test('the same with a build argument in the shared step (its name shows the value, its record the $V): deduplicated too', async () => {
  const x = await job('xa', 'repo/dedup/2');
  const y = await job('ya', 'repo/dedup/2');
  expect(y.lease.builders[0].builderId).toBe(x.lease.builders[0].builderId);
  const lines: Record<string, string[]> = { x: [], y: [] };
  let slowSeen!: () => void;
  const slow = new Promise<void>((resolve) => (slowSeen = resolve));
  const rx = runBuild(opts('xa', { V: '7' }), x.cfg, x.lease, docker, {
    onLine: (l) => {
      lines.x.push(l);
      if (SLOW_ARG.test(l)) slowSeen();
    },
    trapSignals: false
  });
  await slow;
  const ry = runBuild(opts('ya', { V: '7' }), y.cfg, y.lease, docker, { onLine: (l) => lines.y.push(l), trapSignals: false });
  const [a, b] = await Promise.all([rx, ry]);
  expect([a.status, b.status]).toEqual(['success', 'success']);
  // BuildKit's own names carry the value; the record of the step carries "$V".
  expect(lines.y.join('\n')).toMatch(/^#\d+ \[2\/3\] RUN echo "7" > \/v && sleep 4$/m);
  expect(parseProgress(lines.y.join('\n')).steps.map((s) => s.status)).toEqual(['cached', 'cached', 'done']);
  expect(statuses(b)).toEqual(['cached', 'deduplicated', 'done']);
  expect(b).toMatchObject({ totalSteps: 3, cachedSteps: 1, deduplicatedSteps: 1 });
});
