// Issue 9, findings 3 and 4, tried as an attacker would against the real `buildcloud serve` with real dockerd
// builders: another org squatting a record id, an org running past its bucket (50 provisions at once; a
// 1-minute bucket opening 10 leases), and one org holding every lease or builder. Each refusal has its
// accepted control beside it.
import * as grpc from '@grpc/grpc-js';
import { adminSetup, cli, startServer, TestClient, waitFor, type ServerProcess } from '../helpers/server';
import { buildCompletedEvent } from '../../src/contract/metering-events';
import type { LeaseMsg } from '../../src/contract/grpc';

let server: ServerProcess;
const clients: TestClient[] = [];
const tokens: Record<string, string> = {};
let oneMinute: LeaseMsg; // provisioned first; checked last, once its reservation has run out
let oneMinuteRefused: grpc.ServiceError[] = [];

function org(name: string, minutes: number): TestClient {
  tokens[name] = adminSetup(server.stateDir, name, minutes);
  const c = new TestClient(server.info.grpc, tokens[name]);
  clients.push(c);
  return c;
}

async function post(token: string, events: object[]): Promise<{ results: Array<{ id: string; status: string; reason?: string }> }> {
  const r = await fetch(`${server.info.http}/v1/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/cloudevents-batch+json' },
    body: JSON.stringify(events)
  });
  expect(r.status).toBe(200);
  return (await r.json()) as { results: Array<{ id: string; status: string; reason?: string }> };
}

async function usage(name: string): Promise<{ seconds: Record<string, number>; canProvision: boolean }> {
  const r = await fetch(`${server.info.http}/v1/orgs/${name}/usage`, { headers: { authorization: `Bearer ${tokens[name]}` } });
  expect(r.status).toBe(200);
  return (await r.json()) as { seconds: Record<string, number>; canProvision: boolean };
}

// Provisions at once; what was granted and what was refused.
async function burst(c: TestClient, n: number, pipelineKey: string): Promise<{ granted: LeaseMsg[]; refused: grpc.ServiceError[] }> {
  const all = await Promise.allSettled(Array.from({ length: n }, (_, i) => c.provision({ pipelineKey, jobId: `job-${i}` })));
  return {
    granted: all.filter((r): r is PromiseFulfilledResult<LeaseMsg> => r.status === 'fulfilled').map((r) => r.value),
    refused: all.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as grpc.ServiceError)
  };
}

beforeAll(async () => {
  server = await startServer(['--grace', '1s', '--warm-pool', '1']);
  // An org with a 1-minute bucket opens 10 leases at once: one minute covers one minimum lease.
  const one = org('one', 1);
  const r = await burst(one, 10, 'one/1/1');
  expect(r.granted).toHaveLength(1);
  oneMinute = r.granted[0];
  oneMinuteRefused = r.refused;
});

afterAll(async () => {
  for (const c of clients) c.close();
  expect(await server?.stop()).toBe(0);
});

describe('records are per org', () => {
  test("beta posting the id acme's client derives cannot make acme's record a duplicate", async () => {
    const acme = org('acme', 60);
    const beta = org('beta', 60);
    const a = await acme.provision({ pipelineKey: 'acme/1/1', jobId: 'build' });
    const b = await beta.provision({
      pipelineKey: 'beta/1/1',
      jobId: 'build',
      identity: { provider: 'local', project: 'beta/app', branch: 'main', defaultBranch: 'main' }
    });
    const data = { build_id: '1', platform: 'linux/amd64', status: 'success' as const, duration_ms: 1000, total_steps: 2, cached_steps: 1 };
    // The client's id: lease id + build id, both printed in CI logs.
    const real = buildCompletedEvent('acme', { ...data, lease_id: a.id });
    // beta squats it with its own lease (the only kind the endpoint takes from beta): beta's own record.
    const squat = { ...buildCompletedEvent('beta', { ...data, lease_id: b.id }), id: real.id };
    expect((await post(tokens.beta, [squat])).results).toEqual([{ index: 0, id: real.id, status: 'accepted' }]);
    // Control: beta's own record under its own derived id is accepted too.
    const own = buildCompletedEvent('beta', { ...data, build_id: '2', lease_id: b.id });
    expect((await post(tokens.beta, [own])).results[0].status).toBe('accepted');
    // acme's real record is still accepted; its resend (the client retrying) is the duplicate.
    expect((await post(tokens.acme, [real])).results).toEqual([{ index: 0, id: real.id, status: 'accepted' }]);
    expect((await post(tokens.acme, [real])).results).toEqual([{ index: 0, id: real.id, status: 'duplicate' }]);
    // And beta's squat did not land in acme's analytics.
    const report = (await (await fetch(`${server.info.http}/v1/orgs/acme/usage`, { headers: { authorization: `Bearer ${tokens.acme}` } })).json()) as {
      builds: { count: number };
    };
    expect(report.builds.count).toBe(1);
    await acme.release(a.id);
    await beta.release(b.id);
  });
});

describe('buckets that hold', () => {
  test('50 provisions at once with room for exactly 5 minimum leases: 5 granted, 45 refused, settled to the billed seconds', async () => {
    const tiny = org('tiny', 5);
    const { granted, refused } = await burst(tiny, 50, 'tiny/1/1');
    expect(granted).toHaveLength(5);
    expect(refused).toHaveLength(45);
    for (const e of refused) {
      expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.details).toContain("Org 'tiny' has no build minutes left");
      expect(e.details).toContain('buildcloud admin bucket add --org tiny --minutes N');
    }
    // All five jobs of the pipeline share one builder, whose minutes are reserved per lease.
    expect(new Set(granted.map((l) => l.builders[0].builderId)).size).toBe(1);
    const during = await usage('tiny');
    expect(during.seconds.reserved).toBe(300);
    expect(during.seconds.unreserved).toBe(0);
    expect(during.canProvision).toBe(false);

    const released = await Promise.all(granted.map((l) => tiny.release(l.id)));
    const billed = released.reduce((s, l) => s + Number(l.billedSeconds), 0);
    for (const l of released) {
      expect(l.state).toBe('LEASE_STATE_RELEASED');
      expect(l.endReason).toBe('released');
    }
    const after = await usage('tiny');
    expect(after.seconds.billed).toBe(billed);
    expect(after.seconds.used).toBe(billed);
    expect(after.seconds.reserved).toBe(0);
    expect(after.seconds.unreserved).toBe(300 - billed);
    expect(after.seconds.overdraft).toBe(0);
    // Settled: what the reservations did not use is back, and a new lease fits again.
    const again = await tiny.provision({ pipelineKey: 'tiny/2/1', jobId: 'j' });
    await tiny.release(again.id);
  });

  test('an org at its --max-leases is refused while another org still provisions', async () => {
    const capped = org('capped', 60);
    const set = cli(['admin', 'org', 'set', '--org', 'capped', '--max-leases', '2', '--state-dir', server.stateDir]);
    expect(set.status).toBe(0);
    expect(set.stdout).toContain('max leases 2');
    const first = await burst(capped, 5, 'capped/1/1');
    expect(first.granted).toHaveLength(2);
    for (const e of first.refused) {
      expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.details).toContain("Org 'capped' is at its limit of 2 concurrent leases");
      expect(e.details).toContain('buildcloud admin org set --org capped --max-leases N');
    }
    // Control: another org is not starved.
    const other = org('other', 60);
    const o = await other.provision({ pipelineKey: 'other/1/1', jobId: 'j' });
    expect(o.state).toBe('LEASE_STATE_ACTIVE');
    // Releasing one makes room again.
    await capped.release(first.granted[0].id);
    const next = await capped.provision({ pipelineKey: 'capped/1/1', jobId: 'again' });
    for (const l of [first.granted[1], next]) await capped.release(l.id);
    await other.release(o.id);
  });

  test('an org at its --max-builders gets no new builder; its pipeline still shares the one it holds', async () => {
    const small = org('small', 60);
    expect(cli(['admin', 'org', 'set', '--org', 'small', '--max-builders', '1', '--state-dir', server.stateDir]).status).toBe(0);
    const a = await small.provision({ pipelineKey: 'small/1/1', jobId: 'a' });
    const e = (await small.provision({ pipelineKey: 'small/2/1', jobId: 'a' }).catch((err) => err)) as grpc.ServiceError;
    expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(e.details).toContain("Org 'small' is at its limit of 1 concurrent builder.");
    expect(e.details).toContain('buildcloud admin org set --org small --max-builders N');
    // The refused lease holds no reservation.
    expect((await usage('small')).seconds.reserved).toBe(60);
    const b = await small.provision({ pipelineKey: 'small/1/1', jobId: 'b' });
    expect(b.builders[0].builderId).toBe(a.builders[0].builderId);
    await small.release(a.id);
    await small.release(b.id);
  });

  test('a 1-minute bucket opening 10 leases: one granted, ended when its minute is used, nothing overdrawn', async () => {
    expect(oneMinuteRefused).toHaveLength(9);
    for (const e of oneMinuteRefused) {
      expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.details).toContain('buildcloud admin bucket add --org one --minutes N');
    }
    const one = clients[0];
    const ended = await waitFor(
      'the reservation to run out',
      async () => {
        const l = await one.get(oneMinute.id);
        return l.state !== 'LEASE_STATE_ACTIVE' && l;
      },
      Math.max(10_000, Number(oneMinute.createdAtMs) + 75_000 - Date.now()),
      1000
    );
    expect(ended.state).toBe('LEASE_STATE_EXPIRED');
    expect(ended.endReason).toBe('bucket_exhausted');
    expect(ended.endMessage).toContain("org 'one' ran out of build minutes");
    expect(ended.endMessage).toContain('buildcloud admin bucket add --org one --minutes N');
    expect(Number(ended.billedSeconds)).toBe(60);
    // Release answers the same.
    const rel = await one.release(oneMinute.id);
    expect(rel).toMatchObject({ state: 'LEASE_STATE_EXPIRED', endReason: 'bucket_exhausted' });
    const u = await usage('one');
    expect(u.seconds).toMatchObject({ bought: 60, used: 60, overdraft: 0, reserved: 0, unreserved: 0 });
  });
});

// Finding 4's second half with no admin action at all: by default one org cannot take every builder, and idle
// builders of one org never keep another from building.
describe('capacity is shared by default', () => {
  let small: ServerProcess;
  const own: TestClient[] = [];
  afterAll(async () => {
    for (const c of own) c.close();
    if (small) expect(await small.stop()).toBe(0);
  });

  test('--max-builders 4: acme gets 3 (the default 3/4 share), beta still gets one, and later a builder acme left in grace', async () => {
    small = await startServer(['--max-builders', '4', '--warm-pool', '0', '--grace', '10m']);
    const client = (name: string) => {
      const c = new TestClient(small.info.grpc, adminSetup(small.stateDir, name, 600));
      own.push(c);
      return c;
    };
    const acme = client('acme');
    const beta = client('beta');
    const a = [];
    for (let i = 0; i < 3; i++) a.push(await acme.provision({ pipelineKey: `acme/${i}/1`, jobId: 'build' }));
    const fourth = (await acme.provision({ pipelineKey: 'acme/3/1', jobId: 'build' }).catch((e) => e)) as grpc.ServiceError;
    expect(fourth.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(fourth.details).toContain("Org 'acme' is at its limit of 3 concurrent builders");
    const b1 = await beta.provision({ pipelineKey: 'beta/1/1', jobId: 'build' });
    expect(b1.builders).toHaveLength(1);
    // acme's first pipeline ends; its builder waits out a 10-minute grace. The pool is full (3 acme + 1 beta), but
    // beta's next pipeline takes the idle builder's place instead of being refused.
    await acme.release(a[0].id);
    const b2 = await beta.provision({ pipelineKey: 'beta/2/1', jobId: 'build' });
    expect(b2.builders[0].builderId).not.toBe(a[0].builders[0].builderId);
    await waitFor('the evicted builder to be logged', async () => small.stderr().includes('at capacity: making room for another lease'));
    // Every builder held now: the next one is refused, and nothing held is evicted.
    const full = (await beta.provision({ pipelineKey: 'beta/3/1', jobId: 'build' }).catch((e) => e)) as grpc.ServiceError;
    expect(full.code).toBe(grpc.status.UNAVAILABLE);
    for (const l of [...a.slice(1)]) await acme.release(l.id);
    for (const l of [b1, b2]) await beta.release(l.id);
  });
});
