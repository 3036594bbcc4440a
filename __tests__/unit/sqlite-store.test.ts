import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrate, MIGRATIONS, openSqliteStore, SCHEMA_VERSION, SqliteStore } from '../../src/server/store/sqlite';
import { LeaseRow, StoreConflict } from '../../src/server/store/store';

let dir: string;
let file: string;
const opened: SqliteStore[] = [];
const open = () => {
  const s = openSqliteStore(file);
  opened.push(s);
  return s;
};

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bc-sqlite-'));
  file = join(dir, 'state', 'buildcloud.db'); // a missing directory is created
});
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
  rmSync(dir, { recursive: true, force: true });
});

const lease = (over: Partial<LeaseRow> = {}): LeaseRow => ({
  id: 'l1',
  org: 'acme',
  pipelineKey: '1/2/1',
  jobId: 'build',
  scope: 'pipeline',
  platforms: ['linux/amd64'],
  builderIds: ['b1'],
  identity: { provider: 'github', project: 'acme/api', fork: false },
  actor: 'ann',
  certFingerprint: 'ab'.repeat(32),
  registryUser: 'lease-l1',
  registryPasswordHash: 'ff'.repeat(32),
  createdAt: 1000,
  lastActiveAt: 1000,
  endedAt: null,
  endReason: null,
  billedSeconds: null,
  ...over
});

describe('SqliteStore', () => {
  test('WAL mode, busy timeout and schema version', () => {
    const s = open();
    expect(s.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(s.db.pragma('busy_timeout', { simple: true })).toBe(5000);
    expect(s.db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(migrate(s.db)).toBe(SCHEMA_VERSION); // idempotent: nothing left to run
    // The record caps count per lease and per org since a time without a table scan: the (org, lease_id, id) key
    // of migration 5 and the (org, received_at) index.
    const plan = (sql: string) => JSON.stringify(s.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all('acme', 'l1'));
    expect(plan('SELECT COUNT(*) FROM usage_records WHERE org = ? AND lease_id = ?')).toMatch(/USING (COVERING )?INDEX sqlite_autoindex_usage_records_1/);
    expect(plan('SELECT COUNT(*) FROM usage_records WHERE org = ? AND received_at >= ?')).toMatch(/USING (COVERING )?INDEX usage_records_org_received/);
  });

  test('a schema from a newer buildcloud is refused with a clear error', () => {
    const db = new Database(join(dir, 'new.db'));
    db.pragma('user_version = 999');
    db.close();
    expect(() => openSqliteStore(join(dir, 'new.db'))).toThrow(/schema version 999 is newer.*upgrade buildcloud/);
  });

  test('orgs: create, conflict, get, list', async () => {
    const s = open();
    expect(await s.createOrg('acme', 5)).toEqual({ name: 'acme', createdAt: 5 });
    await s.createOrg('beta', 6);
    await expect(s.createOrg('acme', 7)).rejects.toBeInstanceOf(StoreConflict);
    await expect(s.createOrg('acme', 7)).rejects.toThrow('org "acme" already exists');
    expect(await s.getOrg('acme')).toEqual({ name: 'acme', createdAt: 5 });
    expect(await s.getOrg('nope')).toBeNull();
    expect((await s.listOrgs()).map((o) => o.name)).toEqual(['acme', 'beta']);
    expect(await s.countOrgs()).toBe(2);
  });

  test('tokens: create, find by hash, revoke once, list', async () => {
    const s = open();
    const t = { id: 't1', org: 'acme', hash: 'h1', label: 'ci', createdAt: 1, revokedAt: null, scope: null };
    await s.createToken(t);
    await s.createToken({ ...t, id: 't2', hash: 'h2' });
    await expect(s.createToken({ ...t, id: 't3' })).rejects.toBeInstanceOf(StoreConflict); // same hash
    expect(await s.findTokenByHash('h1')).toEqual(t);
    expect(await s.findTokenByHash('zz')).toBeNull();
    // A scoped token keeps its scope (migration 3).
    const scoped = { ...t, id: 't4', hash: 'h4', scope: { projects: ['acme/app'], branches: ['main', 'release/*'], readOnly: true } };
    await s.createToken(scoped);
    expect(await s.findTokenByHash('h4')).toEqual(scoped);
    expect(await s.revokeToken('t1', 9)).toBe(true);
    expect(await s.revokeToken('t1', 10)).toBe(false);
    expect((await s.findTokenByHash('h1'))?.revokedAt).toBe(9);
    expect((await s.listTokens('acme')).map((x) => x.id)).toEqual(['t1', 't2', 't4']);
    expect(await s.listTokens('beta')).toEqual([]);
  });

  test('buckets sum per org', async () => {
    const s = open();
    expect(await s.bucketSeconds('acme')).toBe(0);
    const b = await s.addBucket('acme', 6000, 'first', 1);
    expect(b).toMatchObject({ org: 'acme', seconds: 6000, note: 'first', createdAt: 1 });
    expect(typeof b.id).toBe('number');
    await s.addBucket('acme', 600, 'more', 2);
    await s.addBucket('beta', 60, '', 3);
    expect(await s.bucketSeconds('acme')).toBe(6600);
    await expect(s.addBucket('acme', NaN, '', 4)).rejects.toThrow(/seconds must be an integer/);
  });

  test('trust rules', async () => {
    const s = open();
    const r = {
      org: 'acme',
      issuer: 'https://token.actions.githubusercontent.com',
      audience: 'buildcloud',
      claim: 'repository_owner',
      value: 'acme',
      createdAt: 1
    };
    const a = await s.addTrust(r);
    await s.addTrust({ ...r, org: 'beta', value: 'beta' });
    expect(a).toEqual({ id: a.id, ...r });
    expect(await s.listTrust()).toHaveLength(2);
    expect(await s.listTrust('acme')).toEqual([a]);
    expect(await s.removeTrust(a.id)).toBe(true);
    expect(await s.removeTrust(a.id)).toBe(false);
  });

  test('leases: JSON columns round-trip, touch, end once, active, billed', async () => {
    const s = open();
    await s.insertLease(lease());
    await expect(s.insertLease(lease())).rejects.toBeInstanceOf(StoreConflict);
    // A bad row is a bug, not a conflict: it fails loudly with SQLite's own error.
    await expect(s.insertLease(lease({ id: 'bad', scope: 'weird' as 'job' }))).rejects.toThrow(/CHECK constraint failed/);
    expect(await s.getLease('l1')).toEqual({ ...lease(), reservedSeconds: 0 });
    expect(await s.getLease('zz')).toBeNull();

    await s.touchLease('l1', 5000);
    await s.touchLease('l1', 3000); // never moves backwards
    expect((await s.getLease('l1'))?.lastActiveAt).toBe(5000);

    await s.insertLease(lease({ id: 'l2', createdAt: 2000 }));
    await s.insertLease(lease({ id: 'l3', org: 'beta' }));
    expect((await s.activeLeases()).map((l) => l.id)).toEqual(['l1', 'l3', 'l2']);
    expect((await s.activeLeases('acme')).map((l) => l.id)).toEqual(['l1', 'l2']);

    expect(await s.endLease('l1', 10_000, 'released', 9)).toBe(true);
    expect(await s.endLease('l1', 99_000, 'idle', 98)).toBe(false); // ending twice never bills twice
    expect(await s.getLease('l1')).toMatchObject({ endedAt: 10_000, endReason: 'released', billedSeconds: 9 });
    await s.touchLease('l1', 50_000); // an ended lease is not touched
    expect((await s.getLease('l1'))?.lastActiveAt).toBe(5000);
    expect((await s.activeLeases('acme')).map((l) => l.id)).toEqual(['l2']);

    await s.endLease('l2', 20_000, 'ttl', 18);
    await s.endLease('l3', 20_000, 'idle', 1000);
    expect(await s.billedSeconds('acme')).toBe(27);
    expect(await s.billedSeconds('acme', 10_000)).toBe(27); // at or after
    expect(await s.billedSeconds('acme', 10_001)).toBe(18);
    expect(await s.billedSeconds('acme', 20_001)).toBe(0);
    expect(await s.billedSeconds('nobody')).toBe(0);
    expect(await s.countEndedLeases('acme', 0, 20_000)).toBe(1);
    expect(await s.countEndedLeases('acme', 0, 20_001)).toBe(2);
  });

  test('usage records: inserted once per (org, lease, id); another org, or another lease, cannot make a record a duplicate', async () => {
    const s = open();
    const rec = { id: 'r1', org: 'acme', type: 't', time: 100, receivedAt: 200, leaseId: 'l1', data: { a: [1, 2], b: { c: 'x' } } };
    // beta squats acme's id first: stored as beta's own record, and acme's is still new.
    expect(await s.insertUsageRecord({ ...rec, org: 'beta', leaseId: 'lb', data: { evil: true } })).toBe('inserted');
    expect(await s.insertUsageRecord(rec)).toBe('inserted');
    expect(await s.insertUsageRecord(rec)).toBe('duplicate');
    expect(await s.insertUsageRecord({ ...rec, org: 'beta', leaseId: 'lb', data: { again: true } })).toBe('duplicate');
    expect(await s.usageRecords('acme', 0, 1000)).toEqual([rec]);
    expect((await s.usageRecords('beta', 0, 1000)).map((r) => r.data)).toEqual([{ evil: true }]);
    // Within acme: the same id on another lease is another record (migration 5), never the first one's duplicate.
    expect(await s.insertUsageRecord({ ...rec, leaseId: 'l2', time: 150 })).toBe('inserted');
    expect((await s.usageRecords('acme', 0, 1000)).map((r) => r.leaseId)).toEqual(['l1', 'l2']);

    await s.insertUsageRecord({ ...rec, id: 'r2', time: 500, leaseId: null });
    expect((await s.usageRecords('acme', 100, 500)).map((r) => r.id)).toEqual(['r1', 'r1']); // [since, until)
    expect((await s.usageRecords('acme', 151, 501)).map((r) => r.id)).toEqual(['r2']);
    expect((await s.usageRecords('acme', 151, 501))[0].leaseId).toBeNull();
  });

  test('two connections on one file: both see each other, a lease ends once', async () => {
    const a = open();
    const b = open(); // e.g. the server and `buildcloud admin`
    await a.createOrg('acme', 1);
    await expect(b.createOrg('acme', 2)).rejects.toBeInstanceOf(StoreConflict);
    await b.addBucket('acme', 600, '', 3);
    expect(await a.bucketSeconds('acme')).toBe(600);

    await a.insertLease(lease());
    expect(await b.endLease('l1', 5000, 'released', 4)).toBe(true);
    expect(await a.endLease('l1', 6000, 'idle', 5)).toBe(false);
    expect(await a.billedSeconds('acme')).toBe(4);

    const rec = { id: 'r1', org: 'acme', type: 't', time: 1, receivedAt: 1, leaseId: null, data: {} };
    expect(await a.insertUsageRecord(rec)).toBe('inserted');
    expect(await b.insertUsageRecord(rec)).toBe('duplicate');
  });

  test('a writer waits for another process holding the write lock instead of failing busy', async () => {
    const a = open();
    // Another process (like `buildcloud admin`) holds the write lock for 300 ms.
    const script = `
      const db = new (require(${JSON.stringify(require.resolve('better-sqlite3'))}))(process.argv[1]);
      db.exec('BEGIN IMMEDIATE');
      db.prepare('INSERT INTO orgs (name, created_at) VALUES (?, ?)').run('other', 1);
      process.stdout.write('locked\\n');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
      db.exec('COMMIT');
      db.close();`;
    const child = spawn(process.execPath, ['-e', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    const started = Date.now();
    await a.createOrg('acme', 1); // blocks on the lock (busy_timeout), then succeeds
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(await exited).toBe(0);
    expect((await a.listOrgs()).map((o) => o.name)).toEqual(['acme', 'other']);
  });

  test('close is idempotent; :memory: works', async () => {
    const m = openSqliteStore(':memory:');
    await m.createOrg('x', 1);
    expect(await m.getOrg('x')).not.toBeNull();
    await m.close();
    await m.close();
  });
});

describe('group commit', () => {
  test('writes that arrive together commit together; one that throws rolls back alone and rejects alone', async () => {
    const s = openSqliteStore(':memory:');
    try {
      await s.createOrg('acme', 1);
      const commits: number[] = [];
      const tx = (s as unknown as { tx: { commit: { run: () => unknown } } }).tx;
      const commit = tx.commit;
      tx.commit = {
        run: () => {
          commits.push(Date.now());
          return commit.run();
        }
      };
      const rec = (id: string) => ({ id, org: 'acme', type: 't', time: 1, receivedAt: 1, leaseId: 'l1', data: {} });
      const [a, b, bad, c] = await Promise.allSettled([
        s.insertUsageRecord(rec('r1')),
        s.insertUsageRecords([rec('r2'), rec('r1')]),
        s.endLease('no-such-lease', 1, 'released', 0), // no such lease: false, in the same transaction
        s.insertUsageRecord(rec('r3'))
      ]);
      expect(commits).toHaveLength(1); // one transaction (one fsync) for every write of that turn
      expect(a).toEqual({ status: 'fulfilled', value: 'inserted' });
      expect(b).toEqual({ status: 'fulfilled', value: ['inserted', 'duplicate'] });
      expect(bad).toEqual({ status: 'fulfilled', value: false });
      expect(c).toEqual({ status: 'fulfilled', value: 'inserted' });
      // A write that throws inside the transaction rolls back its own savepoint only.
      const [ok1, failed, ok2] = await Promise.allSettled([
        s.insertUsageRecord(rec('r4')),
        (s as unknown as { write: (f: () => unknown) => Promise<unknown> }).write(() => {
          s.db.prepare("INSERT INTO usage_records (id, org, type, time, received_at, lease_id, data) VALUES ('r5', 'acme', 't', 1, 1, 'l1', '{}')").run();
          throw new Error('half-done write');
        }),
        s.insertUsageRecord(rec('r6'))
      ]);
      expect([ok1.status, failed.status, ok2.status]).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      const ids = (await s.usageRecords('acme', 0, 10)).map((r) => r.id).sort();
      expect(ids).toEqual(['r1', 'r2', 'r3', 'r4', 'r6']); // r5 was rolled back with its write
      expect(commits).toHaveLength(2);
    } finally {
      await s.close();
    }
  });

  test('writes queued when the store closes are committed first', async () => {
    const s = openSqliteStore(':memory:');
    await s.createOrg('acme', 1);
    const pending = s.insertUsageRecord({ id: 'r1', org: 'acme', type: 't', time: 1, receivedAt: 1, leaseId: 'l1', data: {} });
    await s.close();
    await expect(pending).resolves.toBe('inserted');
    await expect(s.insertUsageRecord({ id: 'r2', org: 'acme', type: 't', time: 1, receivedAt: 1, leaseId: 'l1', data: {} })).rejects.toThrow(/closed/);
  });
});

describe('org ledger (migration 7): running totals kept by triggers', () => {
  // What the ledger replaces: the sums over every lease of the org.
  const sums = (db: Database.Database, org: string) =>
    db
      .prepare(
        `SELECT COALESCE(SUM(ended_at IS NULL), 0) AS n, COALESCE(SUM(CASE WHEN ended_at IS NULL THEN reserved_seconds ELSE 0 END), 0) AS s,
           COALESCE(SUM(CASE WHEN ended_at IS NULL THEN 0 ELSE COALESCE(billed_seconds, 0) END), 0) AS b FROM leases WHERE org = ?`
      )
      .get(org);
  const ledger = (db: Database.Database, org: string) =>
    db.prepare('SELECT active_leases AS n, reserved_seconds AS s, billed_seconds AS b FROM org_ledger WHERE org = ?').get(org) ?? { n: 0, s: 0, b: 0 };

  test('equal to the sums over the leases after random reserves, extensions, ends and a delete, per org', async () => {
    const s = open();
    await s.addBucket('acme', 1_000_000, '', 1);
    await s.addBucket('beta', 1_000_000, '', 1);
    let seed = 42;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), Math.floor(seed / 65536) % n); // high bits
    const live: Array<{ id: string; org: string }> = [];
    for (let i = 0; i < 300; i++) {
      const op = rnd(3);
      if (op === 0 || live.length === 0) {
        const org = rnd(2) ? 'acme' : 'beta';
        const id = `l${i}`;
        const r = await s.reserveLease(lease({ id, org, certFingerprint: id.padEnd(64, '0') }), { minSeconds: 60, chunkSeconds: 60 + rnd(600) });
        expect(r.ok).toBe(true);
        live.push({ id, org });
      } else if (op === 1) {
        await s.extendReservation(live[rnd(live.length)].id, 1 + rnd(900));
      } else {
        const [l] = live.splice(rnd(live.length), 1);
        await s.endLease(l.id, 5000 + i, 'released', rnd(2000));
      }
      if (i % 50 === 0) for (const org of ['acme', 'beta']) expect(ledger(s.db, org)).toEqual(sums(s.db, org));
    }
    s.db.prepare('DELETE FROM leases WHERE id IN (SELECT id FROM leases ORDER BY id LIMIT 7)').run();
    for (const org of ['acme', 'beta', 'nobody']) expect(ledger(s.db, org)).toEqual(sums(s.db, org));
    // Both kinds are there to count: active leases and billed ended ones.
    expect((sums(s.db, 'acme') as { n: number }).n + (sums(s.db, 'beta') as { n: number }).n).toBeGreaterThan(0);
    expect((sums(s.db, 'acme') as { b: number }).b).toBeGreaterThan(0);
    // What the store answers from it.
    expect(await s.billedSeconds('acme')).toBe((sums(s.db, 'acme') as { b: number }).b);
    expect(await s.reservedSeconds('beta')).toBe((sums(s.db, 'beta') as { s: number }).s);
  });

  test('a database of schema 6 with leases is brought forward with its totals', async () => {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, 'state'), { recursive: true });
    const db = new Database(file);
    db.exec('BEGIN');
    for (const m of MIGRATIONS.slice(0, 6)) db.exec(m);
    db.pragma('user_version = 6');
    db.exec('COMMIT');
    const ins = db.prepare(
      `INSERT INTO leases (id, org, pipeline_key, job_id, scope, platforms, builder_ids, identity, actor, cert_fingerprint, registry_user,
         registry_password_hash, created_at, last_active_at, ended_at, end_reason, billed_seconds, reserved_seconds)
       VALUES (?, ?, 'p', 'j', 'pipeline', '[]', '[]', '{}', '', ?, ?, '', 1, 1, ?, ?, ?, ?)`
    );
    ins.run('a1', 'acme', 'f1', 'a1', null, null, null, 600);
    ins.run('a2', 'acme', 'f2', 'a2', 50, 'released', 42, 600);
    ins.run('a3', 'acme', 'f3', 'a3', 60, 'idle', null, 300);
    ins.run('b1', 'beta', 'f4', 'b1', null, null, null, 120);
    db.close();
    const s = open();
    expect(s.db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(ledger(s.db, 'acme')).toEqual({ n: 1, s: 600, b: 42 });
    expect(ledger(s.db, 'beta')).toEqual({ n: 1, s: 120, b: 0 });
  });
});
