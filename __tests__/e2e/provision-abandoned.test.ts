// A Provision whose caller gives up before the reply (its deadline passes while a cold builder starts, or it drops
// the connection) leaves no lease behind: the server ends it unbilled and releases its builder hold. Found under
// load (issue 14): setup retried after its per-attempt deadline, and every abandoned attempt kept a lease, its
// reservation and its builder until the idle reaper, so 100 jobs made 327 leases.
import Database from 'better-sqlite3';
import * as fs from 'fs';
import * as path from 'path';
import { adminSetup, startServer, TestClient, waitFor, type ServerProcess } from '../helpers/server';
import { rpcPath } from '../../src/contract/connect';

let server: ServerProcess;
let token: string;
let client: TestClient;

beforeAll(async () => {
  // No warm builder: each new pipeline's Provision cold-starts a dockerd (hundreds of ms), longer than the deadlines below.
  server = await startServer(['--warm-pool', '0', '--grace', '30s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  client = new TestClient(server.info.grpc, token);
});

afterAll(async () => {
  client?.close();
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
});

interface LeaseDb {
  id: string;
  job_id: string;
  ended_at: number | null;
  end_reason: string | null;
  billed_seconds: number | null;
}

function leasesOf(pipelineKey: string): LeaseDb[] {
  const db = new Database(path.join(server.stateDir, 'buildcloud.db'), { readonly: true });
  try {
    return db
      .prepare('SELECT id, job_id, ended_at, end_reason, billed_seconds FROM leases WHERE pipeline_key = ? ORDER BY created_at')
      .all(pipelineKey) as LeaseDb[];
  } finally {
    db.close();
  }
}

const abandonedLines = () =>
  server
    .stderr()
    .split('\n')
    .filter((l) => l.includes('provision caller gone before the reply')).length;

test('gRPC: a deadline that passes during a cold start ends that lease unbilled; the retry gets the builder it started', async () => {
  const before = abandonedLines();
  await expect(client.provision({ pipelineKey: 'abandon/grpc', jobId: 'build' }, 40)).rejects.toMatchObject({ code: 4 }); // DEADLINE_EXCEEDED
  await waitFor('the abandoned lease to end', async () => abandonedLines() > before, 30_000);
  const [first] = leasesOf('abandon/grpc');
  expect(first).toMatchObject({ job_id: 'build', end_reason: 'failed', billed_seconds: 0 });
  expect(first.ended_at).not.toBeNull();
  // The retry, as setup makes it: the same job, a new lease, on the builder the first attempt started (in its grace).
  const retry = await client.provision({ pipelineKey: 'abandon/grpc', jobId: 'build' });
  expect(retry.id).not.toBe(first.id);
  expect(
    server
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"starting dockerd"')).length
  ).toBe(1);
  const leases = leasesOf('abandon/grpc');
  expect(leases.map((l) => l.end_reason)).toEqual(['failed', null]);
  await client.release(retry.id);
});

test('Connect: a Connect-Timeout-Ms that passes ends the lease unbilled, and so does a dropped connection', async () => {
  const call = (jobId: string, init: { timeoutMs?: number; signal?: AbortSignal }) =>
    fetch(`${server.info.http}${rpcPath('BuildCloud/Provision')}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${token}`,
        ...(init.timeoutMs ? { 'connect-timeout-ms': String(init.timeoutMs) } : {})
      },
      body: JSON.stringify({ pipelineKey: `abandon/connect-${jobId}`, jobId, identity: { provider: 'local', project: 'acme/app', branch: 'main' } }),
      signal: init.signal
    });
  let before = abandonedLines();
  // The header's deadline passes while the builder starts; the connection stays open and gets the error.
  const res = await call('header', { timeoutMs: 20 });
  expect(res.status).toBe(499);
  expect(((await res.json()) as { code: string; message: string }).message).toContain('the lease was ended unbilled');
  expect(abandonedLines()).toBe(before + 1);
  expect(leasesOf('abandon/connect-header')).toMatchObject([{ end_reason: 'failed', billed_seconds: 0 }]);
  // The client hangs up mid-call (its own timeout): no reply can reach it.
  before = abandonedLines();
  await expect(call('dropped', { signal: AbortSignal.timeout(20) })).rejects.toThrow();
  await waitFor('the dropped call to be undone', async () => abandonedLines() > before, 30_000);
  expect(leasesOf('abandon/connect-dropped')).toMatchObject([{ end_reason: 'failed', billed_seconds: 0 }]);
});

test('a caller that waits gets its lease (nothing is undone for a call that is still there)', async () => {
  const lease = await client.provision({ pipelineKey: 'abandon/patient', jobId: 'build' }, 60_000);
  expect(leasesOf('abandon/patient')).toMatchObject([{ id: lease.id, ended_at: null }]);
  await client.release(lease.id);
});
