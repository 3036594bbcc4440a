import type { FastifyInstance } from 'fastify';
import { mkdtempSync, rmSync } from 'node:fs';
import pino from 'pino';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildHttpApp, createMetrics, HttpDeps, Principal } from '../../src/server/http';
import { buildCompletedEvent, jobCompletedEvent } from '../../src/contract/metering-events';
import { computeUsage } from '../../src/server/metering/usage';
import { RateLimiter } from '../../src/server/rate-limit';
import { openSqliteStore, SqliteStore } from '../../src/server/store/sqlite';
import { LeaseRow } from '../../src/server/store/store';

const NOW = Date.UTC(2025, 0, 15, 12, 0, 0); // 2025-01-15T12:00:00Z
const TOKENS: Record<string, Principal> = {
  'tok-acme': { kind: 'org', org: 'acme', subject: 't-acme' },
  'tok-beta': { kind: 'org', org: 'beta', subject: 't-beta' },
  'tok-admin': { kind: 'admin', org: null, subject: 'admin' },
  // An OIDC job of acme/app (its access token's verified project).
  'tok-acme-app': {
    kind: 'org',
    org: 'acme',
    subject: 'repo:acme/app',
    scope: {
      projects: null,
      branches: null,
      readOnly: false,
      verified: { provider: 'github', project: 'acme/app', branch: 'main', changeRequest: false, refProtected: null, readOnly: false, readOnlyReason: '' }
    }
  }
};

let dir: string;
let store: SqliteStore;
let app: FastifyInstance;
let metrics: ReturnType<typeof createMetrics>;

const lease = (id: string, org: string, over: Partial<LeaseRow> = {}): LeaseRow => ({
  id,
  org,
  pipelineKey: 'p',
  jobId: 'j',
  scope: 'pipeline',
  platforms: ['linux/amd64'],
  builderIds: ['b'],
  identity: {},
  actor: 'ann',
  certFingerprint: 'f',
  registryUser: 'u',
  registryPasswordHash: 'h',
  createdAt: NOW - 60_000,
  lastActiveAt: NOW - 60_000,
  endedAt: null,
  endReason: null,
  billedSeconds: null,
  ...over
});

// fastify's app.inject loads light-my-request, whose `cookie` dependency is ESM-only; Jest on Node 20
// cannot require ESM, so requests go over a real loopback socket instead, with an inject-like result.
interface Reply {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
  json(): any; // eslint-disable-line @typescript-eslint/no-explicit-any
}
const bases = new WeakMap<FastifyInstance, string>();
async function request(a: FastifyInstance, opts: { method: string; url: string; headers?: Record<string, string>; payload?: string }): Promise<Reply> {
  let base = bases.get(a);
  if (!base) {
    base = await a.listen({ host: '127.0.0.1', port: 0 });
    bases.set(a, base);
  }
  const res = await fetch(base + opts.url, { method: opts.method, headers: opts.headers, body: opts.payload });
  const body = await res.text();
  return { statusCode: res.status, headers: Object.fromEntries(res.headers.entries()), body, json: () => JSON.parse(body) };
}

function makeApp(over: Partial<HttpDeps> = {}): FastifyInstance {
  const deps: HttpDeps = {
    store,
    authenticate: async (bearer) => TOKENS[bearer] ?? null,
    metrics,
    usage: (org, month) => computeUsage(store, org, month, NOW),
    now: () => NOW,
    ...over
  };
  return buildHttpApp(deps);
}

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bc-http-'));
  store = openSqliteStore(join(dir, 'buildcloud.db'));
  metrics = createMetrics();
  await store.createOrg('acme', 0);
  await store.createOrg('beta', 0);
  await store.insertLease(lease('L-acme', 'acme'));
  await store.insertLease(lease('L-beta', 'beta'));
  app = makeApp();
});
afterEach(async () => {
  await app.close();
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

const build = (
  buildId: string,
  over: { org?: string; lease?: string; total?: number; cached?: number; status?: 'success' | 'failure'; actor?: string; time?: number } = {}
) =>
  buildCompletedEvent(
    over.org ?? 'acme',
    {
      lease_id: over.lease ?? 'L-acme',
      build_id: buildId,
      platform: 'linux/amd64',
      status: over.status ?? 'success',
      duration_ms: 2000,
      total_steps: over.total ?? 4,
      cached_steps: over.cached ?? 2,
      actor: over.actor ?? 'ann'
    },
    { time: over.time ?? NOW - 1000, source: '/buildcloud/github' }
  );

const post = (body: unknown, { token = 'tok-acme', type = 'application/cloudevents-batch+json', a = app } = {}) =>
  request(a, {
    method: 'POST',
    url: '/v1/events',
    headers: { 'content-type': type, ...(token ? { authorization: `Bearer ${token}` } : {}) },
    payload: typeof body === 'string' ? body : JSON.stringify(body)
  });

describe('health and metrics', () => {
  test('GET /healthz needs no token', async () => {
    const r = await request(app, { method: 'GET', url: '/healthz' });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual({ status: 'ok' });
  });

  test('GET /metrics is Prometheus text with the record counters', async () => {
    await post([build('b1'), build('b1'), build('b2', { org: 'beta' })]);
    const r = await request(app, { method: 'GET', url: '/metrics' });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain/);
    expect(r.body).toMatch(/^buildcloud_usage_records_accepted_total 1$/m);
    expect(r.body).toMatch(/^buildcloud_usage_records_duplicate_total 1$/m);
    expect(r.body).toMatch(/^buildcloud_usage_records_rejected_total 1$/m);
    expect(r.body).toContain('# TYPE buildcloud_provision_latency_seconds histogram');
    expect(r.body).toContain('buildcloud_active_leases');
    expect(r.body).toContain('process_cpu_user_seconds_total'); // default metrics
  });

  test('unknown routes get the JSON error format', async () => {
    const r = await request(app, { method: 'GET', url: '/nope?x=1' });
    expect(r.statusCode).toBe(404);
    expect(r.json()).toEqual({ error: { code: 'not_found', message: expect.stringContaining('GET /nope') } });
  });
});

describe('POST /v1/events', () => {
  test('a single event in structured mode is accepted', async () => {
    const e = build('b1');
    const r = await post(e, { type: 'application/cloudevents+json' });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual({ results: [{ index: 0, id: e.id, status: 'accepted' }], accepted: 1, duplicate: 0, rejected: 0, deferred: 0 });
    const [rec] = await store.usageRecords('acme', 0, NOW * 2);
    expect(rec).toMatchObject({ id: e.id, org: 'acme', leaseId: 'L-acme', time: NOW - 1000, receivedAt: NOW });
    expect(rec.data).toMatchObject({ build_id: 'b1', cache_ratio: 0.5 });
  });

  test('a record sent twice counts once, also in a later request', async () => {
    const e = build('b1');
    const r1 = await post([e, build('b2'), e]);
    expect(r1.json()).toMatchObject({ accepted: 2, duplicate: 1, rejected: 0 });
    expect(r1.json().results.map((x: { status: string }) => x.status)).toEqual(['accepted', 'accepted', 'duplicate']);
    const r2 = await post(e, { type: 'application/json' });
    expect(r2.json()).toMatchObject({ results: [{ id: e.id, status: 'duplicate' }], accepted: 0, duplicate: 1 });
    expect(await store.usageRecords('acme', 0, NOW * 2)).toHaveLength(2);
  });

  test('one bad record in a batch is rejected alone, with the field named', async () => {
    const bad = { ...build('b2'), data: { ...build('b2').data, cached_steps: 9 } };
    const r = await post([build('b1'), bad, 'junk', build('b3')]);
    expect(r.statusCode).toBe(200);
    const body = r.json();
    expect(body).toMatchObject({ accepted: 2, duplicate: 0, rejected: 2 });
    expect(body.results[1]).toEqual({ index: 1, id: bad.id, status: 'rejected', reason: expect.stringMatching(/data.cached_steps/) });
    expect(body.results[2]).toEqual({ index: 2, id: null, status: 'rejected', reason: 'event must be a JSON object' });
  });

  test("another org's subject is rejected", async () => {
    const r = await post([build('b1', { org: 'beta', lease: 'L-beta' })]);
    expect(r.json().results[0]).toMatchObject({ status: 'rejected', reason: expect.stringMatching(/subject "beta" is not the token's org "acme"/) });
    expect(await store.usageRecords('beta', 0, NOW * 2)).toEqual([]);
  });

  test("another org's lease, or no lease, is rejected the same way", async () => {
    const r = await post([build('b1', { lease: 'L-beta' }), build('b2', { lease: 'L-none' })]);
    const [a, b] = r.json().results;
    expect(a.reason).toBe('data.lease_id "L-beta" is not a lease of org "acme"');
    expect(b.reason).toBe('data.lease_id "L-none" is not a lease of org "acme"');
    expect(r.json().rejected).toBe(2);
  });

  test("a project's credential cannot write another project's records; they are deferred, not stored and not dropped", async () => {
    await store.insertLease(lease('L-app', 'acme', { identity: { project: 'acme/app', branch: 'main' } }));
    await store.insertLease(lease('L-billing', 'acme', { identity: { project: 'acme/billing', branch: 'main' } }));
    // A pull request's read-only lease of acme/app: a push's credential of acme/app does not cover it either.
    await store.insertLease(lease('L-app-pr', 'acme', { identity: { project: 'acme/app', branch: 'main', readOnly: true, changeRequest: true } }));
    const pr = await post([build('b3', { lease: 'L-app-pr' })], { token: 'tok-acme-app' });
    expect(pr.json()).toMatchObject({ accepted: 0, deferred: 1 });
    const r = await post([build('b1', { lease: 'L-app' }), build('b2', { lease: 'L-billing' })], { token: 'tok-acme-app' });
    expect(r.json()).toMatchObject({ accepted: 1, rejected: 0, deferred: 1 });
    expect(r.json().results[1]).toEqual({
      index: 1,
      id: expect.any(String),
      status: 'deferred',
      reason:
        'data.lease_id "L-billing" is a lease this credential did not provision (another project, branch or kind of run); send it with a credential of that lease\'s job'
    });
    expect((await store.usageRecords('acme', 0, NOW * 2)).map((x) => x.data.lease_id)).toEqual(['L-app']);
    // Control: the org-admin token (unscoped) sends it.
    expect((await post([build('b2', { lease: 'L-billing' })])).json()).toMatchObject({ accepted: 1, deferred: 0 });
  });

  test("a pipeline's usage shows a project-scoped credential only its own project's leases (pipeline keys are in run URLs)", async () => {
    await store.insertLease(lease('L-app', 'acme', { pipelineKey: 'shared', identity: { project: 'acme/app' } }));
    await store.insertLease(lease('L-billing', 'acme', { pipelineKey: 'shared', identity: { project: 'acme/billing' } }));
    const get = (token: string) =>
      request(app, { method: 'GET', url: '/v1/orgs/acme/pipelines/usage?key=shared', headers: { authorization: `Bearer ${token}` } });
    expect((await get('tok-acme-app')).json().leases).toBe(1);
    expect((await get('tok-acme')).json().leases).toBe(2); // control: the org-admin token sees both
  });

  test("within an org, a record id posted first for another lease never makes this lease's record a duplicate", async () => {
    await store.insertLease(lease('L-other', 'acme'));
    const real = build('b1'); // the id acme's client derives for its build on L-acme
    const squat = { ...real, data: { ...real.data, lease_id: 'L-other' } };
    expect((await post([squat])).json().results[0].status).toBe('accepted'); // a record of L-other, kept as such
    expect((await post([real])).json().results[0].status).toBe('accepted');
    expect((await post([real])).json().results[0].status).toBe('duplicate'); // control: its own resend
  });

  test("a project-scoped credential cannot read the whole org's usage report (every project's actors and builds)", async () => {
    const r = await request(app, { method: 'GET', url: '/v1/orgs/acme/usage', headers: { authorization: 'Bearer tok-acme-app' } });
    expect(r.statusCode).toBe(403);
    expect(r.json().error.message).toMatch(/project-scoped credential .* cannot read the whole org's usage/);
    expect((await request(app, { method: 'GET', url: '/v1/orgs/acme/usage', headers: { authorization: 'Bearer tok-acme' } })).statusCode).toBe(200);
  });

  test("another org sending a record with the same id cannot make the org's record a duplicate", async () => {
    const e = build('b1');
    // beta squats acme's id first: it is beta's own record, counted for beta.
    const forged = { ...e, subject: 'beta', data: { ...e.data, lease_id: 'L-beta' } };
    const r = await post([forged], { token: 'tok-beta' });
    expect(r.json()).toEqual({ results: [{ index: 0, id: e.id, status: 'accepted' }], accepted: 1, duplicate: 0, rejected: 0, deferred: 0 });
    // acme's real record is still accepted, and its resend is the duplicate.
    expect((await post([e])).json().results).toEqual([{ index: 0, id: e.id, status: 'accepted' }]);
    expect((await post([e])).json().results).toEqual([{ index: 0, id: e.id, status: 'duplicate' }]);
    expect((await store.usageRecords('acme', 0, NOW * 2)).map((x) => x.data.lease_id)).toEqual(['L-acme']);
    expect((await store.usageRecords('beta', 0, NOW * 2)).map((x) => x.data.lease_id)).toEqual(['L-beta']);
  });

  test('job records are accepted', async () => {
    const job = jobCompletedEvent('acme', {
      lease_id: 'L-acme',
      wall_seconds: 30,
      builds: 1,
      actor: 'ann',
      provider: 'github',
      project: 'acme/api',
      pipeline_key: 'p',
      job_id: 'j'
    });
    expect((await post([job])).json()).toMatchObject({ accepted: 1 });
  });

  test.each<[string, { token?: string }, string]>([
    ['missing token', { token: '' }, 'missing "Authorization: Bearer <token>" header'],
    ['bad token', { token: 'nope' }, 'invalid, expired or revoked']
  ])('%s → 401', async (_n, opts, message) => {
    const r = await post([build('b1')], opts);
    expect(r.statusCode).toBe(401);
    expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(r.json().error).toEqual({ code: 'unauthenticated', message: expect.stringContaining(message) });
  });

  test('an admin token cannot send records', async () => {
    const r = await post([build('b1')], { token: 'tok-admin' });
    expect(r.statusCode).toBe(403);
  });

  test.each<[string, string, string, string]>([
    ['bad JSON', 'application/json', '[{"specversion":', 'invalid_json'],
    ['wrong content type', 'text/plain', '[]', 'unsupported_content_type'],
    ['binary mode', 'application/octet-stream', 'xx', 'unsupported_content_type'],
    ['empty body', 'application/json', '', 'invalid_json']
  ])('%s → 400', async (_n, type, body, code) => {
    const r = await post(body, { type });
    expect(r.statusCode).toBe(400);
    expect(r.json().error.code).toBe(code);
    expect(r.json().error.message.length).toBeGreaterThan(10);
  });

  test('no content type at all → 400 naming the content types to use', async () => {
    const r = await request(app, {
      method: 'POST',
      url: '/v1/events',
      headers: { authorization: 'Bearer tok-acme' },
      payload: new Uint8Array(Buffer.from('[]')) as unknown as string
    });
    expect(r.statusCode).toBe(400);
    expect(r.json().error.message).toMatch(/application\/cloudevents-batch\+json/);
  });

  test('a failing store gives 500 in the JSON format, and the server keeps serving', async () => {
    const broken = makeApp({
      log: pino({ level: 'silent' }),
      store: Object.assign(Object.create(store), {
        insertUsageRecords: async () => {
          throw new Error('disk full');
        }
      })
    });
    const r = await post([build('b1')], { a: broken });
    expect(r.statusCode).toBe(500);
    expect(r.json().error).toEqual({ code: 'internal', message: expect.stringContaining('retried') });
    expect(r.body).not.toContain('disk full');
    expect((await request(broken, { method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    await broken.close();
  });

  test('a batch over the cap → 413, nothing stored', async () => {
    const small = makeApp({ maxBatch: 2 });
    const r = await post([build('b1'), build('b2'), build('b3')], { a: small });
    expect(r.statusCode).toBe(413);
    expect(r.json().error).toEqual({ code: 'batch_too_large', message: expect.stringMatching(/limit is 2/) });
    expect(await store.usageRecords('acme', 0, NOW * 2)).toEqual([]);
    await small.close();
  });

  test('a body over the byte limit → 413 in the JSON error format', async () => {
    const small = makeApp({ bodyLimitBytes: 1000 });
    const r = await post(
      Array.from({ length: 10 }, (_, i) => build(`b${i}`)),
      { a: small }
    );
    expect(r.statusCode).toBe(413);
    expect(r.json().error.code).toBe('payload_too_large');
    await small.close();
  });
});

describe('GET /v1/orgs/:org/usage', () => {
  const get = (url: string, token = 'tok-acme') => request(app, { method: 'GET', url, headers: { authorization: `Bearer ${token}` } });

  test("another org's usage is not found; so is a missing org for the admin", async () => {
    for (const [url, token] of [
      ['/v1/orgs/beta/usage?month=2025-01', 'tok-acme'],
      ['/v1/orgs/ghost/usage?month=2025-01', 'tok-acme'],
      ['/v1/orgs/ghost/usage?month=2025-01', 'tok-admin']
    ]) {
      const r = await get(url, token);
      expect(r.statusCode).toBe(404);
      expect(r.json().error).toEqual({ code: 'not_found', message: expect.stringMatching(/^org "(beta|ghost)" not found$/) });
    }
  });

  test.each(['2025-13', '2025-1', 'jan', '2025-01-01'])('month=%s → 400 naming the parameter', async (m) => {
    const r = await get(`/v1/orgs/acme/usage?month=${m}`);
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toEqual({ code: 'invalid_parameter', message: expect.stringContaining('"month" must be YYYY-MM') });
  });

  test('month given twice → 400', async () => {
    expect((await get('/v1/orgs/acme/usage?month=2025-01&month=2025-02')).statusCode).toBe(400);
  });

  test('needs a token', async () => {
    expect((await request(app, { method: 'GET', url: '/v1/orgs/acme/usage' })).statusCode).toBe(401);
  });

  test('usage numbers: minutes from lease records, detail from client records', async () => {
    await store.addBucket('acme', 6000, '100 minutes', 0);
    // Ended last month: counts against the bucket, not in January.
    await store.insertLease(
      lease('L-dec', 'acme', { createdAt: Date.UTC(2024, 11, 31, 23, 0), endedAt: Date.UTC(2024, 11, 31, 23, 10), endReason: 'released', billedSeconds: 600 })
    );
    // 'L-acme' ends in January after 90.5 s → 91 s; L-live is still running (30 s so far).
    await store.endLease('L-acme', NOW - 60_000 + 90_500, 'released', 91);
    await store.insertLease(lease('L-live', 'acme', { createdAt: NOW - 30_000, actor: 'dan' }));
    await store.insertLease(lease('L-beta2', 'beta', { endedAt: NOW, billedSeconds: 5000 }));

    const r1 = await post([
      build('b1', { total: 4, cached: 4, actor: 'ann' }),
      build('b2', { total: 4, cached: 2, actor: 'bob' }),
      build('b3', { total: 2, cached: 0, status: 'failure', actor: 'ann' }),
      build('b-old', { time: Date.UTC(2024, 11, 20) }) // December: not in January's detail
    ]);
    expect(r1.json().accepted).toBe(4);
    // A client claiming a huge duration does not change billed minutes.
    await post([{ ...build('b4'), data: { ...build('b4').data, duration_ms: 99_000_000 } }]);

    const r = await get('/v1/orgs/acme/usage?month=2025-01');
    expect(r.statusCode).toBe(200);
    const u = r.json();
    expect(u).toMatchObject({ org: 'acme', month: '2025-01', generatedAt: '2025-01-15T12:00:00.000Z', canProvision: true });
    expect(u.seconds).toEqual({ bought: 6000, used: 721, left: 5279, overdraft: 0, billed: 691, active: 30, usedInMonth: 121, reserved: 0, unreserved: 5309 });
    expect(u.minutes).toEqual({ bought: 100, used: 12.02, left: 87.98, overdraft: 0, usedInMonth: 2.02 });
    expect(u.leases).toEqual({ count: 2, ended: 1, active: 1 });
    expect(u.builds).toMatchObject({ count: 4, succeeded: 3, failed: 1, cancelled: 0, northStarGoal: 0.8, northStarMet: false });
    expect(u.builds.avgCacheRatio).toBe(0.5); // (1 + 0.5 + 0 + 0.5) / 4
    expect(u.builds.withCachedStepShare).toBe(0.75); // 3 of 4
    expect(u.users).toEqual({
      distinct: 2,
      top: [
        { actor: 'ann', builds: 3 },
        { actor: 'bob', builds: 1 }
      ]
    });

    // The admin sees the same; December shows the December lease only.
    const admin = await get('/v1/orgs/acme/usage?month=2024-12', 'tok-admin');
    expect(admin.statusCode).toBe(200);
    expect(admin.json().seconds.usedInMonth).toBe(600);
    expect(admin.json().leases).toEqual({ count: 1, ended: 1, active: 0 });
    expect(admin.json().builds.count).toBe(1);
  });

  test('month defaults to the current one', async () => {
    const r = await get('/v1/orgs/acme/usage');
    expect(r.statusCode).toBe(200);
    expect(r.json().month).toBe('2025-01');
  });

  test('an exhausted bucket reports 0 left and the overdraft', async () => {
    await store.addBucket('acme', 60, '', 0);
    await store.endLease('L-acme', NOW, 'released', 90);
    const u = (await get('/v1/orgs/acme/usage?month=2025-01')).json();
    expect(u.seconds).toMatchObject({ left: 0, overdraft: 30 });
    expect(u.minutes).toMatchObject({ left: 0, overdraft: 0.5 });
    expect(u.canProvision).toBe(false);
  });
});

describe('rate limit and record caps (issue 9)', () => {
  let clock: number;
  const limited = (over: Partial<HttpDeps> = {}) => {
    clock = NOW;
    return makeApp({
      now: () => clock,
      recordLimiter: new RateLimiter({
        limit: 'records',
        flag: '--record-rate',
        burstFlag: '--record-burst',
        unit: 'usage records',
        ratePerSecond: 10,
        burst: 20,
        now: () => clock,
        onLimited: () => metrics.rateLimited.inc({ limit: 'records' }) // as server.ts wires it
      }),
      ...over
    });
  };
  const batch = (prefix: string, n: number, over: Parameters<typeof build>[1] = {}) => Array.from({ length: n }, (_, i) => build(`${prefix}${i}`, over));

  test('records are counted per event: a batch over what is left → 429 with Retry-After and the flag, nothing stored', async () => {
    const a = limited();
    try {
      expect((await post(batch('a', 15), { a })).statusCode).toBe(200); // 5 left
      const r = await post(batch('b', 10), { a });
      expect(r.statusCode).toBe(429);
      expect(r.headers['retry-after']).toBe('1'); // 5 more at 10/s: 0.5 s, rounded up to whole seconds
      expect(r.json()).toEqual({
        error: {
          code: 'rate_limited',
          limit: 'records',
          flag: '--record-rate',
          retryAfterSeconds: 1,
          message:
            "Rate limit exceeded: at most 10 usage records per second per credential (bursts of 20); retry after 1 s. The control plane's operator sets this limit with --record-rate and --record-burst."
        }
      });
      expect(await store.usageRecords('acme', 0, NOW * 2)).toHaveLength(15);
      // The same batch once the bucket has refilled: accepted.
      clock += 500;
      expect((await post(batch('b', 10), { a })).json()).toMatchObject({ accepted: 10 });
    } finally {
      await a.close();
    }
  });

  test('an empty bucket is refused before the body is even parsed; another org keeps being served', async () => {
    const a = limited();
    try {
      await post(batch('a', 20), { a });
      const r = await post('{not json', { a });
      expect(r.statusCode).toBe(429); // not 400: the body was never looked at
      expect(r.headers['retry-after']).toBe('1');
      const beta = await post([build('x', { org: 'beta', lease: 'L-beta' })], { a, token: 'tok-beta' });
      expect(beta.statusCode).toBe(200);
      expect(beta.json()).toMatchObject({ accepted: 1 });
      const m = await request(a, { method: 'GET', url: '/metrics' });
      expect(m.body).toMatch(/^buildcloud_rate_limited_total\{limit="records"\} 1$/m);
    } finally {
      await a.close();
    }
  });

  test('the key is the credential: two principals with the same limitKey share one bucket', async () => {
    const a = limited({
      authenticate: async (bearer) =>
        bearer === 'tok-acme' || bearer === 'tok-acme-2' ? { kind: 'org', org: 'acme', subject: `s-${bearer}`, limitKey: 'token:same' } : null
    });
    try {
      expect((await post(batch('a', 20), { a })).statusCode).toBe(200);
      expect((await post(batch('b', 1), { a, token: 'tok-acme-2' })).statusCode).toBe(429);
    } finally {
      await a.close();
    }
  });

  test('per-lease cap: records beyond it are rejected one by one, naming the cap and its flag; resends stay duplicates', async () => {
    await store.insertLease(lease('L-acme-2', 'acme'));
    const a = makeApp({ recordCaps: { perLease: 3, perOrgDay: 0 } });
    try {
      const first = batch('a', 2);
      expect((await post(first, { a })).json()).toMatchObject({ accepted: 2 });
      const r = (await post([...batch('b', 3), first[0], build('other', { lease: 'L-acme-2' })], { a })).json();
      expect(r.results.map((x: { status: string }) => x.status)).toEqual(['accepted', 'rejected', 'rejected', 'duplicate', 'accepted']);
      expect(r.results[1].reason).toBe(
        'lease "L-acme" already holds 3 usage records, the most one lease may store (set by --max-records-per-lease); this record was not stored'
      );
      expect((await store.usageRecords('acme', 0, NOW * 2)).filter((x) => x.leaseId === 'L-acme')).toHaveLength(3);
      // A resend of a stored record past the cap is still a duplicate, not a rejection.
      expect((await post([first[1]], { a })).json().results[0].status).toBe('duplicate');
    } finally {
      await a.close();
    }
  });

  test('per-org daily cap counts what the org stored today (also before this process started), by arrival', async () => {
    await post(batch('old', 2)); // stored by the default app: the capped app counts them from the store
    await store.insertLease(lease('L-acme-2', 'acme'));
    let clock = NOW;
    const a = makeApp({ now: () => clock, recordCaps: { perLease: 0, perOrgDay: 4 } });
    try {
      const r = (await post([...batch('a', 2), build('c', { lease: 'L-acme-2' })], { a })).json();
      expect(r.results.map((x: { status: string }) => x.status)).toEqual(['accepted', 'accepted', 'rejected']);
      expect(r.results[2].reason).toMatch(
        /^org "acme" already stored 4 usage records today \(UTC\), the most one org may store per day \(set by --max-records-per-org-day\); this record was not stored/
      );
      // beta has its own count.
      expect((await post([build('x', { org: 'beta', lease: 'L-beta' })], { a, token: 'tok-beta' })).json()).toMatchObject({ accepted: 1 });
      // The next UTC day starts from zero.
      clock = NOW + 86_400_000;
      expect((await post([build('c', { lease: 'L-acme-2' })], { a })).json()).toMatchObject({ accepted: 1 });
    } finally {
      await a.close();
    }
  });
});

describe('usage report of a large org', () => {
  test('reads the month in pages: the event loop runs between them, and the totals match every record', async () => {
    const insert = store.db.prepare('INSERT INTO usage_records (id, org, type, time, received_at, lease_id, data) VALUES (?, ?, ?, ?, ?, ?, ?)');
    const n = 5000; // over two pages of 2000
    store.db.transaction(() => {
      for (let i = 0; i < n; i++) {
        const e = build(`big${i}`, { cached: i % 2, actor: `u${i % 7}`, time: NOW - 1000 - (i % 10) }); // many equal times
        insert.run(e.id, 'acme', e.type, Date.parse(e.time as string), NOW, 'L-acme', JSON.stringify(e.data));
      }
    })();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const immediates: Promise<void>[] = [];
    let turns = 0;
    const spin = () => {
      turns++;
      if (turns < 1000) immediates.push(new Promise((r) => setImmediate(() => r(spin()))));
    };
    spin();
    const report = await computeUsage(store, 'acme', '2025-01', NOW);
    clearInterval(timer);
    expect(turns).toBeGreaterThan(2); // other work ran while the report was being made
    expect(report.builds).toMatchObject({ count: n, cachedSteps: n / 2, totalSteps: 4 * n, succeeded: n });
    expect(report.users.distinct).toBe(7);
  });
});

describe('the Connect face: what the HTTP layer refuses takes the Connect envelope (docs/api.md)', () => {
  const rpc = {
    api: { 'BuildCloud/Get': async () => ({ id: 'L-1' }) } as never,
    log: pino({ enabled: false })
  };
  test('a body over 1 MiB: 413, resource_exhausted, naming the 1 MiB limit', async () => {
    const a = makeApp({ rpc });
    const r = await request(a, {
      method: 'POST',
      url: '/buildcloud.v1.BuildCloud/Get',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ leaseId: 'x'.repeat(1_100_000) })
    });
    await a.close();
    expect(r.statusCode).toBe(413);
    expect(r.json()).toEqual({ code: 'resource_exhausted', message: 'The request body exceeds 1048576 bytes (1 MiB), the most a request message may be.' });
  });
  test('GET on a method, or a path that is no method: unimplemented, naming the methods', async () => {
    const a = makeApp({ rpc });
    const get = await request(a, { method: 'GET', url: '/buildcloud.v1.BuildCloud/Get' });
    const none = await request(a, { method: 'POST', url: '/buildcloud.v1.BuildCloud/Delete', headers: { 'content-type': 'application/json' }, payload: '{}' });
    await a.close();
    for (const r of [get, none]) {
      expect(r.statusCode).toBe(404);
      expect(r.json().code).toBe('unimplemented');
      expect(r.json().message).toContain('POST /buildcloud.v1.BuildCloud/{Provision,Release,Get}');
    }
  });
  test('the metering API keeps its own envelope', async () => {
    const r = await request(app, { method: 'GET', url: '/v1/nothing' });
    expect(r.json().error.code).toBe('not_found');
  });
});
