// Pure billing arithmetic. Everything that decides how many seconds an org pays for lives here, with no
// clock and no I/O, so that the rules can be table-tested and the lease manager, the usage report and the
// admin CLI all bill the same way.

export interface LeaseTimes {
  createdAt: number; // unix ms
  lastActiveAt: number; // unix ms
}

export interface ReapOptions {
  idleTimeoutMs: number;
  maxTtlMs: number;
}

export interface ReapDecision {
  reason: 'idle' | 'ttl';
  endedAt: number; // the deadline that passed: the lease is billed up to here
}

/**
 * Seconds billed for a lease that lived from createdAtMs to endedAtMs: per second, no minimum, rounded up
 * (a lease of 1.2 s costs 2 s). A non-positive or non-finite span costs nothing rather than a negative amount,
 * so a clock step backwards can never refund minutes.
 */
export function billableSeconds(createdAtMs: number, endedAtMs: number): number {
  const elapsed = endedAtMs - createdAtMs;
  if (!Number.isFinite(elapsed) || elapsed <= 0) return 0;
  return Math.ceil(elapsed / 1000);
}

/** When the lease expires if nothing happens: the earlier of idle expiry and the maximum TTL. */
export function leaseDeadline(lease: LeaseTimes, opts: ReapOptions): number {
  return Math.min(lease.lastActiveAt + opts.idleTimeoutMs, lease.createdAt + opts.maxTtlMs);
}

/**
 * Whether the reaper must end the lease now, and at what time to bill it. The end time is the deadline that
 * passed, not `now`: the reaper runs on a timer and may be late (or the server was down), and an org must not
 * pay for that delay.
 *
 * Open connections to the lease's builders mean a build is running even if the client has not called the
 * API lately, so they keep the lease from going idle; they never extend it past its maximum TTL. The caller
 * should also touch the lease while connections are open, or the idle deadline computed when they close
 * would already lie in the past.
 */
export function reapDecision(lease: LeaseTimes, now: number, opts: ReapOptions, hasOpenConnections: boolean): ReapDecision | null {
  const ttlDeadline = lease.createdAt + opts.maxTtlMs;
  const idleDeadline = lease.lastActiveAt + opts.idleTimeoutMs;
  // An idle deadline before the TTL deadline passed first, so it is the one that ended the lease.
  if (!hasOpenConnections && idleDeadline < ttlDeadline && now >= idleDeadline) {
    return { reason: 'idle', endedAt: idleDeadline };
  }
  if (now >= ttlDeadline) return { reason: 'ttl', endedAt: ttlDeadline };
  return null;
}

export interface Balance {
  boughtSeconds: number;
  usedSeconds: number; // billed (ended leases) + active (running leases so far)
  leftSeconds: number; // never negative: see overdraftSeconds
  overdraftSeconds: number; // used beyond the bucket (a lease that ran past the balance)
  minutesBought: number;
  minutesUsed: number;
  minutesLeft: number;
  minutesOverdraft: number;
}

// Minutes are for people; seconds are exact. Rounding goes against the org's view of its balance in the
// safe direction: used and overdraft up, left down, so a report never promises minutes that are not there.
// The epsilon absorbs float noise (6000 s must be exactly 100 minutes); `|| 0` turns -0 into 0.
export const minutesUp = (seconds: number): number => Math.ceil((seconds / 60) * 100 - 1e-9) / 100 || 0;
const up2 = minutesUp;
const down2 = (seconds: number): number => Math.floor((seconds / 60) * 100 + 1e-9) / 100 || 0;

export function balance(bucketSeconds: number, billedSeconds: number, activeSeconds: number): Balance {
  const usedSeconds = billedSeconds + activeSeconds;
  const raw = bucketSeconds - usedSeconds;
  const leftSeconds = Math.max(0, raw);
  const overdraftSeconds = Math.max(0, -raw);
  return {
    boughtSeconds: bucketSeconds,
    usedSeconds,
    leftSeconds,
    overdraftSeconds,
    minutesBought: down2(bucketSeconds),
    minutesUsed: up2(usedSeconds),
    minutesLeft: down2(leftSeconds),
    minutesOverdraft: up2(overdraftSeconds)
  };
}

/**
 * Whether a new lease can start: the org's unreserved balance covers a minimum lease. An exhausted (or fully
 * reserved) bucket refuses new builders up front rather than failing a build halfway.
 */
export function canProvision(unreservedSeconds: number, minSeconds = MIN_LEASE_SECONDS): boolean {
  return unreservedSeconds >= minSeconds && unreservedSeconds > 0;
}

// Reservations (docs/metering.md, "Buckets of minutes"). A lease holds a reservation of the org's bucket from
// Provision on: it starts with one chunk and the reaper extends it by a chunk while the lease lives, as long as
// the bucket has unreserved seconds. A lease is never billed past its reservation, and the reservations of all
// active leases plus what ended leases were billed never exceed the buckets plus the org's overdraft, so an org
// cannot run past its prepaid minutes however many leases it opens at once.
export const MIN_LEASE_SECONDS = 60; // the smallest reservation a lease starts with
export const RESERVATION_CHUNK_SECONDS = 60; // first reservation and each extension
export const EXTEND_AHEAD_SECONDS = 30; // extend when less than this is left of the reservation

export interface ReservationBook {
  boughtSeconds: number; // all buckets
  overdraftSeconds: number; // the org's allowed overdraft (default 0)
  billedSeconds: number; // ended leases
  reservedSeconds: number; // active leases' reservations
}

/** Seconds not yet billed nor held by an active lease: what new leases and extensions may take. */
export function unreservedSeconds(b: ReservationBook): number {
  const raw = b.boughtSeconds + b.overdraftSeconds - b.billedSeconds - b.reservedSeconds;
  return Number.isFinite(raw) ? Math.max(0, raw) : 0;
}

/** The first reservation of a new lease, or null when the unreserved balance cannot cover a minimum lease. */
export function initialReservation(unreserved: number, minSeconds: number, chunkSeconds: number): number | null {
  if (!canProvision(unreserved, minSeconds)) return null;
  return Math.max(minSeconds, Math.min(chunkSeconds, unreserved));
}

/** An extension of a live lease's reservation: up to one chunk, whatever is left (0 when nothing is). */
export function extensionGrant(unreserved: number, chunkSeconds: number): number {
  return Math.max(0, Math.min(chunkSeconds, Math.floor(unreserved)));
}

/** When a lease's reservation is used up. A legacy lease (reservation 0) never is. */
export function reservationEnd(createdAtMs: number, reservedSeconds: number | undefined): number {
  return reservedSeconds && reservedSeconds > 0 ? createdAtMs + reservedSeconds * 1000 : Number.POSITIVE_INFINITY;
}

/**
 * What the reaper does about a live lease's reservation at `now`: nothing, extend it (less than
 * EXTEND_AHEAD_SECONDS left), or, when an extension found nothing left and the reservation has run out, end it.
 */
export function reservationState(createdAtMs: number, reservedSeconds: number | undefined, now: number): 'ok' | 'extend' | 'exhausted' {
  const end = reservationEnd(createdAtMs, reservedSeconds);
  if (end === Number.POSITIVE_INFINITY) return 'ok';
  if (now >= end) return 'exhausted';
  if (end - now < EXTEND_AHEAD_SECONDS * 1000) return 'extend';
  return 'ok';
}

/** Seconds billed for a lease that ended at endedAtMs: per second, never past its reservation. */
export function settledSeconds(createdAtMs: number, endedAtMs: number, reservedSeconds: number | undefined): number {
  const billed = billableSeconds(createdAtMs, endedAtMs);
  return reservedSeconds && reservedSeconds > 0 ? Math.min(billed, reservedSeconds) : billed;
}

/** What the summary needs from one `dev.buildcloud.build.completed` record. */
export interface BuildFacts {
  status: string;
  totalSteps: number;
  cachedSteps: number;
  cacheRatio: number;
  durationMs: number;
  actor?: string;
}

export interface BuildSummary {
  builds: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  totalSteps: number;
  cachedSteps: number;
  durationSeconds: number;
  // Mean of the per-build cache ratios over builds that ran at least one step: a build that failed before
  // its first step says nothing about the cache.
  avgCacheRatio: number;
  // Share of all builds with at least one cached step: the north-star metric (goal 0.8).
  withCachedStepShare: number;
  distinctActors: number;
}

const round4 = (x: number): number => Math.round(x * 10000) / 10000;

export function summarizeBuilds(builds: BuildFacts[]): BuildSummary {
  let succeeded = 0;
  let failed = 0;
  let cancelled = 0;
  let totalSteps = 0;
  let cachedSteps = 0;
  let durationMs = 0;
  let ratioSum = 0;
  let ratioCount = 0;
  let withCached = 0;
  const actors = new Set<string>();
  for (const b of builds) {
    if (b.status === 'success') succeeded++;
    else if (b.status === 'failure') failed++;
    else if (b.status === 'cancelled') cancelled++;
    totalSteps += b.totalSteps;
    cachedSteps += b.cachedSteps;
    durationMs += b.durationMs;
    if (b.totalSteps > 0) {
      ratioSum += b.cacheRatio;
      ratioCount++;
    }
    if (b.cachedSteps >= 1) withCached++;
    if (b.actor) actors.add(b.actor);
  }
  return {
    builds: builds.length,
    succeeded,
    failed,
    cancelled,
    totalSteps,
    cachedSteps,
    durationSeconds: Math.round(durationMs / 1000),
    avgCacheRatio: ratioCount ? round4(ratioSum / ratioCount) : 0,
    withCachedStepShare: builds.length ? round4(withCached / builds.length) : 0,
    distinctActors: actors.size
  };
}
