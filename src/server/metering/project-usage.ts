// One project's usage in a month: the org's leases whose identity names the project, and the build records those
// leases sent. Minutes come from the leases (the control plane's own records), build detail from the records.
import { billableSeconds, summarizeBuilds, type BuildFacts } from '../billing';
import type { ProjectUsage } from '../../contract/project-usage';
import { BUILD_COMPLETED } from '../../contract/metering-events';
import type { Store } from '../store/store';
import { recordQueries } from './record-queries';
import { parseMonth } from './usage';

interface LeaseFacts {
  id: string;
  pipelineKey: string;
  createdAt: number;
  endedAt: number | null;
  billedSeconds: number | null;
}

interface SqliteDb {
  prepare(sql: string): { all(...params: unknown[]): unknown[] };
}

/** Thrown when the store cannot list a project's leases (only the SQLite store can). */
export class ProjectUsageUnsupported extends Error {}

// Leases of the project that were running at some point of [start, end): ended at or after start, created before end.
function projectLeases(store: Store, org: string, project: string, start: number, end: number): LeaseFacts[] {
  const db = (store as { db?: Partial<SqliteDb> }).db;
  if (!db || typeof db.prepare !== 'function') throw new ProjectUsageUnsupported('per-project usage needs the SQLite store');
  return (db as SqliteDb)
    .prepare(
      `SELECT id, pipeline_key AS pipelineKey, created_at AS createdAt, ended_at AS endedAt, billed_seconds AS billedSeconds FROM leases
       WHERE org = ? AND lower(json_extract(identity, '$.project')) = lower(?) AND created_at < ? AND (ended_at IS NULL OR ended_at >= ?)`
    )
    .all(org, project, end, start) as LeaseFacts[];
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/** The project's usage for `month` (YYYY-MM, UTC). Throws RangeError for a malformed month. */
export async function projectUsage(store: Store, org: string, project: string, month: string, now: number): Promise<ProjectUsage> {
  const range = parseMonth(month);
  if (!range) throw new RangeError(`month must be YYYY-MM, got "${month}"`);
  const leases = projectLeases(store, org, project, range.start, range.end);
  const counted = leases.filter((l) => (l.endedAt === null ? now >= range.start && now < range.end : l.endedAt < range.end));
  const ids = new Set(leases.map((l) => l.id));
  const builds: BuildFacts[] = [];
  let deduplicatedSteps = 0;
  let pushFailed = 0;
  let pushRefused = 0;
  if (ids.size) {
    for await (const page of recordQueries(store).factPages(org, range.start, range.end)) {
      for (const f of page) {
        if (f.type !== BUILD_COMPLETED || f.leaseId === null || !ids.has(f.leaseId)) continue;
        builds.push({
          status: String(f.status ?? ''),
          totalSteps: num(f.totalSteps),
          cachedSteps: num(f.cachedSteps),
          cacheRatio: num(f.cacheRatio),
          durationMs: num(f.durationMs)
        });
        deduplicatedSteps += Math.max(0, Math.min(num(f.deduplicatedSteps), num(f.totalSteps) - num(f.cachedSteps)));
        if (f.pushStatus === 'failed') pushFailed++;
        else if (f.pushStatus === 'refused') pushRefused++;
      }
    }
  }
  const sum = summarizeBuilds(builds);
  return {
    org,
    project,
    month,
    leases: { count: counted.length, active: counted.filter((l) => l.endedAt === null).length },
    billedSeconds: counted.reduce((s, l) => s + (l.billedSeconds ?? billableSeconds(l.createdAt, now)), 0),
    builds: {
      count: sum.builds,
      succeeded: sum.succeeded,
      failed: sum.failed,
      cancelled: sum.cancelled,
      pushFailed,
      pushRefused,
      totalSteps: sum.totalSteps,
      cachedSteps: sum.cachedSteps,
      deduplicatedSteps,
      avgCacheRatio: sum.avgCacheRatio,
      withCachedStepShare: sum.withCachedStepShare
    },
    pipelines: new Set(counted.map((l) => l.pipelineKey)).size
  };
}
