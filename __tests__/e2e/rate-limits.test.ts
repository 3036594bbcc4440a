// Issue 9 (MEDIUM): per-credential rate limits and record caps, tried against the real `buildcloud serve` with real
// dockerd builders. One token floods Provision and the metering endpoint and is slowed down with
// RESOURCE_EXHAUSTED / 429 and a Retry-After; another org's token is served all the while (the control case); a lease
// at its record cap gets per-event rejections, not storage.
import * as grpc from '@grpc/grpc-js';
import { adminSetup, cli, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { buildCompletedEvent } from '../../src/contract/metering-events';
import type { LeaseMsg } from '../../src/contract/grpc';

let server: ServerProcess;
const clients: TestClient[] = [];
const leases: Array<[TestClient, LeaseMsg]> = [];
let acmeToken: string;
let betaToken: string;
let acme: TestClient;
let beta: TestClient;
let acmeLease: LeaseMsg;
let betaLease: LeaseMsg;

const PROVISION_BURST = 3;
const RECORD_BURST = 1000;
const LEASE_CAP = 1000;

function client(token: string): TestClient {
  const c = new TestClient(server.info.grpc, token);
  clients.push(c);
  return c;
}

const betaIdentity = { provider: 'local', project: 'beta/app', branch: 'main', defaultBranch: 'main', actor: 'dev' };

function records(org: string, leaseId: string, prefix: string, n: number) {
  return Array.from({ length: n }, (_, i) =>
    buildCompletedEvent(org, {
      lease_id: leaseId,
      build_id: `${prefix}-${i}`,
      platform: 'linux/amd64',
      status: 'success',
      duration_ms: 1000,
      total_steps: 2,
      cached_steps: 1
    })
  );
}

async function post(token: string, events: object[]): Promise<Response> {
  return fetch(`${server.info.http}/v1/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/cloudevents-batch+json' },
    body: JSON.stringify(events)
  });
}

beforeAll(async () => {
  // Low limits so that a test can reach them: 1 Provision per 10 s in bursts of 3; 1 record per second in bursts of
  // one full batch; a lease holds at most one batch of records.
  server = await startServer([
    '--grace',
    '1s',
    '--warm-pool',
    '1',
    '--provision-rate',
    '0.1',
    '--provision-burst',
    String(PROVISION_BURST),
    '--record-rate',
    '1',
    '--record-burst',
    String(RECORD_BURST),
    '--max-records-per-lease',
    String(LEASE_CAP)
  ]);
  acmeToken = adminSetup(server.stateDir, 'acme', 60);
  betaToken = adminSetup(server.stateDir, 'beta', 60);
  acme = client(acmeToken);
  beta = client(betaToken);
});

afterAll(async () => {
  for (const [c, l] of leases) await c.release(l.id).catch(() => undefined);
  for (const c of clients) c.close();
  expect(await server?.stop()).toBe(0);
});

test('Provision: one token past its burst gets RESOURCE_EXHAUSTED with the wait in the message and in `retry-after` metadata; another org is served', async () => {
  const all = await Promise.allSettled(Array.from({ length: PROVISION_BURST + 2 }, (_, i) => acme.provision({ pipelineKey: 'acme/1/1', jobId: `job-${i}` })));
  const granted = all.filter((r): r is PromiseFulfilledResult<LeaseMsg> => r.status === 'fulfilled').map((r) => r.value);
  const refused = all.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as grpc.ServiceError);
  for (const l of granted) leases.push([acme, l]);
  expect(granted).toHaveLength(PROVISION_BURST);
  expect(refused).toHaveLength(2);
  for (const e of refused) {
    expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(e.details).toMatch(/^Rate limit exceeded: at most 0\.1 Provision calls per second per credential \(bursts of 3\); retry after \d+ s\./);
    expect(e.details).toContain('--provision-rate');
    const retryAfter = Number(e.metadata.get('retry-after')[0]);
    expect(Number.isInteger(retryAfter)).toBe(true);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(10);
  }
  acmeLease = granted[0];
  // Control: beta's token has its own limit, untouched by acme's flood.
  betaLease = await beta.provision({ pipelineKey: 'beta/1/1', jobId: 'build', identity: betaIdentity });
  leases.push([beta, betaLease]);
  expect(betaLease.id).toBeTruthy();
});

test('the same API over HTTP/JSON (Connect) shares the limits: a token limited on gRPC is limited there too; the lease reads the same through both faces', async () => {
  const rpc = (path: string, token: string | null, body: object, contentType = 'application/json') =>
    fetch(`${server.info.http}/buildcloud.v1.${path}`, {
      method: 'POST',
      headers: { 'content-type': contentType, 'connect-protocol-version': '1', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body)
    });
  // A tenant past its Provision burst on the gRPC port cannot get round the limit through the other face.
  const limited = await rpc('BuildCloud/Provision', acmeToken, { pipelineKey: 'acme/1/1', jobId: 'via-http' });
  expect(limited.status).toBe(429);
  expect(limited.headers.get('retry-after')).toMatch(/^\d+$/);
  const body = (await limited.json()) as { code: string; message: string };
  expect(body.code).toBe('resource_exhausted');
  expect(body.message).toMatch(/^Rate limit exceeded: at most 0\.1 Provision calls per second per credential/);

  // beta reads its lease over HTTP/JSON as over gRPC: same fields, int64 as strings in proto3 JSON; no TLS key in a Get.
  const got = await rpc('BuildCloud/Get', betaToken, { leaseId: betaLease.id });
  expect(got.status).toBe(200);
  const lease = (await got.json()) as Record<string, unknown>;
  expect(lease).toMatchObject({
    id: betaLease.id,
    org: 'beta',
    pipelineKey: 'beta/1/1',
    state: 'LEASE_STATE_ACTIVE',
    createdAtMs: String(betaLease.createdAtMs)
  });
  expect(lease.tls).toBeNull();
  // and another org's lease is not beta's to read, over either face.
  const foreign = await rpc('BuildCloud/Get', betaToken, { leaseId: acmeLease.id });
  expect([foreign.status, ((await foreign.json()) as { code: string }).code]).toEqual([404, 'not_found']);

  // No credential, a wrong content type, a body that is not the message: each named, none served.
  const anon = await rpc('BuildCloud/Get', null, { leaseId: betaLease.id });
  expect([anon.status, ((await anon.json()) as { code: string }).code]).toEqual([401, 'unauthenticated']);
  const proto = await rpc('BuildCloud/Get', betaToken, { leaseId: betaLease.id }, 'application/proto');
  expect(proto.status).toBe(415);
  expect(proto.headers.get('accept-post')).toBe('application/json');
  const wrong = await rpc('BuildCloud/Get', betaToken, { leaseId: ['x'] });
  expect([wrong.status, ((await wrong.json()) as { code: string }).code]).toEqual([400, 'invalid_argument']);
});

test('metering: records are counted per event; past the burst → 429 with Retry-After and the limit and flag named; another org is served', async () => {
  const first = await post(acmeToken, records('acme', acmeLease.id, 'a', RECORD_BURST));
  expect(first.status).toBe(200);
  expect(((await first.json()) as { accepted: number }).accepted).toBe(RECORD_BURST);

  // One more small request: the bucket is empty (1 record/s), whatever the number of requests so far.
  const flood = await post(acmeToken, records('acme', acmeLease.id, 'b', 50));
  expect(flood.status).toBe(429);
  expect(flood.headers.get('retry-after')).toMatch(/^\d+$/);
  expect(Number(flood.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  const body = (await flood.json()) as { error: { code: string; limit: string; flag: string; message: string; retryAfterSeconds: number } };
  expect(body.error).toMatchObject({ code: 'rate_limited', limit: 'records', flag: '--record-rate' });
  expect(body.error.message).toMatch(/at most 1 usage records per second per credential \(bursts of 1000\); retry after \d+ s/);
  expect(body.error.retryAfterSeconds).toBe(Number(flood.headers.get('retry-after')));

  // Control: beta's records are accepted while acme is limited.
  const control = await post(betaToken, records('beta', betaLease.id, 'c', 10));
  expect(control.status).toBe(200);
  expect(((await control.json()) as { accepted: number }).accepted).toBe(10);

  // Nothing of the refused request was stored: acme's report counts exactly the first batch.
  const usage = (await (await fetch(`${server.info.http}/v1/orgs/acme/usage`, { headers: { authorization: `Bearer ${acmeToken}` } })).json()) as {
    builds: { count: number };
  };
  expect(usage.builds.count).toBe(RECORD_BURST);
});

test('record cap: a lease holding --max-records-per-lease records gets per-event rejections (not storage), whichever token sends them', async () => {
  // A second token of acme has its own rate bucket; the lease's cap is the lease's, not the token's.
  const t = cli(['admin', 'token', 'create', '--org', 'acme', '--state-dir', server.stateDir]);
  expect(t.status).toBe(0);
  const second = t.stdout.trim();
  const extra = records('acme', acmeLease.id, 'd', 5);
  const r = await post(second, [...extra, records('acme', acmeLease.id, 'a', 1)[0]]);
  expect(r.status).toBe(200);
  const body = (await r.json()) as { accepted: number; rejected: number; duplicate: number; results: Array<{ status: string; reason?: string }> };
  expect(body).toMatchObject({ accepted: 0, rejected: 5, duplicate: 1 }); // the resend of a stored record stays a duplicate
  expect(body.results[0].reason).toBe(
    `lease "${acmeLease.id}" already holds ${LEASE_CAP} usage records, the most one lease may store (set by --max-records-per-lease); this record was not stored`
  );
  // Another lease of the same org still takes records.
  const other = await post(second, records('acme', leases[1][1].id, 'e', 3));
  expect(((await other.json()) as { accepted: number }).accepted).toBe(3);
});

test('ExchangeToken: one client address past the burst gets RESOURCE_EXHAUSTED with retry-after, before any token is looked at', async () => {
  const { ApiClient } = await import('../../src/core/api-client');
  const api = new ApiClient({ endpoint: server.info.grpc, attempts: 1, deadlineMs: 20_000 });
  try {
    // Tokens that would each be refused (and logged) if they were looked at: the limit comes first.
    const all = await Promise.allSettled(Array.from({ length: PROVISION_BURST + 2 }, () => api.exchangeToken('not.a.jwt', '')));
    const codes = all.map((r) => (r.status === 'rejected' ? (r.reason as { code?: number }).code : 'ok'));
    expect(codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED)).toHaveLength(2);
    expect(codes.filter((c) => c === grpc.status.PERMISSION_DENIED)).toHaveLength(PROVISION_BURST);
    const limited = all.find(
      (r) => r.status === 'rejected' && (r.reason as { code?: number }).code === grpc.status.RESOURCE_EXHAUSTED
    ) as PromiseRejectedResult;
    expect(String((limited.reason as Error).message)).toMatch(/at most [0-9.]+ ExchangeToken calls per second per client address/);
  } finally {
    api.close();
  }
});
