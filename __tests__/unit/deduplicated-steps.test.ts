// Honest counts (issue 11, case 8): steps another job's identical build ran for this one are `deduplicated_steps`,
// never `cached_steps`. Stored by the control plane (migration 6 gives records from before it 0), reported apart in
// the usage API, `buildcloud usage` and the job summary, and never part of the cache ratio or the north-star share.
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUILD_COMPLETED, buildCompletedEvent, JOB_COMPLETED } from '../../src/contract/metering-events';
import { migrate, MIGRATIONS, openSqliteStore, SqliteStore } from '../../src/server/store/sqlite';
import type { LeaseRow, UsageRecordRow } from '../../src/server/store/store';
import { computeUsage, pipelineUsage } from '../../src/server/metering/usage';
import { renderUsage } from '../../src/cli/usage';
import { renderPrComment, renderSummary, renderText, totalsOf, type BuildResult } from '../../src/core/summary';

let dir: string;
let store: SqliteStore | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bc-dedup-'));
});
afterEach(async () => {
  await store?.close();
  store = undefined;
  rmSync(dir, { recursive: true, force: true });
});

const NOW = Date.UTC(2026, 10, 30, 12);
const MONTH = '2026-11';

const lease = (id: string): LeaseRow => ({
  id,
  org: 'acme',
  pipelineKey: 'p/1',
  jobId: id,
  scope: 'pipeline',
  platforms: ['linux/amd64'],
  builderIds: ['b1'],
  identity: { provider: 'local', project: 'acme/app' },
  actor: 'ann',
  certFingerprint: 'ab'.repeat(32),
  registryUser: `lease-${id}`,
  registryPasswordHash: 'ff'.repeat(32),
  createdAt: NOW - 60_000,
  lastActiveAt: NOW - 60_000,
  endedAt: NOW - 1000,
  endReason: 'released',
  billedSeconds: 59
});

const record = (leaseId: string, buildId: string, data: Record<string, unknown>): UsageRecordRow => ({
  id: `${leaseId}-${buildId}`,
  org: 'acme',
  type: BUILD_COMPLETED,
  time: NOW - 30_000,
  receivedAt: NOW - 29_000,
  leaseId,
  data: { lease_id: leaseId, build_id: buildId, platform: 'linux/amd64', status: 'success', duration_ms: 1000, ...data }
});

describe('the control plane stores and reports deduplicated steps apart from cached ones', () => {
  test('migration 6 gives build records from before it deduplicated_steps 0 and leaves others alone', () => {
    const db = new Database(join(dir, 'old.db'));
    for (const m of MIGRATIONS.slice(0, 5)) db.exec(m);
    db.pragma('user_version = 5');
    const insert = db.prepare('INSERT INTO usage_records (org, id, type, time, received_at, lease_id, data) VALUES (?, ?, ?, ?, ?, ?, ?)');
    insert.run('acme', 'b1', BUILD_COMPLETED, 1, 1, 'l1', JSON.stringify({ total_steps: 6, cached_steps: 6, cache_ratio: 1 }));
    insert.run('acme', 'b2', BUILD_COMPLETED, 2, 2, 'l1', JSON.stringify({ total_steps: 6, cached_steps: 0, deduplicated_steps: 6, cache_ratio: 0 }));
    insert.run('acme', 'j1', JOB_COMPLETED, 3, 3, 'l1', JSON.stringify({ builds: 2 }));
    expect(migrate(db)).toBe(5);
    expect(MIGRATIONS.length).toBeGreaterThanOrEqual(6);
    const data = Object.fromEntries(
      (db.prepare('SELECT id, data FROM usage_records ORDER BY id').all() as { id: string; data: string }[]).map((r) => [r.id, JSON.parse(r.data)])
    );
    db.close();
    expect(data.b1).toEqual({ total_steps: 6, cached_steps: 6, cache_ratio: 1, deduplicated_steps: 0 });
    expect(data.b2.deduplicated_steps).toBe(6);
    expect(data.j1).toEqual({ builds: 2 });
  });

  test('usage and pipeline usage: deduplicated steps apart; the north-star share counts cache hits only', async () => {
    store = openSqliteStore(join(dir, 'state.db'));
    await store.createOrg('acme', NOW - 100_000);
    for (const id of ['la', 'lb', 'lc']) await store.insertLease(lease(id));
    // a: built everything (cold); b: the same build at once, merged into a's solve by BuildKit: all 6 deduplicated,
    // none cached (its cache import failed `not found`); c: a record of a client from before the field, 2 cached.
    const a = buildCompletedEvent('acme', {
      lease_id: 'la',
      build_id: '1',
      platform: 'linux/amd64',
      status: 'success',
      duration_ms: 9000,
      total_steps: 6,
      cached_steps: 0,
      deduplicated_steps: 0
    });
    const b = buildCompletedEvent('acme', {
      lease_id: 'lb',
      build_id: '1',
      platform: 'linux/amd64',
      status: 'success',
      duration_ms: 900,
      total_steps: 6,
      cached_steps: 0,
      deduplicated_steps: 6
    });
    await store.insertUsageRecord(record('la', '1', a.data as unknown as Record<string, unknown>));
    await store.insertUsageRecord(record('lb', '1', b.data as unknown as Record<string, unknown>));
    await store.insertUsageRecord(
      record('lc', '1', {
        total_steps: 4,
        cached_steps: 2,
        cache_ratio: 0.5,
        cache_miss: '[2/4] COPY app.txt /app.txt: content of app.txt changed (+1 later step rebuilt)'
      })
    );

    const u = await computeUsage(store, 'acme', MONTH, NOW);
    expect(u.builds).toMatchObject({ count: 3, totalSteps: 16, cachedSteps: 2, deduplicatedSteps: 6 });
    // One build of three had a step served from the cache: the deduplicated one is no cache hit.
    expect(u.builds.withCachedStepShare).toBeCloseTo(1 / 3, 4);
    expect(u.builds.northStarMet).toBe(false);
    const p = await pipelineUsage(store, 'acme', 'p/1', NOW);
    expect(p).toMatchObject({ builds: 3, totalSteps: 16, cachedSteps: 2, deduplicatedSteps: 6, buildsWithCache: 1 });
    // Why builds missed the cache, by lease: only the record that carries a reason.
    expect(p.cacheMisses).toEqual([{ leaseId: 'lc', reason: '[2/4] COPY app.txt /app.txt: content of app.txt changed (+1 later step rebuilt)' }]);

    expect(renderUsage(u)).toMatch(/^ {2}steps {5}16: 2 cached, 6 deduplicated \(run by another job's build at the same time\)$/m);
    expect(renderUsage({ org: 'acme', month: MONTH, builds: { totalSteps: 4, cachedSteps: 2 } })).toMatch(/4: 2 cached, 0 deduplicated/);
  });
});

describe('the job summary shows deduplicated steps apart', () => {
  const build = (over: Partial<BuildResult>): BuildResult => ({
    buildId: 'b',
    image: 'app:test',
    platform: 'linux/amd64',
    status: 'success',
    durationMs: 1200,
    totalSteps: 6,
    cachedSteps: 0,
    ...over
  });

  test('a deduplicated build: 0 cached, its steps counted and shown as deduplicated, no build with a cached step', () => {
    const builds = [build({ deduplicatedSteps: 6 })];
    expect(totalsOf(builds)).toMatchObject({ totalSteps: 6, cachedSteps: 0, deduplicatedSteps: 6, withCache: 0 });
    const md = renderSummary({ builds });
    expect(md).toContain("cache ratio **0%** (0 of 6 steps cached), 6 steps deduplicated (run by another job's build at the same time)");
    expect(md).toContain('| Image / target | Platform | Status | Duration | Steps | Cached steps | Cached % | Deduplicated steps | Builder |');
    expect(md).toContain('| app:test | linux/amd64 | ✅ success | 1.2 s | 6 | 0 | 0% | 6 | – |');
    expect(md).toContain("| Deduplicated steps (run by another job's build at the same time) | 6 |");
    expect(md).toContain('| Builds with a cached step | 0% (goal 80%) |');
    const text = renderText({ builds });
    expect(text).toContain('cached 0/6 (0%), deduplicated 6');
    expect(text).toContain('deduplicated steps 6');
  });

  test('no deduplicated step: the table keeps its columns', () => {
    const md = renderSummary({ builds: [build({ cachedSteps: 6 })] });
    expect(md).toContain('| Image / target | Platform | Status | Duration | Steps | Cached steps | Cached % | Builder |');
    expect(md).not.toMatch(/deduplicated/i);
  });

  test('a deduplicated count never exceeds the steps left after the cached ones', () => {
    expect(totalsOf([build({ cachedSteps: 4, deduplicatedSteps: 6 })]).deduplicatedSteps).toBe(2);
  });

  test('the pull request comment names deduplicated steps apart from the cache ratio', () => {
    expect(renderPrComment({ builds: 2, totalSteps: 12, cachedSteps: 0, deduplicatedSteps: 6 })).toContain(
      'cache ratio **0%** (0 of 12 steps) · 6 steps deduplicated'
    );
  });
});
