// The org cache's storage, kept bounded by the control plane itself while it serves (issue 14): retention
// (cache-retention.ts) and a garbage collection of blobs, run every --cache-gc-interval and soon after cache pushes
// land, and the per-org quota the registry proxy enforces (CacheWriteGate).
//
// Why not `docker-registry garbage-collect`: it must run with the registry stopped or read-only, and any blob
// uploaded between its mark and its sweep is lost. Here the registry keeps serving: reads are never held; only
// manifest PUTs wait, for the few milliseconds of the mark and sweep (measured: pauseMs in the 'org cache gc' log
// line). Blobs no manifest references are deleted only when older than --cache-gc-grace, which keeps the layers of a
// push under way (uploaded before its manifest). The registry runs without its blob descriptor cache (registry.ts),
// so it never says a deleted blob exists.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from './log';
import { listBlobs, readInventory, removeDanglingLayerLinks, removeRevision, removeTag, v2Dir, blobDir } from './cache-inventory';
import { orgOf, planRetention, quotaMessage, type OrgStorage, type RetentionPlan } from './cache-retention';

/** Retention and GC settings (serve's --cache-* flags; defaults in config.ts DEFAULT_CACHE_STORAGE). */
export interface CacheStorageSettings {
  keepPerTag: number; // --cache-keep: images kept per scope and branch
  expireMs: number; // --cache-expire-days, in ms: a branch not built for this long loses its cache (0: never)
  quotaBytes: number; // --cache-quota: each org's default quota in bytes (0: none); `admin cache quota` overrides
  intervalMs: number; // --cache-gc-interval
  graceMs: number; // --cache-gc-grace: unreferenced blobs and untagged manifests younger than this are kept
}

/** What one collection did (also logged as 'org cache gc'). */
export interface GcResult {
  deletedTags: number;
  deletedManifests: number;
  sweptBlobs: number;
  freedBytes: number;
  pauseMs: number; // how long manifest pushes were held
  ms: number;
  orgs: Record<string, OrgStorage>;
  plan: RetentionPlan['deleteTags'];
}

/** The per-org quota overrides file in the state dir, written by `buildcloud admin cache quota`. */
export function quotasFile(stateDir: string): string {
  return path.join(stateDir, 'cache-quotas.json');
}

/** Reads the quota overrides: org → bytes (0: no quota). A missing file is {}; a corrupt one throws, naming it. */
export function readQuotas(file: string): Record<string, number> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  const v = JSON.parse(text) as unknown;
  if (!v || typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((n) => !Number.isSafeInteger(n) || (n as number) < 0)) {
    throw new Error(`${file} is not a JSON object of org → bytes: fix or remove it (buildcloud admin cache quota rewrites it)`);
  }
  return v as Record<string, number>;
}

/** Writes one org's quota override atomically (null removes it: serve's --cache-quota applies). */
export function writeQuota(file: string, org: string, bytes: number | null): void {
  const q = readQuotas(file);
  if (bytes === null) delete q[org];
  else q[org] = bytes;
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(q, null, 2) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, file);
}

const DRAIN_MS = 10_000;

const isManifestPut = (method: string, tail: string): boolean => method === 'PUT' && tail.startsWith('manifests/');

/**
 * The registry proxy's hook for writes: enter() before forwarding (a refusal message, or null to go on; manifest
 * PUTs wait while a collection marks and sweeps), leave() once the response closed.
 */
export interface CacheWriteGate {
  enter(org: string, method: string, name: string, tail: string): Promise<string | null>;
  leave(org: string, method: string, tail: string, status: number): void;
}

export class CacheStorage implements CacheWriteGate {
  private readonly dataDir: string;
  private readonly quotas: string;
  private usage = new Map<string, OrgStorage>();
  private hold: Promise<void> | null = null;
  private inflight = 0;
  private drained: (() => void) | null = null;
  private running: Promise<GcResult> | null = null;
  private again = false;
  private timer: NodeJS.Timeout | null = null;
  private soon: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly o: { stateDir: string; dataDir: string; settings: CacheStorageSettings; log?: Logger }) {
    this.dataDir = o.dataDir;
    this.quotas = quotasFile(o.stateDir);
  }

  /** The quota of `org` in bytes (0: none): its override, else --cache-quota. */
  quotaFor(org: string): number {
    let q: Record<string, number> = {};
    try {
      q = readQuotas(this.quotas);
    } catch (err) {
      this.o.log?.warn({ err: (err as Error).message }, 'org cache: quota overrides unreadable, using --cache-quota');
    }
    return org in q ? q[org] : this.o.settings.quotaBytes;
  }

  /** Runs a collection now and every intervalMs after. */
  start(): void {
    this.runSoon(0);
    this.timer = setInterval(() => this.runSoon(0), this.o.settings.intervalMs);
    this.timer.unref();
  }

  /** Stops the timers and waits for a collection under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.soon) clearTimeout(this.soon);
    await this.running?.catch(() => undefined);
  }

  async enter(org: string, method: string, _name: string, tail: string): Promise<string | null> {
    if (method === 'POST' && tail.startsWith('blobs/uploads/')) {
      const s = this.usage.get(org);
      const quota = this.quotaFor(org); // read now: `admin cache quota` takes effect at once
      if (s && quota > 0 && s.usedBytes > quota) return quotaMessage(org, { usedBytes: s.usedBytes, quotaBytes: quota });
    }
    if (isManifestPut(method, tail)) {
      while (this.hold) await this.hold;
      this.inflight++;
    }
    return null;
  }

  leave(_org: string, method: string, tail: string, status: number): void {
    if (!isManifestPut(method, tail)) return;
    this.inflight--;
    if (this.inflight === 0) this.drained?.();
    if (status >= 200 && status < 300) this.runSoon(1000); // a cache push landed: apply retention and quota soon
  }

  /** Schedules a collection in `delayMs` (pushes landing close together share one). */
  runSoon(delayMs: number): void {
    if (this.stopped || this.soon) return;
    this.soon = setTimeout(() => {
      this.soon = null;
      this.run().catch((err: Error) =>
        this.o.log?.warn({ err: err.message }, 'org cache gc failed; the cache is unchanged where it failed, the next run retries')
      );
    }, delayMs);
    this.soon.unref();
  }

  /** One collection: retention and quota, then the blob sweep. Concurrent calls share a run (and one more after). */
  run(): Promise<GcResult> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.collect().finally(() => {
      this.running = null;
      if (this.again && !this.stopped) {
        this.again = false;
        this.runSoon(0);
      }
    });
    return this.running;
  }

  /** Each org's storage as of the last collection. */
  orgUsage(): Map<string, OrgStorage> {
    return new Map(this.usage);
  }

  // Holds new manifest PUTs and waits for those in flight, at most DRAIN_MS: a client that never finishes its PUT
  // must not hold every org's pushes, so the collection then stands down (throws) and the next one tries again.
  private async pauseManifestPuts(): Promise<() => void> {
    let release!: () => void;
    this.hold = new Promise<void>((r) => (release = r));
    const resume = (): void => {
      this.hold = null;
      release();
    };
    if (this.inflight > 0) {
      let timer: NodeJS.Timeout | undefined;
      const drained = await Promise.race([
        new Promise<boolean>((r) => (this.drained = () => r(true))),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), DRAIN_MS)))
      ]);
      clearTimeout(timer);
      this.drained = null;
      if (!drained) {
        resume();
        throw new Error(`${this.inflight} manifest push(es) still in flight after ${DRAIN_MS} ms; collection skipped`);
      }
    }
    return resume;
  }

  private async collect(): Promise<GcResult> {
    const started = Date.now();
    const { settings, log } = this.o;
    const resume = await this.pauseManifestPuts();
    const paused = Date.now();
    let result: GcResult;
    try {
      const inv = readInventory(this.dataDir);
      const plan = planRetention(inv, { ...settings, quotaFor: (org) => this.quotaFor(org), now: Date.now() });
      for (const t of plan.deleteTags) removeTag(this.dataDir, t.repo, t.tag);
      for (const m of plan.deleteManifests) removeRevision(this.dataDir, m.repo, m.digest);
      // Mark: every blob a remaining revision references (inventory's manifests); sweep the rest past the grace.
      const after = readInventory(this.dataDir);
      const marked = new Set<string>();
      for (const r of after.repos) {
        for (const v of r.revisions) {
          const stack = [v.digest];
          while (stack.length) {
            const d = stack.pop() as string;
            if (marked.has(d)) continue;
            marked.add(d);
            const m = after.manifests.get(d);
            if (m) {
              m.blobs.forEach((b) => marked.add(b));
              stack.push(...m.children);
            }
          }
        }
      }
      const v2 = v2Dir(this.dataDir);
      let swept = 0;
      let freed = 0;
      const now = Date.now();
      for (const b of listBlobs(v2)) {
        if (marked.has(b.digest) || now - b.at < settings.graceMs) continue;
        fs.rmSync(blobDir(v2, b.digest), { recursive: true, force: true });
        swept++;
        freed += b.bytes;
      }
      if (swept)
        removeDanglingLayerLinks(
          this.dataDir,
          after.repos.map((r) => r.name)
        );
      this.usage = plan.orgs;
      result = {
        deletedTags: plan.deleteTags.length,
        deletedManifests: plan.deleteManifests.length,
        sweptBlobs: swept,
        freedBytes: freed,
        pauseMs: 0,
        ms: 0,
        orgs: Object.fromEntries(plan.orgs),
        plan: plan.deleteTags
      };
    } finally {
      resume();
    }
    result.pauseMs = Date.now() - paused;
    result.ms = Date.now() - started;
    for (const t of result.plan) log?.info({ repository: t.repo, tag: t.tag, reason: t.reason, org: orgOf(t.repo) }, 'org cache: branch cache evicted');
    for (const [org, s] of Object.entries(result.orgs)) {
      if (s.overBytes > 0) log?.warn({ org, usedBytes: s.usedBytes, quotaBytes: s.quotaBytes }, quotaMessage(org, s));
    }
    const { plan: _plan, ...figures } = result;
    log?.info(figures, 'org cache gc');
    return result;
  }
}
