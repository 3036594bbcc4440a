// Builder provisioning and cache reuse, measured against the real control plane process.
// Prints one JSON object: cold vs warm provision latency, and cold vs cached vs cache-imported build times.
// Ratios within one run are what to compare; absolute times drift on shared machines.
// Cold provisioning is measured for each builder isolation mode (rootful and user-namespaced engines) in one run.
// Writes the same JSON to bench/results/provision.json (the latest run; docs/benchmarks.md quotes it).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, docker, dockerEnvFor, startServer, TestClient, type ServerProcess } from '../__tests__/helpers/server';
import { makeBusyboxContext } from '../__tests__/helpers/busybox-context';
import type { LeaseMsg } from '../src/contract/grpc';
import { commitOf, machine } from './run-info';

const ROUNDS = Number(process.env.BENCH_ROUNDS || 5);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

async function provisionTimes(server: ServerProcess, token: string, label: string): Promise<number[]> {
  const c = new TestClient(server.info.grpc, token);
  const times: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t = performance.now();
    const l = await c.provision({ pipelineKey: `bench/${label}/${i}`, jobId: 'j' });
    times.push(performance.now() - t);
    await c.release(l.id);
    // Let the pool refill before the next round, so each warm round really measures a warm start.
    if (label === 'warm') await waitForWarm(server);
  }
  c.close();
  return times;
}

async function waitForWarm(server: ServerProcess): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const m = await (await fetch(`${server.info.http}/metrics`)).text();
    if (Number(/^buildcloud_warm_builders (\d+)/m.exec(m)?.[1] ?? 0) >= 1) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function timedBuild(lease: LeaseMsg, dir: string, context: string): { ms: number; ok: boolean } {
  const env = dockerEnvFor(lease, dir);
  const args = ['build', '--progress=plain', '--build-arg', 'BUILDKIT_INLINE_CACHE=1', '-t', lease.cache!.exportRef];
  for (const r of lease.cache!.importRefs) args.push('--cache-from', r);
  const t = performance.now();
  const b = docker([...args, '.'], env, context);
  const ms = performance.now() - t;
  const p = docker(['push', lease.cache!.exportRef], env);
  return { ms, ok: b.status === 0 && p.status === 0 };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-bench-'));
  const result: Record<string, unknown> = {
    bench: 'provision',
    machine: { ...machine(), dockerd: dockerdVersion() },
    commit: commitOf(process.env.BUILDCLOUD_ROOT || process.cwd(), ['src', 'bench']),
    when: new Date().toISOString(),
    rounds: ROUNDS
  };

  const coldByMode: Record<string, number[]> = {};
  for (const mode of ['none', 'userns']) {
    const cold = await startServer(['--warm-pool', '0', '--grace', '0s', '--builder-isolation', mode]);
    const coldToken = adminSetup(cold.stateDir, 'bench', 1000);
    coldByMode[mode] = await provisionTimes(cold, coldToken, `cold-${mode}`);
    await cold.stop();
    fs.rmSync(cold.stateDir, { recursive: true, force: true });
  }
  const coldTimes = coldByMode.none;

  const warm = await startServer(['--warm-pool', '1', '--grace', '0s']);
  const warmToken = adminSetup(warm.stateDir, 'bench', 1000);
  await waitForWarm(warm);
  const warmTimes = await provisionTimes(warm, warmToken, 'warm');

  const ctx = path.join(work, 'ctx');
  fs.mkdirSync(ctx);
  await makeBusyboxContext(ctx, 'RUN for i in 1 2 3; do echo $i >> /deps; sleep 1; done\nRUN cat /deps > /out && sleep 1');
  const c = new TestClient(warm.info.grpc, warmToken);
  const l1 = await c.provision({ pipelineKey: 'bench/build/1', jobId: 'j' });
  const coldBuild = timedBuild(l1, path.join(work, 'b1'), ctx);
  const cachedBuild = timedBuild(l1, path.join(work, 'b2'), ctx);
  await c.release(l1.id);
  const l2 = await c.provision({ pipelineKey: 'bench/build/2', jobId: 'j' });
  const importedBuild = timedBuild(l2, path.join(work, 'b3'), ctx);
  await c.release(l2.id);
  c.close();
  await warm.stop();

  result.provisionMs = {
    cold: { median: Math.round(median(coldTimes)), max: Math.round(Math.max(...coldTimes)), all: coldTimes.map(Math.round) },
    warm: { median: Math.round(median(warmTimes)), max: Math.round(Math.max(...warmTimes)), all: warmTimes.map(Math.round) },
    coldOverWarm: +(median(coldTimes) / median(warmTimes)).toFixed(1),
    coldByIsolation: Object.fromEntries(
      Object.entries(coldByMode).map(([mode, t]) => [mode, { median: Math.round(median(t)), max: Math.round(Math.max(...t)), all: t.map(Math.round) }])
    ),
    usernsOverNone: +(median(coldByMode.userns) / median(coldByMode.none)).toFixed(2),
    target: { coldStartMaxMs: 3000, coldMedianMaxMs: 1000 }
  };
  result.buildMs = {
    cold: Math.round(coldBuild.ms),
    cachedSameBuilder: Math.round(cachedBuild.ms),
    cacheImportedFreshBuilder: Math.round(importedBuild.ms),
    importedOverCold: +(importedBuild.ms / coldBuild.ms).toFixed(2),
    allSucceeded: coldBuild.ok && cachedBuild.ok && importedBuild.ok
  };
  fs.rmSync(work, { recursive: true, force: true });
  const json = JSON.stringify(result, null, 2) + '\n';
  fs.mkdirSync(path.join(__dirname_, 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname_, 'results', 'provision.json'), json);
  process.stdout.write(json);
}

// The bundle runs from a temp dir (scripts/run-ts.mjs): find bench/ from the checkout it was started in.
const __dirname_ = path.join(process.env.BUILDCLOUD_ROOT || process.cwd(), 'bench');

function dockerdVersion(): string {
  try {
    return execFileSync('dockerd', ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
