// The usage report of one org for one calendar month (UTC). Billed minutes come only from the control
// plane's own lease records; the clients' usage records add per-build detail (steps, cache ratio, actors)
// and never change what an org pays.
import {
  balance,
  billableSeconds,
  BuildFacts,
  canProvision,
  minutesUp,
  NORTH_STAR_GOAL,
  summarizeBuilds,
  unreservedSeconds
} from '../billing';
import { Store, UsageRecordRow } from '../store/store';
import { BUILD_COMPLETED, JOB_COMPLETED } from './events';

export interface UsageReport {
  org: string;
  month: string; // YYYY-MM (UTC)
  generatedAt: string; // RFC 3339
  // The bucket balance now (buckets are prepaid and do not expire at a month's end).
  minutes: { bought: number; used: number; left: number; overdraft: number; usedInMonth: number };
  seconds: {
    bought: number;
    used: number; // billed + active, all time
    left: number;
    overdraft: number;
    billed: number; // ended leases, all time
    active: number; // running leases so far
    usedInMonth: number; // leases that ended in the month, plus active ones when it is the current month
    reserved: number; // held by running leases (see docs/metering.md, reservations)
    unreserved: number; // buckets + overdraft − billed − reserved: what new leases may take
  };
  canProvision: boolean;
  leases: { count: number; ended: number; active: number };
  builds: {
    count: number;
    succeeded: number;
    failed: number;
    cancelled: number;
    totalSteps: number;
    cachedSteps: number;
    durationSeconds: number;
    avgCacheRatio: number;
    withCachedStepShare: number;
    northStarGoal: number;
    northStarMet: boolean;
  };
  jobs: { count: number; wallSeconds: number };
  users: { distinct: number; top: Array<{ actor: string; builds: number }> };
}

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
function buildFacts(r: UsageRecordRow): BuildFacts {
  const d = r.data;
  return {
    status: text(d.status),
    totalSteps: num(d.total_steps),
    cachedSteps: num(d.cached_steps),
    cacheRatio: num(d.cache_ratio),
    durationMs: num(d.duration_ms),
    actor: text(d.actor) || undefined
  };
}

const TOP_USERS = 10;

/**
 * @param activeLeaseSeconds seconds the org's running leases have used so far, as the lease manager bills
 *   them; when omitted, each active lease counts from its creation to `now`.
 */
export async function computeUsage(
  store: Store,
  org: string,
  month: string,
  now: number,
  activeLeaseSeconds?: number
): Promise<UsageReport> {
  const range = parseMonth(month);
  if (!range) throw new RangeError(`month must be YYYY-MM, got "${month}"`);
  const current = now >= range.start && now < range.end;

  const [bought, billedAll, billedFrom, billedAfter, active, records, reserved, limits] = await Promise.all([
    store.bucketSeconds(org),
    store.billedSeconds(org),
    store.billedSeconds(org, range.start),
    store.billedSeconds(org, range.end),
    store.activeLeases(org),
    store.usageRecords(org, range.start, range.end),
    store.reservedSeconds(org),
    store.getOrgLimits(org)
  ]);
  const unreserved = unreservedSeconds({ boughtSeconds: bought, overdraftSeconds: limits.overdraftSeconds, billedSeconds: billedAll, reservedSeconds: reserved });
  const activeSeconds = activeLeaseSeconds ?? active.reduce((s, l) => s + billableSeconds(l.createdAt, now), 0);
  const bal = balance(bought, billedAll, activeSeconds);
  // "ended at or after start" minus "ended at or after end" = ended within the month.
  const billedInMonth = billedFrom - billedAfter;
  const usedInMonth = billedInMonth + (current ? activeSeconds : 0);

  const ended = canCountLeases(store)
    ? await store.countEndedLeases(org, range.start, range.end)
    : new Set(records.map((r) => r.leaseId).filter((id): id is string => !!id)).size; // best effort
  const activeInMonth = current ? active.length : 0;

  const builds = records.filter((r) => r.type === BUILD_COMPLETED).map(buildFacts);
  const jobs = records.filter((r) => r.type === JOB_COMPLETED);
  const summary = summarizeBuilds(builds);

  // Users: actors named by any record of the month (builds and jobs), ranked by builds.
  const perActor = new Map<string, number>();
  for (const b of builds) if (b.actor) perActor.set(b.actor, (perActor.get(b.actor) ?? 0) + 1);
  for (const j of jobs) {
    const actor = text(j.data.actor);
    if (actor && !perActor.has(actor)) perActor.set(actor, 0);
  }
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
      durationSeconds: summary.durationSeconds,
      avgCacheRatio: summary.avgCacheRatio,
      withCachedStepShare: summary.withCachedStepShare,
      northStarGoal: NORTH_STAR_GOAL,
      northStarMet: summary.builds > 0 && summary.withCachedStepShare >= NORTH_STAR_GOAL
    },
    jobs: { count: jobs.length, wallSeconds: Math.round(jobs.reduce((s, j) => s + num(j.data.wall_seconds), 0)) },
    users: { distinct: perActor.size, top }
  };
}

export interface PipelineUsage {
  org: string;
  pipelineKey: string;
  leases: number;
  activeLeases: number;
  billedSeconds: number; // ended leases as billed, active ones up to now
  builds: number;
  failed: number;
  buildsWithCache: number;
  totalSteps: number;
  cachedSteps: number;
  avgCacheRatio: number;
}

/** One pipeline's leases and builds: what its pull request comment shows. */
export async function pipelineUsage(store: Store, org: string, pipelineKey: string, now: number): Promise<PipelineUsage> {
  const leases = await store.leasesOfPipeline(org, pipelineKey);
  const ids = new Set(leases.map((l) => l.id));
  let billedSeconds = 0;
  for (const l of leases) billedSeconds += l.billedSeconds ?? billableSeconds(l.createdAt, now);
  const since = leases.length ? Math.min(...leases.map((l) => l.createdAt)) - 3600_000 : now;
  const records = leases.length ? await store.usageRecords(org, since, now + 3600_000) : [];
  const builds = records.filter((r) => r.type === BUILD_COMPLETED && r.leaseId !== null && ids.has(r.leaseId)).map(buildFacts);
  const sum = summarizeBuilds(builds);
  return {
    org,
    pipelineKey,
    leases: leases.length,
    activeLeases: leases.filter((l) => l.endedAt === null).length,
    billedSeconds,
    builds: sum.builds,
    failed: sum.failed,
    buildsWithCache: builds.filter((b) => b.cachedSteps > 0).length,
    totalSteps: sum.totalSteps,
    cachedSteps: sum.cachedSteps,
    avgCacheRatio: sum.avgCacheRatio
  };
}
