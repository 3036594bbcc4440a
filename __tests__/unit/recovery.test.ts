// What a start does about leases a crashed run left active (src/server/recovery.ts): their last sign of life is the
// later of the store's last_active_at and the arrival of their latest usage record, never later than now.
import { updateLastSignsOfLife } from '../../src/server/recovery';
import type { LeaseRow, UsageRecordRow } from '../../src/server/store/store';
import { MemoryStore } from '../helpers/memory-store';

const T0 = 1_700_000_000_000;

function lease(id: string, org: string, createdAt: number, lastActiveAt: number, endedAt: number | null = null): LeaseRow {
  return {
    id,
    org,
    pipelineKey: 'p',
    jobId: id,
    scope: 'pipeline',
    platforms: ['linux/amd64'],
    builderIds: ['b1'],
    identity: {},
    actor: 'dev',
    certFingerprint: `fp-${id}`,
    registryUser: id,
    registryPasswordHash: 'h',
    createdAt,
    lastActiveAt,
    endedAt,
    endReason: endedAt === null ? null : 'released',
    billedSeconds: endedAt === null ? null : 1,
    reservedSeconds: 60
  };
}

function record(id: string, org: string, leaseId: string | null, time: number, receivedAt: number): UsageRecordRow {
  return { id, org, type: 'dev.buildcloud.build.completed', time, receivedAt, leaseId, data: {} };
}

test('each active lease moves up to its latest record received, clamped to now; others stay', async () => {
  const store = new MemoryStore();
  store.leases.set('a', lease('a', 'acme', T0, T0 + 1_000)); // records after its last activity: moves
  store.leases.set('b', lease('b', 'acme', T0, T0 + 9_000)); // its record is older than its activity: stays
  store.leases.set('c', lease('c', 'other', T0, T0)); // a record received "later than now" (clock trouble): now
  store.leases.set('d', lease('d', 'acme', T0, T0, T0 + 2_000)); // ended: not ours to touch
  store.leases.set('e', lease('e', 'acme', T0, T0 + 500)); // no record at all: stays
  const add = (r: UsageRecordRow) => store.usage.set(JSON.stringify([r.org, r.id]), r);
  add(record('1', 'acme', 'a', T0 + 2_000, T0 + 2_500));
  add(record('2', 'acme', 'a', T0 + 4_000, T0 + 4_200));
  add(record('3', 'acme', 'b', T0 + 3_000, T0 + 3_100));
  add(record('4', 'other', 'c', T0 + 1_000, T0 + 99_000));
  add(record('5', 'acme', 'd', T0 + 8_000, T0 + 8_000));
  add(record('6', 'acme', null, T0 + 8_000, T0 + 8_000));
  // A runner clock an hour behind still counts: records are looked up by event time with that much slack.
  add(record('7', 'acme', 'e', T0 - 3_000_000, T0 + 700));
  const now = T0 + 10_000;
  expect(await updateLastSignsOfLife(store, now)).toBe(3);
  const last = (id: string) => store.leases.get(id)!.lastActiveAt;
  expect([last('a'), last('b'), last('c'), last('d'), last('e')]).toEqual([T0 + 4_200, T0 + 9_000, now, T0, T0 + 700]);
});

test('no active lease: nothing read, nothing moved', async () => {
  expect(await updateLastSignsOfLife(new MemoryStore(), T0)).toBe(0);
});
