// Queries over usage records that the metering endpoint and the usage report need beyond the Store interface:
// counts for the record caps, and the month's records read in small pages so that a large org's report never holds
// the event loop (issue 9: 150,000 records made one usage query block it for seconds).
//
// On the SQLite store they are SQL on its database (indexed, and only the fields a report uses are read); on any
// other Store they fall back to the interface's usageRecords, which is fine for the small in-memory stores of tests.
import type { Store, UsageRecordRow } from '../store/store';

/** The fields of one usage record a report reads; numbers and strings as stored (unchecked, may be null). */
export interface RecordFacts {
  type: string;
  leaseId: string | null;
  status: unknown;
  totalSteps: unknown;
  cachedSteps: unknown;
  deduplicatedSteps: unknown; // absent in records from before the field: read as 0
  pushStatus: unknown; // what became of the build's push (absent in records from before the field)
  cacheMiss: unknown; // why the build's first executed step missed the cache (absent when none or unknown)
  cacheRatio: unknown;
  durationMs: unknown;
  actor: unknown;
  wallSeconds: unknown;
}

export interface RecordQueries {
  /** Records stored for the org's lease `leaseId`. */
  countLeaseRecords(org: string, leaseId: string): Promise<number>;
  /** Records of the org received at or after `sinceMs` (unix ms, server time). */
  countOrgRecordsSince(org: string, sinceMs: number): Promise<number>;
  /** Whether the org holds a record with this id (an idempotent resend, not a new record). */
  recordExists(org: string, leaseId: string, id: string): Promise<boolean>; // records are keyed by (org, lease_id, id)
  /**
   * The org's records with event time in [sinceMs, untilMs), in pages of at most `pageSize`. Each page is one short
   * indexed query; the caller awaits between pages, so other requests run in between.
   */
  factPages(org: string, sinceMs: number, untilMs: number, pageSize?: number): AsyncIterable<RecordFacts[]>;
}

export const DEFAULT_PAGE_SIZE = 500;

// The parts of better-sqlite3 used here, so that this module does not load the native binding itself.
interface SqliteStatement {
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}
interface SqliteDb {
  prepare(sql: string): SqliteStatement;
  exec(sql: string): unknown;
}

function sqliteDbOf(store: Store): SqliteDb | null {
  const db = (store as { db?: Partial<SqliteDb> }).db;
  return db && typeof db.prepare === 'function' && typeof db.exec === 'function' ? (db as SqliteDb) : null;
}

const cache = new WeakMap<Store, RecordQueries>();

/** The record queries of `store` (made once per store). */
export function recordQueries(store: Store): RecordQueries {
  let q = cache.get(store);
  if (!q) {
    const db = sqliteDbOf(store);
    q = db ? sqliteQueries(db) : genericQueries(store);
    cache.set(store, q);
  }
  return q;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

function sqliteQueries(db: SqliteDb): RecordQueries {
  // The per-lease and per-org-day caps' counts use indexes of migration 4 (src/server/store/sqlite.ts).
  const countLease = db.prepare('SELECT COUNT(*) AS n FROM usage_records WHERE org = ? AND lease_id = ?');
  const countSince = db.prepare('SELECT COUNT(*) AS n FROM usage_records WHERE org = ? AND received_at >= ?');
  const exists = db.prepare('SELECT 1 AS x FROM usage_records WHERE org = ? AND lease_id = ? AND id = ?');
  // Keyset paging on (time, rowid): the order of the (org, time) index itself, so each page is an index range scan
  // with no sort. Only the fields a report uses leave SQLite: not the whole JSON of data.
  const page = db.prepare(`SELECT rowid AS rid, time, type, NULLIF(lease_id, '') AS leaseId,
      json_extract(data, '$.status') AS status, json_extract(data, '$.total_steps') AS totalSteps,
      json_extract(data, '$.cached_steps') AS cachedSteps, json_extract(data, '$.deduplicated_steps') AS deduplicatedSteps,
      json_extract(data, '$.cache_ratio') AS cacheRatio, json_extract(data, '$.cache_miss') AS cacheMiss,
      json_extract(data, '$.push_status') AS pushStatus,
      json_extract(data, '$.duration_ms') AS durationMs, json_extract(data, '$.actor') AS actor,
      json_extract(data, '$.wall_seconds') AS wallSeconds
    FROM usage_records WHERE org = ? AND time >= ? AND time < ? AND (time, rowid) > (?, ?)
    ORDER BY time, rowid LIMIT ?`);
  return {
    countLeaseRecords: async (org, leaseId) => (countLease.get(org, leaseId) as { n: number }).n,
    countOrgRecordsSince: async (org, sinceMs) => (countSince.get(org, sinceMs) as { n: number }).n,
    recordExists: async (org, leaseId, id) => exists.get(org, leaseId, id) !== undefined,
    async *factPages(org, sinceMs, untilMs, pageSize = DEFAULT_PAGE_SIZE) {
      let after: [number, number] = [Number.MIN_SAFE_INTEGER, 0];
      for (;;) {
        const rows = page.all(org, sinceMs, untilMs, after[0], after[1], pageSize) as Array<RecordFacts & { rid: number; time: number }>;
        if (rows.length === 0) return;
        const last = rows[rows.length - 1];
        after = [last.time, last.rid];
        yield rows;
        if (rows.length < pageSize) return;
        await yieldToEventLoop();
      }
    }
  };
}

function factsOf(r: UsageRecordRow): RecordFacts {
  const d = r.data;
  return {
    type: r.type,
    leaseId: r.leaseId,
    status: d.status,
    totalSteps: d.total_steps,
    cachedSteps: d.cached_steps,
    deduplicatedSteps: d.deduplicated_steps,
    pushStatus: d.push_status,
    cacheMiss: d.cache_miss,
    cacheRatio: d.cache_ratio,
    durationMs: d.duration_ms,
    actor: d.actor,
    wallSeconds: d.wall_seconds
  };
}

// Any Store: correct, not fast (reads every record of the org).
function genericQueries(store: Store): RecordQueries {
  const all = (org: string) => store.usageRecords(org, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  return {
    countLeaseRecords: async (org, leaseId) => (await all(org)).filter((r) => r.leaseId === leaseId).length,
    countOrgRecordsSince: async (org, sinceMs) => (await all(org)).filter((r) => r.receivedAt >= sinceMs).length,
    recordExists: async (org, leaseId, id) => (await all(org)).some((r) => r.id === id && (r.leaseId ?? '') === leaseId),
    async *factPages(org, sinceMs, untilMs, pageSize = DEFAULT_PAGE_SIZE) {
      const rows = await store.usageRecords(org, sinceMs, untilMs);
      for (let i = 0; i < rows.length; i += pageSize) yield rows.slice(i, i + pageSize).map(factsOf);
    }
  };
}
