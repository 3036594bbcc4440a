// What a start does about the previous run on the same state directory. Called with the state dir's lock held
// (state-lock.ts), so nothing found here can belong to a live control plane: a previous run that did not stop
// cleanly (SIGKILL, OOM, power loss) left its embedded registry running and its server.json naming ports nobody
// listens on. Its builders are the driver's to reap (Driver.cleanupOrphans) and its leases the lease manager's
// to end (LeaseManager.recover), at the last sign of life this module finds for them; it stops the rest and says
// what it found.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from './log';
import type { LockHolder } from './state-lock';
import type { Store } from './store/store';
import { listProcs, stopProcesses } from './drivers/host-processes';

/** What the previous run left and this start removed. */
export interface PreviousRun {
  crashed: boolean; // the lock was taken over from a holder that no longer runs
  previousPid: number | null;
  registryProcesses: number; // embedded registries of this state dir still running, stopped
  serverInfoRemoved: boolean; // a server.json of the previous run, naming dead ports
}

/** The embedded registry's config file: every registry this state dir started names it on its command line. */
export function registryConfigPath(stateDir: string): string {
  return path.join(stateDir, 'registry', 'registry-config.json');
}

/**
 * Stops every process of the previous run of `stateDir` that serve itself started outside its builders (the
 * embedded registry, detached so it outlives a killed serve) and removes its server.json. `previous` is the stale
 * lock's holder (null: the lock was free, the previous run stopped cleanly or there was none). Failures warn: a
 * leftover must not keep the control plane from starting.
 */
export async function reapPreviousRun(stateDir: string, serverInfoFile: string, previous: LockHolder | null, log: Logger): Promise<PreviousRun> {
  const out: PreviousRun = { crashed: previous !== null, previousPid: previous?.pid ?? null, registryProcesses: 0, serverInfoRemoved: false };
  if (previous)
    log.warn({ pid: previous.pid, since: previous.startedAt }, 'the previous serve on this state directory did not stop cleanly: reaping what it left');
  const config = registryConfigPath(stateDir);
  const registries = [...(await listProcs(false)).values()].filter((p) => p.pid !== process.pid && p.args.includes(config));
  for (const p of registries) {
    try {
      await stopProcesses(p.pid, false, { paths: [config], execIds: [] }, log);
      out.registryProcesses++;
    } catch (err) {
      log.warn({ pid: p.pid, err: String(err) }, 'a registry the previous run left could not be stopped');
    }
  }
  if (fs.existsSync(serverInfoFile)) {
    fs.rmSync(serverInfoFile, { force: true });
    out.serverInfoRemoved = true;
  }
  if (out.registryProcesses) log.warn({ processes: out.registryProcesses }, 'stopped the embedded registry the previous run left running');
  return out;
}

// Usage records are looked up by their event time (the runner's clock): this much either side of the lease's life.
const CLOCK_SKEW_MS = 3600_000;

/**
 * The leases a previous run left active, with their last sign of life brought up to date. The store's
 * last_active_at is written at most every 5 s of builder traffic (leases.ts), so a lease whose traffic was short
 * may show none at all; a usage record the server received for the lease (a build's record is sent when the build
 * ends) is a later sign of life. Each such lease's last activity moves up to its latest record's arrival (the
 * server's clock, never later than `now`), so that LeaseManager.recover, which ends them at their last activity,
 * bills what the server saw. Returns how many leases moved.
 */
export async function updateLastSignsOfLife(store: Store, now: number): Promise<number> {
  const active = await store.activeLeases();
  const byOrg = new Map<string, typeof active>();
  for (const l of active) byOrg.set(l.org, [...(byOrg.get(l.org) ?? []), l]);
  let moved = 0;
  for (const [org, leases] of byOrg) {
    const since = Math.min(...leases.map((l) => l.createdAt)) - CLOCK_SKEW_MS;
    const latest = new Map<string, number>();
    for (const r of await store.usageRecords(org, since, now + CLOCK_SKEW_MS)) {
      if (r.leaseId && r.receivedAt > (latest.get(r.leaseId) ?? 0)) latest.set(r.leaseId, r.receivedAt);
    }
    for (const l of leases) {
      const seen = Math.min(latest.get(l.id) ?? 0, now);
      if (seen > l.lastActiveAt) {
        await store.touchLease(l.id, seen);
        moved++;
      }
    }
  }
  return moved;
}
