// The control plane client against an in-process control plane speaking the real contract, over each transport
// (gRPC, and the Connect protocol's HTTP/JSON): metadata, retries of transient failures, permanent failures at once;
// and the pure endpoint and backoff helpers.
import * as grpc from '@grpc/grpc-js';
import { ApiClient, backoffDelay, ControlPlaneError, parseEndpoint, type ApiClientOptions } from '../../src/core/api-client';
import type { ProvisionRequestMsg } from '../../src/contract/grpc';
import { FakeControlPlane, hang, leaseFor, rpcError } from '../fixtures/fake-control-plane';

const REQ: ProvisionRequestMsg = {
  org: 'acme',
  pipelineKey: '4242/9001/1',
  jobId: 'build-0',
  platforms: ['linux/amd64'],
  scope: 'SCOPE_PIPELINE',
  identity: { provider: 'github', project: 'acme/widget-api', branch: 'main', defaultBranch: 'main', fork: false, actor: 'octocat', runUrl: '' }
};

let plane: FakeControlPlane;
let clients: ApiClient[];
let endpointOf: () => string = () => plane.address;

beforeAll(async () => {
  plane = await FakeControlPlane.start();
});
afterAll(() => plane.stop());
beforeEach(() => {
  plane.reset();
  clients = [];
});
afterEach(() => clients.forEach((c) => c.close()));

// Small delays and a short deadline keep retries fast; each test overrides what it is about.
function client(over: Partial<ApiClientOptions> = {}): ApiClient {
  const c = new ApiClient({ endpoint: endpointOf(), token: 'bct_org_token', deadlineMs: 5_000, attempts: 5, baseDelayMs: 5, maxDelayMs: 20, ...over });
  clients.push(c);
  return c;
}

async function failure(p: Promise<unknown>): Promise<ControlPlaneError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e
  );
  expect(err).toBeInstanceOf(ControlPlaneError);
  return err as ControlPlaneError;
}

describe.each([
  ['gRPC', () => plane.address],
  ['Connect (HTTP/JSON)', () => plane.connectUrl]
])('over %s', (_transport, endpoint) => {
  beforeEach(() => {
    endpointOf = endpoint;
  });

  describe('metadata', () => {
    test('BuildCloud calls carry the token as `authorization: Bearer <token>`', async () => {
      plane
        .on('Provision', (req) => leaseFor(req))
        .on('Get', (req) => ({ ...leaseFor(REQ), id: req.leaseId }))
        .on('Release', (req) => ({ ...leaseFor(REQ), id: req.leaseId, state: 'LEASE_STATE_RELEASED' }));
      const c = client();
      const lease = await c.provision(REQ);
      expect(lease.id).toBe('lease-0001');
      expect((await c.get('lease-0001')).id).toBe('lease-0001');
      expect((await c.release('lease-0001')).state).toBe('LEASE_STATE_RELEASED');
      expect(plane.calls.map((x) => [x.method, x.authorization])).toEqual([
        ['Provision', ['Bearer bct_org_token']],
        ['Get', ['Bearer bct_org_token']],
        ['Release', ['Bearer bct_org_token']]
      ]);
      expect(plane.callsOf('Get')[0].request.leaseId).toBe('lease-0001');
      expect(plane.callsOf('Release')[0].request.leaseId).toBe('lease-0001');
    });

    test('the request arrives as sent', async () => {
      plane.on('Provision', (req) => leaseFor(req));
      await client().provision({ ...REQ, platforms: ['linux/amd64', 'linux/arm64'], scope: 'SCOPE_JOB' });
      expect(plane.callsOf('Provision')[0].request).toEqual({ ...REQ, platforms: ['linux/amd64', 'linux/arm64'], scope: 'SCOPE_JOB' });
    });

    test('setToken replaces the token for later calls', async () => {
      plane.on('Get', (req) => ({ ...leaseFor(REQ), id: req.leaseId }));
      const c = client();
      await c.get('l1');
      c.setToken('bca_access_2');
      await c.get('l1');
      expect(plane.callsOf('Get').map((x) => x.authorization)).toEqual([['Bearer bct_org_token'], ['Bearer bca_access_2']]);
    });

    test('without a token no authorization header is sent', async () => {
      plane.on('Get', (req) => ({ ...leaseFor(REQ), id: req.leaseId }));
      await client({ token: undefined }).get('l1');
      expect(plane.callsOf('Get')[0].authorization).toEqual([]);
    });

    test('ExchangeToken sends no authorization header, even when the client holds a token', async () => {
      plane.on('ExchangeToken', () => ({ accessToken: 'bca_access_1', org: 'acme', expiresAtMs: 1_736_946_000_000 }));
      const res = await client({ token: 'bct_org_token' }).exchangeToken('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', 'acme');
      expect(res).toEqual({ accessToken: 'bca_access_1', org: 'acme', expiresAtMs: 1_736_946_000_000 });
      const [call] = plane.callsOf('ExchangeToken');
      expect(call.authorization).toEqual([]);
      expect(call.request).toEqual({ oidcToken: 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', org: 'acme' });
    });
  });

  describe('transient failures are retried', () => {
    test.each([
      ['UNAVAILABLE', grpc.status.UNAVAILABLE],
      ['ABORTED', grpc.status.ABORTED]
    ])('%s twice, then success', async (_name, code) => {
      plane.on('Provision', (req, n) => {
        if (n <= 2) throw rpcError(code, `try again (${n})`);
        return leaseFor(req);
      });
      const onRetry = jest.fn();
      const lease = await client({ onRetry, baseDelayMs: 10, maxDelayMs: 1000 }).provision(REQ);
      expect(lease.id).toBe('lease-0001');
      expect(plane.callsOf('Provision')).toHaveLength(3);
      expect(onRetry).toHaveBeenCalledTimes(2);
      expect(onRetry.mock.calls.map(([i]) => [i.method, i.attempt, i.error])).toEqual([
        ['Provision', 1, 'try again (1)'],
        ['Provision', 2, 'try again (2)']
      ]);
      // Full jitter under the exponential bound of each attempt: base * 2^(attempt-1).
      const [[first], [second]] = onRetry.mock.calls;
      expect(first.delayMs).toBeGreaterThanOrEqual(0);
      expect(first.delayMs).toBeLessThan(10);
      expect(second.delayMs).toBeGreaterThanOrEqual(0);
      expect(second.delayMs).toBeLessThan(20);
    });

    test('DEADLINE_EXCEEDED: a server that does not answer within deadlineMs is asked again', async () => {
      plane.on('Provision', (req, n) => (n === 1 ? hang() : leaseFor(req)));
      const onRetry = jest.fn();
      const started = Date.now();
      const lease = await client({ deadlineMs: 250, onRetry }).provision(REQ);
      expect(lease.id).toBe('lease-0001');
      expect(Date.now() - started).toBeGreaterThanOrEqual(240); // the first attempt waited out its deadline
      expect(plane.callsOf('Provision')).toHaveLength(2);
      expect(onRetry).toHaveBeenCalledTimes(1);
      expect(onRetry.mock.calls[0][0]).toMatchObject({ method: 'Provision', attempt: 1 });
    });

    test('a server that never answers: DEADLINE_EXCEEDED after every attempt', async () => {
      plane.on('Get', () => hang());
      const err = await failure(client({ deadlineMs: 150, attempts: 2 }).get('l1'));
      expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(err.transient).toBe(true);
      expect(err.message).toContain('after 2 attempts');
      expect(plane.callsOf('Get')).toHaveLength(2);
    });

    test.each([2, 3, 4])('attempts exhausted (%i): the error says "after N attempts"', async (attempts) => {
      plane.on('Provision', () => {
        throw rpcError(grpc.status.UNAVAILABLE, 'control plane at capacity');
      });
      const onRetry = jest.fn();
      const err = await failure(client({ attempts, onRetry }).provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(attempts);
      expect(onRetry).toHaveBeenCalledTimes(attempts - 1);
      expect(err.attempts).toBe(attempts);
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      expect(err.message).toBe(`Provision failed: control plane at capacity (UNAVAILABLE, after ${attempts} attempts)`);
    });

    test('a permanent error after a transient one ends the retries', async () => {
      plane.on('Provision', (_req, n) => {
        throw n === 1 ? rpcError(grpc.status.UNAVAILABLE, 'restarting') : rpcError(grpc.status.UNAUTHENTICATED, 'token revoked');
      });
      const err = await failure(client().provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(2);
      expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(err.message).toContain('token revoked');
      expect(err.message).toContain('after 2 attempts');
    });
  });

  describe('rate limits: RESOURCE_EXHAUSTED with `retry-after` is retried after the delay, without it is not', () => {
    // What the control plane sends for a rate limit (src/server/grpc-api.ts): the delay in trailing metadata.
    const rateLimited = (seconds: string) => {
      const metadata = new grpc.Metadata();
      metadata.set('retry-after', seconds);
      return { ...rpcError(grpc.status.RESOURCE_EXHAUSTED, `Rate limit exceeded: ... retry after ${seconds} s.`), metadata };
    };

    test("a rate limit is waited out (the server's delay plus at most 10% jitter), then the call succeeds", async () => {
      plane.on('Provision', (req, n) => {
        if (n === 1) throw rateLimited('2');
        return leaseFor(req);
      });
      const slept: number[] = [];
      const onRetry = jest.fn();
      const lease = await client({ onRetry, sleep: async (ms) => void slept.push(ms) }).provision(REQ);
      expect(lease.id).toBe('lease-0001');
      expect(plane.callsOf('Provision')).toHaveLength(2);
      expect(slept).toHaveLength(1);
      expect(slept[0]).toBeGreaterThanOrEqual(2000);
      expect(slept[0]).toBeLessThan(2200);
      expect(onRetry.mock.calls[0][0]).toMatchObject({ method: 'Provision', attempt: 1, delayMs: slept[0] });
    });

    test('the error says it is a rate limit and how long to wait; attempts still bound the retries', async () => {
      plane.on('Provision', () => {
        throw rateLimited('1');
      });
      const slept: number[] = [];
      const err = await failure(client({ attempts: 3, sleep: async (ms) => void slept.push(ms) }).provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(3);
      expect(slept).toHaveLength(2);
      expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(err.rateLimited).toBe(true);
      expect(err.retryAfterMs).toBe(1000);
      expect(err.transient).toBe(false);
    });

    test('a delay longer than maxRetryAfterMs is reported at once, not waited for', async () => {
      plane.on('Provision', () => {
        throw rateLimited('120');
      });
      const slept: number[] = [];
      const err = await failure(client({ maxRetryAfterMs: 30_000, sleep: async (ms) => void slept.push(ms) }).provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(1);
      expect(slept).toEqual([]);
      expect(err.rateLimited).toBe(true);
      expect(err.retryAfterMs).toBe(120_000);
    });

    test('RESOURCE_EXHAUSTED without retry-after (no build minutes left) is not retried', async () => {
      plane.on('Provision', () => {
        throw rpcError(grpc.status.RESOURCE_EXHAUSTED, "Org 'acme' has no build minutes left");
      });
      const slept: number[] = [];
      const err = await failure(client({ sleep: async (ms) => void slept.push(ms) }).provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(1);
      expect(slept).toEqual([]);
      expect(err.rateLimited).toBe(false);
      expect(err.retryAfterMs).toBeUndefined();
    });

    test('a retry-after that is not whole seconds is ignored: the error is permanent', async () => {
      plane.on('Provision', () => {
        throw rateLimited('soon');
      });
      const err = await failure(client().provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(1);
      expect(err.rateLimited).toBe(false);
    });
  });

  describe("permanent failures are reported at once with the server's message", () => {
    test.each([
      ['UNAUTHENTICATED', grpc.status.UNAUTHENTICATED, 'invalid or expired token'],
      ['RESOURCE_EXHAUSTED', grpc.status.RESOURCE_EXHAUSTED, 'no build minutes left'],
      ['INVALID_ARGUMENT', grpc.status.INVALID_ARGUMENT, 'platforms: "windows/amd64" is not served here'],
      ['PERMISSION_DENIED', grpc.status.PERMISSION_DENIED, 'token of org "other" cannot act for org "acme"'],
      ['NOT_FOUND', grpc.status.NOT_FOUND, 'org "acme" not found']
    ])('%s', async (name, code, details) => {
      plane.on('Provision', () => {
        throw rpcError(code, details);
      });
      const onRetry = jest.fn();
      const err = await failure(client({ onRetry }).provision(REQ));
      expect(plane.callsOf('Provision')).toHaveLength(1);
      expect(onRetry).not.toHaveBeenCalled();
      expect(err.name).toBe('ControlPlaneError');
      expect(err.method).toBe('Provision');
      expect(err.code).toBe(code);
      expect(err.details).toBe(details);
      expect(err.transient).toBe(false);
      expect(err.attempts).toBe(1);
      expect(err.message).toBe(`Provision failed: ${details} (${name})`);
    });

    test('a permanent ExchangeToken failure names the method', async () => {
      plane.on('ExchangeToken', () => {
        throw rpcError(grpc.status.PERMISSION_DENIED, 'no trust rule of any org matches this token');
      });
      const err = await failure(client().exchangeToken('jwt'));
      expect(plane.callsOf('ExchangeToken')).toHaveLength(1);
      expect(err.message).toBe('ExchangeToken failed: no trust rule of any org matches this token (PERMISSION_DENIED)');
    });
  });
});

describe('parseEndpoint', () => {
  test.each([
    ['localhost:7443', 'localhost:7443', false],
    ['127.0.0.1:50051', '127.0.0.1:50051', false],
    ['grpc://cp.example.com:443', 'cp.example.com:443', false],
    ['grpcs://cp.example.com:443', 'cp.example.com:443', true],
    ['grpcs://cp.example.com:443/', 'cp.example.com:443', true],
    ['cp.example.com:443/', 'cp.example.com:443', false],
    ['  grpc://cp:7443  ', 'cp:7443', false],
    ['[::1]:7443', '[::1]:7443', false]
  ])('gRPC: %j', (endpoint, address, secure) => {
    expect(parseEndpoint(endpoint)).toEqual({ protocol: 'grpc', address, secure });
  });

  test.each([
    ['http://127.0.0.1:7644', 'http://127.0.0.1:7644', false],
    ['http://127.0.0.1:7644/', 'http://127.0.0.1:7644', false],
    ['https://cp.example.com', 'https://cp.example.com', true],
    ['https://cp.example.com:8443/buildcloud/', 'https://cp.example.com:8443/buildcloud', true],
    ['  https://[::1]:7644  ', 'https://[::1]:7644', true]
  ])('Connect (HTTP/JSON): %j', (endpoint, baseUrl, secure) => {
    expect(parseEndpoint(endpoint)).toEqual({ protocol: 'connect', baseUrl, secure });
  });

  test.each([
    ['no port', 'cp.example.com'],
    ['scheme without port', 'grpcs://cp.example.com'],
    ['another scheme', 'ftp://cp.example.com:21'],
    ['a query', 'https://cp.example.com/?x=1'],
    ['port 0', 'http://cp.example.com:0'],
    ['port out of range', 'https://cp.example.com:70000'],
    ['empty', ''],
    ['only spaces', '   '],
    ['space inside', 'cp example.com:443'],
    ['a path after a gRPC address', 'grpc://cp.example.com:443/v1'],
    ['a port that is not a number', 'cp.example.com:grpc']
  ])('invalid (%s): %j', (_name, endpoint) => {
    expect(() => parseEndpoint(endpoint)).toThrow(
      `Invalid endpoint '${endpoint}'. Expected host:port, grpc://host:port, grpcs://host:port, or the http:// or https:// URL of its HTTP port.`
    );
  });

  test('credentials in the URL are refused and never shown', () => {
    expect(() => parseEndpoint('https://user:s3cr3t@cp.example.com')).toThrow(
      'Invalid endpoint: it holds credentials (user@ or user:password@), which are not accepted or shown.'
    );
    expect(() => parseEndpoint('https://user:s3cr3t@cp.example.com')).not.toThrow(/s3cr3t/);
  });

  test('the client refuses an invalid endpoint when constructed', () => {
    expect(() => new ApiClient({ endpoint: 'ftp://cp:80' })).toThrow(/Invalid endpoint 'ftp:\/\/cp:80'/);
  });
});

describe('backoffDelay', () => {
  test.each([1, 2, 3, 8, 30])('random 0 gives 0 (attempt %i)', (attempt) => {
    expect(backoffDelay(attempt, 100, 1000, () => 0)).toBe(0);
  });

  // Bound = min(maxMs, baseMs * 2^(attempt-1)); 0.999 lands just under it.
  test.each([
    [1, 100],
    [2, 200],
    [3, 400],
    [4, 800],
    [5, 1000],
    [6, 1000],
    [40, 1000]
  ])('random 0.999 at attempt %i: just under the bound %i', (attempt, bound) => {
    const d = backoffDelay(attempt, 100, 1000, () => 0.999);
    expect(d).toBeLessThan(bound);
    expect(d).toBeGreaterThanOrEqual(bound * 0.99);
    expect(Number.isInteger(d)).toBe(true);
  });

  test('the bound doubles per attempt until it reaches maxMs', () => {
    const half = Array.from({ length: 8 }, (_, i) => backoffDelay(i + 1, 500, 8000, () => 0.5));
    expect(half).toEqual([250, 500, 1000, 2000, 4000, 4000, 4000, 4000]);
  });

  test('with the default random, every delay stays in [0, bound)', () => {
    for (let attempt = 1; attempt <= 10; attempt++) {
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, 50, 1000);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(Math.min(1000, 50 * 2 ** (attempt - 1)));
      }
    }
  });
});
