// The per-credential rate limits (issue 9): token buckets with an injected clock (burst, refill, debt, eviction), the
// key each credential is limited under, the refusal's wording, and the serve flags that set the limits.
import { ConfigError, DEFAULT_LIMITS, parseLimits } from '../../src/server/config';
import { createServeLimiters, RateLimited, RateLimiter, rateLimitKey, TokenBuckets } from '../../src/server/rate-limit';
import * as grpc from '@grpc/grpc-js';
import { addGrpcApi } from '../../src/server/grpc-api';
import { createRpcApi } from '../../src/server/rpc-api';
import { ApiClient } from '../../src/core/api-client';
import { silentLogger } from '../../src/server/log';

let clock: number;
const now = () => clock;
beforeEach(() => {
  clock = 1_000_000;
});

describe('TokenBuckets', () => {
  test('a new key may spend its burst at once, then is refused with the time until one unit refills', () => {
    const b = new TokenBuckets({ ratePerSecond: 2, burst: 5, now });
    for (let i = 0; i < 5; i++) expect(b.take('k')).toEqual({ ok: true, remaining: 4 - i });
    expect(b.take('k')).toEqual({ ok: false, retryAfterMs: 500 });
    // A refusal spends nothing.
    expect(b.take('k')).toEqual({ ok: false, retryAfterMs: 500 });
  });

  test('refills at the rate, never above the burst', () => {
    const b = new TokenBuckets({ ratePerSecond: 10, burst: 20, now });
    expect(b.take('k', 20).ok).toBe(true);
    clock += 500; // 5 units back
    expect(b.take('k', 6)).toEqual({ ok: false, retryAfterMs: 100 });
    expect(b.take('k', 5)).toEqual({ ok: true, remaining: 0 });
    clock += 3_600_000; // an hour idle: full, not 36,000
    expect(b.take('k', 20)).toEqual({ ok: true, remaining: 0 });
    expect(b.take('k').ok).toBe(false);
  });

  test('costs count units, not calls: a batch of 1000 records spends 1000', () => {
    const b = new TokenBuckets({ ratePerSecond: 100, burst: 1500, now });
    expect(b.take('k', 1000)).toEqual({ ok: true, remaining: 500 });
    expect(b.take('k', 1000)).toEqual({ ok: false, retryAfterMs: 5000 });
  });

  test('a cost above the burst passes only with a full bucket and leaves a debt that must refill first', () => {
    const b = new TokenBuckets({ ratePerSecond: 10, burst: 10, now });
    expect(b.take('k', 30)).toEqual({ ok: true, remaining: 0 }); // tokens now -20
    expect(b.take('k', 1)).toEqual({ ok: false, retryAfterMs: 2100 }); // 21 units to go
    clock += 2100;
    expect(b.take('k', 1).ok).toBe(true);
    expect(b.take('k', 30)).toEqual({ ok: false, retryAfterMs: 1000 }); // needs a full bucket (10) again
  });

  test('keys are independent', () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 1, now });
    expect(b.take('a').ok).toBe(true);
    expect(b.take('a').ok).toBe(false);
    expect(b.take('b').ok).toBe(true);
  });

  test('peek answers as take would, without spending', () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 2, now });
    expect(b.peek('k')).toEqual({ ok: true, remaining: 2 });
    expect(b.size).toBe(0); // peeking tracks nothing
    b.take('k', 2);
    expect(b.peek('k')).toEqual({ ok: false, retryAfterMs: 1000 });
    clock += 1000;
    expect(b.peek('k')).toEqual({ ok: true, remaining: 1 });
    expect(b.take('k')).toEqual({ ok: true, remaining: 0 });
  });

  test('at most maxKeys buckets: the least recently used key is forgotten first', () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 1, maxKeys: 3, now });
    for (const k of ['a', 'b', 'c']) b.take(k);
    b.take('a'); // refused, but a is now the most recently used
    b.take('d'); // evicts b, the least recently used
    expect(b.size).toBe(3);
    expect(b.take('a').ok).toBe(false); // still tracked: still empty
    expect(b.take('c').ok).toBe(false);
    expect(b.take('b').ok).toBe(true); // forgotten: starts full again (evicting d)
    expect(b.size).toBe(3);
  });

  test('a flood of distinct keys never holds more than maxKeys buckets', () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 1, maxKeys: 100, now });
    for (let i = 0; i < 10_000; i++) b.take(`token:${i}`);
    expect(b.size).toBe(100);
  });

  test.each([
    [{ ratePerSecond: 0, burst: 1 }, /ratePerSecond must be a number > 0/],
    [{ ratePerSecond: 1, burst: 0 }, /burst must be a number >= 1/],
    [{ ratePerSecond: 1, burst: 1, maxKeys: 0 }, /maxKeys must be an integer >= 1/]
  ])('refuses nonsense settings %o', (o, msg) => {
    expect(() => new TokenBuckets(o)).toThrow(msg);
  });
});

describe('rateLimitKey', () => {
  test('an org token is limited by its public id, whatever else differs', () => {
    expect(rateLimitKey({ kind: 'org', org: 'acme', subject: 'token:AbC123xyz789', via: 'org-token' })).toBe('token:AbC123xyz789');
  });
  test('access tokens: org, trust rule and subject, so exchanging a new token does not reset the limit', () => {
    expect(rateLimitKey({ kind: 'org', org: 'acme', subject: 'repo:acme/app:ref:refs/heads/main', via: 'access-token', trustRule: 7 })).toBe(
      'access:acme:7:repo:acme/app:ref:refs/heads/main'
    );
    expect(rateLimitKey({ kind: 'org', org: 'beta', subject: 'repo:acme/app:ref:refs/heads/main', via: 'access-token' })).toBe(
      'access:beta:-:repo:acme/app:ref:refs/heads/main'
    );
  });
  test('the admin token has one key', () => {
    expect(rateLimitKey({ kind: 'admin', org: null, subject: 'admin', via: 'admin-token' })).toBe('admin');
  });
});

describe('RateLimiter', () => {
  const limiter = (onLimited?: (k: string) => void) =>
    new RateLimiter({
      limit: 'provision',
      flag: '--provision-rate',
      burstFlag: '--provision-burst',
      unit: 'Provision calls',
      ratePerSecond: 0.5,
      burst: 2,
      now,
      onLimited
    });

  test('refuses with whole seconds to wait (rounded up), the limit, and the flags that set it', () => {
    const seen: string[] = [];
    const l = limiter((k) => seen.push(k));
    l.check('token:a');
    l.check('token:a');
    let err: unknown;
    try {
      l.check('token:a');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RateLimited);
    const r = err as RateLimited;
    expect(r.retryAfterSeconds).toBe(2);
    expect(r.limit).toBe('provision');
    expect(r.flag).toBe('--provision-rate');
    expect(r.message).toBe(
      'Rate limit exceeded: at most 0.5 Provision calls per second per credential (bursts of 2); retry after 2 s. ' +
        "The control plane's operator sets this limit with --provision-rate and --provision-burst."
    );
    expect(seen).toEqual(['token:a']);
  });

  test('a wait below one second is announced as 1 s, never 0', () => {
    const l = new RateLimiter({
      limit: 'records',
      flag: '--record-rate',
      burstFlag: '--record-burst',
      unit: 'usage records',
      ratePerSecond: 1000,
      burst: 1000,
      now
    });
    l.check('k', 1000);
    expect(() => l.check('k', 1)).toThrow(expect.objectContaining({ retryAfterSeconds: 1 }));
  });

  test('precheck refuses an empty bucket without spending', () => {
    const l = limiter();
    l.precheck('k');
    l.check('k', 2);
    expect(() => l.precheck('k')).toThrow(RateLimited);
    clock += 2000;
    l.precheck('k');
    l.check('k');
  });
});

describe('serve flags', () => {
  test('defaults', () => {
    expect(parseLimits({})).toEqual(DEFAULT_LIMITS);
    const l = createServeLimiters(DEFAULT_LIMITS);
    expect(l.provision?.buckets.ratePerSecond).toBe(20);
    expect(l.records?.buckets.burst).toBe(5000);
  });

  test('0 turns a rate off', () => {
    const limits = parseLimits({ provisionRate: '0', recordRate: '0', maxRecordsPerLease: '0', maxRecordsPerOrgDay: '0' });
    expect(limits).toMatchObject({ provisionRate: 0, recordRate: 0, maxRecordsPerLease: 0, maxRecordsPerOrgDay: 0 });
    expect(createServeLimiters(limits)).toEqual({ provision: null, records: null, exchange: null });
  });

  test('decimal rates are allowed', () => {
    expect(parseLimits({ provisionRate: '0.5' }).provisionRate).toBe(0.5);
  });

  test.each([
    [{ provisionRate: 'fast' }, "Invalid --provision-rate 'fast'. Expected a number per second from 0 (no limit) to 1000000, e.g. 20 or 0.5."],
    [{ recordRate: '-1' }, "Invalid --record-rate '-1'. Expected a number per second from 0 (no limit) to 1000000, e.g. 20 or 0.5."],
    [{ provisionBurst: '0' }, "Invalid --provision-burst '0'. Expected a whole number from 1 to 1000000."],
    [{ recordBurst: '999' }, "Invalid --record-burst '999'. Expected a whole number of at least 1000 (one full batch of POST /v1/events)."],
    [{ maxRecordsPerLease: '1e4' }, "Invalid --max-records-per-lease '1e4'. Expected a whole number from 0 to 100000000."],
    [{ maxRecordsPerOrgDay: 'many' }, "Invalid --max-records-per-org-day 'many'. Expected a whole number from 0 to 1000000000."]
  ])('%o is refused naming the flag and what it expects', (o, msg) => {
    expect(() => parseLimits(o)).toThrow(ConfigError);
    expect(() => parseLimits(o)).toThrow(msg);
  });
});

describe('Provision over gRPC (src/server/grpc-api.ts)', () => {
  // The real gRPC API with a scripted authenticator and lease manager: only the limit's wiring is under test.
  /* eslint-disable @typescript-eslint/no-explicit-any */
  const PRINCIPALS: Record<string, object> = {
    bct_acme: { kind: 'org', org: 'acme', subject: 'token:acme1', via: 'org-token' },
    bct_beta: { kind: 'org', org: 'beta', subject: 'token:beta1', via: 'org-token' }
  };
  const REQ = {
    org: '',
    pipelineKey: 'p/1/1',
    jobId: 'build',
    platforms: [],
    scope: 'SCOPE_PIPELINE',
    identity: { provider: 'github', project: 'acme/app', branch: 'main', defaultBranch: 'main', fork: false, actor: 'octocat', runUrl: '' }
  } as any;
  let server: grpc.Server;
  let address: string;
  let provisioned: string[];
  const clients: InstanceType<typeof ApiClient>[] = [];

  beforeAll(async () => {
    server = new grpc.Server();
    addGrpcApi(
      server,
      createRpcApi({
        leases: { provision: async (org: string) => (provisioned.push(org), { id: `lease-${provisioned.length}` }) } as any,
        store: {} as any,
        authenticator: { authenticate: async (t: string) => PRINCIPALS[t] ?? null } as any,
        oidc: {} as any,
        signingKey: {} as any,
        accessTokenTtlS: 60,
        log: silentLogger(),
        // 1 call per 10 s, bursts of 3: a real clock, far too slow to refill during the test.
        provisionLimiter: new RateLimiter({
          limit: 'provision',
          flag: '--provision-rate',
          burstFlag: '--provision-burst',
          unit: 'Provision calls',
          ratePerSecond: 0.1,
          burst: 3
        })
      }),
      silentLogger()
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)))
    );
    address = `127.0.0.1:${port}`;
    provisioned = [];
  });
  afterAll(() => {
    for (const c of clients) c.close();
    server.forceShutdown();
  });
  const client = (token: string) => {
    const c = new ApiClient({ endpoint: address, token, attempts: 1, deadlineMs: 5000 });
    clients.push(c);
    return c;
  };

  test('past the burst: RESOURCE_EXHAUSTED saying how long to wait, with `retry-after` trailing metadata; another credential is still served', async () => {
    const acme = client('bct_acme');
    for (let i = 0; i < 3; i++) await acme.provision(REQ);
    const err = await acme.provision(REQ).then(
      () => null,
      (e: any) => e
    );
    expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(
      /^Rate limit exceeded: at most 0\.1 Provision calls per second per credential \(bursts of 3\); retry after 10 s\. .*--provision-rate and --provision-burst\.$/
    );
    expect(err.retryAfterMs).toBe(10_000); // from the trailing metadata
    expect(err.rateLimited).toBe(true);
    expect(provisioned).toEqual(['acme', 'acme', 'acme']); // the refused call never reached the lease manager
    // Control: another org's token has its own bucket.
    expect((await client('bct_beta').provision(REQ)).id).toBe('lease-4');
  });

  test("an unauthenticated caller is refused as such and spends nobody's bucket", async () => {
    const err = await client('bct_nobody')
      .provision(REQ)
      .then(
        () => null,
        (e: any) => e
      );
    expect(err?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.retryAfterMs).toBeUndefined();
  });
});
