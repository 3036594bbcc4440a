// The control plane's HTTP API: the metering endpoint (usage records as CloudEvents), usage queries,
// Prometheus metrics and health. The contract is docs/metering.md; keep the two in step.
import { scopeCoversLease, scopeCoversProject, type PrincipalScope } from './scope';
import Fastify, { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, LogController } from 'fastify';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from './log';
import { DEFAULT_MAX_BATCH, EventsBodyError } from '../contract/cloudevents';
import type { EventsResponse, RecordResult, RecordStatus, UsageReport } from '../contract/http-api';
import { parseEventCandidate, splitEventsBody } from '../contract/metering-events';
import { SliceClock, TurnQueue } from './turns';
import { recordQueries } from './metering/record-queries';
import { monthOf, parseMonth, pipelineUsage } from './metering/usage';
import { projectUsage, ProjectUsageUnsupported } from './metering/project-usage';
import { RateLimited, rateLimitKey, type RateLimiter } from './rate-limit';
import type { Store, UsageRecordRow } from './store/store';
import { addConnectApi, isConnectPath, sendConnectHttpError } from './connect-api';
import type { RpcApi } from './rpc-api';

// A batch's records are checked in slices of at most INGEST_SLICE_MS of the event loop's time, one slice per turn
// (turns.ts), and written in transactions of at most INGEST_WRITE rows: other requests are served in between.
const INGEST_SLICE_MS = 4;
const INGEST_WRITE = 100;
// Shared by every ingest request of the process: their slices take turns.
const ingestTurns = new TurnQueue();

export interface Principal {
  kind: 'org' | 'admin';
  org: string | null; // null for admin
  subject: string; // who, for logs: token id or OIDC subject
  limitKey?: string; // the credential's rate-limit key (rate-limit.ts rateLimitKey); derived from the above when absent
  scope?: PrincipalScope; // the credential's project scope (scope.ts); undefined: the whole org
}

/** Caps on stored usage records (0 = no cap). Records beyond a cap are rejected one by one, never stored. */
export interface RecordCaps {
  perLease: number; // records stored per lease (--max-records-per-lease)
  perOrgDay: number; // records an org stores per UTC day, counted by arrival (--max-records-per-org-day)
}

export interface HttpMetrics {
  registry: Registry;
  recordsAccepted: Counter;
  recordsDuplicate: Counter;
  recordsRejected: Counter;
}

export interface HttpDeps {
  store: Store;
  authenticate: (bearer: string) => Promise<Principal | null>;
  metrics: HttpMetrics;
  usage: (org: string, month: string /* YYYY-MM */) => Promise<UsageReport>;
  log?: Logger;
  maxBatch?: number; // events per request, default 1000
  bodyLimitBytes?: number; // default 4 MiB
  now?: () => number;
  tls?: { cert: string; key: string }; // serve HTTPS (PEM)
  recordLimiter?: RateLimiter | null; // usage records per second per credential; none: no limit
  recordCaps?: RecordCaps; // default: no caps
  rpc?: { api: RpcApi; log: Logger }; // the contract's methods over Connect (connect-api.ts); none: not served here
}

export const DEFAULT_BODY_LIMIT = 4 * 1024 * 1024;

/** All metrics of the control plane, in a registry of their own (tests make several). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    recordsAccepted: new Counter({
      name: 'buildcloud_usage_records_accepted_total',
      help: 'Usage records stored for the first time',
      registers
    }),
    recordsDuplicate: new Counter({
      name: 'buildcloud_usage_records_duplicate_total',
      help: 'Usage records whose id was already stored (client retries)',
      registers
    }),
    recordsRejected: new Counter({
      name: 'buildcloud_usage_records_rejected_total',
      help: 'Usage records refused as invalid, not belonging to the caller, or over a record cap',
      registers
    }),
    rateLimited: new Counter({
      name: 'buildcloud_rate_limited_total',
      help: 'Requests refused by a per-credential rate limit, by limit (provision, records)',
      labelNames: ['limit'] as const,
      registers
    }),
    provisions: new Counter({
      name: 'buildcloud_provisions_total',
      help: 'Provision calls by result (ok, bucket_exhausted, error, ...)',
      labelNames: ['result'] as const,
      registers
    }),
    provisionLatency: new Histogram({
      name: 'buildcloud_provision_latency_seconds',
      help: 'Time from Provision request to a ready builder; target at most 3 s',
      labelNames: ['warm'] as const,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30],
      registers
    }),
    activeLeases: new Gauge({ name: 'buildcloud_active_leases', help: 'Leases not yet ended', registers }),
    activeBuilders: new Gauge({ name: 'buildcloud_active_builders', help: 'Builders running (warm, assigned, in grace)', registers }),
    warmBuilders: new Gauge({ name: 'buildcloud_warm_builders', help: 'Builders started and ready in the warm pool', registers }),
    reapedLeases: new Counter({
      name: 'buildcloud_reaped_leases_total',
      help: 'Leases ended by the reaper, by reason (idle, ttl)',
      labelNames: ['reason'] as const,
      registers
    })
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

// What each record's status means (deferred included): src/contract/http-api.ts, RecordStatus.

function sendError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).send({ error: { code, message } });
}

// 429 with Retry-After (whole seconds) and an error that names the limit and the flag that sets it.
function sendRateLimited(reply: FastifyReply, err: RateLimited): FastifyReply {
  reply.header('retry-after', String(err.retryAfterSeconds));
  return reply.code(429).send({
    error: { code: 'rate_limited', message: err.message, limit: err.limit, flag: err.flag, retryAfterSeconds: err.retryAfterSeconds }
  });
}

const DAY_MS = 86_400_000;

// Fastify's own errors (body parsing, limits) mapped to stable codes that clients can switch on.
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_content_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_body',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json'
};

// Per-request lines at ~300 builds/s would drown the lease life-cycle logs: they go to debug. Server errors
// are logged once, by the error handler below.
class QuietRequestLogs extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    request.log.debug({ req: request }, 'incoming request');
  }
  override requestCompleted(_error: Error | null | undefined, _request: FastifyRequest, reply: FastifyReply): void {
    reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}

export function buildHttpApp(deps: HttpDeps): FastifyInstance {
  const now = deps.now ?? Date.now;
  const maxBatch = deps.maxBatch ?? DEFAULT_MAX_BATCH;
  const bodyLimit = deps.bodyLimitBytes ?? DEFAULT_BODY_LIMIT;
  const limiter = deps.recordLimiter ?? null;
  const caps: RecordCaps = deps.recordCaps ?? { perLease: 0, perOrgDay: 0 };
  const queries = recordQueries(deps.store); // made now: on SQLite it creates its indexes at start, not mid-request
  // Records each org stored on the current UTC day: counted from the store once per org and day, then kept here.
  const orgDays = new Map<string, { day: number; count: number; ready: Promise<void> }>();
  const orgDay = async (org: string, receivedAt: number) => {
    const day = Math.floor(receivedAt / DAY_MS);
    let e = orgDays.get(org);
    if (!e || e.day !== day) {
      if (orgDays.size >= 100_000) orgDays.clear(); // orgs are made by an admin; this bound is only a backstop
      const entry = { day, count: 0, ready: Promise.resolve() };
      entry.ready = queries.countOrgRecordsSince(org, day * DAY_MS).then((n) => void (entry.count += n));
      orgDays.set(org, entry);
      e = entry;
    }
    await e.ready;
    return e;
  };
  const app = Fastify({
    ...(deps.tls ? { https: { cert: deps.tls.cert, key: deps.tls.key } } : {}),
    ...(deps.log ? { loggerInstance: deps.log } : { logger: false }),
    bodyLimit,
    logController: new QuietRequestLogs()
  }) as unknown as FastifyInstance;

  // The events body is parsed by splitEventsBody (then checked event by event), whatever its content type, so that a wrong content type
  // or bad JSON gets this API's error format and names what to send instead.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status < 500 && isConnectPath(req.url)) return sendConnectHttpError(reply, status, req.method, req.url, err.message);
    if (status === 413) {
      return sendError(reply, 413, 'payload_too_large', `request body exceeds ${bodyLimit} bytes; send smaller batches`);
    }
    if (status < 500) return sendError(reply, status, FASTIFY_CODES[err.code] ?? 'bad_request', err.message);
    req.log.error({ err, url: req.url }, 'request failed');
    return sendError(reply, 500, 'internal', 'internal error; the request may be retried');
  });
  app.setNotFoundHandler((req, reply) =>
    isConnectPath(req.url)
      ? sendConnectHttpError(reply, 404, req.method, req.url, '')
      : sendError(reply, 404, 'not_found', `no route ${req.method} ${req.url.split('?')[0]}; see docs/metering.md`)
  );

  // Principals per request; a WeakMap instead of decorating FastifyRequest keeps the types local.
  const principals = new WeakMap<FastifyRequest, Principal>();
  // onRequest runs before the body is read: an unauthenticated caller never makes us parse megabytes.
  const authenticate = async (req: FastifyRequest, reply: FastifyReply) => {
    const header = req.headers.authorization;
    const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      reply.header('www-authenticate', 'Bearer');
      return sendError(reply, 401, 'unauthenticated', 'missing "Authorization: Bearer <token>" header; use an org token');
    }
    const principal = await deps.authenticate(m[1]);
    if (!principal) {
      reply.header('www-authenticate', 'Bearer error="invalid_token"');
      return sendError(reply, 401, 'unauthenticated', 'the bearer token is invalid, expired or revoked; use a current org token');
    }
    principals.set(req, principal);
  };
  const principalOf = (req: FastifyRequest): Principal => principals.get(req) as Principal;

  app.get('/healthz', async () => ({ status: 'ok' }));
  if (deps.rpc) addConnectApi(app, deps.rpc.api, deps.rpc.log);

  // No auth: the HTTP listener is on loopback by default (see docs/metering.md before exposing it).
  app.get('/metrics', async (_req, reply) => {
    reply.type(deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });

  app.post('/v1/events', { onRequest: authenticate }, async (req, reply) => {
    const principal = principalOf(req);
    if (principal.kind !== 'org' || !principal.org) {
      return sendError(reply, 403, 'forbidden', 'usage records are sent with an org token; an admin token has no org');
    }
    const org = principal.org;
    const key = principal.limitKey ?? rateLimitKey(principal);
    let parsed;
    try {
      // An empty bucket refuses before the body is parsed; a batch is charged per event once its size is known.
      limiter?.precheck(key);
      parsed = splitEventsBody(req.headers['content-type'], req.body ?? '', maxBatch);
      limiter?.check(key, parsed.length);
    } catch (err) {
      if (err instanceof EventsBodyError) return sendError(reply, err.status, err.code, err.message);
      if (err instanceof RateLimited) {
        req.log.debug({ org, key, limit: err.limit, retryAfterSeconds: err.retryAfterSeconds }, 'rate limited');
        return sendRateLimited(reply, err);
      }
      throw err;
    }
    const receivedAt = now();
    const leaseOwned = new Map<string, 'own' | 'other-project' | 'no'>(); // batches name the same lease many times
    const leaseStored = new Map<string, number>(); // records each lease holds, counted once per request
    const results: RecordResult[] = [];
    // New records are inserted together after the loop, in one commit (the store's group commit): one fsync per
    // request, not per record. Each is a new record when checked (not stored, not earlier in this batch), so the
    // caps count exactly; one that a concurrent request stored in between comes back a duplicate.
    const toInsert: Array<{ row: UsageRecordRow; result: RecordResult }> = [];
    const inBatch = new Set<string>(); // lease id + record id of records admitted from this request
    const clock = new SliceClock(INGEST_SLICE_MS);
    for (let index = 0; index < parsed.length; index++) {
      // A batch of up to 1000 records is checked in slices with other requests (/healthz, gRPC) served in between.
      if (clock.spent()) {
        await ingestTurns.next();
        clock.restart();
      }
      const pe = parseEventCandidate(parsed[index], index);
      const base = { index: pe.index, id: pe.id ?? null };
      const reject = (reason: string) => results.push({ ...base, status: 'rejected', reason });
      if (!pe.event) {
        reject(pe.error ?? 'invalid event');
        continue;
      }
      const ev = pe.event;
      if (ev.subject !== org) {
        reject(`subject "${ev.subject}" is not the token's org "${org}"; set subject to your org`);
        continue;
      }
      // Both event types carry a lease_id (validated). The same message for "no such lease" and "another
      // org's lease", so lease ids of other orgs cannot be probed.
      const leaseId = ev.data.lease_id as string;
      let owned = leaseOwned.get(leaseId);
      if (owned === undefined) {
        const lease = await deps.store.getLease(leaseId);
        owned = !lease || lease.org !== org ? 'no' : scopeCoversLease(principal.scope, lease.identity) ? 'own' : 'other-project';
        leaseOwned.set(leaseId, owned);
      }
      if (owned === 'no') {
        reject(`data.lease_id "${leaseId}" is not a lease of org "${org}"`);
        continue;
      }
      // A lease of another project of the org: this credential may not write its records (they would count in
      // that project's builds), but they are not wrong either. Kept by the client for a job of that project.
      if (owned === 'other-project') {
        results.push({
          ...base,
          status: 'deferred',
          reason: `data.lease_id "${leaseId}" is a lease this credential did not provision (another project, branch or kind of run); send it with a credential of that lease's job`
        });
        continue;
      }
      // A resend (stored before, or earlier in this batch) is a duplicate, whatever the caps say.
      const batchKey = JSON.stringify([leaseId, ev.id]);
      if (inBatch.has(batchKey) || (await queries.recordExists(org, leaseId, ev.id))) {
        results.push({ ...base, status: 'duplicate' });
        continue;
      }
      // Record caps: a new record over one is rejected (not stored).
      let stored = caps.perLease > 0 ? leaseStored.get(leaseId) : 0;
      if (stored === undefined) {
        stored = await queries.countLeaseRecords(org, leaseId);
        leaseStored.set(leaseId, stored);
      }
      const day = caps.perOrgDay > 0 ? await orgDay(org, receivedAt) : null;
      const overLease = caps.perLease > 0 && stored >= caps.perLease;
      const overDay = day !== null && day.count >= caps.perOrgDay;
      if (overLease) {
        reject(
          `lease "${leaseId}" already holds ${caps.perLease} usage records, the most one lease may store ` +
            `(set by --max-records-per-lease); this record was not stored`
        );
        continue;
      }
      if (overDay) {
        reject(
          `org "${org}" already stored ${caps.perOrgDay} usage records today (UTC), the most one org may store per day ` +
            `(set by --max-records-per-org-day); this record was not stored. Billing is unaffected: it comes from leases`
        );
        continue;
      }
      inBatch.add(batchKey);
      if (caps.perLease > 0) leaseStored.set(leaseId, stored + 1);
      if (day) day.count++;
      const result: RecordResult = { ...base, status: 'accepted' };
      results.push(result);
      toInsert.push({
        row: { id: ev.id, org, type: ev.type, time: ev.time ? Date.parse(ev.time) : receivedAt, receivedAt, leaseId, data: ev.data },
        result
      });
    }
    // A store failure here throws: the client retries the whole batch, and what was already stored comes back as
    // duplicate, so nothing is counted twice. The reply goes out only after the commit: 'accepted' is durable.
    const slices: Array<typeof toInsert> = [];
    for (let i = 0; i < toInsert.length; i += INGEST_WRITE) slices.push(toInsert.slice(i, i + INGEST_WRITE));
    const inserted = (await Promise.all(slices.map((slice) => deps.store.insertUsageRecords(slice.map((t) => t.row))))).flat();
    inserted.forEach((r, i) => {
      if (r === 'duplicate') toInsert[i].result.status = 'duplicate';
    });
    const count = (s: RecordStatus) => results.filter((r) => r.status === s).length;
    const accepted = count('accepted');
    const duplicate = count('duplicate');
    const rejected = count('rejected');
    const deferred = count('deferred');
    deps.metrics.recordsAccepted.inc(accepted);
    deps.metrics.recordsDuplicate.inc(duplicate);
    deps.metrics.recordsRejected.inc(rejected);
    if (rejected > 0) req.log.warn({ org, subject: principal.subject, rejected }, 'usage records rejected');
    if (deferred > 0) req.log.info({ org, subject: principal.subject, deferred }, 'usage records of another project deferred');
    return { results, accepted, duplicate, rejected, deferred } satisfies EventsResponse;
  });

  app.get<{ Params: { org: string }; Querystring: { month?: unknown } }>('/v1/orgs/:org/usage', { onRequest: authenticate }, async (req, reply) => {
    const principal = principalOf(req);
    const org = req.params.org;
    // Another org's usage is "not found", never "forbidden": whether an org exists is not revealed.
    const notFound = () => sendError(reply, 404, 'not_found', `org "${org}" not found`);
    if (principal.kind === 'org' && principal.org !== org) return notFound();
    if (principal.kind === 'admin' && !(await deps.store.getOrg(org))) return notFound();
    // The org's report covers every project (actors, builds, minutes): for its admin, not one project's jobs.
    if (principal.scope) {
      return sendError(
        reply,
        403,
        'forbidden',
        "a project-scoped credential (an OIDC access token or a --project/--branches token) cannot read the whole org's usage; use an unscoped org token (buildcloud admin token create --org ORG)"
      );
    }
    const month = req.query.month ?? monthOf(now());
    if (typeof month !== 'string' || !parseMonth(month)) {
      return sendError(reply, 400, 'invalid_parameter', 'query parameter "month" must be YYYY-MM, e.g. 2025-01');
    }
    return deps.usage(org, month);
  });

  app.get<{ Params: { org: string }; Querystring: { key?: unknown } }>('/v1/orgs/:org/pipelines/usage', { onRequest: authenticate }, async (req, reply) => {
    const principal = principalOf(req);
    const org = req.params.org;
    if (principal.kind === 'org' && principal.org !== org) return sendError(reply, 404, 'not_found', `org "${org}" not found`);
    const key = req.query.key;
    if (typeof key !== 'string' || !key || key.length > 256) {
      return sendError(reply, 400, 'invalid_parameter', 'query parameter "key" must be the pipeline key (1-256 characters)');
    }
    // Pipeline keys are visible in run URLs: a project-scoped credential sees its own project's leases only.
    return pipelineUsage(deps.store, org, key, now(), (l) =>
      scopeCoversProject(principal.scope, typeof l.identity.project === 'string' ? l.identity.project : '')
    );
  });

  app.get<{ Params: { org: string }; Querystring: { project?: unknown; month?: unknown } }>(
    '/v1/orgs/:org/projects/usage',
    { onRequest: authenticate },
    async (req, reply) => {
      const principal = principalOf(req);
      const org = req.params.org;
      const notFound = () => sendError(reply, 404, 'not_found', `org "${org}" not found`);
      if (principal.kind === 'org' && principal.org !== org) return notFound();
      if (principal.kind === 'admin' && !(await deps.store.getOrg(org))) return notFound();
      const project = req.query.project;
      if (typeof project !== 'string' || !project || project.length > 256) {
        return sendError(reply, 400, 'invalid_parameter', 'query parameter "project" must be the project path (1-256 characters), e.g. acme/app');
      }
      // A project-scoped credential reads its own projects only.
      if (principal.scope && !scopeCoversProject(principal.scope, project)) {
        return sendError(reply, 403, 'forbidden', `this credential is scoped to other projects than "${project.slice(0, 40)}"; use an unscoped org token`);
      }
      const month = req.query.month ?? monthOf(now());
      if (typeof month !== 'string' || !parseMonth(month)) {
        return sendError(reply, 400, 'invalid_parameter', 'query parameter "month" must be YYYY-MM, e.g. 2025-01');
      }
      try {
        return await projectUsage(deps.store, org, project, month, now());
      } catch (err) {
        if (err instanceof ProjectUsageUnsupported) return sendError(reply, 501, 'unsupported', err.message);
        throw err;
      }
    }
  );

  return app;
}
