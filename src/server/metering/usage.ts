// The usage report of one org for one calendar month (UTC). Billed minutes come only from the control
// plane's own lease records; the clients' usage records add per-build detail (steps, cache ratio, actors)
// and never change what an org pays.
import { balance, billableSeconds, BuildFacts, canProvision, minutesUp, summarizeBuilds, unreservedSeconds } from '../billing';
import type { PipelineUsage, UsageReport } from '../../contract/http-api';
import { BUILD_COMPLETED, JOB_COMPLETED } from '../../contract/metering-events';
import { NORTH_STAR_GOAL } from '../../contract/rules';
import { Store } from '../store/store';
import { recordQueries, type RecordFacts } from './record-queries';

const MONTH = /^(\d{4})-(0[1-9]|1[0-2])$/;

/** [start, end) of a YYYY-MM month in UTC ms, or null when the string is not a month. */
export function parseMonth(month: string): { start: number; end: number } | null {
  const m = MONTH.exec(month);
  if (!m) return null;
  const y = Number(m[1]);
  const mo = Number(m[2]);
  return { start: Date.UTC(y, mo - 1, 1), end: Date.UTC(y, mo, 1) };
}

export function monthOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 7);
}

/** Optional store capability (SqliteStore has it): counting ended leases without loading them. */
interface EndedLeaseCounter {
  countEndedLeases(org: string, sinceMs: number, untilMs: number): Promise<number>;
}

function canCountLeases(store: Store): store is Store & EndedLeaseCounter {
  return typeof (store as Partial<EndedLeaseCounter>).countEndedLeases === 'function';
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const text = (v: unknown): string => (typeof v === 'string' ? v : '');

// Records were validated on the way in; reading them defensively still keeps one odd row (an older
// schema, a manual edit) from breaking the whole report.
function factsToBuild(f: RecordFacts): BuildFacts {
  return {
    status: text(f.status),
    totalSteps: num(f.totalSteps),
    cachedSteps: num(f.cachedSteps),
    cacheRatio: num(f.cacheRatio),
    durationMs: num(f.durationMs),
    actor: text(f.actor) || undefined
  };
}

// Steps another job's build ran at the same time (BuildKit merged the two solves, or this one waited for it): reported apart from cache hits, and
// never part of the cache ratio or the north-star share. Records without the field count 0.
const dedupOf = (f: RecordFacts): number => Math.max(0, Math.min(num(f.deduplicatedSteps), num(f.totalSteps) - num(f.cachedSteps)));

const TOP_USERS = 10;
/** Most cache-miss lines a pipeline's usage lists (one per build, in record order). */
export const MAX_PIPELINE_MISSES = 100;

/**
 * The org's usage report for `month` (YYYY-MM, UTC). Throws RangeError for a malformed month. The month's records
 * are read in pages with the event loop free between them (record-queries.ts), so a large org's report slows down
 * only itself.
 * @param activeLeaseSeconds seconds the org's running leases have used so far, as the lease manager bills
 *   them; when omitted, each active lease counts from its creation to `now`.
 */
export async function computeUsage(store: Store, org: string, month: string, now: number, activeLeaseSeconds?: number): Promise<UsageReport> {
  const range = parseMonth(month);
  if (!range) throw new RangeError(`month must be YYYY-MM, got "${month}"`);
  const current = now >= range.start && now < range.end;

  const [bought, billedAll, billedFrom, billedAfter, active, reserved, limits] = await Promise.all([
    store.bucketSeconds(org),
    store.billedSeconds(org),
    store.billedSeconds(org, range.start),
    store.billedSeconds(org, range.end),
    store.activeLeases(org),
    store.reservedSeconds(org),
    store.getOrgLimits(org)
  ]);
  const builds: BuildFacts[] = [];
  const jobActors = new Set<string>();
  const leaseIds = new Set<string>();
  let jobCount = 0;
  let jobWallSeconds = 0;
  let deduplicatedSteps = 0;
  let pushFailed = 0;
  let pushRefused = 0;
  for await (const page of recordQueries(store).factPages(org, range.start, range.end)) {
    for (const f of page) {
      if (f.leaseId) leaseIds.add(f.leaseId);
      if (f.type === BUILD_COMPLETED) {
        builds.push(factsToBuild(f));
        deduplicatedSteps += dedupOf(f);
        if (f.pushStatus === 'failed') pushFailed++;
        else if (f.pushStatus === 'refused') pushRefused++;
      } else if (f.type === JOB_COMPLETED) {
        jobCount++;
        jobWallSeconds += num(f.wallSeconds);
        const actor = text(f.actor);
        if (actor) jobActors.add(actor);
      }
    }
  }
  const unreserved = unreservedSeconds({
    boughtSeconds: bought,
    overdraftSeconds: limits.overdraftSeconds,
    billedSeconds: billedAll,
    reservedSeconds: reserved
  });
  const activeSeconds = activeLeaseSeconds ?? active.reduce((s, l) => s + billableSeconds(l.createdAt, now), 0);
  const bal = balance(bought, billedAll, activeSeconds);
  // "ended at or after start" minus "ended at or after end" = ended within the month.
  const billedInMonth = billedFrom - billedAfter;
  const usedInMonth = billedInMonth + (current ? activeSeconds : 0);

  const ended = canCountLeases(store) ? await store.countEndedLeases(org, range.start, range.end) : leaseIds.size; // best effort
  const activeInMonth = current ? active.length : 0;

  const summary = summarizeBuilds(builds);

  // Users: actors named by any record of the month (builds and jobs), ranked by builds.
  const perActor = new Map<string, number>();
  for (const b of builds) if (b.actor) perActor.set(b.actor, (perActor.get(b.actor) ?? 0) + 1);
  for (const actor of jobActors) if (!perActor.has(actor)) perActor.set(actor, 0);
  const top = [...perActor.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, TOP_USERS)
    .map(([actor, n]) => ({ actor, builds: n }));

  return {
    org,
    month,
    generatedAt: new Date(now).toISOString(),
    minutes: {
      bought: bal.minutesBought,
      used: bal.minutesUsed,
      left: bal.minutesLeft,
      overdraft: bal.minutesOverdraft,
      usedInMonth: minutesUp(usedInMonth)
    },
    seconds: {
      bought,
      used: bal.usedSeconds,
      left: bal.leftSeconds,
      overdraft: bal.overdraftSeconds,
      billed: billedAll,
      active: activeSeconds,
      usedInMonth,
      reserved,
      unreserved
    },
    canProvision: canProvision(unreserved),
    leases: { count: ended + activeInMonth, ended, active: activeInMonth },
    builds: {
      count: summary.builds,
      succeeded: summary.succeeded,
      failed: summary.failed,
      cancelled: summary.cancelled,
      totalSteps: summary.totalSteps,
      cachedSteps: summary.cachedSteps,
      deduplicatedSteps,
      durationSeconds: summary.durationSeconds,
      avgCacheRatio: summary.avgCacheRatio,
      withCachedStepShare: summary.withCachedStepShare,
      northStarGoal: NORTH_STAR_GOAL,
      northStarMet: summary.builds > 0 && summary.withCachedStepShare >= NORTH_STAR_GOAL,
      pushFailed,
      pushRefused
    },
    jobs: { count: jobCount, wallSeconds: Math.round(jobWallSeconds) },
    users: { distinct: perActor.size, top }
  };
}

/** One pipeline's leases and builds: what its pull request comment shows. */
export async function pipelineUsage(
  store: Store,
  org: string,
  pipelineKey: string,
  now: number,
  // Which leases the caller may see (a project-scoped credential: its own project's); all by default.
  visible: (lease: { identity: Record<string, unknown> }) => boolean = () => true
): Promise<PipelineUsage> {
  const leases = (await store.leasesOfPipeline(org, pipelineKey)).filter(visible);
  const ids = new Set(leases.map((l) => l.id));
  let billedSeconds = 0;
  for (const l of leases) billedSeconds += l.billedSeconds ?? billableSeconds(l.createdAt, now);
  const since = leases.length ? Math.min(...leases.map((l) => l.createdAt)) - 3600_000 : now;
  // In pages, like computeUsage: the window holds every record of the org in it, not only this pipeline's.
  const builds: BuildFacts[] = [];
  let deduplicatedSteps = 0;
  const cacheMisses: PipelineUsage['cacheMisses'] = [];
  let pushFailed = 0;
  let pushRefused = 0;
  if (leases.length) {
    for await (const page of recordQueries(store).factPages(org, since, now + 3600_000)) {
      for (const f of page) {
        if (f.type !== BUILD_COMPLETED || f.leaseId === null || !ids.has(f.leaseId)) continue;
        builds.push(factsToBuild(f));
        deduplicatedSteps += dedupOf(f);
        if (f.pushStatus === 'failed') pushFailed++;
        else if (f.pushStatus === 'refused') pushRefused++;
        const miss = text(f.cacheMiss);
        if (miss && cacheMisses.length < MAX_PIPELINE_MISSES) cacheMisses.push({ leaseId: f.leaseId, reason: miss });
      }
    }
  }
  const sum = summarizeBuilds(builds);
  return {
    org,
    pipelineKey,
    leases: leases.length,
    activeLeases: leases.filter((l) => l.endedAt === null).length,
    billedSeconds,
    builds: sum.builds,
    succeeded: sum.succeeded,
    failed: sum.failed,
    cancelled: sum.cancelled,
    pushFailed,
    pushRefused,
    buildsWithCache: builds.filter((b) => b.cachedSteps > 0).length,
    totalSteps: sum.totalSteps,
    cachedSteps: sum.cachedSteps,
    deduplicatedSteps,
    avgCacheRatio: sum.avgCacheRatio,
    cacheMisses
  };
}
