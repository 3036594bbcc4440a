// CloudEvents 1.0 in JSON (structured and batch modes): the envelope only, independent of what the events
// mean, so that the same parsing serves any event type and the same events can go to any CloudEvents
// metering service (OpenMeter's ingest API takes exactly this). No server dependencies: the CI client can
// bundle it.
import { createHash } from 'node:crypto';

/**
 * One CloudEvents 1.0 event in JSON (structured mode). `data` is the event type's payload (a JSON object here);
 * unknown extension attributes are kept as they are.
 */
export interface CloudEvent<D = Record<string, unknown>> {
  specversion: '1.0';
  id: string; // the idempotency key: the endpoint counts each id once
  source: string; // URI-reference of the producer
  type: string;
  subject?: string; // Build Cloud: the org (OpenMeter: the customer)
  time?: string; // RFC 3339
  datacontenttype?: 'application/json';
  data: D;
  [extension: string]: unknown;
}

/** Media types the metering endpoint accepts: one event, a JSON array of events, or either as plain JSON. */
export const CONTENT_TYPE_STRUCTURED = 'application/cloudevents+json';
export const CONTENT_TYPE_BATCH = 'application/cloudevents-batch+json';
export const CONTENT_TYPE_JSON = 'application/json';

/** Longest `id`, `type` and `subject`, in characters. */
export const MAX_ID_LENGTH = 256;
/** Most events in one request to the metering endpoint (a longer batch is refused with 413). */
export const DEFAULT_MAX_BATCH = 1000;

/** A problem with the request as a whole (not one event): the HTTP layer maps `status` to the reply. */
export class EventsBodyError extends Error {
  constructor(
    readonly status: 400 | 413,
    readonly code: string,
    message: string
  ) {
    super(message);
    this.name = 'EventsBodyError';
  }
}

/** Media type without parameters, lowercased: `Application/JSON; charset=utf-8` → `application/json`. */
export function mediaType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0].trim().toLowerCase();
}

/**
 * Turns a request body into a list of candidate events. Structured mode is one object, batch mode an array;
 * plain application/json may be either, because generic HTTP clients send that. Throws EventsBodyError for
 * what makes the whole request unusable; the events themselves are validated one by one by the caller, so
 * one bad record in a batch does not sink the others.
 */
export function splitEventsBody(contentType: string | undefined, body: unknown, maxBatch = DEFAULT_MAX_BATCH): unknown[] {
  const type = mediaType(contentType);
  if (type !== CONTENT_TYPE_STRUCTURED && type !== CONTENT_TYPE_BATCH && type !== CONTENT_TYPE_JSON) {
    throw new EventsBodyError(
      400,
      'unsupported_content_type',
      `Content-Type "${type || '(none)'}" is not supported; send ${CONTENT_TYPE_STRUCTURED} (one event), ` +
        `${CONTENT_TYPE_BATCH} (a JSON array of events) or ${CONTENT_TYPE_JSON} (either)`
    );
  }
  const parsed = parseJson(body);
  if (type === CONTENT_TYPE_STRUCTURED && Array.isArray(parsed)) {
    throw new EventsBodyError(400, 'invalid_body', `${CONTENT_TYPE_STRUCTURED} carries one event object; send an array as ${CONTENT_TYPE_BATCH}`);
  }
  if (type === CONTENT_TYPE_BATCH && !Array.isArray(parsed)) {
    throw new EventsBodyError(400, 'invalid_body', `${CONTENT_TYPE_BATCH} must be a JSON array of events`);
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  if (list.length > maxBatch) {
    throw new EventsBodyError(413, 'batch_too_large', `batch has ${list.length} events, the limit is ${maxBatch}; split it into smaller batches`);
  }
  return list;
}

function parseJson(body: unknown): unknown {
  if (typeof body !== 'string' && !Buffer.isBuffer(body)) return body; // already parsed by the caller
  const text = body.toString();
  if (text.trim() === '') throw new EventsBodyError(400, 'invalid_json', 'request body is empty; send a JSON event or array of events');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new EventsBodyError(400, 'invalid_json', `request body is not valid JSON: ${(err as Error).message}`);
  }
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** Whether `value` is an RFC 3339 timestamp with a time zone (`2025-01-31T12:00:00Z`) that names a real instant. */
export function isRfc3339(value: string): boolean {
  return RFC3339.test(value) && !Number.isNaN(Date.parse(value));
}

// A URI-reference (RFC 3986): absolute (`https://ci.example/acme`, `urn:buildcloud:ci`) or relative
// (`/buildcloud/github`). Whitespace and control characters are never part of one.
function isUriReference(value: string): boolean {
  // eslint-disable-next-line no-control-regex -- control characters are what this looks for
  if (value.length === 0 || value.length > 2048 || /[\s\x00-\x1f\x7f]/.test(value)) return false;
  try {
    new URL(value, 'http://base.invalid/');
    return true;
  } catch {
    return false;
  }
}

/** A plain JSON object: not null, not an array. */
export const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Checks the CloudEvents attributes of one candidate event. Returns the event or an error naming the
 * attribute. `subject` is required here (it names the org); `data` must be a JSON object.
 */
export function validateEnvelope(candidate: unknown): { event: CloudEvent } | { error: string } {
  if (!isObject(candidate)) return { error: 'event must be a JSON object' };
  const e = candidate;
  if (e.specversion !== '1.0') return { error: 'specversion must be "1.0"' };
  if (typeof e.id !== 'string' || e.id.length === 0) return { error: 'id must be a non-empty string' };
  if (e.id.length > MAX_ID_LENGTH) return { error: `id must be at most ${MAX_ID_LENGTH} characters` };
  if (typeof e.source !== 'string' || !isUriReference(e.source)) {
    return { error: 'source must be a URI-reference, e.g. "/buildcloud/github" or "urn:buildcloud:ci"' };
  }
  if (typeof e.type !== 'string' || e.type.length === 0) return { error: 'type must be a non-empty string' };
  if (e.type.length > MAX_ID_LENGTH) return { error: `type must be at most ${MAX_ID_LENGTH} characters` };
  if (typeof e.subject !== 'string' || e.subject.length === 0) {
    return { error: 'subject must be a non-empty string: the org the event belongs to' };
  }
  if (e.subject.length > MAX_ID_LENGTH) return { error: `subject must be at most ${MAX_ID_LENGTH} characters` };
  if (e.time !== undefined && (typeof e.time !== 'string' || !isRfc3339(e.time))) {
    return { error: 'time must be an RFC 3339 timestamp, e.g. "2025-01-31T12:00:00Z"' };
  }
  if (e.datacontenttype !== undefined && (typeof e.datacontenttype !== 'string' || mediaType(e.datacontenttype) !== 'application/json')) {
    return { error: 'datacontenttype must be "application/json" when present' };
  }
  if ('data_base64' in e) return { error: 'data_base64 is not supported; send data as a JSON object' };
  if (!isObject(e.data)) return { error: 'data must be a JSON object' };
  return { event: e as CloudEvent };
}

// Fixed namespace for Build Cloud record ids. Changing it would change every id and break deduplication of
// records that clients still hold in their spools.
export const ID_NAMESPACE = '3c1f6f0e-8e4b-4c1a-9b1e-5b8d6a2f7c10';

/**
 * A name-based UUID like UUIDv5, with SHA-256 instead of SHA-1 (RFC 9562 version 8, its own example of a
 * SHA-256 name-based UUID). The same parts always give the same id, so a client that retries forever, even
 * after a crash and a rebuild of its spool, sends the same id. Parts are JSON-encoded so that
 * ("a/b","c") and ("a","b/c") never collide.
 */
export function stableId(...parts: string[]): string {
  const ns = Buffer.from(ID_NAMESPACE.replace(/-/g, ''), 'hex');
  const h = createHash('sha256').update(ns).update(JSON.stringify(parts)).digest().subarray(0, 16);
  h[6] = (h[6] & 0x0f) | 0x80; // version 8
  h[8] = (h[8] & 0x3f) | 0x80; // RFC 9562 variant
  const hex = h.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
