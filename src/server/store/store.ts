// The control plane's durable state. Async so that a PostgreSQL store can stand behind the same interface
// as the embedded SQLite one. Times are unix milliseconds.

export interface OrgRow {
  name: string;
  createdAt: number;
}

export interface TokenRow {
  id: string; // public id, also the prefix of the secret token: bct_<id>_<secret>
  org: string;
  hash: string; // sha256 hex of the whole token
  label: string;
  createdAt: number;
  revokedAt: number | null;
  // null: the org-admin credential (any project, any branch). Otherwise src/server/scope.ts's PrincipalScope
  // without `verified`: what `admin token create --project/--branches/--read-only` gave it.
  scope: { projects: string[] | null; branches: string[] | null; readOnly: boolean } | null;
}

export interface BucketRow {
  id: number;
  org: string;
  seconds: number; // minutes bought, in seconds
  note: string;
  createdAt: number;
}

export interface TrustRow {
  id: number;
  org: string;
  issuer: string; // exact `iss`
  audience: string; // required `aud`
  claim: string; // e.g. repository_owner, namespace_path, oidc.circleci.com/org-id
  value: string; // the claim must equal this
  createdAt: number;
}

// bucket_exhausted: the lease used up its reservation of minutes and the org's bucket had none left to extend it.
// builder_lost: the lease's builder's engine stopped under it (crashed, killed, OOM); it ended then.
export type LeaseEndReason = 'released' | 'idle' | 'ttl' | 'server_stopped' | 'failed' | 'bucket_exhausted' | 'builder_lost';

// Per-org caps (`buildcloud admin org set`). null = no cap of the org's own (the server-wide limits still apply).
export interface OrgLimitsRow {
  org: string;
  maxBuilders: number | null; // concurrent builders the org's leases hold
  maxLeases: number | null; // concurrent active leases
  overdraftSeconds: number; // how far reservations may go past the bucket (default 0: prepaid only)
  protectedBranches: string[] | null; // branch patterns whose cache only a proven lease writes; null: main, master
  updatedAt: number | null; // null: never set, these are the defaults
}

export type OrgLimitsPatch = Partial<Pick<OrgLimitsRow, 'maxBuilders' | 'maxLeases' | 'overdraftSeconds' | 'protectedBranches'>>;

// What a provision may reserve, decided in one transaction with the insert (see reserveLease).
export interface ReservePolicy {
  minSeconds: number; // the smallest reservation a lease may start with: less unreserved balance refuses it
  chunkSeconds: number; // what a lease reserves at first (and each extension), at most the unreserved balance
}

export type ReserveResult =
  | { ok: true; reservedSeconds: number }
  | { ok: false; limit: 'balance'; unreservedSeconds: number; boughtSeconds: number; usedSeconds: number; reservedSeconds: number }
  | { ok: false; limit: 'max_leases'; maxLeases: number; activeLeases: number };

export interface LeaseRow {
  id: string;
  org: string;
  pipelineKey: string;
  jobId: string;
  scope: 'pipeline' | 'job';
  platforms: string[];
  builderIds: string[];
  identity: Record<string, unknown>; // CIIdentity as given
  actor: string;
  certFingerprint: string; // sha256 of the lease's client cert (DER), lowercase hex
  registryUser: string;
  registryPasswordHash: string;
  createdAt: number;
  lastActiveAt: number;
  endedAt: number | null;
  endReason: LeaseEndReason | null;
  billedSeconds: number | null;
  // Seconds of the org's bucket held for this lease; the lease is billed at most this much. 0 or absent: a
  // lease from before reservations existed (not capped).
  reservedSeconds?: number;
}

export interface UsageRecordRow {
  id: string; // CloudEvent id: the idempotency key within the org (records are keyed by (org, id))
  org: string;
  type: string;
  time: number; // event time
  receivedAt: number;
  leaseId: string | null;
  data: Record<string, unknown>;
}

export type InsertResult = 'inserted' | 'duplicate';

export interface Store {
  // orgs
  createOrg(name: string, now: number): Promise<OrgRow>; // throws StoreConflict if it exists
  getOrg(name: string): Promise<OrgRow | null>;
  listOrgs(): Promise<OrgRow[]>;
  countOrgs(): Promise<number>; // how many orgs exist (Provision asks whether a second one does)

  // tokens
  createToken(row: TokenRow): Promise<void>;
  findTokenByHash(hash: string): Promise<TokenRow | null>;
  revokeToken(id: string, now: number): Promise<boolean>;
  listTokens(org: string): Promise<TokenRow[]>;

  // buckets of minutes
  addBucket(org: string, seconds: number, note: string, now: number): Promise<BucketRow>;
  bucketSeconds(org: string): Promise<number>; // sum of all buckets
  listBuckets(org: string): Promise<BucketRow[]>; // oldest first (`admin bucket list`)

  // per-org limits and overdraft
  getOrgLimits(org: string): Promise<OrgLimitsRow>; // the defaults when never set
  setOrgLimits(org: string, patch: OrgLimitsPatch, now: number): Promise<OrgLimitsRow>;

  // OIDC trust
  addTrust(row: Omit<TrustRow, 'id'>): Promise<TrustRow>;
  listTrust(org?: string): Promise<TrustRow[]>;
  removeTrust(id: number): Promise<boolean>;

  // leases
  insertLease(row: LeaseRow): Promise<void>;
  // Atomically: check the org's unreserved balance (buckets + overdraft − billed − active reservations) and its
  // max-leases cap, then insert the lease holding its reservation. Concurrent callers (other requests, other
  // processes on the same file) cannot both take the same seconds.
  reserveLease(row: LeaseRow, policy: ReservePolicy): Promise<ReserveResult>;
  // Atomically adds up to chunkSeconds of unreserved balance to an active lease; returns its new reservation
  // (unchanged when nothing is left), or null when the lease is not active.
  extendReservation(id: string, chunkSeconds: number): Promise<number | null>;
  setLeaseBuilders(id: string, builderIds: string[]): Promise<void>;
  reservedSeconds(org: string): Promise<number>; // held by the org's active leases
  getLease(id: string): Promise<LeaseRow | null>;
  touchLease(id: string, now: number): Promise<void>; // lastActiveAt = max(lastActiveAt, now)
  endLease(id: string, endedAt: number, reason: LeaseEndReason, billedSeconds: number): Promise<boolean>; // false if already ended
  activeLeases(org?: string): Promise<LeaseRow[]>;
  leasesOfPipeline(org: string, pipelineKey: string): Promise<LeaseRow[]>; // oldest first
  // billed seconds of ended leases of the org; with sinceMs, only leases that ended at or after it
  billedSeconds(org: string, sinceMs?: number): Promise<number>;

  // usage records (metering): a record is a duplicate only of the same org's record with the same id
  insertUsageRecord(row: UsageRecordRow): Promise<InsertResult>;
  // several at once, durable together (one commit), each 'inserted' or 'duplicate' in the order given
  insertUsageRecords(rows: UsageRecordRow[]): Promise<InsertResult[]>;
  usageRecords(org: string, sinceMs: number, untilMs: number): Promise<UsageRecordRow[]>;

  close(): Promise<void>;
}

export class StoreConflict extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreConflict';
  }
}
