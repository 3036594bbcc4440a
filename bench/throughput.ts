// Control-plane throughput, measured against the real `buildcloud serve` process (issue 13).
//
// Prints one JSON object (and writes it to bench/results/throughput.json) with the machine and the commit:
// - provisions/s, p50/p99 latency at concurrency 50, 1,000 requests, all jobs of one pipeline, over gRPC: with the
//   null driver (the control plane alone) and with the dockerd driver (one real builder shared by them all);
// - releases/s of those leases; the server's resident memory with the 1,000 leases open;
// - durable ingest records/s: 20,000 CloudEvents in batches of 500, 10% of them duplicates of earlier ones, 4
//   requests at a time, each acknowledged record committed before the reply (the duplicate count is checked exact);
// - the worst `/healthz` latency while that ingest runs (polled back to back);
// - a context of 200 MB in 2,000 files sent with `COPY . /ctx` to a builder through its mTLS front and to the same
//   builder's engine over its unix socket, interleaved rounds, fresh context directories each round (a directory
//   BuildKit has seen is synced incrementally).
// Ratios within one run are what to compare; absolute figures drift with whatever else runs on these machines.
// Env: BENCH_PROVISIONS (1000), BENCH_CONCURRENCY (50), BENCH_WARMUP (200: untimed provisions and releases first), BENCH_RECORDS (20000), BENCH_CONTEXT_MB (200),
// BENCH_CONTEXT_ROUNDS (6), BENCH_SKIP (comma list of: null, dockerd, ingest, context).
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { randomBytes, randomUUID } from 'crypto';
import { adminSetup, CLI, DOCKER, dockerEnvFor, requireBinaries, TestClient, type ServerProcess } from '../__tests__/helpers/server';
import { startServe } from '../harness/control-plane';
import { makeBusyboxContext } from '../__tests__/helpers/busybox-context';
import type { LeaseMsg } from '../src/contract/grpc';
import { commitOf, machine, resultsDir } from './run-info';

const PROVISIONS = Number(process.env.BENCH_PROVISIONS || 1000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 50);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 200);
const RECORDS = Number(process.env.BENCH_RECORDS || 20000);
const BATCH = 500;
const CONTEXT_MB = Number(process.env.BENCH_CONTEXT_MB || 200);
const CONTEXT_FILES = 2000;
const CONTEXT_ROUNDS = Number(process.env.BENCH_CONTEXT_ROUNDS || 6);
const SKIP = new Set((process.env.BENCH_SKIP || '').split(',').filter(Boolean));
// Every limit that would refuse a benchmark's load on purpose is off: what is measured is the work, not the refusal.
const UNLIMITED = ['--provision-rate', '0', '--record-rate', '0', '--max-records-per-lease', '0', '--max-records-per-org-day', '0', '--max-builders', '64'];

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
}
const median = (xs: number[]) => percentile(xs, 50);

/** Resident memory of a process, MB (VmRSS of /proc/<pid>/status). */
function rssMb(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? round(Number(m[1]) / 1024) : NaN;
}

/** CPU time a process has used so far, ms (utime + stime of /proc/<pid>/stat, in clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = fs
    .readFileSync(`/proc/${pid}/stat`, 'utf8')
    .replace(/^.*\) /, '')
    .split(' ');
  // After the command name: field 3 is state, so utime (14) and stime (15) are at indexes 11 and 12.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Runs `n` calls of `fn`, at most `concurrency` at once; returns each call's latency (ms) and the wall time. */
async function pool<T>(n: number, concurrency: number, fn: (i: number) => Promise<T>): Promise<{ latencies: number[]; wallMs: number; results: T[] }> {
  const latencies: number[] = new Array(n);
  const results: T[] = new Array(n);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= n) return;
        const t = performance.now();
        results[i] = await fn(i);
        latencies[i] = performance.now() - t;
      }
    })
  );
  return { latencies, wallMs: performance.now() - t0, results };
}

/** Mean of serve's provision latency histogram (seconds), from its Prometheus text at /metrics. */
async function serverProvisionSeconds(http: string): Promise<number> {
  const text = await (await fetch(`${http}/metrics`)).text();
  let sum = 0;
  let count = 0;
  for (const m of text.matchAll(/^buildcloud_provision_latency_seconds_(sum|count)\{[^}]*\} (\S+)$/gm)) {
    if (m[1] === 'sum') sum += Number(m[2]);
    else count += Number(m[2]);
  }
  return count ? sum / count : NaN;
}

interface ProvisionFigures {
  warmupProvisions: number;
  serverMeanMs: number;
  serverCpuMsPerProvision: number;
  clientCpuMsPerProvision: number;
  provisions: number;
  concurrency: number;
  provisionsPerSecond: number;
  provisionP50Ms: number;
  provisionP99Ms: number;
  rssWithLeasesOpenMb: number;
  rssBeforeMb: number;
  releasesPerSecond: number;
  releaseP50Ms: number;
  releaseP99Ms: number;
}

/** 1,000 provisions of one pipeline at concurrency 50, the server's memory with them open, then their releases. */
async function provisionFigures(server: ServerProcess, token: string, label: string): Promise<ProvisionFigures> {
  const c = new TestClient(server.info.grpc, token);
  try {
    // One provision first: the pipeline's builder exists before the timed requests (they all share it).
    const first = await c.provision({ pipelineKey: `bench/${label}`, jobId: 'warmup' });
    // Then WARMUP provisions and their releases, untimed: both processes' code is compiled by V8's optimising tier
    // before the timed run, as in a control plane that has been serving for a while.
    const warm = await pool(WARMUP, CONCURRENCY, (i) => c.provision({ pipelineKey: `bench/${label}`, jobId: `w${i}` }));
    await pool(WARMUP, CONCURRENCY, (i) => c.release(warm.results[i].id));
    const rssBefore = rssMb(server.info.pid);
    const cpu0 = { server: cpuMs(server.info.pid), bench: process.cpuUsage() };
    const p = await pool(PROVISIONS, CONCURRENCY, (i) => c.provision({ pipelineKey: `bench/${label}`, jobId: `j${i}` }));
    const builders = new Set(p.results.map((l) => l.builders[0]?.builderId));
    if (builders.size !== 1 || !builders.has(first.builders[0]?.builderId)) throw new Error(`expected one shared builder, got ${builders.size}`);
    const serverCpu = cpuMs(server.info.pid) - cpu0.server;
    const benchCpu = process.cpuUsage(cpu0.bench);
    const rss = rssMb(server.info.pid);
    const serverSide = await serverProvisionSeconds(server.info.http);
    const r = await pool(PROVISIONS, CONCURRENCY, (i) => c.release(p.results[i].id));
    await c.release(first.id);
    return {
      provisions: PROVISIONS,
      concurrency: CONCURRENCY,
      warmupProvisions: WARMUP,
      provisionsPerSecond: round(PROVISIONS / (p.wallMs / 1000)),
      provisionP50Ms: round(median(p.latencies)),
      provisionP99Ms: round(percentile(p.latencies, 99)),
      // The control plane's own time per provision (its buildcloud_provision_latency_seconds histogram, sum over
      // count, the warm-up included): what is left of the client's latency is queueing, gRPC and the client.
      serverMeanMs: round(serverSide * 1000),
      // CPU per provision (all threads): the control plane's, and this bench client's (gRPC on the same two cores).
      serverCpuMsPerProvision: round(serverCpu / PROVISIONS, 2),
      clientCpuMsPerProvision: round((benchCpu.user + benchCpu.system) / 1000 / PROVISIONS, 2),
      rssBeforeMb: rssBefore,
      rssWithLeasesOpenMb: rss,
      releasesPerSecond: round(PROVISIONS / (r.wallMs / 1000)),
      releaseP50Ms: round(median(r.latencies)),
      releaseP99Ms: round(percentile(r.latencies, 99))
    };
  } finally {
    c.close();
  }
}

function buildEvent(org: string, leaseId: string, n: number): object {
  return {
    specversion: '1.0',
    id: randomUUID(),
    source: '/buildcloud/bench',
    type: 'dev.buildcloud.build.completed',
    subject: org,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    data: {
      lease_id: leaseId,
      build_id: `b${n}`,
      platform: 'linux/amd64',
      status: 'success',
      duration_ms: 1000 + (n % 500),
      total_steps: 7,
      cached_steps: n % 7,
      cache_ratio: (n % 7) / 7
    }
  };
}

// The /healthz poller runs in a process of its own: the bench's own event loop (serialising 250 kB bodies, parsing
// the replies) would otherwise be timed as the server's. It polls back to back over one keep-alive connection
// until its stdin closes, then prints its latencies (ms) as JSON. Its first request (which opens the connection) is
// not timed; it writes a line once that one is answered, and the ingest starts after it.
const HEALTHZ_POLLER = `
const http = require('node:http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const times = [];
let done = false;
let first = true;
process.stdin.on('end', () => (done = true)).resume();
(function next() {
  if (done) return process.stdout.write(JSON.stringify(times));
  const t = performance.now();
  http.get(process.argv[1], { agent }, (res) => {
    res.resume().on('end', () => {
      if (first) process.stderr.write('ready\\n');
      else times.push(performance.now() - t);
      first = false;
      next();
    });
  }).on('error', (e) => { process.stderr.write(String(e)); process.exit(1); });
})();
`;

/** The server's longest event-loop stall since the previous call, ms (prom-client's nodejs_eventloop_lag_max_seconds,
 * which it resets at each scrape of /metrics). */
async function serverLagMaxMs(http: string): Promise<number> {
  const text = await (await fetch(`${http}/metrics`)).text();
  const m = /^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(text);
  return m ? round(Number(m[1]) * 1000) : NaN;
}

/** Worst and p99 latency of back-to-back GET /healthz (from a process of its own) while `work()` runs; the work starts
 * once the poller's connection is open. Resolves with both. */
async function healthzWhile<T>(http: string, work: () => Promise<T>): Promise<[{ worstMs: number; p99Ms: number; samples: number }, T]> {
  const child = spawn(process.execPath, ['-e', HEALTHZ_POLLER, `${http}/healthz`], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  await new Promise<void>((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d;
      if (err.startsWith('ready\n')) resolve();
    });
    child.on('close', () => reject(new Error(`the /healthz poller ended before its first answer: ${err}`)));
  });
  const until = work();
  await until.catch(() => undefined);
  child.stdin.end();
  if ((await exited) !== 0) throw new Error('the /healthz poller failed');
  const times = JSON.parse(out) as number[];
  return [{ worstMs: round(Math.max(...times)), p99Ms: round(percentile(times, 99)), samples: times.length }, await until];
}

/** 20,000 records, 10% of them resends of earlier ones, in batches of 500, 4 requests at a time. */
async function ingestFigures(server: ServerProcess, token: string, org: string): Promise<Record<string, unknown>> {
  const c = new TestClient(server.info.grpc, token);
  const leases: LeaseMsg[] = [];
  try {
    for (let i = 0; i < 4; i++) leases.push(await c.provision({ pipelineKey: `bench/ingest/${i}`, jobId: 'j' }));
    // Each batch: 450 new records and 50 resends of records sent before (of the previous batch; of its own in the
    // first), as a client whose reply was lost resends. Whatever order concurrent requests land in, each pair is
    // counted once accepted and once duplicate.
    const dupPerBatch = BATCH / 10;
    const batchCount = Math.round(RECORDS / BATCH);
    const batches: object[][] = [];
    let n = 0;
    for (let k = 0; k < batchCount; k++) {
      const fresh = Array.from({ length: BATCH - dupPerBatch }, () => buildEvent(org, leases[n % leases.length].id, n++));
      const from = k === 0 ? fresh : batches[k - 1];
      batches.push([...fresh, ...from.slice(0, dupPerBatch)]);
    }
    const unique = batchCount * (BATCH - dupPerBatch);
    const dupes = batchCount * dupPerBatch;
    const total = unique + dupes;
    let accepted = 0;
    let duplicate = 0;
    let other = 0;
    await serverLagMaxMs(server.info.http); // resets the server's lag maximum: what follows is the ingest's
    const send = () =>
      pool(batches.length, 4, async (i) => {
        const res = await fetch(`${server.info.http}/v1/events`, {
          method: 'POST',
          headers: { 'content-type': 'application/cloudevents-batch+json', authorization: `Bearer ${token}` },
          body: JSON.stringify(batches[i])
        });
        if (res.status !== 200) throw new Error(`POST /v1/events: ${res.status} ${await res.text()}`);
        const r = (await res.json()) as { accepted: number; duplicate: number; rejected: number; deferred: number; results: Array<{ reason?: string }> };
        if (r.rejected || r.deferred) throw new Error(`records refused: ${r.results.find((x) => x.reason)?.reason}`);
        accepted += r.accepted;
        duplicate += r.duplicate;
        other += r.rejected + r.deferred;
      });
    const [healthz, sent] = await healthzWhile(server.info.http, send);
    const lagMax = await serverLagMaxMs(server.info.http);
    return {
      records: total,
      batch: BATCH,
      concurrentRequests: 4,
      recordsPerSecond: round(total / (sent.wallMs / 1000)),
      accepted,
      duplicate,
      duplicatesSent: dupes,
      duplicatesExact: duplicate === dupes && accepted === unique && other === 0,
      healthzDuringIngest: healthz,
      // The server's own longest event-loop stall during the ingest (its monitorEventLoopDelay, 10 ms resolution).
      serverEventLoopMaxStallMs: lagMax
    };
  } finally {
    for (const l of leases) await c.release(l.id).catch(() => undefined);
    c.close();
  }
}

/** Writes `files` files of random bytes, `mb` MB in all, under `dir`/data (incompressible, as built artefacts are). */
function writeContext(dir: string, mb: number, files: number): void {
  const per = Math.floor((mb * 1024 * 1024) / files);
  for (let i = 0; i < files; i++) {
    const sub = path.join(dir, 'data', String(i % 20));
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, `f${i}.bin`), randomBytes(per));
  }
}

/** The engine socket of `builderId`, from serve's log ("starting dockerd" names the builder and its run dir). */
function engineSocket(server: ServerProcess, builderId: string): string {
  for (const line of server.stderr().split('\n')) {
    if (!line.includes('"starting dockerd"')) continue;
    try {
      const j = JSON.parse(line) as { builder?: string; runDir?: string };
      if (j.builder === builderId && j.runDir) return path.join(j.runDir, 'docker.sock');
    } catch {
      // not a log line of ours
    }
  }
  throw new Error(`no "starting dockerd" log line for builder ${builderId}`);
}

function timedBuild(env: NodeJS.ProcessEnv, ctx: string): number {
  const t = performance.now();
  const r = spawnSync(DOCKER, ['build', '--progress=plain', '-t', `bench-ctx:${path.basename(ctx)}`, ctx], {
    env,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024
  });
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`docker build ${ctx} failed: ${(r.stdout + r.stderr).slice(-2000)}`);
  return ms;
}

/** The first upload of a 200 MB / 2,000-file context, through the builder's mTLS front and over its unix socket. */
async function contextFigures(server: ServerProcess, token: string, work: string): Promise<Record<string, unknown>> {
  const c = new TestClient(server.info.grpc, token);
  const lease = await c.provision({ pipelineKey: 'bench/context', jobId: 'j' });
  try {
    const viaFront = dockerEnvFor(lease, path.join(work, 'client'));
    const socket = engineSocket(server, lease.builders[0].builderId);
    const viaSocket: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: work, DOCKER_BUILDKIT: '1', DOCKER_HOST: `unix://${socket}` };
    // The base image: a busybox rootfs built once (a FROM scratch image: nothing to pull).
    const base = path.join(work, 'base');
    await makeBusyboxContext(base, '');
    execFileSync(DOCKER, ['build', '-q', '-t', 'bench-base:1', base], { env: viaSocket });
    const seed = path.join(work, 'seed');
    writeContext(seed, CONTEXT_MB, CONTEXT_FILES);
    fs.writeFileSync(path.join(seed, 'Dockerfile'), 'FROM bench-base:1\nCOPY . /ctx\n');
    const front: number[] = [];
    const local: number[] = [];
    for (let i = 0; i < CONTEXT_ROUNDS; i++) {
      // Fresh directories each round, the same bytes: each is a first upload for BuildKit's file sync. The order
      // alternates between rounds, and dirty pages are written out before each timed build (`sync`): each build
      // writes 200 MB into the engine's data root, and its writeback would otherwise land in the next one's time.
      const pair = [
        [`front-${i}`, viaFront, front],
        [`local-${i}`, viaSocket, local]
      ] as const;
      for (const [name, env, out] of i % 2 === 0 ? pair : [...pair].reverse()) {
        const ctx = path.join(work, name);
        execFileSync('cp', ['-a', seed, ctx]);
        // A new line in the Dockerfile per directory: COPY runs again (not cached), as a changed context would.
        fs.appendFileSync(path.join(ctx, 'Dockerfile'), `LABEL round=${name}\n`);
        execFileSync('sync');
        out.push(timedBuild(env, ctx));
        fs.rmSync(ctx, { recursive: true, force: true });
      }
    }
    return {
      contextMb: CONTEXT_MB,
      files: CONTEXT_FILES,
      rounds: CONTEXT_ROUNDS,
      viaFrontMs: front.map((x) => Math.round(x)),
      viaUnixSocketMs: local.map((x) => Math.round(x)),
      frontOverSocket: round(median(front) / median(local), 2)
    };
  } finally {
    await c.release(lease.id).catch(() => undefined);
    c.close();
  }
}

// BENCH_SERVE_NODE_ARGS: node options for serve, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" (a profile per server).
const SERVE_NODE_ARGS = (process.env.BENCH_SERVE_NODE_ARGS || '').split(' ').filter(Boolean);

async function withServer<T>(args: string[], org: string, fn: (s: ServerProcess, token: string) => Promise<T>): Promise<T> {
  requireBinaries();
  const server = await startServe(CLI, fs.mkdtempSync(path.join(os.tmpdir(), 'bc-bench-')), [...UNLIMITED, ...args], { nodeArgs: SERVE_NODE_ARGS });
  try {
    return await fn(server, adminSetup(server.stateDir, org, 1_000_000));
  } finally {
    await server.stop();
    fs.rmSync(server.stateDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-bench-throughput-'));
  const result: Record<string, unknown> = {
    bench: 'throughput',
    machine: machine(),
    commit: commitOf(process.env.BUILDCLOUD_ROOT || process.cwd(), ['src', 'bench']),
    when: new Date().toISOString()
  };
  try {
    if (!SKIP.has('null')) result.nullDriver = await withServer(['--driver', 'null', '--warm-pool', '0'], 'bench', (s, t) => provisionFigures(s, t, 'null'));
    if (!SKIP.has('dockerd')) result.dockerdDriver = await withServer(['--warm-pool', '0'], 'bench', (s, t) => provisionFigures(s, t, 'dockerd'));
    if (!SKIP.has('ingest')) result.ingest = await withServer(['--driver', 'null', '--warm-pool', '0'], 'bench', (s, t) => ingestFigures(s, t, 'bench'));
    if (!SKIP.has('context')) result.context = await withServer(['--warm-pool', '0'], 'bench', (s, t) => contextFigures(s, t, work));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  result.loadavgAfter = os.loadavg().map((x) => round(x, 2));
  const json = JSON.stringify(result, null, 2);
  process.stdout.write(json + '\n');
  fs.writeFileSync(path.join(resultsDir(), 'throughput.json'), json + '\n');
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
