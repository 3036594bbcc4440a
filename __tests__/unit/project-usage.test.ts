// Per-project usage (GET /v1/orgs/:org/projects/usage) over a real SQLite store: the project's leases (by the
// identity they were provisioned with, case-insensitively), their billed minutes, and the builds they recorded.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openSqliteStore } from '../../src/server/store/sqlite';
import { projectUsage, ProjectUsageUnsupported } from '../../src/server/metering/project-usage';
import { BUILD_COMPLETED } from '../../src/contract/metering-events';
import type { LeaseRow, Store } from '../../src/server/store/store';
import { MemoryStore } from '../helpers/memory-store';

const NOV = Date.UTC(2026, 10, 10);
let dir: string;
let store: Store;

function lease(id: string, project: string, o: Partial<LeaseRow> = {}): LeaseRow {
  return {
    id,
    org: 'acme',
    pipelineKey: `p-${id}`,
    jobId: 'j',
    scope: 'pipeline',
    platforms: ['linux/amd64'],
    builderIds: [],
    identity: { project },
    actor: 'ann',
    certFingerprint: 'f'.repeat(64),
    registryUser: 'u',
    registryPasswordHash: 'h',
    createdAt: NOV,
    lastActiveAt: NOV,
    endedAt: null,
    endReason: null,
    billedSeconds: null,
    ...o
  };
}

async function build(leaseId: string, n: number, total: number, cached: number, extra: Record<string, unknown> = {}): Promise<void> {
  await store.insertUsageRecord({
    id: `r-${leaseId}-${n}`,
    org: 'acme',
    type: BUILD_COMPLETED,
    time: NOV + n,
    receivedAt: NOV + n,
    leaseId,
    data: { status: 'success', total_steps: total, cached_steps: cached, cache_ratio: cached / total, duration_ms: 1000, ...extra }
  });
}

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-pu-'));
  store = openSqliteStore(path.join(dir, 'state.db'));
  await store.createOrg('acme', NOV);
});
afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a project's leases, minutes and builds; other projects and months are left out", async () => {
  await store.insertLease(lease('a1', 'acme/app'));
  await store.endLease('a1', NOV + 90_000, 'released', 90);
  await store.insertLease(lease('a2', 'Acme/App', { pipelineKey: 'p-a1' })); // same project, other case, same pipeline
  await store.endLease('a2', NOV + 30_000, 'released', 30);
  await store.insertLease(lease('b1', 'acme/other'));
  await store.endLease('b1', NOV + 600_000, 'released', 600);
  await store.insertLease(lease('old', 'acme/app', { createdAt: Date.UTC(2026, 9, 1) }));
  await store.endLease('old', Date.UTC(2026, 9, 2), 'released', 60);
  await build('a1', 1, 7, 7);
  await build('a2', 2, 7, 0);
  await build('b1', 3, 4, 4);
  const u = await projectUsage(store, 'acme', 'acme/app', '2026-11', NOV + 3600_000);
  expect(u).toEqual({
    org: 'acme',
    project: 'acme/app',
    month: '2026-11',
    leases: { count: 2, active: 0 },
    billedSeconds: 120,
    builds: {
      count: 2,
      succeeded: 2,
      failed: 0,
      cancelled: 0,
      pushFailed: 0,
      pushRefused: 0,
      totalSteps: 14,
      cachedSteps: 7,
      deduplicatedSteps: 0,
      avgCacheRatio: 0.5,
      withCachedStepShare: 0.5
    },
    pipelines: 1
  });
  expect((await projectUsage(store, 'acme', 'acme/app', '2026-10', NOV)).billedSeconds).toBe(60);
});

test('an active lease counts up to now in the current month', async () => {
  await store.insertLease(lease('a1', 'acme/app'));
  const u = await projectUsage(store, 'acme', 'acme/app', '2026-11', NOV + 45_000);
  expect(u.leases).toEqual({ count: 1, active: 1 });
  expect(u.billedSeconds).toBe(45);
});

test('a malformed month and a store without SQL are refused', async () => {
  await expect(projectUsage(store, 'acme', 'acme/app', '2026-13', NOV)).rejects.toThrow('month must be YYYY-MM, got "2026-13"');
  await expect(projectUsage(new MemoryStore(), 'acme', 'acme/app', '2026-11', NOV)).rejects.toBeInstanceOf(ProjectUsageUnsupported);
});

test("push failures and refusals of a project's builds are counted, as in the org report", async () => {
  await store.insertLease(lease('a1', 'acme/app'));
  await build('a1', 1, 2, 1, { push_status: 'failed' });
  await build('a1', 2, 2, 1, { push_status: 'refused' });
  await build('a1', 3, 2, 1, { status: 'failure' });
  await build('a1', 4, 2, 1, { push_status: 'pushed' });
  const b = (await projectUsage(store, 'acme', 'acme/app', '2026-11', NOV + 45_000)).builds;
  expect([b.count, b.succeeded, b.failed, b.pushFailed, b.pushRefused]).toEqual([4, 3, 1, 1, 1]);
});
