// The embedded store: one SQLite file. The server and the `buildcloud admin` CLI open the same file at the
// same time, so it runs in WAL mode (readers never block the writer) with a busy timeout (two writers wait
// for each other instead of failing with SQLITE_BUSY). better-sqlite3 is synchronous; the async methods
// keep the Store interface the same as a networked PostgreSQL store's.
//
// Group commit: the writes on the request paths (reserve, builders, end, touch, extend, usage records) are queued and
// run together, each in a savepoint of its own, in one transaction per turn of the event loop; each caller's promise
// settles once that transaction has committed (synchronous = FULL: fsynced). One fsync then carries every write that
// arrived meanwhile instead of one each (issue 13: with one transaction per write, 1,000 provisions at concurrency 50
// spent over 40% of the control plane's CPU time in SQLite commits). A write that throws rolls back its own
// savepoint only and rejects its own caller; the others commit.
import Database from 'better-sqlite3';
import { mkdirSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { extensionGrant, initialReservation, unreservedSeconds } from '../billing';
import { precondition, unavailable } from '../errors';
import {
  BucketRow,
  InsertResult,
  LeaseEndReason,
  LeaseRow,
  OrgLimitsPatch,
  OrgLimitsRow,
  OrgRow,
  ReservePolicy,
  ReserveResult,
  Store,
  StoreConflict,
  TokenRow,
  TrustRow,
  UsageRecordRow
} from './store';

export const BUSY_TIMEOUT_MS = 5000;

// Schema migrations, applied in order; PRAGMA user_version counts how many ran. Append, never edit: a
// database made by an older buildcloud is brought forward by running only the migrations it lacks.
// Arrays and objects are JSON text, checked by json_valid so that a bad write fails loudly, not a later read.
export const MIGRATIONS: string[] = [
  `
  CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);

  CREATE TABLE tokens (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
    created_at INTEGER NOT NULL, revoked_at INTEGER);
  CREATE INDEX tokens_org ON tokens (org);

  CREATE TABLE buckets (
    id INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT NOT NULL, seconds INTEGER NOT NULL, note TEXT NOT NULL,
    created_at INTEGER NOT NULL);
  CREATE INDEX buckets_org ON buckets (org);

  CREATE TABLE trust (
    id INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT NOT NULL, issuer TEXT NOT NULL, audience TEXT NOT NULL,
    claim TEXT NOT NULL, value TEXT NOT NULL, created_at INTEGER NOT NULL);
  CREATE INDEX trust_org ON trust (org);
  CREATE INDEX trust_issuer ON trust (issuer);

  CREATE TABLE leases (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, pipeline_key TEXT NOT NULL, job_id TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('pipeline', 'job')),
    platforms TEXT NOT NULL CHECK (json_valid(platforms)),
    builder_ids TEXT NOT NULL CHECK (json_valid(builder_ids)),
    identity TEXT NOT NULL CHECK (json_valid(identity)),
    actor TEXT NOT NULL, cert_fingerprint TEXT NOT NULL, registry_user TEXT NOT NULL,
    registry_password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL,
    ended_at INTEGER, end_reason TEXT, billed_seconds INTEGER);
  -- billedSeconds(org, since): ended leases of an org by end time
  CREATE INDEX leases_org_ended ON leases (org, ended_at);
  -- activeLeases(): the reaper scans these every few seconds; a partial index keeps it small
  CREATE INDEX leases_active ON leases (org, created_at) WHERE ended_at IS NULL;
  -- leasesOfPipeline(): a pipeline's minutes and cache ratio for its pull request comment
  CREATE INDEX leases_pipeline ON leases (org, pipeline_key);

  CREATE TABLE usage_records (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, type TEXT NOT NULL, time INTEGER NOT NULL,
    received_at INTEGER NOT NULL, lease_id TEXT, data TEXT NOT NULL CHECK (json_valid(data)));
  CREATE INDEX usage_records_org_time ON usage_records (org, time);
  `,
  // 2: trust boundaries per org. Usage record ids are unique per org, not globally, so no org can
  // make another's record a duplicate; existing records keep their org and id. Leases hold a reservation of
  // their org's bucket; leases from before this migration have none (0) and are not capped. Per-org limits.
  `
  CREATE TABLE usage_records_v2 (
    org TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, time INTEGER NOT NULL,
    received_at INTEGER NOT NULL, lease_id TEXT, data TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (org, id));
  INSERT INTO usage_records_v2 (org, id, type, time, received_at, lease_id, data)
    SELECT org, id, type, time, received_at, lease_id, data FROM usage_records;
  DROP TABLE usage_records;
  ALTER TABLE usage_records_v2 RENAME TO usage_records;
  CREATE INDEX usage_records_org_time ON usage_records (org, time);

  ALTER TABLE leases ADD COLUMN reserved_seconds INTEGER NOT NULL DEFAULT 0;

  CREATE TABLE org_limits (
    org TEXT PRIMARY KEY, max_builders INTEGER, max_leases INTEGER,
    overdraft_seconds INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL);
  `,
  // 3: scoped org tokens (JSON {projects, branches, readOnly}; NULL = the org-admin token, as every token made
  // before) and each org's protected branches (JSON array of patterns; NULL = the default, main and master).
  `
  ALTER TABLE tokens ADD COLUMN scope TEXT CHECK (scope IS NULL OR json_valid(scope));
  ALTER TABLE org_limits ADD COLUMN protected_branches TEXT CHECK (protected_branches IS NULL OR json_valid(protected_branches));
  `,
  // 4: the counts behind the record caps (src/server/metering/record-queries.ts): records per lease
  // (--max-records-per-lease) and records an org stored since a time (--max-records-per-org-day). IF NOT EXISTS:
  // databases of builds between migration 3 and this one made them at start.
  `
  CREATE INDEX IF NOT EXISTS usage_records_org_lease ON usage_records (org, lease_id);
  CREATE INDEX IF NOT EXISTS usage_records_org_received ON usage_records (org, received_at);
  `,
  // 5: usage records are bound to the lease they name: keyed by (org, lease_id, id). Ids derive from the lease and
  // build ids that CI logs print, so within an org another project's (or a pull request's) job could post the id
  // your client will derive, naming a lease of its own, and make your record a duplicate. Now only a record of
  // the same lease can be one. Every record names a lease (both event types require lease_id); rows without one
  // keep '' . rowid order is kept, so keyset paging by (time, rowid) is unchanged.
  `
  CREATE TABLE usage_records_v5 (
    org TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, time INTEGER NOT NULL,
    received_at INTEGER NOT NULL, lease_id TEXT NOT NULL, data TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (org, lease_id, id));
  INSERT INTO usage_records_v5 (rowid, org, id, type, time, received_at, lease_id, data)
    SELECT rowid, org, id, type, time, received_at, COALESCE(lease_id, ''), data FROM usage_records;
  DROP TABLE usage_records;
  ALTER TABLE usage_records_v5 RENAME TO usage_records;
  CREATE INDEX usage_records_org_time ON usage_records (org, time);
  CREATE INDEX usage_records_org_received ON usage_records (org, received_at);
  `,
  // 6: build records count deduplicated steps apart from cached ones (deduplicated_steps: steps another job's
  // identical build ran). Records stored before it never had the field: they are given 0, so every stored build
  // record answers the same question, and the readers (metering/record-queries.ts) read a missing field as 0 too.
  `
  UPDATE usage_records SET data = json_set(data, '$.deduplicated_steps', 0)
    WHERE type = 'dev.buildcloud.build.completed' AND json_type(data, '$.deduplicated_steps') IS NULL;
  `,
  // 7: each org's running totals of its leases, kept by triggers in the same transaction as every lease write, so
  // that a provision reads its org's book in one row instead of summing every lease the org ever had (issue 13:
  // with a few thousand leases, those sums were the largest single cost of a provision, and they grow with
  // history). Triggers, not code: whatever writes the leases table (this process, the admin CLI, a later
  // version) keeps the totals true. A lease counts as active (ended_at NULL: its count and reserved seconds) or
  // ended (its billed seconds), never both.
  `
  CREATE TABLE org_ledger (
    org TEXT PRIMARY KEY, active_leases INTEGER NOT NULL, reserved_seconds INTEGER NOT NULL,
    billed_seconds INTEGER NOT NULL);
  INSERT INTO org_ledger (org, active_leases, reserved_seconds, billed_seconds)
    SELECT org, SUM(ended_at IS NULL), SUM(CASE WHEN ended_at IS NULL THEN reserved_seconds ELSE 0 END),
      SUM(CASE WHEN ended_at IS NULL THEN 0 ELSE COALESCE(billed_seconds, 0) END)
    FROM leases GROUP BY org;
  CREATE TRIGGER org_ledger_insert AFTER INSERT ON leases BEGIN
    INSERT INTO org_ledger (org, active_leases, reserved_seconds, billed_seconds)
      VALUES (NEW.org, NEW.ended_at IS NULL, CASE WHEN NEW.ended_at IS NULL THEN NEW.reserved_seconds ELSE 0 END,
        CASE WHEN NEW.ended_at IS NULL THEN 0 ELSE COALESCE(NEW.billed_seconds, 0) END)
      ON CONFLICT (org) DO UPDATE SET active_leases = active_leases + excluded.active_leases,
        reserved_seconds = reserved_seconds + excluded.reserved_seconds, billed_seconds = billed_seconds + excluded.billed_seconds;
  END;
  CREATE TRIGGER org_ledger_delete AFTER DELETE ON leases BEGIN
    UPDATE org_ledger SET active_leases = active_leases - (OLD.ended_at IS NULL),
      reserved_seconds = reserved_seconds - CASE WHEN OLD.ended_at IS NULL THEN OLD.reserved_seconds ELSE 0 END,
      billed_seconds = billed_seconds - CASE WHEN OLD.ended_at IS NULL THEN 0 ELSE COALESCE(OLD.billed_seconds, 0) END
      WHERE org = OLD.org;
  END;
  CREATE TRIGGER org_ledger_update AFTER UPDATE OF org, ended_at, reserved_seconds, billed_seconds ON leases BEGIN
    UPDATE org_ledger SET active_leases = active_leases - (OLD.ended_at IS NULL),
      reserved_seconds = reserved_seconds - CASE WHEN OLD.ended_at IS NULL THEN OLD.reserved_seconds ELSE 0 END,
      billed_seconds = billed_seconds - CASE WHEN OLD.ended_at IS NULL THEN 0 ELSE COALESCE(OLD.billed_seconds, 0) END
      WHERE org = OLD.org;
    INSERT INTO org_ledger (org, active_leases, reserved_seconds, billed_seconds)
      VALUES (NEW.org, NEW.ended_at IS NULL, CASE WHEN NEW.ended_at IS NULL THEN NEW.reserved_seconds ELSE 0 END,
        CASE WHEN NEW.ended_at IS NULL THEN 0 ELSE COALESCE(NEW.billed_seconds, 0) END)
      ON CONFLICT (org) DO UPDATE SET active_leases = active_leases + excluded.active_leases,
        reserved_seconds = reserved_seconds + excluded.reserved_seconds, billed_seconds = billed_seconds + excluded.billed_seconds;
  END;
  `
];

export const SCHEMA_VERSION = MIGRATIONS.length;

interface LeaseDbRow {
  id: string;
  org: string;
  pipeline_key: string;
  job_id: string;
  scope: 'pipeline' | 'job';
  platforms: string;
  builder_ids: string;
  identity: string;
  actor: string;
  cert_fingerprint: string;
  registry_user: string;
  registry_password_hash: string;
  created_at: number;
  last_active_at: number;
  ended_at: number | null;
  end_reason: LeaseEndReason | null;
  billed_seconds: number | null;
  reserved_seconds: number;
}

const LEASE_COLUMNS = `id, org, pipeline_key, job_id, scope, platforms, builder_ids, identity, actor, cert_fingerprint,
  registry_user, registry_password_hash, created_at, last_active_at, ended_at, end_reason, billed_seconds,
  reserved_seconds`;

function leaseFromDb(r: LeaseDbRow): LeaseRow {
  return {
    id: r.id,
    org: r.org,
    pipelineKey: r.pipeline_key,
    jobId: r.job_id,
    scope: r.scope,
    platforms: JSON.parse(r.platforms) as string[],
    builderIds: JSON.parse(r.builder_ids) as string[],
    identity: JSON.parse(r.identity) as Record<string, unknown>,
    actor: r.actor,
    certFingerprint: r.cert_fingerprint,
    registryUser: r.registry_user,
    registryPasswordHash: r.registry_password_hash,
    createdAt: r.created_at,
    lastActiveAt: r.last_active_at,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    billedSeconds: r.billed_seconds,
    reservedSeconds: r.reserved_seconds
  };
}

interface OrgLimitsDbRow {
  org: string;
  max_builders: number | null;
  max_leases: number | null;
  overdraft_seconds: number;
  protected_branches: string | null;
  updated_at: number;
}

function limitsFromDb(org: string, r: OrgLimitsDbRow | undefined): OrgLimitsRow {
  if (!r) return { org, maxBuilders: null, maxLeases: null, overdraftSeconds: 0, protectedBranches: null, updatedAt: null };
  return {
    org,
    maxBuilders: r.max_builders,
    maxLeases: r.max_leases,
    overdraftSeconds: r.overdraft_seconds,
    protectedBranches: r.protected_branches === null ? null : (JSON.parse(r.protected_branches) as string[]),
    updatedAt: r.updated_at
  };
}

interface TokenDbRow extends Omit<TokenRow, 'scope'> {
  scope: string | null;
}

const tokenFromDb = (r: TokenDbRow): TokenRow => ({ ...r, scope: r.scope === null ? null : (JSON.parse(r.scope) as TokenRow['scope']) });

const TOKEN_SELECT = 'SELECT id, org, hash, label, created_at AS createdAt, revoked_at AS revokedAt, scope FROM tokens';
const TRUST_SELECT = 'SELECT id, org, issuer, audience, claim, value, created_at AS createdAt FROM trust';

/**
 * A write that failed because the disk under the store is full (SQLITE_FULL; ENOSPC under an I/O error) → an
 * UNAVAILABLE ApiError naming what is full and where, and saying nothing committed is lost; any other error as is.
 * The transaction rolled back, so the store stays usable: writes succeed again once space returns, no restart.
 */
export function diskFullError(err: unknown, file: string): unknown {
  const code = String((err as { code?: unknown } | null)?.code ?? '');
  const msg = err instanceof Error ? err.message : String(err);
  if (code !== 'SQLITE_FULL' && !(code.startsWith('SQLITE_IOERR') && /ENOSPC|no space|disk is full/i.test(msg))) return err;
  return unavailable(
    `The control plane's disk is full: its store ${file} could not be written (${code}). Nothing already ` +
      `acknowledged is lost. The operator must free space in ${dirname(file)}; the control plane resumes by itself. Retry later.`
  );
}

// Free space a new lease needs under the store's directory (the state dir): its rows and usage records, and its
// builder's run directory and the org cache beside them. Below it a provision is refused with diskFullError's words
// instead of starting a lease that could not be recorded.
export const MIN_FREE_BYTES_FOR_LEASE = 32 * 1024 * 1024;

/**
 * Refuses (FAILED_PRECONDITION, naming the directory and the free space) when `dir`'s filesystem has less than `min`
 * free. Not UNAVAILABLE: clients retry that for minutes, and a full disk waits for the operator, so the job fails at
 * once with this one line instead of dozens of retries (measured: 36 retry lines over 121 s before the last).
 */
export function requireFreeSpace(dir: string, min = MIN_FREE_BYTES_FOR_LEASE): void {
  let free: number;
  try {
    const st = statfsSync(dir);
    free = Number(st.bavail) * Number(st.bsize);
  } catch {
    return; // statfs unsupported here: the writes themselves report a full disk (diskFullError)
  }
  if (free >= min) return;
  throw precondition(
    `The control plane's disk is full: ${dir} has ${(free / 1024 / 1024).toFixed(1)} MiB free, a new lease needs ` +
      `${min / 1024 / 1024} MiB. Nothing already acknowledged is lost. The operator must free space there; ` +
      `the control plane resumes by itself. Retry later.`
  );
}

// Only a repeated key is a conflict; other constraint failures (NOT NULL, CHECK) are bugs and stay errors.
function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE';
}

function requireInt(name: string, v: number): void {
  if (!Number.isSafeInteger(v)) throw new TypeError(`${name} must be an integer, got ${v}`);
}

/** Brings the schema up to SCHEMA_VERSION. Exported for tests and for `buildcloud admin migrate`. */
export function migrate(db: Database.Database): number {
  // IMMEDIATE takes the write lock before reading user_version, so a server and a CLI starting together
  // cannot both run the same migration.
  const run = db.transaction(() => {
    const current = db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new Error(`database schema version ${current} is newer than this buildcloud supports (${MIGRATIONS.length}); upgrade buildcloud`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
    return current;
  });
  return run.immediate();
}

// Rows one group transaction writes at most (each write counts its rows; one write is never split).
const MAX_FLUSH_WEIGHT = 100;

interface QueuedWrite {
  run: () => unknown;
  weight: number; // rows it writes: a flush stops taking writes at MAX_FLUSH_WEIGHT
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class SqliteStore implements Store {
  private closed = false;
  private readonly st;
  private queue: QueuedWrite[] = [];
  private flushScheduled = false;
  private readonly tx; // the group transaction's statements, prepared once (db.exec parses each time)

  constructor(readonly db: Database.Database) {
    // busy_timeout first: switching to WAL itself needs a lock another process may hold.
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.pragma('journal_mode = WAL');
    // FULL (the default, stated on purpose): billing rows acknowledged to a client must survive a power
    // loss, because the client deletes its copy once the endpoint says "accepted".
    db.pragma('synchronous = FULL');
    migrate(db);
    this.tx = {
      begin: db.prepare('BEGIN IMMEDIATE'),
      commit: db.prepare('COMMIT'),
      rollback: db.prepare('ROLLBACK'),
      savepoint: db.prepare('SAVEPOINT w'),
      release: db.prepare('RELEASE w'),
      rollbackTo: db.prepare('ROLLBACK TO w')
    };
    this.st = {
      insertOrg: db.prepare('INSERT INTO orgs (name, created_at) VALUES (?, ?)'),
      getOrg: db.prepare('SELECT name, created_at AS createdAt FROM orgs WHERE name = ?'),
      listOrgs: db.prepare('SELECT name, created_at AS createdAt FROM orgs ORDER BY name'),
      countOrgs: db.prepare('SELECT COUNT(*) AS n FROM orgs'),
      insertToken: db.prepare(
        'INSERT INTO tokens (id, org, hash, label, created_at, revoked_at, scope) VALUES (@id, @org, @hash, @label, @createdAt, @revokedAt, @scope)'
      ),
      tokenByHash: db.prepare(`${TOKEN_SELECT} WHERE hash = ?`),
      revokeToken: db.prepare('UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL'),
      listTokens: db.prepare(`${TOKEN_SELECT} WHERE org = ? ORDER BY created_at, id`),
      insertBucket: db.prepare('INSERT INTO buckets (org, seconds, note, created_at) VALUES (?, ?, ?, ?)'),
      bucketSeconds: db.prepare('SELECT COALESCE(SUM(seconds), 0) AS s FROM buckets WHERE org = ?'),
      listBuckets: db.prepare('SELECT id, org, seconds, note, created_at AS createdAt FROM buckets WHERE org = ? ORDER BY created_at, id'),
      insertTrust: db.prepare(
        'INSERT INTO trust (org, issuer, audience, claim, value, created_at) VALUES (@org, @issuer, @audience, @claim, @value, @createdAt)'
      ),
      listTrust: db.prepare(`${TRUST_SELECT} ORDER BY id`),
      listTrustOrg: db.prepare(`${TRUST_SELECT} WHERE org = ? ORDER BY id`),
      removeTrust: db.prepare('DELETE FROM trust WHERE id = ?'),
      insertLease: db.prepare(`INSERT INTO leases (${LEASE_COLUMNS}) VALUES (@id, @org, @pipelineKey, @jobId, @scope,
        @platforms, @builderIds, @identity, @actor, @certFingerprint, @registryUser, @registryPasswordHash, @createdAt,
        @lastActiveAt, @endedAt, @endReason, @billedSeconds, @reservedSeconds)`),
      getLease: db.prepare(`SELECT ${LEASE_COLUMNS} FROM leases WHERE id = ?`),
      // Only active leases are touched: activity after the end must not move a billed lease.
      touchLease: db.prepare('UPDATE leases SET last_active_at = MAX(last_active_at, ?) WHERE id = ? AND ended_at IS NULL'),
      endLease: db.prepare('UPDATE leases SET ended_at = ?, end_reason = ?, billed_seconds = ? WHERE id = ? AND ended_at IS NULL'),
      activeLeases: db.prepare(`SELECT ${LEASE_COLUMNS} FROM leases WHERE ended_at IS NULL ORDER BY created_at, id`),
      activeLeasesOrg: db.prepare(`SELECT ${LEASE_COLUMNS} FROM leases WHERE org = ? AND ended_at IS NULL ORDER BY created_at, id`),
      leasesOfPipeline: db.prepare(`SELECT ${LEASE_COLUMNS} FROM leases WHERE org = ? AND pipeline_key = ? ORDER BY created_at, id LIMIT 10000`),
      billedSince: db.prepare('SELECT COALESCE(SUM(billed_seconds), 0) AS s FROM leases WHERE org = ? AND ended_at IS NOT NULL AND ended_at >= ?'),
      countEnded: db.prepare('SELECT COUNT(*) AS n FROM leases WHERE org = ? AND ended_at IS NOT NULL AND ended_at >= ? AND ended_at < ?'),
      // ON CONFLICT rather than OR IGNORE: only a repeated (org, lease_id, id) is a duplicate; any other
      // constraint failure must still throw.
      insertRecord: db.prepare(`INSERT INTO usage_records (id, org, type, time, received_at, lease_id, data)
        VALUES (@id, @org, @type, @time, @receivedAt, COALESCE(@leaseId, ''), @data) ON CONFLICT (org, lease_id, id) DO NOTHING`),
      getLimits: db.prepare('SELECT org, max_builders, max_leases, overdraft_seconds, protected_branches, updated_at FROM org_limits WHERE org = ?'),
      upsertLimits: db.prepare(`INSERT INTO org_limits (org, max_builders, max_leases, overdraft_seconds, protected_branches, updated_at)
        VALUES (@org, @maxBuilders, @maxLeases, @overdraftSeconds, @protectedBranches, @updatedAt)
        ON CONFLICT (org) DO UPDATE SET max_builders = excluded.max_builders, max_leases = excluded.max_leases,
          overdraft_seconds = excluded.overdraft_seconds, protected_branches = excluded.protected_branches,
          updated_at = excluded.updated_at`),
      // One row per org, kept by triggers (migration 7); no row: no lease yet.
      ledger: db.prepare('SELECT active_leases AS n, reserved_seconds AS s, billed_seconds AS b FROM org_ledger WHERE org = ?'),
      leaseOrg: db.prepare('SELECT org, reserved_seconds FROM leases WHERE id = ? AND ended_at IS NULL'),
      addReservation: db.prepare('UPDATE leases SET reserved_seconds = reserved_seconds + ? WHERE id = ? AND ended_at IS NULL'),
      setBuilders: db.prepare('UPDATE leases SET builder_ids = ? WHERE id = ?'),
      records: db.prepare(`SELECT id, org, type, time, received_at AS receivedAt, NULLIF(lease_id, '') AS leaseId, data
        FROM usage_records WHERE org = ? AND time >= ? AND time < ? ORDER BY time, id`)
    };
  }

  async createOrg(name: string, now: number): Promise<OrgRow> {
    try {
      this.st.insertOrg.run(name, now);
    } catch (err) {
      if (isUniqueViolation(err)) throw new StoreConflict(`org "${name}" already exists`);
      throw err;
    }
    return { name, createdAt: now };
  }

  async getOrg(name: string): Promise<OrgRow | null> {
    return (this.st.getOrg.get(name) as OrgRow | undefined) ?? null;
  }

  async listOrgs(): Promise<OrgRow[]> {
    return this.st.listOrgs.all() as OrgRow[];
  }

  async countOrgs(): Promise<number> {
    return (this.st.countOrgs.get() as { n: number }).n;
  }

  async createToken(row: TokenRow): Promise<void> {
    try {
      this.st.insertToken.run({ ...row, scope: row.scope === null ? null : JSON.stringify(row.scope) });
    } catch (err) {
      if (isUniqueViolation(err)) throw new StoreConflict(`token "${row.id}" already exists`);
      throw err;
    }
  }

  async findTokenByHash(hash: string): Promise<TokenRow | null> {
    const r = this.st.tokenByHash.get(hash) as TokenDbRow | undefined;
    return r ? tokenFromDb(r) : null;
  }

  async revokeToken(id: string, now: number): Promise<boolean> {
    return this.st.revokeToken.run(now, id).changes === 1;
  }

  async listTokens(org: string): Promise<TokenRow[]> {
    return (this.st.listTokens.all(org) as TokenDbRow[]).map(tokenFromDb);
  }

  async addBucket(org: string, seconds: number, note: string, now: number): Promise<BucketRow> {
    requireInt('seconds', seconds);
    const id = Number(this.st.insertBucket.run(org, seconds, note, now).lastInsertRowid);
    return { id, org, seconds, note, createdAt: now };
  }

  async bucketSeconds(org: string): Promise<number> {
    return (this.st.bucketSeconds.get(org) as { s: number }).s;
  }

  async listBuckets(org: string): Promise<BucketRow[]> {
    return this.st.listBuckets.all(org) as BucketRow[];
  }

  async getOrgLimits(org: string): Promise<OrgLimitsRow> {
    return limitsFromDb(org, this.st.getLimits.get(org) as OrgLimitsDbRow | undefined);
  }

  async setOrgLimits(org: string, patch: OrgLimitsPatch, now: number): Promise<OrgLimitsRow> {
    for (const [k, v] of Object.entries(patch)) if (typeof v === 'number') requireInt(k, v);
    const set = this.db.transaction(() => {
      const cur = this.getOrgLimitsSync(org);
      const next = { ...cur, ...Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)), org, updatedAt: now };
      this.st.upsertLimits.run({ ...next, protectedBranches: next.protectedBranches ? JSON.stringify(next.protectedBranches) : null });
      return next as OrgLimitsRow;
    });
    return set.immediate();
  }

  private getOrgLimitsSync(org: string): OrgLimitsRow {
    return limitsFromDb(org, this.st.getLimits.get(org) as OrgLimitsDbRow | undefined);
  }

  // The org's book inside a transaction: buckets, overdraft, billed, and what its active leases hold.
  private bookSync(org: string) {
    const limits = this.getOrgLimitsSync(org);
    const ledger = this.ledgerSync(org);
    const book = {
      boughtSeconds: (this.st.bucketSeconds.get(org) as { s: number }).s,
      overdraftSeconds: limits.overdraftSeconds,
      billedSeconds: ledger.b,
      reservedSeconds: ledger.s
    };
    return { limits, book, activeLeases: ledger.n, unreserved: unreservedSeconds(book) };
  }

  // The org's running lease totals (migration 7): active leases, their reserved seconds, ended leases' billed seconds.
  private ledgerSync(org: string): { n: number; s: number; b: number } {
    return (this.st.ledger.get(org) as { n: number; s: number; b: number } | undefined) ?? { n: 0, s: 0, b: 0 };
  }

  /**
   * Runs `run` (synchronous store statements) in the next group transaction (see the file comment); resolves with its
   * result once that transaction is committed, rejects with its error (its own savepoint rolled back) or with the
   * commit's. Transactions of better-sqlite3 inside `run` become savepoints.
   */
  private write<T>(run: () => T, weight = 1): Promise<T> {
    if (this.closed) return Promise.reject(new Error('store is closed'));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ run, weight, resolve: resolve as (v: unknown) => void, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    // At most MAX_FLUSH_WEIGHT rows per transaction (at least one write): the event loop is held while it runs, so a
    // burst of usage records is committed in several turns with other requests served in between.
    let weight = 0;
    let n = 0;
    while (n < this.queue.length && (n === 0 || weight + this.queue[n].weight <= MAX_FLUSH_WEIGHT)) weight += this.queue[n++].weight;
    const batch = this.queue.splice(0, n);
    if (this.queue.length && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    if (batch.length === 0) return;
    if (this.closed) {
      for (const w of batch) w.reject(new Error('store is closed'));
      return;
    }
    const outcomes: Array<{ ok: true; value: unknown } | { ok: false; error: unknown }> = [];
    try {
      // IMMEDIATE: the write lock before anything is read, as the single-write transactions took it.
      this.tx.begin.run();
      for (const w of batch) {
        this.tx.savepoint.run();
        try {
          outcomes.push({ ok: true, value: w.run() });
          this.tx.release.run();
        } catch (error) {
          this.tx.rollbackTo.run();
          this.tx.release.run();
          outcomes.push({ ok: false, error });
        }
      }
      this.tx.commit.run();
    } catch (error) {
      if (this.db.inTransaction) this.tx.rollback.run();
      for (const w of batch) w.reject(diskFullError(error, this.db.name));
      return;
    }
    batch.forEach((w, i) => {
      const o = outcomes[i];
      if (o.ok) w.resolve(o.value);
      else w.reject(diskFullError(o.error, this.db.name));
    });
  }

  async reserveLease(row: LeaseRow, policy: ReservePolicy): Promise<ReserveResult> {
    if (this.db.name !== ':memory:') requireFreeSpace(dirname(this.db.name));
    // IMMEDIATE: the write lock is taken before the balance is read, so two provisions (in this process or
    // another one on the same file) never both see the same unreserved seconds.
    const tx = this.db.transaction((): ReserveResult => {
      const { limits, book, activeLeases, unreserved } = this.bookSync(row.org);
      if (limits.maxLeases !== null && activeLeases >= limits.maxLeases) {
        return { ok: false, limit: 'max_leases', maxLeases: limits.maxLeases, activeLeases };
      }
      const grant = initialReservation(unreserved, policy.minSeconds, policy.chunkSeconds);
      if (grant === null) {
        return {
          ok: false,
          limit: 'balance',
          unreservedSeconds: unreserved,
          boughtSeconds: book.boughtSeconds,
          usedSeconds: book.billedSeconds,
          reservedSeconds: book.reservedSeconds
        };
      }
      this.insertLeaseSync({ ...row, reservedSeconds: grant });
      return { ok: true, reservedSeconds: grant };
    });
    return this.write(() => tx());
  }

  async extendReservation(id: string, chunkSeconds: number): Promise<number | null> {
    const tx = this.db.transaction((): number | null => {
      const l = this.st.leaseOrg.get(id) as { org: string; reserved_seconds: number } | undefined;
      if (!l) return null;
      const grant = extensionGrant(this.bookSync(l.org).unreserved, chunkSeconds);
      if (grant > 0) this.st.addReservation.run(grant, id);
      return l.reserved_seconds + grant;
    });
    return this.write(() => tx());
  }

  async setLeaseBuilders(id: string, builderIds: string[]): Promise<void> {
    await this.write(() => this.st.setBuilders.run(JSON.stringify(builderIds), id));
  }

  async reservedSeconds(org: string): Promise<number> {
    return this.ledgerSync(org).s;
  }

  async addTrust(row: Omit<TrustRow, 'id'>): Promise<TrustRow> {
    const id = Number(this.st.insertTrust.run(row).lastInsertRowid);
    return { id, ...row };
  }

  async listTrust(org?: string): Promise<TrustRow[]> {
    return (org === undefined ? this.st.listTrust.all() : this.st.listTrustOrg.all(org)) as TrustRow[];
  }

  async removeTrust(id: number): Promise<boolean> {
    return this.st.removeTrust.run(id).changes === 1;
  }

  async insertLease(row: LeaseRow): Promise<void> {
    this.insertLeaseSync(row);
  }

  private insertLeaseSync(row: LeaseRow): void {
    try {
      this.st.insertLease.run({
        ...row,
        platforms: JSON.stringify(row.platforms),
        builderIds: JSON.stringify(row.builderIds),
        identity: JSON.stringify(row.identity),
        reservedSeconds: row.reservedSeconds ?? 0
      });
    } catch (err) {
      if (isUniqueViolation(err)) throw new StoreConflict(`lease "${row.id}" already exists`);
      throw err;
    }
  }

  async getLease(id: string): Promise<LeaseRow | null> {
    const r = this.st.getLease.get(id) as LeaseDbRow | undefined;
    return r ? leaseFromDb(r) : null;
  }

  async touchLease(id: string, now: number): Promise<void> {
    await this.write(() => this.st.touchLease.run(now, id));
  }

  async endLease(id: string, endedAt: number, reason: LeaseEndReason, billedSeconds: number): Promise<boolean> {
    requireInt('billedSeconds', billedSeconds);
    // The WHERE clause makes ending atomic even across processes: of two concurrent enders (release and
    // reaper, or two servers), exactly one sees changes === 1, so a lease is billed once.
    return this.write(() => this.st.endLease.run(endedAt, reason, billedSeconds, id).changes === 1);
  }

  async activeLeases(org?: string): Promise<LeaseRow[]> {
    const rows = (org === undefined ? this.st.activeLeases.all() : this.st.activeLeasesOrg.all(org)) as LeaseDbRow[];
    return rows.map(leaseFromDb);
  }

  async leasesOfPipeline(org: string, pipelineKey: string): Promise<LeaseRow[]> {
    return (this.st.leasesOfPipeline.all(org, pipelineKey) as LeaseDbRow[]).map(leaseFromDb);
  }

  async billedSeconds(org: string, sinceMs?: number): Promise<number> {
    if (sinceMs === undefined) return this.ledgerSync(org).b;
    return (this.st.billedSince.get(org, sinceMs ?? Number.MIN_SAFE_INTEGER) as { s: number }).s;
  }

  /** Leases of the org that ended in [sinceMs, untilMs). Not (yet) on the Store interface; see usage.ts. */
  async countEndedLeases(org: string, sinceMs: number, untilMs: number): Promise<number> {
    return (this.st.countEnded.get(org, sinceMs, untilMs) as { n: number }).n;
  }

  async insertUsageRecord(row: UsageRecordRow): Promise<InsertResult> {
    return (await this.insertUsageRecords([row]))[0];
  }

  async insertUsageRecords(rows: UsageRecordRow[]): Promise<InsertResult[]> {
    if (rows.length === 0) return [];
    return this.write(
      () => rows.map((row) => (this.st.insertRecord.run({ ...row, data: JSON.stringify(row.data) }).changes === 1 ? 'inserted' : 'duplicate')),
      rows.length
    );
  }

  async usageRecords(org: string, sinceMs: number, untilMs: number): Promise<UsageRecordRow[]> {
    const rows = this.st.records.all(org, sinceMs, untilMs) as Array<Omit<UsageRecordRow, 'data'> & { data: string }>;
    return rows.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    while (this.queue.length) this.flush(); // writes already queued are committed (or rejected) first
    this.closed = true;
    this.db.close();
  }
}

/** Opens (creating if needed) the store at `file`; `:memory:` gives a private in-memory store for tests. */
export function openSqliteStore(file: string): SqliteStore {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  try {
    return new SqliteStore(db);
  } catch (err) {
    db.close(); // e.g. a schema from a newer buildcloud: do not leave the file locked
    throw err;
  }
}
