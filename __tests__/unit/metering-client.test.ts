import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nock from 'nock';
import { backoffDelay, flushSpool, FlushOptions, parseRetryAfter } from '../../src/core/metering-client';
import { MeteringSpool } from '../../src/core/metering-spool';
import { httpRequest, type HttpRequester } from '../../src/core/http-request';
import { CONTENT_TYPE_BATCH, type CloudEvent } from '../../src/contract/cloudevents';
import { buildCompletedEvent } from '../../src/contract/metering-events';

// nock 14 intercepts the node:http requests the client sends (src/core/http-request.ts).

const API = 'http://metering.test:7644';
const TOKEN = 'bct_tok1_s3cr3t-value';
const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);

const event = (build: string, over: Partial<{ total_steps: number; cached_steps: number }> = {}) =>
  buildCompletedEvent(
    'acme',
    { lease_id: 'lease-1', build_id: build, platform: 'linux/amd64', status: 'success', duration_ms: 1000, total_steps: 4, cached_steps: 3, ...over },
    { time: NOW }
  );

/** The endpoint's dedup by id, as the real server does it: the first time accepted, after that duplicate. */
class FakeEndpoint {
  readonly stored = new Set<string>();
  readonly batches: string[][] = [];
  reject = new Map<string, string>(); // id -> reason
  answer(body: unknown) {
    const events = (typeof body === 'string' ? JSON.parse(body) : body) as CloudEvent[];
    this.batches.push(events.map((e) => e.id));
    const results = events.map((e, index) => {
      const reason = this.reject.get(e.id);
      if (reason) return { index, id: e.id, status: 'rejected', reason };
      const status = this.stored.has(e.id) ? 'duplicate' : 'accepted';
      this.stored.add(e.id);
      return { index, id: e.id, status };
    });
    const count = (s: string) => results.filter((r) => r.status === s).length;
    return { results, accepted: count('accepted'), duplicate: count('duplicate'), rejected: count('rejected') };
  }
}

const netError = (code: string, message: string) => Object.assign(new Error(message), { code });
// nock 14 hands reply functions (uri, body): the body is a string here, as nock parses only application/json.
type Body = nock.Body;
const batchOf = (body: Body) => (typeof body === 'string' ? JSON.parse(body) : body) as CloudEvent[];
const answer = (_uri: string, body: Body) => server.answer(batchOf(body));
const events = () => nock(API).matchHeader('authorization', `Bearer ${TOKEN}`).matchHeader('content-type', CONTENT_TYPE_BATCH).post('/v1/events');

let root: string;
let spool: MeteringSpool;
let server: FakeEndpoint;
let sleeps: number[];
let logs: string[];
let clock: number;

// Time only moves when the client sleeps: delays are checked exactly and tests never wait.
const opts = (over: Partial<FlushOptions> = {}): FlushOptions => ({
  endpoint: API,
  token: TOKEN,
  random: () => 0.5,
  now: () => clock,
  sleep: async (ms) => {
    sleeps.push(ms);
    clock += ms;
  },
  log: (_level, msg) => logs.push(msg),
  ...over
});

beforeAll(() => nock.disableNetConnect());
// nock patches Node's shared http module for the whole worker process; later test files (real servers, real
// proxies) must get it back untouched.
afterAll(() => {
  nock.cleanAll();
  nock.enableNetConnect();
  nock.restore();
});
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'metering-client-'));
  spool = new MeteringSpool(join(root, 'spool'));
  server = new FakeEndpoint();
  sleeps = [];
  logs = [];
  clock = NOW;
});
afterEach(() => {
  nock.cleanAll();
  nock.disableNetConnect(); // one test lets loopback through
  rmSync(root, { recursive: true, force: true });
});

const ids = async () => (await spool.pending()).map((e) => e.id).sort();

describe('flushSpool', () => {
  it('does nothing for an empty spool', async () => {
    expect(await flushSpool(spool, opts())).toEqual({ sent: 0, accepted: 0, duplicate: 0, rejected: [], pending: 0, warnings: [] });
  });

  it('keeps records while the endpoint is down and sends them with a later flush', async () => {
    await spool.add(event('b1'));
    await spool.add(event('b2'));
    const down = events().times(3).replyWithError(netError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:7644'));
    const first = await flushSpool(spool, opts({ attempts: 3 }));
    expect(down.isDone()).toBe(true);
    expect(first).toMatchObject({ sent: 0, accepted: 0, pending: 2 });
    expect(first.warnings).toHaveLength(1);
    expect(first.warnings[0]).toMatch(/2 usage records not sent yet to http:\/\/metering\.test:7644.*ECONNREFUSED.*after 3 attempts.*stay in the spool/);
    expect(sleeps).toEqual([backoffDelay(1, 500, 10_000, () => 0.5), backoffDelay(2, 500, 10_000, () => 0.5)]);
    expect(await ids()).toEqual([event('b1').id, event('b2').id].sort());

    events().reply(200, answer);
    const later = await flushSpool(spool, opts());
    expect(later).toMatchObject({ sent: 2, accepted: 2, duplicate: 0, rejected: [], pending: 0, warnings: [] });
    expect(await ids()).toEqual([]);
  });

  it('treats a real refused connection the same way', async () => {
    const port = await new Promise<number>((done) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => done(p));
      });
    });
    nock.enableNetConnect('127.0.0.1');
    await spool.add(event('b1'));
    const r = await flushSpool(spool, opts({ endpoint: `http://127.0.0.1:${port}`, attempts: 2 }));
    expect(r).toMatchObject({ sent: 0, pending: 1 });
    expect(r.warnings[0]).toMatch(/ECONNREFUSED/);
    expect(await spool.pending()).toHaveLength(1);
  });

  it('retries a 500 with backoff and full jitter, then succeeds', async () => {
    await spool.add(event('b1'));
    events().reply(500, { error: { code: 'internal', message: 'internal error; the request may be retried' } });
    events().reply(200, answer);
    const r = await flushSpool(spool, opts({ random: () => 0.999 }));
    expect(r).toMatchObject({ sent: 1, accepted: 1, pending: 0, warnings: [] });
    expect(sleeps).toEqual([499]); // below the bound of 500 ms for the first retry, never above
    expect(logs.some((l) => /HTTP 500: internal error.*retrying 1 record/.test(l))).toBe(true);
  });

  it.each([
    ['delay-seconds', '7', 7000],
    ['an HTTP date', new Date(NOW + 3000).toUTCString(), 3000]
  ])('honours Retry-After on 429 given as %s', async (_name, header, delay) => {
    await spool.add(event('b1'));
    events().reply(429, { error: { code: 'rate_limited', message: 'slow down' } }, { 'Retry-After': header });
    events().reply(200, answer);
    const r = await flushSpool(spool, opts());
    expect(sleeps).toEqual([delay]);
    expect(r).toMatchObject({ accepted: 1, pending: 0 });
  });

  it('honours Retry-After on 503, and gives up at once when it reaches past the deadline', async () => {
    await spool.add(event('b1'));
    events().reply(503, '', { 'Retry-After': '1' });
    events().reply(503, '', { 'Retry-After': '120' });
    const r = await flushSpool(spool, opts({ deadlineMs: 30_000 }));
    expect(sleeps).toEqual([1000]);
    expect(r).toMatchObject({ sent: 0, pending: 1 });
    expect(r.warnings[0]).toMatch(/retry after 120 s, past the flush deadline/);
    expect(await spool.pending()).toHaveLength(1);
  });

  it("the control plane's own rate-limit reply (429, Retry-After, the limit and flag named): waited out, then a later flush sends what is left", async () => {
    for (const b of ['b1', 'b2', 'b3']) await spool.add(event(b));
    const limited = {
      error: {
        code: 'rate_limited',
        limit: 'records',
        flag: '--record-rate',
        retryAfterSeconds: 2,
        message: 'Rate limit exceeded: at most 500 usage records per second per credential (bursts of 5000); retry after 2 s.'
      }
    };
    // Every attempt of this flush is refused: nothing is lost, everything stays spooled.
    events().times(3).reply(429, limited, { 'Retry-After': '2' });
    const r = await flushSpool(spool, opts({ batchSize: 2, attempts: 3 }));
    expect(sleeps).toEqual([2000, 2000]);
    expect(r).toMatchObject({ sent: 0, accepted: 0, rejected: [], pending: 3 });
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(
      /3 usage records not sent yet .*HTTP 429: Rate limit exceeded: at most 500 usage records per second.*after 3 attempts.*stay in the spool/
    );
    expect(await ids()).toEqual([event('b1').id, event('b2').id, event('b3').id].sort());
    // The next flush (the post step, or the next job on the runner) sends them all.
    events().times(2).reply(200, answer);
    const later = await flushSpool(spool, opts({ batchSize: 2 }));
    expect(later).toMatchObject({ sent: 3, accepted: 3, pending: 0 });
    expect(await ids()).toEqual([]);
  });

  it('stops at the deadline, keeping what is unsent', async () => {
    await spool.add(event('b1'));
    events().times(10).reply(502, 'bad gateway');
    const r = await flushSpool(spool, opts({ attempts: 10, baseDelayMs: 4000, maxDelayMs: 60_000, random: () => 1, deadlineMs: 10_000 }));
    expect(sleeps.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(10_000);
    expect(r.warnings[0]).toMatch(/HTTP 502; the flush deadline of 10000 ms passed/);
    expect(r.pending).toBe(1);
  });

  it('retries a request that gets no reply within the request timeout', async () => {
    await spool.add(event('b1'));
    events().reply(200, answer);
    // The first request hangs (a black-holed connection) until the client's timeout aborts it.
    let calls = 0;
    const request: HttpRequester = (url, init) =>
      ++calls > 1 ? httpRequest(url, init) : new Promise((_resolve, reject) => init.signal?.addEventListener('abort', () => reject(init.signal?.reason)));
    const r = await flushSpool(spool, opts({ requestTimeoutMs: 50, request }));
    expect(r).toMatchObject({ accepted: 1, pending: 0, warnings: [] });
    expect(logs.some((l) => /no reply within 50 ms; retrying/.test(l))).toBe(true);
  });

  it('acks duplicates: the endpoint already had them', async () => {
    const [a, b] = [event('b1'), event('b2')];
    await spool.add(a);
    await spool.add(b);
    server.stored.add(a.id);
    events().reply(200, answer);
    const r = await flushSpool(spool, opts());
    expect(r).toMatchObject({ sent: 2, accepted: 1, duplicate: 1, pending: 0, warnings: [] });
    expect(await ids()).toEqual([]);
  });

  it('drops a rejected record from the spool and reports it with its reason', async () => {
    const bad = event('bad', { total_steps: 4, cached_steps: 3 });
    await spool.add(bad);
    await spool.add(event('good'));
    const reason = 'data.lease_id "lease-1" is not a lease of org "acme"';
    server.reject.set(bad.id, reason);
    events().reply(200, answer);
    const r = await flushSpool(spool, opts());
    expect(r).toMatchObject({ sent: 2, accepted: 1, rejected: [{ id: bad.id, reason }], pending: 0 });
    expect(r.warnings).toEqual([`Build Cloud metering: record ${bad.id} was rejected and dropped: ${reason}`]);
    expect(await ids()).toEqual([]);
  });

  it.each([
    [401, 'unauthenticated', /refused the token \(HTTP 401/],
    [403, 'forbidden', /refused the token \(HTTP 403/],
    [400, 'unsupported_content_type', /refused the request \(HTTP 400/]
  ])('stops on %i without retrying and keeps every record', async (status, code, warning) => {
    for (const b of ['b1', 'b2', 'b3']) await spool.add(event(b));
    const scope = events().reply(status, { error: { code, message: 'fix it' } });
    const r = await flushSpool(spool, opts({ batchSize: 1 }));
    expect(scope.isDone()).toBe(true);
    expect(nock.pendingMocks()).toEqual([]);
    expect(sleeps).toEqual([]);
    expect(r).toMatchObject({ sent: 0, pending: 3 });
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(warning);
    expect(await spool.pending()).toHaveLength(3);
  });

  it('splits a batch the endpoint finds too large, down to what it takes', async () => {
    for (let i = 0; i < 5; i++) await spool.add(event(`b${i}`));
    const sizes: number[] = [];
    events()
      .times(10)
      .reply((_uri, body) => {
        const list = batchOf(body);
        sizes.push(list.length);
        if (list.length > 2) return [413, { error: { code: 'payload_too_large', message: 'send smaller batches' } }];
        return [200, server.answer(list)];
      });
    const r = await flushSpool(spool, opts());
    expect(sizes).toEqual([5, 3, 2, 1, 2]);
    expect(r).toMatchObject({ sent: 5, accepted: 5, pending: 0, warnings: [] });
    expect(server.stored.size).toBe(5);
  });

  it('keeps a single record the endpoint finds too large, and goes on with the rest', async () => {
    await spool.add(event('b1'));
    await spool.add(event('b2'));
    events().reply(413, { error: { code: 'payload_too_large', message: 'too big' } });
    events().reply(200, answer);
    const r = await flushSpool(spool, opts({ batchSize: 1 }));
    expect(r).toMatchObject({ accepted: 1, pending: 1 });
    expect(r.warnings[0]).toMatch(/too large for the endpoint/);
  });

  it('counts records sent twice once, end to end: a lost reply, a retry, and a copy carried to a later job', async () => {
    const [a, b] = [event('b1'), event('b2')];
    await spool.add(a);
    await spool.add(b);
    const carried = join(root, 'carry.json');
    await spool.exportTo(carried); // a wrapper saved the spool before the flush finished

    // The endpoint stores the batch, but the reply is lost (a proxy answers 502): the client retries.
    events().reply(502, (uri, body) => {
      answer(uri, body);
      return 'bad gateway';
    });
    events().reply(200, answer);
    const first = await flushSpool(spool, opts());
    expect(first).toMatchObject({ sent: 2, accepted: 0, duplicate: 2, pending: 0 });

    // A later job restores the carried copy and sends it again.
    const later = new MeteringSpool(join(root, 'later'));
    await later.importFrom(carried);
    events().reply(200, answer);
    const second = await flushSpool(later, opts());
    expect(second).toMatchObject({ sent: 2, accepted: 0, duplicate: 2, pending: 0 });

    expect(server.batches.flat()).toHaveLength(6); // sent three times...
    expect([...server.stored].sort()).toEqual([a.id, b.id].sort()); // ...stored once each
  });

  it("keeps a deferred record (another project's lease, on a spool two projects share) for a job of that project", async () => {
    const other = event('other');
    await spool.add(other);
    await spool.add(event('own'));
    const reason = 'data.lease_id "lease-9" is a lease of another project than this credential\'s; send it with a credential of that project';
    events().reply(200, (uri, body) => {
      const r = answer(uri, body);
      return { ...r, results: r.results.map((x: { id: string }) => (x.id === other.id ? { ...x, status: 'deferred', reason } : x)) };
    });
    const r = await flushSpool(spool, opts());
    expect(r).toMatchObject({ sent: 1, accepted: 1, rejected: [], pending: 1 });
    expect(r.warnings).toEqual([`Build Cloud metering: 1 record stays in the spool for a job of their own project: ${reason}`]);
    expect(await ids()).toEqual([other.id]);
  });

  it('keeps records the reply does not answer for', async () => {
    await spool.add(event('b1'));
    await spool.add(event('b2'));
    events().reply(200, (uri, body) => {
      const r = answer(uri, body);
      return { ...r, results: r.results.slice(0, 1) };
    });
    const r = await flushSpool(spool, opts());
    expect(r).toMatchObject({ sent: 1, pending: 1 });
    expect(await spool.pending()).toHaveLength(1);
  });

  it('never puts the token in a warning or a log line, even when the server echoes it', async () => {
    await spool.add(event('b1'));
    events().reply(500, { error: { code: 'internal', message: `bad header Bearer ${TOKEN}` } });
    events().replyWithError(netError('ECONNRESET', `socket hang up ${TOKEN}`));
    events().reply(401, { error: { code: 'unauthenticated', message: `token ${TOKEN} is revoked` } });
    const r = await flushSpool(spool, opts());
    const all = [...r.warnings, ...logs].join('\n');
    expect(r.warnings[0]).toMatch(/token \*\*\* is revoked/);
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain('s3cr3t');
  });

  it('warns instead of throwing on a bad endpoint or a missing token', async () => {
    await spool.add(event('b1'));
    for (const [o, re] of [
      [{ endpoint: 'grpc://x:1' }, /must be http\(s\)/],
      [{ endpoint: 'not a url' }, /invalid metering endpoint/],
      [{ endpoint: `http://u:${TOKEN}@x:1` }, /must not hold credentials/],
      [{ token: '' }, /no token/]
    ] as const) {
      const r = await flushSpool(spool, opts(o));
      expect(r.pending).toBe(1);
      expect(r.warnings[0]).toMatch(re);
      expect(r.warnings.join()).not.toContain(TOKEN);
    }
  });
});

describe('parseRetryAfter', () => {
  it.each([
    [null, undefined],
    ['', undefined],
    ['0', 0],
    ['12', 12_000],
    [new Date(NOW + 5000).toUTCString(), 5000],
    [new Date(NOW - 5000).toUTCString(), 0],
    ['soon', undefined]
  ])('%p -> %p', (value, ms) => expect(parseRetryAfter(value, NOW)).toBe(ms));
});
