// Sends the spool's usage records to the metering endpoint (docs/metering.md, POST /v1/events). Every record id is
// counted once by the endpoint, so anything may be resent: a record leaves the spool only once the endpoint has
// answered for it. Metering must never fail a build, so nothing here throws for metering trouble; problems come
// back as warnings for the CI wrapper to show, and unsent records wait in the spool for a later flush.
import { CONTENT_TYPE_BATCH, DEFAULT_MAX_BATCH, type CloudEvent } from '../contract/cloudevents';
import { EVENTS_PATH, RECORD_STATUSES, type EventsResponse, type RecordResult, type RecordStatus } from '../contract/http-api';
import type { MeteringSpool } from './metering-spool';
import { backoffDelay } from './backoff';
import { headerValue, httpRequest, type HttpReply, type HttpRequester } from './http-request';

/** "1 record", "2 records": a count and its noun, plural unless exactly 1. */
function records(n: number, noun = 'record'): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

export type MeteringLogLevel = 'debug' | 'info' | 'warning';

export interface FlushOptions {
  endpoint: string; // http(s)://host:port of the control plane's HTTP API
  token: string; // org token or exchanged access token; never logged
  batchSize?: number; // records per request, default 100, at most 1000 (the endpoint's limit)
  attempts?: number; // per batch, default 5
  baseDelayMs?: number; // backoff base, default 500
  maxDelayMs?: number; // backoff cap, default 10_000
  deadlineMs?: number; // budget of the whole flush, default 30_000: a post step must not hang on metering
  requestTimeoutMs?: number; // per request, default 10_000 (never beyond the deadline)
  request?: HttpRequester; // the HTTP seam (tests); node:http / node:https by default, not the global fetch
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  now?: () => number;
  log?: (level: MeteringLogLevel, msg: string) => void;
}

export interface RejectedRecord {
  id: string;
  reason: string;
}

export interface FlushResult {
  sent: number; // records the endpoint answered for: accepted + duplicate + rejected
  accepted: number;
  duplicate: number;
  rejected: RejectedRecord[]; // dropped from the spool: resending them as they are cannot succeed
  pending: number; // records of this flush still in the spool
  warnings: string[];
}

export type FlushableSpool = Pick<MeteringSpool, 'pending' | 'ack'> & { readonly dir?: string };

// deferred: the server keeps no copy and asks for it to be sent with another credential (a record of another
// project's lease, flushed from a spool two projects share): it stays in the spool.
type RecordAnswer = Pick<RecordResult, 'status' | 'reason'>;
type Outcome =
  | { kind: 'answered'; answers: Map<number, RecordAnswer> }
  | { kind: 'retry'; why: string; retryAfterMs?: number }
  | { kind: 'split'; why: string }
  | { kind: 'stop'; why: string };

const PREFIX = 'Build Cloud metering:';
const MAX_REJECTION_WARNINGS = 10;

export { backoffDelay };

/** Retry-After in ms: delay-seconds or an HTTP date (RFC 9110); undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

export async function flushSpool(spool: FlushableSpool, opts: FlushOptions): Promise<FlushResult> {
  const o = {
    batchSize: 100,
    attempts: 5,
    baseDelayMs: 500,
    maxDelayMs: 10_000,
    deadlineMs: 30_000,
    requestTimeoutMs: 10_000,
    request: httpRequest,
    sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
    random: Math.random,
    now: Date.now,
    ...stripUndefined(opts)
  };
  const token = opts.token ?? '';
  const result: FlushResult = { sent: 0, accepted: 0, duplicate: 0, rejected: [], pending: 0, warnings: [] };
  // The token may be echoed by a proxy or sit in an error message: scrub it from everything we report.
  const redact = (s: string) => (token.length >= 4 ? s.split(token).join('***') : s);
  const warn = (msg: string) => result.warnings.push(redact(`${PREFIX} ${msg}`));
  const log = (level: MeteringLogLevel, msg: string) => {
    try {
      o.log?.(level, redact(msg));
    } catch {
      // a broken logger is no reason to lose the flush
    }
  };

  let events: CloudEvent[];
  try {
    events = await spool.pending();
  } catch (err) {
    warn(`could not read the spool${spool.dir ? ` ${spool.dir}` : ''}: ${errorText(err)}; nothing was sent`);
    return result;
  }
  result.pending = events.length;
  if (events.length === 0) return result;

  const url = eventsUrl(String(opts.endpoint ?? ''));
  if (typeof url !== 'string') {
    warn(`${url.error}; ${records(events.length, 'usage record')} ${events.length === 1 ? 'stays' : 'stay'} in the spool`);
    return result;
  }
  if (!token) {
    warn(`no token to send usage records with; ${records(events.length)} ${events.length === 1 ? 'stays' : 'stay'} in the spool`);
    return result;
  }

  const deadline = o.now() + o.deadlineMs;
  const size = Math.min(Math.max(1, Math.floor(o.batchSize)), DEFAULT_MAX_BATCH);
  const queue: CloudEvent[][] = [];
  for (let i = 0; i < events.length; i += size) queue.push(events.slice(i, i + size));

  const post = async (batch: CloudEvent[], timeoutMs: number): Promise<Outcome> => {
    let res: HttpReply;
    try {
      res = await o.request(url, {
        method: 'POST',
        headers: { 'content-type': CONTENT_TYPE_BATCH, authorization: `Bearer ${token}`, accept: 'application/json' },
        body: JSON.stringify(batch),
        signal: AbortSignal.timeout(timeoutMs)
      });
    } catch (err) {
      return { kind: 'retry', why: requestErrorText(err, timeoutMs) };
    }
    const text = res.text;
    const why = `HTTP ${res.status}${serverMessage(text)}`;
    if (res.status >= 200 && res.status < 300) {
      const answers = parseAnswers(text, batch);
      return answers ? { kind: 'answered', answers } : { kind: 'retry', why: `HTTP ${res.status} with an unreadable body` };
    }
    if (res.status === 429 || res.status === 503) {
      return { kind: 'retry', why, retryAfterMs: parseRetryAfter(headerValue(res.headers, 'retry-after'), o.now()) };
    }
    if (res.status >= 500) return { kind: 'retry', why };
    if (res.status === 413) return { kind: 'split', why };
    if (res.status === 401 || res.status === 403) return { kind: 'stop', why: `the endpoint refused the token (${why})` };
    // 400 and the rest of 4xx: the request itself is wrong, and repeating it cannot help.
    return { kind: 'stop', why: `the endpoint refused the request (${why})` };
  };

  const record = async (batch: CloudEvent[], answers: Map<number, RecordAnswer>) => {
    const answered: string[] = [];
    const deferred: string[] = [];
    batch.forEach((ev, i) => {
      const a = answers.get(i);
      if (!a) return; // not answered for: it stays and goes again next time
      if (a.status === 'deferred') {
        deferred.push(a.reason ?? 'another credential must send it');
        return;
      }
      answered.push(ev.id);
      if (a.status === 'accepted') result.accepted++;
      else if (a.status === 'duplicate') result.duplicate++;
      else result.rejected.push({ id: ev.id, reason: a.reason ?? 'no reason given' });
    });
    result.sent += answered.length;
    if (deferred.length > 0) {
      warn(`${records(deferred.length)} ${deferred.length === 1 ? 'stays' : 'stay'} in the spool for a job of their own project: ${deferred[0]}`);
    } else if (answered.length < batch.length) {
      warn(`the endpoint answered for ${answered.length} of ${records(batch.length)}; the rest stay in the spool`);
    }
    try {
      await spool.ack(answered);
      result.pending -= answered.length;
    } catch (err) {
      // They will be sent again later and come back as duplicate: counted once all the same.
      warn(`could not remove ${answered.length} answered ${answered.length === 1 ? 'record' : 'records'} from the spool: ${errorText(err)}`);
    }
  };

  // Sends one batch; resolves to a reason when the whole flush should stop, undefined to go on.
  const sendBatch = async (batch: CloudEvent[]): Promise<string | undefined> => {
    let lastWhy = ''; // why the last try failed: the warning says it, not only that time ran out
    for (let attempt = 1; ; attempt++) {
      const remaining = deadline - o.now();
      if (remaining <= 0) return `${lastWhy ? `${lastWhy}; ` : ''}the flush deadline of ${o.deadlineMs} ms passed`;
      const out = await post(batch, Math.min(o.requestTimeoutMs, remaining));
      if (out.kind === 'answered') {
        await record(batch, out.answers);
        return undefined;
      }
      if (out.kind === 'stop') return out.why;
      if (out.kind === 'split') {
        if (batch.length > 1) {
          const half = Math.ceil(batch.length / 2);
          queue.unshift(batch.slice(0, half), batch.slice(half));
          log('debug', `${out.why}: splitting a batch of ${batch.length}`);
          return undefined;
        }
        warn(`record ${batch[0].id} is too large for the endpoint (${out.why}); it stays in the spool`);
        return undefined;
      }
      lastWhy = out.why;
      if (attempt >= o.attempts) return `${out.why}, after ${attempt} attempts`;
      const left = deadline - o.now();
      if (out.retryAfterMs !== undefined && out.retryAfterMs >= left) {
        // Waiting out the deadline only to stop would hold up the job for nothing.
        return `${out.why}; the endpoint asked to retry after ${Math.ceil(out.retryAfterMs / 1000)} s, past the flush deadline`;
      }
      const delay = Math.min(out.retryAfterMs ?? backoffDelay(attempt, o.baseDelayMs, o.maxDelayMs, o.random), left);
      log('debug', `${out.why}; retrying ${records(batch.length)} in ${delay} ms (attempt ${attempt + 1}/${o.attempts})`);
      await o.sleep(delay);
    }
  };

  const stopped = (why: string) =>
    warn(
      `${records(result.pending, 'usage record')} not sent yet to ${displayUrl(url)}: ${why}. ` +
        `They stay in the spool${spool.dir ? ` (${spool.dir})` : ''} and are sent by a later flush.`
    );
  try {
    while (queue.length > 0) {
      const stop = await sendBatch(queue.shift() as CloudEvent[]);
      if (stop) {
        stopped(stop);
        break;
      }
    }
  } catch (err) {
    // Only an injected sleep or a bug gets here; the promise is still: metering never fails the build.
    stopped(`unexpected error: ${errorText(err)}`);
  }
  for (const r of result.rejected.slice(0, MAX_REJECTION_WARNINGS)) warn(`record ${r.id} was rejected and dropped: ${r.reason}`);
  if (result.rejected.length > MAX_REJECTION_WARNINGS) {
    warn(
      `${records(result.rejected.length - MAX_REJECTION_WARNINGS, 'more record')} ${result.rejected.length - MAX_REJECTION_WARNINGS === 1 ? 'was' : 'were'} rejected and dropped`
    );
  }
  log(
    'info',
    `sent ${records(result.sent, 'usage record')}: ${result.accepted} accepted, ${result.duplicate} duplicate, ${result.rejected.length} rejected; ${result.pending} pending`
  );
  return result;
}

function eventsUrl(endpoint: string): string | { error: string } {
  let u: URL;
  try {
    u = new URL(endpoint.trim());
  } catch {
    return { error: `invalid metering endpoint; expected http(s)://host:port` };
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return { error: `metering endpoint must be http(s)://host:port, not ${u.protocol}` };
  // URLs with credentials would end up in warnings: the token is the only secret.
  if (u.username || u.password) return { error: 'metering endpoint must not hold credentials; the token is sent as a bearer token' };
  // A full events URL (the lease's metering_url, or another CloudEvents service's ingest path) is used as it is;
  // a bare base URL gets the control plane's path.
  const p = u.pathname.replace(/\/+$/, '');
  return /\/events$/.test(p) ? `${u.origin}${p}` : `${u.origin}${p}${EVENTS_PATH}`;
}

const displayUrl = (url: string) => (url.endsWith(EVENTS_PATH) ? url.slice(0, -EVENTS_PATH.length) : url);

// Maps the endpoint's per-record results to batch positions. null when the body is not the contract's reply.
function parseAnswers(text: string, batch: CloudEvent[]): Map<number, RecordAnswer> | null {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return null;
  }
  // Read as the contract's reply (EventsResponse), but every field is checked: a proxy or another service may answer.
  const results = (body as Partial<Record<keyof EventsResponse, unknown>> | null)?.results;
  if (!Array.isArray(results)) return null;
  const answers = new Map<number, RecordAnswer>();
  for (const r of results as Array<Partial<Record<keyof RecordResult, unknown>> | null>) {
    if (typeof r !== 'object' || r === null) continue;
    const status = r.status;
    if (!RECORD_STATUSES.includes(status as RecordStatus)) continue;
    const i = r.index;
    // An answer counts only when it names the record we sent there: a mismatched reply must not drop records.
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= batch.length) continue;
    if (typeof r.id === 'string' && r.id !== batch[i].id) continue;
    answers.set(i, { status: status as RecordStatus, ...(typeof r.reason === 'string' ? { reason: r.reason } : {}) });
  }
  return answers;
}

function serverMessage(text: string): string {
  try {
    const msg = (JSON.parse(text) as { error?: { message?: unknown } })?.error?.message;
    return typeof msg === 'string' ? `: ${msg.slice(0, 300)}` : '';
  } catch {
    return '';
  }
}

function requestErrorText(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `no reply within ${timeoutMs} ms`;
  const cause = e?.cause?.message ?? e?.cause?.code;
  return cause ? `${e.message ?? 'request failed'} (${cause})` : (e?.message ?? String(err));
}

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
