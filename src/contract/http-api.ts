// The control plane's HTTP API as both sides see it: the routes and what each answers. The server (src/server/http.ts)
// serves these shapes; the metering client, `buildcloud usage`, the PR comment and the demo read them. The prose
// contract is docs/metering.md; keep the two in step.

/** The metering endpoint: POST usage records as CloudEvents (contract/cloudevents.ts, contract/metering-events.ts). */
export const EVENTS_PATH = '/v1/events';
/** Health check: GET answers `{ "status": "ok" }`. */
export const HEALTH_PATH = '/healthz';
/** Prometheus metrics, text exposition format. */
export const METRICS_PATH = '/metrics';

/** GET: the org's usage report for a month (`month` is YYYY-MM, UTC; default this month). Answers UsageReport. */
export function orgUsagePath(org: string, month?: string): string {
  const base = `/v1/orgs/${encodeURIComponent(org)}/usage`;
  return month === undefined ? base : `${base}?month=${encodeURIComponent(month)}`;
}

/** GET: one pipeline's leases and builds, by its pipeline key (1-256 characters). Answers PipelineUsage. */
export function pipelineUsagePath(org: string, pipelineKey: string): string {
  return `/v1/orgs/${encodeURIComponent(org)}/pipelines/usage?key=${encodeURIComponent(pipelineKey)}`;
}

/** Every error answer (4xx and 5xx): a stable `code` and a message that says what to fix. */
export interface ErrorBody {
  error: {
    code: string; // e.g. unauthenticated, forbidden, not_found, invalid_parameter, batch_too_large, rate_limited
    message: string;
    // rate_limited only (HTTP 429, with a Retry-After header in whole seconds):
    limit?: string; // which limit: provision, records
    flag?: string; // the serve flag that sets it
    retryAfterSeconds?: number;
  };
}

/**
 * What became of one record of a POST /v1/events:
 * - accepted: stored for the first time;
 * - duplicate: its id was stored already (a retry): count it as delivered;
 * - rejected: invalid, not the caller's, or over a record cap: resending it as it is cannot succeed (see `reason`);
 * - deferred: a valid record of a lease of another project than the sending credential's: not stored, not
 *   dropped; the client keeps it and sends it later with a credential of that project.
 */
export const RECORD_STATUSES = ['accepted', 'duplicate', 'rejected', 'deferred'] as const;
/** One of RECORD_STATUSES. */
export type RecordStatus = (typeof RECORD_STATUSES)[number];

/** The answer for one record, matched to the request by `index` (its position in the body) and `id`. */
export interface RecordResult {
  index: number;
  id: string | null; // the record's id when it had a usable one
  status: RecordStatus;
  reason?: string; // for rejected and deferred
}

/** The 200 answer of POST /v1/events: one result per record, and the count of each status. */
export interface EventsResponse {
  results: RecordResult[];
  accepted: number;
  duplicate: number;
  rejected: number;
  deferred: number;
}

/** GET /v1/orgs/:org/usage: one org's minutes, leases, builds and users for one calendar month (UTC). */
export interface UsageReport {
  org: string;
  month: string; // YYYY-MM (UTC)
  generatedAt: string; // RFC 3339
  // The bucket balance now (buckets are prepaid and do not expire at a month's end), in minutes.
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
    cachedSteps: number; // steps BuildKit reported CACHED
    deduplicatedSteps: number; // steps another job's build at the same time ran (not cache hits; 0 for older records)
    durationSeconds: number;
    avgCacheRatio: number; // 0..1
    withCachedStepShare: number; // 0..1: the north-star metric (cache hits only, never deduplicated steps)
    northStarGoal: number; // contract/rules.ts NORTH_STAR_GOAL
    northStarMet: boolean;
    // Builds that succeeded but whose push did not go out (records' push_status; counted within `succeeded`):
    // 'failed' (e.g. the registry was unreachable) and 'refused' (another job of the pipeline took the tag). 0 for
    // records from before the field.
    pushFailed: number;
    pushRefused: number;
  };
  jobs: { count: number; wallSeconds: number };
  users: { distinct: number; top: Array<{ actor: string; builds: number }> };
}

/** GET /v1/orgs/:org/pipelines/usage?key=: one pipeline's leases and builds (what its pull request comment shows). */
export interface PipelineUsage {
  org: string;
  pipelineKey: string;
  leases: number;
  activeLeases: number;
  billedSeconds: number; // ended leases as billed, active ones up to now
  builds: number;
  failed: number;
  // Absent from control planes before the fields (issue 12): the same counts as the org and project reports.
  succeeded?: number;
  cancelled?: number;
  pushFailed?: number; // succeeded, and the push failed
  pushRefused?: number; // succeeded, and the push was refused (the tag is taken)
  buildsWithCache: number;
  totalSteps: number;
  cachedSteps: number;
  deduplicatedSteps: number; // run by another job's build at the same time: not cache hits
  avgCacheRatio: number; // 0..1
  // Why builds missed the cache: the `cache_miss` line of each build record that has one (at most 100), with the
  // lease that sent it. Absent from control planes before the field.
  cacheMisses?: Array<{ leaseId: string; reason: string }>;
}
