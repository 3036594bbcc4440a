// The Build Cloud usage records: the two event types, their data, validation and builders. Contract: the CI client
// builds its records with these and the metering endpoint checks them with the same code, so the two cannot drift.
import { MAX_RECORD_STRING as MAX_STRING } from './rules';
import { CloudEvent, DEFAULT_MAX_BATCH, isObject, splitEventsBody, stableId, validateEnvelope } from './cloudevents';

/** The two usage record types: one per image build, one per CI job that held a lease. */
export const BUILD_COMPLETED = 'dev.buildcloud.build.completed';
export const JOB_COMPLETED = 'dev.buildcloud.job.completed';
export const EVENT_TYPES = [BUILD_COMPLETED, JOB_COMPLETED] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** How a build ended; the same list the job summaries show. */
export const BUILD_STATUSES = ['success', 'failure', 'cancelled'] as const;
export type BuildStatus = (typeof BUILD_STATUSES)[number];

/**
 * What became of the push a build was asked for, apart from the build itself: 'pushed' (every tag went out), 'failed'
 * (the build succeeded, a push did not: registry unreachable, refused credentials), 'refused' (the build succeeded but
 * Build Cloud did not push: another job of the pipeline took the tag on the shared builder), 'skipped' (no push was
 * asked for, or the build did not succeed).
 */
export const PUSH_STATUSES = ['pushed', 'failed', 'refused', 'skipped'] as const;
export type PushStatus = (typeof PUSH_STATUSES)[number];

/** One image build on a leased builder. */
export interface BuildCompletedData {
  lease_id: string;
  build_id: string;
  platform: string; // e.g. linux/amd64
  status: BuildStatus;
  duration_ms: number;
  total_steps: number;
  cached_steps: number; // steps BuildKit reported CACHED in this build's own progress stream
  // Steps this build did not run because another job's build on the same builder ran them at the same time (BuildKit
  // merged the two solves, or this build waited for the other's step and then saw it CACHED; src/core/build-dedup.ts):
  // neither built here nor served from a cache that existed when the build began, so never in cached_steps or the
  // cache ratio. Optional: records of clients from before it (and records without it) count as 0.
  deduplicated_steps?: number;
  // Why the first executed step missed the imported org cache, one line (src/core/cache-miss.ts), e.g.
  // "[2/3] COPY app.txt /app.txt: content of app.txt changed (+1 later step rebuilt)"; at most MAX_RECORD_STRING
  // characters (the client cuts it). Names files and build-argument names, never a build-argument value.
  cache_miss?: string;
  cache_ratio: number; // cached_steps / total_steps, 0 when there were no steps
  image_digest?: string;
  // What became of the push (PUSH_STATUSES), the build's own outcome being `status`: a build whose push failed is
  // status 'success' with push_status 'failed'. Optional: records without it (older clients) say nothing of a push.
  push_status?: PushStatus;
  actor?: string;
  provider?: string;
  project?: string;
  pipeline_key?: string;
  job_id?: string;
}

/** One CI job that held a lease: written in the job's post step. */
export interface JobCompletedData {
  lease_id: string;
  wall_seconds: number;
  builds: number;
  actor: string;
  provider: string;
  project: string;
  pipeline_key: string;
  job_id: string;
}

// The ratio is derived data; a client may round it, but not disagree with its own step counts.
/** How far `cache_ratio` may be from cached_steps/total_steps (rounding by the client). */
export const CACHE_RATIO_TOLERANCE = 0.001;
// Records are analytics detail, not a storage service: a record's data beyond this is refused.
/** Largest `data` of one record, in bytes of JSON. */
export const MAX_DATA_BYTES = 16 * 1024;

type Check = string | null; // an error naming the field, or null

function str(d: Record<string, unknown>, field: string, required: boolean, nonEmpty: boolean): Check {
  const v = d[field];
  if (v === undefined && !required) return null;
  if (typeof v !== 'string') return `data.${field} must be a string${required ? ' (required)' : ''}`;
  if (nonEmpty && v.length === 0) return `data.${field} must not be empty`;
  if (v.length > MAX_STRING) return `data.${field} must be at most ${MAX_STRING} characters`;
  return null;
}

function int(d: Record<string, unknown>, field: string): Check {
  const v = d[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    return `data.${field} must be an integer >= 0 (required)`;
  }
  return null;
}

// OCI digest grammar: algorithm ":" encoded.
const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** Checks a build.completed record's data; returns an error naming the field, or null when it is valid. */
export function validateBuildCompleted(d: Record<string, unknown>): Check {
  for (const f of ['lease_id', 'build_id', 'platform']) {
    const err = str(d, f, true, true);
    if (err) return err;
  }
  if (!BUILD_STATUSES.includes(d.status as BuildStatus)) {
    return `data.status must be one of ${BUILD_STATUSES.join(', ')}`;
  }
  for (const f of ['duration_ms', 'total_steps', 'cached_steps']) {
    const err = int(d, f);
    if (err) return err;
  }
  const total = d.total_steps as number;
  const cached = d.cached_steps as number;
  if (cached > total) return `data.cached_steps (${cached}) must not exceed data.total_steps (${total})`;
  if (d.deduplicated_steps !== undefined) {
    const err = int(d, 'deduplicated_steps');
    if (err) return err.replace(' (required)', '');
    const dedup = d.deduplicated_steps as number;
    if (cached + dedup > total) {
      return `data.cached_steps + data.deduplicated_steps (${cached} + ${dedup}) must not exceed data.total_steps (${total})`;
    }
  }
  const ratio = d.cache_ratio;
  if (typeof ratio !== 'number' || !Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
    return 'data.cache_ratio must be a number from 0 to 1 (required)';
  }
  if (total > 0 && Math.abs(ratio - cached / total) > CACHE_RATIO_TOLERANCE) {
    return `data.cache_ratio (${ratio}) must equal cached_steps/total_steps (${(cached / total).toFixed(4)})`;
  }
  if (d.image_digest !== undefined && (typeof d.image_digest !== 'string' || !DIGEST.test(d.image_digest))) {
    return 'data.image_digest must be an OCI digest, e.g. "sha256:<64 hex>"';
  }
  if (d.push_status !== undefined) {
    if (!PUSH_STATUSES.includes(d.push_status as PushStatus)) return `data.push_status must be one of ${PUSH_STATUSES.join(', ')}`;
    // Only a built image can fail to be pushed, or be refused one: a build that failed pushed nothing.
    if (d.push_status !== 'skipped' && d.status !== 'success') {
      return `data.push_status '${d.push_status}' needs data.status 'success' (a build that did not succeed pushes nothing: use 'skipped')`;
    }
  }
  for (const f of ['actor', 'provider', 'project', 'pipeline_key', 'job_id', 'cache_miss']) {
    const err = str(d, f, false, false);
    if (err) return err;
  }
  return null;
}

/** Checks a job.completed record's data; returns an error naming the field, or null when it is valid. */
export function validateJobCompleted(d: Record<string, unknown>): Check {
  for (const f of ['lease_id', 'provider', 'pipeline_key', 'job_id']) {
    const err = str(d, f, true, true);
    if (err) return err;
  }
  // Local runs and some CIs have no user or project name: present, but possibly empty.
  for (const f of ['actor', 'project']) {
    const err = str(d, f, true, false);
    if (err) return err;
  }
  const wall = d.wall_seconds;
  if (typeof wall !== 'number' || !Number.isFinite(wall) || wall < 0) {
    return 'data.wall_seconds must be a number >= 0 (required)';
  }
  return int(d, 'builds');
}

/** Checks one candidate event: envelope, known type, and that type's data. */
export function validateEvent(candidate: unknown): { event: CloudEvent } | { error: string } {
  const r = validateEnvelope(candidate);
  if ('error' in r) return r;
  const { event } = r;
  let err: Check;
  if (event.type === BUILD_COMPLETED) err = validateBuildCompleted(event.data);
  else if (event.type === JOB_COMPLETED) err = validateJobCompleted(event.data);
  else err = `type must be one of ${EVENT_TYPES.join(', ')}`;
  if (!err && Buffer.byteLength(JSON.stringify(event.data)) > MAX_DATA_BYTES) {
    err = `data must be at most ${MAX_DATA_BYTES} bytes of JSON`;
  }
  return err ? { error: err } : { event };
}

/** One candidate event of a request body: valid (`event`) or rejected (`error`), at its position `index`. */
export interface ParsedEvent {
  index: number; // position in the request body
  event?: CloudEvent;
  error?: string;
  id?: string; // the candidate's id when it had a usable one, so a rejection can be matched by the client
}

/** Limits of parseEventsBody; maxBatch defaults to DEFAULT_MAX_BATCH. */
export interface ParseOptions {
  maxBatch?: number;
}

/**
 * Parses a request body into events, each valid or rejected with its own reason. Throws EventsBodyError
 * (status 400 or 413) when the request as a whole is unusable: wrong content type, bad JSON, batch too big.
 */
export function parseEventsBody(contentType: string | undefined, body: unknown, opts: ParseOptions = {}): { events: ParsedEvent[] } {
  return { events: splitEventsBody(contentType, body, opts.maxBatch ?? DEFAULT_MAX_BATCH).map(parseEventCandidate) };
}

/**
 * One element of a request body's event list (splitEventsBody) at position `index`, checked: valid or rejected with
 * its reason. The endpoint checks a large batch event by event this way, so the work can be split across turns of
 * its event loop.
 */
export function parseEventCandidate(candidate: unknown, index: number): ParsedEvent {
  const id = isObject(candidate) && typeof candidate.id === 'string' && candidate.id.length > 0 ? candidate.id : undefined;
  const r = validateEvent(candidate);
  return 'error' in r ? { index, error: r.error, ...(id !== undefined ? { id } : {}) } : { index, event: r.event, id: r.event.id };
}

export { splitEventsBody };

/** Envelope settings of the event builders. */
export interface EventOptions {
  source?: string; // default urn:buildcloud:ci
  time?: Date | number | string; // default now; set it when the record is written so retries resend it as is
}

/** The `source` of records the CI client writes. */
export const DEFAULT_SOURCE = 'urn:buildcloud:ci';

function envelope<D>(type: EventType, id: string, org: string, data: D, opts: EventOptions): CloudEvent<D> {
  const t = opts.time === undefined ? new Date() : new Date(opts.time);
  return {
    specversion: '1.0',
    id,
    source: opts.source ?? DEFAULT_SOURCE,
    type,
    subject: org,
    time: t.toISOString(),
    datacontenttype: 'application/json',
    data
  };
}

/** The record id of a build: the same (lease, build) always gives the same id. */
export function buildRecordId(leaseId: string, buildId: string): string {
  return stableId(BUILD_COMPLETED, leaseId, buildId);
}

/** The record id of a job's summary: the same (lease, job) always gives the same id. */
export function jobRecordId(leaseId: string, jobId: string): string {
  return stableId(JOB_COMPLETED, leaseId, jobId);
}

/** Builds a build.completed event; cache_ratio is computed from the step counts when not given. */
export function buildCompletedEvent(
  org: string,
  data: Omit<BuildCompletedData, 'cache_ratio'> & { cache_ratio?: number },
  opts: EventOptions = {}
): CloudEvent<BuildCompletedData> {
  const cache_ratio = data.cache_ratio ?? (data.total_steps > 0 ? data.cached_steps / data.total_steps : 0);
  return envelope(BUILD_COMPLETED, buildRecordId(data.lease_id, data.build_id), org, { ...data, cache_ratio }, opts);
}

/** Builds a job.completed event; its id is derived from (lease, job), so a resend is a duplicate, never a second record. */
export function jobCompletedEvent(org: string, data: JobCompletedData, opts: EventOptions = {}): CloudEvent<JobCompletedData> {
  return envelope(JOB_COMPLETED, jobRecordId(data.lease_id, data.job_id), org, data, opts);
}
