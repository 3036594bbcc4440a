// Measures the usage report of an org with many usage records (issue 9: 150,000 records from one lease filled the
// database to 320 MB and a usage query then blocked the event loop ~2 s). Prints the report's wall time and the
// longest stall of the event loop while it ran (a 1 ms interval timer's largest gap).
// Run: NODE_PATH=$PWD/node_modules node scripts/run-ts.mjs bench/usage-query.ts [records] [padBytes]
// (NODE_PATH: run-ts bundles to a temp dir and leaves the native better-sqlite3 outside the bundle)
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSqliteStore } from '../src/server/store/sqlite';
import { computeUsage } from '../src/server/metering/usage';
import { recordQueries } from '../src/server/metering/record-queries';
import { buildCompletedEvent } from '../src/contract/metering-events';

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 150_000);
  const pad = Number(process.argv[3] ?? 1800); // ~2 KiB per record, as in the measured flood
  const dir = mkdtempSync(join(tmpdir(), 'bc-bench-usage-'));
  const file = join(dir, 'buildcloud.db');
  const store = openSqliteStore(file);
  const now = Date.UTC(2026, 10, 30, 12);
  await store.createOrg('acme', 0);
  await store.createOrg('beta', 0);
  const lease = {
    id: 'L1',
    org: 'acme',
    pipelineKey: 'p',
    jobId: 'j',
    scope: 'pipeline' as const,
    platforms: ['linux/amd64'],
    builderIds: [],
    identity: {},
    actor: 'a',
    certFingerprint: 'f',
    registryUser: 'u',
    registryPasswordHash: 'h',
    createdAt: now - 3600_000,
    lastActiveAt: now,
    endedAt: null,
    endReason: null,
    billedSeconds: null
  };
  await store.insertLease(lease);
  const t0 = Date.now();
  const insert = store.db.prepare(`INSERT INTO usage_records (id, org, type, time, received_at, lease_id, data) VALUES (?, ?, ?, ?, ?, ?, ?)`);
  const padding = 'x'.repeat(pad);
  store.db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const ev = buildCompletedEvent('acme', {
        lease_id: 'L1',
        build_id: String(i),
        platform: 'linux/amd64',
        status: 'success',
        duration_ms: 1000,
        total_steps: 4,
        cached_steps: i % 4,
        actor: `user${i % 50}`
      });
      insert.run(ev.id, 'acme', ev.type, now - 1000 - i, now, 'L1', JSON.stringify({ ...ev.data, pad: padding }));
    }
    // Another org's few records: its report must not pay for acme's flood.
    for (let i = 0; i < 10; i++) {
      const ev = buildCompletedEvent('beta', {
        lease_id: 'LB',
        build_id: String(i),
        platform: 'linux/amd64',
        status: 'success',
        duration_ms: 1000,
        total_steps: 4,
        cached_steps: 1
      });
      insert.run(ev.id, 'beta', ev.type, now - 1000 - i, now, 'LB', JSON.stringify(ev.data));
    }
  })();
  store.db.pragma('wal_checkpoint(TRUNCATE)');
  console.log(`inserted ${n} records (+10 of another org) in ${Date.now() - t0} ms; db ${(statSync(file).size / 1e6).toFixed(0)} MB`);

  const t1 = performance.now();
  recordQueries(store); // creates its indexes once, as the server does at start
  console.log(`record-queries indexes made in ${(performance.now() - t1).toFixed(0)} ms`);
  const before: typeof computeUsage | null = null; // to compare: the previous computeUsage, e.g. from git show
  for (const [label, fn] of [...(before ? [['before', before] as const] : []), ['current', computeUsage] as const]) {
    for (const org of ['acme', 'acme', 'beta']) {
      let last = performance.now();
      let maxGap = 0;
      const timer = setInterval(() => {
        const t = performance.now();
        maxGap = Math.max(maxGap, t - last);
        last = t;
      }, 1);
      const s = performance.now();
      const r = await fn(store, org, '2026-11', now);
      const wall = performance.now() - s;
      await new Promise((res) => setTimeout(res, 5));
      clearInterval(timer);
      console.log(
        `${label} ${org}: computeUsage ${wall.toFixed(0)} ms wall, longest event-loop stall ${maxGap.toFixed(0)} ms; builds ${r.builds.count}, users ${r.users.distinct}, cachedSteps ${r.builds.cachedSteps}`
      );
    }
  }
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}

void main();
