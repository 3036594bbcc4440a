// Builder health under faults (issue 14), against the real `buildcloud serve`, its real dockerd builders and org
// cache, and the runner CLI run as a shell CI job runs it (setup, build, report, each its own process):
// 1. a warm builder's dockerd killed (SIGKILL) before any lease has it: the next provision gets a healthy builder
//    and builds; the dead one is cleaned up;
// 2. a leased builder's dockerd killed mid-build: the job fails with one platform error, the server ends the lease
//    (builder_lost, billing stops at the loss), the builder is cleaned up, the pipeline's next job gets a new
//    builder and succeeds;
// 3. the runner killed (SIGKILL of its process group, as a CI cancels a job) mid-build, and mid-report: the lease
//    is reaped within the idle timeout, billed up to its last activity plus the idle timeout (docs/metering.md),
//    and nothing of it stays on the host (dockerd, data root, run dir, bridge, iptables rules, engine cgroup, a
//    file holding the lease's certificate).
import { spawn, spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, waitFor, CLI, DOCKER, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { processesMentioning } from '../helpers/host-state';
import { reportScenario } from '../helpers/reliability';

const IDLE_S = 6;
const NONCE = `${process.pid}-${Date.now()}`;
const LOST = /the builder was lost during the build \(a platform failure, not your Dockerfile\)/;

let server: ServerProcess;
let client: TestClient;
let token: string;
let work: string;

/** serve's JSON log lines so far (others skipped). */
function logLines(): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const l of server.stderr().split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l));
    } catch {
      // a partial line
    }
  }
  return out;
}
const logged = (msg: string, match: Record<string, unknown> = {}) =>
  logLines().filter((l) => l.msg === msg && Object.entries(match).every(([k, v]) => JSON.stringify(l[k]) === JSON.stringify(v)));

/** What a builder made on the host, from serve's own log ("starting dockerd" names it; "dockerd ready" its pid). */
interface BuilderHost {
  builder: string;
  bridge: string;
  runDir: string;
  dataRoot: string;
  pid: number;
}
async function builderHost(id: string): Promise<BuilderHost> {
  const ready = await waitFor(`dockerd ready for ${id}`, async () => logged('dockerd ready', { builder: id })[0]);
  const start = logged('starting dockerd', { builder: id })[0];
  return { builder: id, bridge: String(start.bridge), runDir: String(start.runDir), dataRoot: String(start.dataRoot), pid: Number(ready.pid) };
}

/** The builder ids a lease got, from serve's "lease provisioned" line. */
const buildersOf = async (lease: string): Promise<string[]> =>
  (await waitFor(`lease ${lease} in serve's log`, async () => logged('lease provisioned', { lease })[0])).builders as string[];

function filesHolding(dirs: string[], needle: string): string[] {
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && fs.statSync(p).size < 4 << 20 && fs.readFileSync(p).includes(needle)) found.push(p);
    }
  };
  for (const d of dirs) if (fs.existsSync(d)) walk(d);
  return found;
}

/**
 * What of builder `b` (and of the lease whose client cert is `certPem`, when given) is still on the host: processes,
 * directories, the bridge, iptables rules naming it, its engine cgroup, server-side files holding the cert.
 */
function leftovers(b: BuilderHost, certPem?: string): string[] {
  const left: string[] = processesMentioning([b.runDir, b.dataRoot]).map((p) => `process ${p}`);
  for (const d of [b.runDir, b.dataRoot, path.join(server.stateDir, 'builders', b.builder)]) if (fs.existsSync(d)) left.push(`dir ${d}`);
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout;
  if (links.split('\n').some((l) => l.split(': ')[1]?.split('@')[0] === b.bridge)) left.push(`bridge ${b.bridge}`);
  const rules = spawnSync('iptables-save', [], { encoding: 'utf8' });
  if (rules.status !== 0) throw new Error(`iptables-save failed: ${rules.stderr}`);
  for (const r of rules.stdout.split('\n').filter((l) => l.includes(b.bridge))) left.push(`iptables ${r}`);
  for (const cg of [`/sys/fs/cgroup/unified/buildcloud/${b.bridge}`, `/sys/fs/cgroup/buildcloud/${b.bridge}`]) if (fs.existsSync(cg)) left.push(`cgroup ${cg}`);
  if (certPem) {
    const body = certPem.split('\n')[1]; // a line of the certificate's base64: in any file that holds it
    for (const f of filesHolding([server.stateDir, path.dirname(b.runDir)], body)) left.push(`cert file ${f}`);
  }
  return left;
}

/** A shell CI job's environment: nothing of this test's own process leaks in. */
function jobEnv(pipeline: string, job: string, endpoint = server.info.grpc): NodeJS.ProcessEnv {
  const home = path.join(work, `${pipeline}-${job}`);
  fs.mkdirSync(home, { recursive: true });
  return {
    PATH: process.env.PATH,
    HOME: home,
    RUNNER_TEMP: home,
    BUILDCLOUD_ENDPOINT: endpoint,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/health',
    BUILDCLOUD_BRANCH: 'main',
    BUILDCLOUD_DEFAULT_BRANCH: 'main',
    BUILDCLOUD_PIPELINE_ID: `${pipeline}-${NONCE}`,
    BUILDCLOUD_JOB_ID: job,
    BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
    BUILDCLOUD_DOCKER: DOCKER
  };
}

/**
 * A runner step to completion. Never spawnSync: this process must keep serving its relay and reading serve's
 * stderr (a full pipe would stall serve's logging, and with it serve) while the step runs.
 */
function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { env, cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => proc.once('close', (status) => resolve({ status, stdout, stderr })));
}

/** setup --json as the job runs it; its env afterwards (what setup exported on top), the lease id and its cert. */
async function setup(env: NodeJS.ProcessEnv): Promise<{ env: NodeJS.ProcessEnv; lease: string; certPem: string }> {
  const r = await run(['setup', '--json'], env);
  if (r.status !== 0) throw new Error(`setup exited ${r.status}:\n${r.stderr}`);
  const json = JSON.parse(r.stdout);
  const next = { ...env, ...json.env };
  return { env: next, lease: json.outputs['lease-id'], certPem: fs.readFileSync(path.join(next.DOCKER_CERT_PATH!, 'cert.pem'), 'utf8') };
}

/** A runner step in its own process group (a CI kills the job's whole tree), its stderr collected. */
function startStep(args: string[], env: NodeJS.ProcessEnv): { proc: ChildProcess; stderr: () => string; exit: Promise<number | string | null> } {
  const proc = spawn(process.execPath, [CLI, ...args], { env, cwd: work, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  proc.stdout!.resume();
  const exit = new Promise<number | string | null>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal)));
  return { proc, stderr: () => err, exit };
}

/** A gRPC relay to the control plane that can stop forwarding: a report's Release then hangs in flight. */
class Relay {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  hold = false;
  held = 0; // connections accepted while holding
  constructor(private readonly target: string) {
    this.server = net.createServer((sock) => {
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      sock.on('error', () => undefined);
      if (this.hold) return void this.held++;
      const [host, port] = this.target.split(':');
      const up = net.connect(Number(port), host);
      this.sockets.add(up);
      up.on('error', () => sock.destroy());
      sock.on('close', () => up.destroy());
      sock.pipe(up).pipe(sock);
    });
  }
  listen(): Promise<string> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${(this.server.address() as net.AddressInfo).port}`)));
  }
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('builder-health reliability tests must run as root (dockerd, ip link, iptables)');
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-health-'));
  await makeBusyboxContext(path.join(work, 'quick'), `RUN echo ${NONCE} > /ok.txt`);
  await makeBusyboxContext(path.join(work, 'slow'), `RUN echo bc-step-started-${NONCE} && sleep 120`);
  server = await startServer(['--warm-pool', '1', '--idle-timeout', `${IDLE_S}s`, '--grace', '1s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  client = new TestClient(server.info.grpc, token);
});

afterAll(async () => {
  client?.close();
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('a warm builder whose dockerd was killed is never handed out: the next job gets a healthy one and builds', async () => {
  const warmId = await waitFor('a warm builder', async () => logged('dockerd ready')[0]?.builder as string | undefined, 60_000);
  const dead = await builderHost(warmId);
  process.kill(dead.pid, 'SIGKILL');
  const t0 = Date.now();
  const job = await setup(jobEnv('warm-killed', 'build'));
  const setupMs = Date.now() - t0;
  const got = await buildersOf(job.lease);
  const b = await run(['build', '--context', 'quick'], job.env);
  const r = await run(['report'], job.env);
  const gone = await waitFor(`the killed builder ${dead.builder} cleaned up`, async () => leftovers(dead).length === 0 || null, 30_000).catch(() => false);
  const left = leftovers(dead);
  reportScenario({
    scenario: 'warm builder dockerd killed before a lease',
    injected: "SIGKILL to a warm builder's dockerd (pid from serve's log), then a job's setup, build and report",
    checked: 'the lease got another builder; the build and report succeeded; the dead builder left nothing on the host',
    figures: {
      buildsOk: b.status === 0 ? 1 : 0,
      buildsFailed: b.status === 0 ? 0 : 1,
      setupMs,
      leftovers: left.length,
      deadBuilderHandedOut: got.includes(dead.builder),
      lostBecause: String(logged('builder lost', { builder: dead.builder })[0]?.why ?? 'not logged')
    }
  });
  expect(got).toHaveLength(1);
  expect(got).not.toContain(dead.builder);
  expect({ status: b.status, stderr: b.stderr }).toMatchObject({ status: 0 }); // on failure, shows its stderr
  expect(r.status).toBe(0);
  expect(gone).toBe(true);
  expect(left).toEqual([]);
});

// A hung engine does not exit, so only the probe before the hand-out can catch it: SIGSTOP freezes dockerd.
test('a warm builder whose dockerd hangs (SIGSTOP) is not handed out: the probe replaces it, the job builds', async () => {
  const warmId = await waitFor(
    'a warm builder',
    async () => {
      const taken = new Set([...logged('lease provisioned').flatMap((l) => l.builders as string[]), ...logged('destroying builder').map((l) => l.builder)]);
      return logged('dockerd ready')
        .map((l) => l.builder as string)
        .find((id) => !taken.has(id));
    },
    60_000
  );
  const hung = await builderHost(warmId);
  process.kill(hung.pid, 'SIGSTOP');
  const job = await setup(jobEnv('warm-hung', 'build'));
  const got = await buildersOf(job.lease);
  const b = await run(['build', '--context', 'quick'], job.env);
  const r = await run(['report'], job.env);
  // A stopped dockerd ignores SIGTERM: the destroy waits for it, then kills it (host-processes.ts, 20 s).
  const gone = await waitFor(`the hung builder ${hung.builder} cleaned up`, async () => leftovers(hung).length === 0 || null, 60_000).catch(() => false);
  const left = leftovers(hung);
  reportScenario({
    scenario: 'warm builder dockerd hung before a lease',
    injected: "SIGSTOP to a warm builder's dockerd (alive, never answering), then a job's setup, build and report",
    checked:
      'the probe before the hand-out found it unresponsive: the lease got another builder; build and report succeeded; the hung builder left nothing on the host',
    figures: {
      buildsOk: b.status === 0 ? 1 : 0,
      buildsFailed: b.status === 0 ? 0 : 1,
      leftovers: left.length,
      hungBuilderHandedOut: got.includes(hung.builder),
      lostBecause: String(logged('builder lost', { builder: hung.builder })[0]?.why ?? 'not logged')
    }
  });
  expect(got).toHaveLength(1);
  expect(got).not.toContain(hung.builder);
  expect(logged('builder lost', { builder: hung.builder })[0]?.why).toMatch(/unresponsive \(probed before a hand-out\)/);
  expect({ status: b.status, stderr: b.stderr }).toMatchObject({ status: 0 }); // on failure, shows its stderr
  expect(r.status).toBe(0);
  expect(gone).toBe(true);
  expect(left).toEqual([]);
});

test("a builder's dockerd killed mid-build: one platform error, the lease ended, the pipeline's next job builds on a new builder", async () => {
  const job1 = await setup(jobEnv('lost-mid-build', 'one'));
  const [builderId] = await buildersOf(job1.lease);
  const host = await builderHost(builderId);
  const created = (await client.get(job1.lease)).createdAtMs; // a heartbeat, before anything is measured
  const step = startStep(['build', '--context', 'slow'], job1.env);
  await waitFor('the build inside its long RUN step', async () => step.stderr().includes(`bc-step-started-${NONCE}`), 120_000);
  const killedAt = Date.now();
  process.kill(host.pid, 'SIGKILL');
  const exit = await step.exit;
  const ended = await waitFor('the lease ended by the server', async () => {
    const l = await client.get(job1.lease);
    return l.state !== 'LEASE_STATE_ACTIVE' && l;
  });
  const report1 = await run(['report'], job1.env);
  const cleaned = await waitFor(`builder ${builderId} cleaned up`, async () => leftovers(host).length === 0 || null, 30_000).catch(() => false);
  const left = leftovers(host);
  const job2 = await setup(jobEnv('lost-mid-build', 'two'));
  const next = await buildersOf(job2.lease);
  const b2 = await run(['build', '--context', 'quick'], job2.env);
  const r2 = await run(['report'], job2.env);
  const billedExpected = (killedAt - created) / 1000;
  const errorLines = step
    .stderr()
    .split('\n')
    .filter((l) => /^buildcloud: /.test(l));
  reportScenario({
    scenario: 'builder dockerd killed mid-build',
    injected: "SIGKILL to the leased builder's dockerd while the job's build ran a RUN step; then the job's report and the pipeline's next job",
    checked:
      'the build failed with one error saying the builder was lost (a platform failure); the server ended the lease (builder_lost) and billed it up to the loss; the builder left nothing on the host; the next job got a new builder and built',
    figures: {
      buildsOk: b2.status === 0 ? 1 : 0,
      buildsFailed: (exit === 0 ? 0 : 1) + (b2.status === 0 ? 0 : 1),
      failedBuildExit: String(exit),
      endReason: ended.endReason ?? '',
      billedSeconds: ended.billedSeconds,
      secondsToLoss: Math.round(billedExpected),
      leftovers: left.length,
      nextJobSameBuilder: next.includes(builderId)
    }
  });
  expect(typeof exit === 'number' && exit !== 0).toBe(true);
  expect(step.stderr()).toMatch(LOST);
  expect(errorLines).toHaveLength(1);
  expect(ended).toMatchObject({ state: 'LEASE_STATE_EXPIRED', endReason: 'builder_lost' });
  expect(ended.endMessage).toMatch(/a platform failure, not your Dockerfile/);
  expect(Math.abs(ended.billedSeconds - billedExpected)).toBeLessThanOrEqual(3);
  expect(report1.status).toBe(0);
  expect(cleaned).toBe(true);
  expect(left).toEqual([]);
  expect(next).toHaveLength(1);
  expect(next).not.toContain(builderId);
  expect({ status: b2.status, stderr: b2.stderr }).toMatchObject({ status: 0 }); // on failure, shows its stderr
  expect(r2.status).toBe(0);
});

// Reaped within the idle timeout; billed up to the last activity plus the idle timeout, never up to the reap;
// then the builder's grace (1 s) ends and nothing of the lease stays on the host.
async function expectReapedAndClean(
  scenario: string,
  injected: string,
  lease: string,
  certPem: string,
  host: BuilderHost,
  lastActivity: { from: number; to: number },
  extra: Record<string, number | string | boolean>
): Promise<void> {
  const reaped = await waitFor(`lease ${lease} reaped`, async () => logged('reaping abandoned lease', { lease })[0], (IDLE_S + 30) * 1000);
  const reapedAt = Date.now();
  const ended = await client.get(lease); // ended: not a heartbeat
  const cleaned = await waitFor(`lease ${lease}'s builder cleaned up`, async () => leftovers(host, certPem).length === 0 || null, 30_000).catch(() => false);
  const left = leftovers(host, certPem);
  const created = ended.createdAtMs;
  const min = (lastActivity.from - created) / 1000 + IDLE_S;
  const max = (lastActivity.to - created) / 1000 + IDLE_S;
  reportScenario({
    scenario,
    injected,
    checked: `the lease was reaped (idle) within the idle timeout (${IDLE_S} s) of its last activity, billed up to then, and nothing of it stayed on the host`,
    figures: {
      ...extra,
      endReason: ended.endReason ?? '',
      billedSeconds: ended.billedSeconds,
      billedExpectedMin: Math.floor(min),
      billedExpectedMax: Math.ceil(max),
      reapedAfterLastActivityS: Math.round((reapedAt - lastActivity.to) / 1000),
      leftovers: left.length
    }
  });
  expect(reaped.reason).toBe('idle');
  expect(ended).toMatchObject({ state: 'LEASE_STATE_EXPIRED', endReason: 'idle' });
  expect(ended.billedSeconds).toBeGreaterThanOrEqual(Math.floor(min) - 1);
  expect(ended.billedSeconds).toBeLessThanOrEqual(Math.ceil(max) + 1);
  expect(reapedAt - lastActivity.to).toBeLessThan((IDLE_S + 5) * 1000);
  expect(cleaned).toBe(true);
  expect(left).toEqual([]);
}

test('the runner killed mid-build: the lease is reaped within the idle timeout, billing stops there, nothing left', async () => {
  const job = await setup(jobEnv('runner-killed-build', 'one'));
  const [builderId] = await buildersOf(job.lease);
  const host = await builderHost(builderId);
  const step = startStep(['build', '--context', 'slow'], job.env);
  await waitFor('the build inside its long RUN step', async () => step.stderr().includes(`bc-step-started-${NONCE}`), 120_000);
  const from = Date.now();
  process.kill(-step.proc.pid!, 'SIGKILL'); // the job's process group: the CLI and the docker client it runs
  const exit = await step.exit;
  const to = Date.now();
  expect(exit).toBe('SIGKILL');
  await expectReapedAndClean(
    'runner killed mid-build',
    "SIGKILL to the runner's build step (its process group: the CLI and docker) inside a long RUN step",
    job.lease,
    job.certPem,
    host,
    { from, to },
    { buildsOk: 0, buildsFailed: 1 }
  );
});

test('the runner killed mid-report: the lease is reaped within the idle timeout, billing stops there, nothing left', async () => {
  const relay = new Relay(server.info.grpc);
  const endpoint = await relay.listen();
  try {
    const job = await setup(jobEnv('runner-killed-report', 'one', endpoint));
    const [builderId] = await buildersOf(job.lease);
    const host = await builderHost(builderId);
    const from = Date.now(); // the build's last traffic to the builder comes after this, and before the report
    const b = await run(['build', '--context', 'quick'], job.env);
    expect({ status: b.status, stderr: b.stderr }).toMatchObject({ status: 0 }); // on failure, shows its stderr
    relay.hold = true; // the report's Release reaches the relay and goes no further
    const step = startStep(['report'], job.env);
    await waitFor("the report's Release in flight", async () => relay.held > 0, 60_000);
    process.kill(-step.proc.pid!, 'SIGKILL');
    const exit = await step.exit;
    const to = Date.now();
    expect(exit).toBe('SIGKILL');
    await expectReapedAndClean(
      'runner killed mid-report',
      "SIGKILL to the runner's report step (its process group) while its Release was in flight (held by a relay)",
      job.lease,
      job.certPem,
      host,
      { from, to },
      { buildsOk: 1, buildsFailed: 0 }
    );
  } finally {
    await relay.close();
  }
});
