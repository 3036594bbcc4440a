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

export type LeaseEndReason = 'released' | 'idle' | 'ttl' | 'server_stopped' | 'failed';

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
}

export interface UsageRecordRow {
  id: string; // CloudEvent id: the idempotency key
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

  // tokens
  createToken(row: TokenRow): Promise<void>;
  findTokenByHash(hash: string): Promise<TokenRow | null>;
  revokeToken(id: string, now: number): Promise<boolean>;
  listTokens(org: string): Promise<TokenRow[]>;

  // buckets of minutes
  addBucket(org: string, seconds: number, note: string, now: number): Promise<BucketRow>;
  bucketSeconds(org: string): Promise<number>; // sum of all buckets

  // OIDC trust
  addTrust(row: Omit<TrustRow, 'id'>): Promise<TrustRow>;
  listTrust(org?: string): Promise<TrustRow[]>;
  removeTrust(id: number): Promise<boolean>;

  // leases
  insertLease(row: LeaseRow): Promise<void>;
  getLease(id: string): Promise<LeaseRow | null>;
  touchLease(id: string, now: number): Promise<void>; // lastActiveAt = max(lastActiveAt, now)
  endLease(id: string, endedAt: number, reason: LeaseEndReason, billedSeconds: number): Promise<boolean>; // false if already ended
  activeLeases(org?: string): Promise<LeaseRow[]>;
  leasesOfPipeline(org: string, pipelineKey: string): Promise<LeaseRow[]>; // oldest first
  // billed seconds of ended leases of the org; with sinceMs, only leases that ended at or after it
  billedSeconds(org: string, sinceMs?: number): Promise<number>;

  // usage records (metering)
  insertUsageRecord(row: UsageRecordRow): Promise<InsertResult>;
  usageRecords(org: string, sinceMs: number, untilMs: number): Promise<UsageRecordRow[]>;

  close(): Promise<void>;
}

export class StoreConflict extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreConflict';
  }
}
