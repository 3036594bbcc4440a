// Buckets that hold (issue 9, finding 4): the reservation arithmetic, and the store's atomic check-and-insert,
// extension, settlement and per-org limits; usage record ids per org (finding 3) across the schema migration.
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  extensionGrant,
  initialReservation,
  MIN_LEASE_SECONDS,
  RESERVATION_CHUNK_SECONDS,
  reservationEnd,
  reservationState,
  settledSeconds,
  unreservedSeconds
} from '../../src/server/billing';
import { MIGRATIONS, openSqliteStore, SCHEMA_VERSION, SqliteStore } from '../../src/server/store/sqlite';
import type { LeaseRow, ReservePolicy } from '../../src/server/store/store';
import { MemoryStore } from '../helpers/memory-store';
import { endMessage, refusal } from '../../src/server/leases';

const POLICY: ReservePolicy = { minSeconds: MIN_LEASE_SECONDS, chunkSeconds: RESERVATION_CHUNK_SECONDS };

describe('reservation arithmetic', () => {
  test.each([
    // bought, overdraft, billed, reserved → unreserved
    [300, 0, 0, 0, 300],
    [300, 0, 100, 120, 80],
    [300, 0, 200, 180, 0], // never negative
    [60, 120, 0, 60, 120], // the overdraft is spendable
    [0, 0, 0, 0, 0]
  ])('bought %p overdraft %p billed %p reserved %p → %p unreserved', (bought, over, billed, reserved, want) => {
    expect(unreservedSeconds({ boughtSeconds: bought, overdraftSeconds: over, billedSeconds: billed, reservedSeconds: reserved })).toBe(want);
  });

  test.each([
    // unreserved, min, chunk → first reservation (null: refused)
    [300, 60, 60, 60],
    [60, 60, 60, 60],
    [59, 60, 60, null], // cannot cover a minimum lease
    [0, 60, 60, null],
    [90, 60, 120, 90], // a bigger chunk is cut to what is left
    [500, 60, 120, 120]
  ])('unreserved %p min %p chunk %p → %p', (unreserved, min, chunk, want) => {
    expect(initialReservation(unreserved, min, chunk)).toBe(want);
  });

  test.each([
    [300, 60, 60],
    [10, 60, 10], // whatever is left
    [0, 60, 0],
    [10.7, 60, 10] // whole seconds
  ])('extension with %p unreserved, chunk %p → %p', (unreserved, chunk, want) => {
    expect(extensionGrant(unreserved, chunk)).toBe(want);
  });

  test.each<[number, number | undefined, number, 'ok' | 'extend' | 'exhausted']>([
    [0, 60, 0, 'ok'],
    [0, 60, 29_999, 'ok'],
    [0, 60, 30_001, 'extend'], // less than 30 s left
    [0, 60, 60_000, 'exhausted'],
    [0, 120, 60_000, 'ok'],
    [0, 0, 10 ** 9, 'ok'], // a lease from before reservations: never exhausted
    [0, undefined, 10 ** 9, 'ok']
  ])('created %p reserved %p at %p → %p', (created, reserved, now, want) => {
    expect(reservationState(created, reserved, now)).toBe(want);
  });

  test.each<[number, number, number | undefined, number]>([
    [0, 12_300, 60, 13], // per second, rounded up
    [0, 75_000, 60, 60], // never past the reservation (a late reaper or release costs the org nothing)
    [0, 75_000, 0, 75], // legacy lease: not capped
    [0, 75_000, undefined, 75]
  ])('settled: created %p ended %p reserved %p → %p s', (created, ended, reserved, want) => {
    expect(settledSeconds(created, ended, reserved)).toBe(want);
  });

  test('reservationEnd', () => {
    expect(reservationEnd(1000, 60)).toBe(61_000);
    expect(reservationEnd(1000, 0)).toBe(Number.POSITIVE_INFINITY);
  });

  test('messages name what ran out and the command that adds to it', () => {
    const bal = refusal('acme', { ok: false, limit: 'balance', unreservedSeconds: 30, boughtSeconds: 300, usedSeconds: 90, reservedSeconds: 180 });
    expect(bal).toMatch(/^Org 'acme' has no build minutes left/);
    expect(bal).toContain('buildcloud admin bucket add --org acme --minutes N');
    expect(refusal('acme', { ok: false, limit: 'max_leases', maxLeases: 2, activeLeases: 2 })).toContain(
      'limit of 2 concurrent leases (2 active). Release a lease or wait for one to end, or raise the limit: buildcloud admin org set --org acme --max-leases N'
    );
    expect(endMessage({ org: 'acme', endReason: 'bucket_exhausted', reservedSeconds: 60, billedSeconds: 60 })).toContain(
      'buildcloud admin bucket add --org acme --minutes N'
    );
  });
});

let n = 0;
const lease = (org: string, over: Partial<LeaseRow> = {}): LeaseRow => ({
  id: `l${++n}`,
  org,
  pipelineKey: 'p/1',
  jobId: 'j',
  scope: 'pipeline',
  platforms: ['linux/amd64'],
  builderIds: [],
  identity: {},
  actor: '',
  certFingerprint: 'ab',
  registryUser: 'u',
  registryPasswordHash: 'h',
  createdAt: 1000,
  lastActiveAt: 1000,
  endedAt: null,
  endReason: null,
  billedSeconds: null,
  ...over
});

describe.each([
  ['SqliteStore', () => openSqliteStore(':memory:')],
  ['MemoryStore', () => new MemoryStore()]
])('%s reservations', (_name, make) => {
  test('50 provisions at once with room for 5 minimum leases: exactly 5 reserved, then released and settled', async () => {
    const s = make();
    await s.addBucket('acme', 5 * 60, '', 0);
    const results = await Promise.all(Array.from({ length: 50 }, () => s.reserveLease(lease('acme'), POLICY)));
    expect(results.filter((r) => r.ok)).toHaveLength(5);
    const refused = results.filter((r) => !r.ok);
    expect(refused).toHaveLength(45);
    expect(refused[0]).toEqual({ ok: false, limit: 'balance', unreservedSeconds: 0, boughtSeconds: 300, usedSeconds: 0, reservedSeconds: 300 });
    expect(await s.reservedSeconds('acme')).toBe(300);
    // Settling at the billed seconds gives the rest back.
    const active = await s.activeLeases('acme');
    for (const [i, l] of active.entries()) await s.endLease(l.id, 2000, 'released', i + 1);
    expect(await s.reservedSeconds('acme')).toBe(0);
    expect(await s.billedSeconds('acme')).toBe(1 + 2 + 3 + 4 + 5);
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(true);
    await s.close();
  });

  test('an extension takes what is left, then nothing; an ended lease is not extended', async () => {
    const s = make();
    await s.addBucket('acme', 150, '', 0);
    const a = lease('acme');
    const b = lease('acme');
    expect(await s.reserveLease(a, POLICY)).toEqual({ ok: true, reservedSeconds: 60 });
    expect(await s.reserveLease(b, POLICY)).toEqual({ ok: true, reservedSeconds: 60 });
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(false); // 30 s left < a minimum lease
    expect(await s.extendReservation(a.id, 60)).toBe(90); // the 30 s that are left
    expect(await s.extendReservation(b.id, 60)).toBe(60); // nothing left
    await s.endLease(a.id, 5000, 'released', 4);
    expect(await s.extendReservation(a.id, 60)).toBeNull();
    expect(await s.extendReservation(b.id, 60)).toBe(120); // a's unused reservation came back
    await s.close();
  });

  test('orgs are separate books; the overdraft and max-leases are per org', async () => {
    const s = make();
    await s.addBucket('acme', 60, '', 0);
    await s.addBucket('beta', 600, '', 0);
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(true);
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(false);
    expect((await s.reserveLease(lease('beta'), POLICY)).ok).toBe(true);
    expect(await s.getOrgLimits('acme')).toEqual({
      org: 'acme',
      maxBuilders: null,
      maxLeases: null,
      overdraftSeconds: 0,
      protectedBranches: null,
      updatedAt: null
    });
    await s.setOrgLimits('acme', { overdraftSeconds: 60 }, 7);
    // Protected branches are kept apart from the numeric limits, and a later patch leaves them as they are.
    await s.setOrgLimits('acme', { protectedBranches: ['main', 'release/*'] }, 8);
    expect((await s.getOrgLimits('acme')).protectedBranches).toEqual(['main', 'release/*']);
    await s.setOrgLimits('acme', { maxLeases: null }, 9);
    expect(await s.getOrgLimits('acme')).toMatchObject({ overdraftSeconds: 60, protectedBranches: ['main', 'release/*'] });
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(true); // the overdraft, and no further
    expect((await s.reserveLease(lease('acme'), POLICY)).ok).toBe(false);

    await s.setOrgLimits('beta', { maxLeases: 2, maxBuilders: 3 }, 8);
    expect(await s.getOrgLimits('beta')).toEqual({ org: 'beta', maxBuilders: 3, maxLeases: 2, overdraftSeconds: 0, protectedBranches: null, updatedAt: 8 });
    expect((await s.reserveLease(lease('beta'), POLICY)).ok).toBe(true);
    expect(await s.reserveLease(lease('beta'), POLICY)).toEqual({ ok: false, limit: 'max_leases', maxLeases: 2, activeLeases: 2 });
    // A patch changes only what it names; null lifts a cap.
    await s.setOrgLimits('beta', { maxLeases: null }, 9);
    expect(await s.getOrgLimits('beta')).toEqual({ org: 'beta', maxBuilders: 3, maxLeases: null, overdraftSeconds: 0, protectedBranches: null, updatedAt: 9 });
    expect((await s.reserveLease(lease('beta'), POLICY)).ok).toBe(true);
    await s.close();
  });
});

describe('SqliteStore across connections and versions', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'bc-reserve-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('two connections on one file (two replicas, or serve and admin) cannot both take the last minute', async () => {
    const file = join(dir, 'db');
    const a = openSqliteStore(file);
    const b = openSqliteStore(file);
    await a.addBucket('acme', 60, '', 0);
    const r = await Promise.all([a.reserveLease(lease('acme'), POLICY), b.reserveLease(lease('acme'), POLICY)]);
    expect(r.map((x) => x.ok).sort()).toEqual([false, true]);
    await a.close();
    await b.close();
  });

  test('a version-1 state dir migrates: records keep org and id, become per org; leases keep their rows', async () => {
    const file = join(dir, 'db');
    const old = new Database(file);
    old.exec(MIGRATIONS[0]);
    old.pragma('user_version = 1');
    old.prepare(`INSERT INTO usage_records (id, org, type, time, received_at, lease_id, data) VALUES ('r1', 'acme', 't', 5, 6, 'la', '{"x":1}')`).run();
    old
      .prepare(
        `INSERT INTO leases (id, org, pipeline_key, job_id, scope, platforms, builder_ids, identity, actor, cert_fingerprint,
      registry_user, registry_password_hash, created_at, last_active_at) VALUES ('la', 'acme', 'p', 'j', 'pipeline', '[]', '[]', '{}', '', 'f', 'u', 'h', 1, 1)`
      )
      .run();
    old.close();

    const s: SqliteStore = openSqliteStore(file);
    expect(s.db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(await s.usageRecords('acme', 0, 10)).toEqual([{ id: 'r1', org: 'acme', type: 't', time: 5, receivedAt: 6, leaseId: 'la', data: { x: 1 } }]);
    const rec = { id: 'r1', org: 'acme', type: 't', time: 5, receivedAt: 6, leaseId: 'la', data: {} };
    expect(await s.insertUsageRecord(rec)).toBe('duplicate');
    expect(await s.insertUsageRecord({ ...rec, org: 'beta' })).toBe('inserted');
    const l = await s.getLease('la');
    expect(l).toMatchObject({ id: 'la', reservedSeconds: 0, endedAt: null });
    expect(await s.reservedSeconds('acme')).toBe(0);
    await s.close();
  });
});
