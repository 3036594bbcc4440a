// An in-memory Store for unit tests: the whole interface with plain maps and arrays, no persistence. Rows are
// copied on the way in and out so a test that mutates a returned row cannot change the store behind its back
// (the SQLite store behaves the same way).
import { extensionGrant, initialReservation, unreservedSeconds } from '../../src/server/billing';
import {
  StoreConflict,
  type BucketRow,
  type InsertResult,
  type LeaseEndReason,
  type LeaseRow,
  type OrgLimitsPatch,
  type OrgLimitsRow,
  type OrgRow,
  type ReservePolicy,
  type ReserveResult,
  type Store,
  type TokenRow,
  type TrustRow,
  type UsageRecordRow
} from '../../src/server/store/store';

const copy = <T>(v: T): T => structuredClone(v);

export class MemoryStore implements Store {
  readonly orgs = new Map<string, OrgRow>();
  readonly tokens = new Map<string, TokenRow>(); // by id
  readonly buckets: BucketRow[] = [];
  readonly trust: TrustRow[] = [];
  readonly leases = new Map<string, LeaseRow>();
  readonly usage = new Map<string, UsageRecordRow>(); // by JSON [org, id]
  readonly limits = new Map<string, OrgLimitsRow>();
  private nextBucketId = 1;
  private nextTrustId = 1;
  closed = false;

  async createOrg(name: string, now: number): Promise<OrgRow> {
    if (this.orgs.has(name)) throw new StoreConflict(`org "${name}" already exists`);
    const row = { name, createdAt: now };
    this.orgs.set(name, row);
    return copy(row);
  }
  async getOrg(name: string): Promise<OrgRow | null> {
    const row = this.orgs.get(name);
    return row ? copy(row) : null;
  }
  async countOrgs(): Promise<number> {
    return (await this.listOrgs()).length;
  }
  async listOrgs(): Promise<OrgRow[]> {
    return [...this.orgs.values()].sort((a, b) => a.name.localeCompare(b.name)).map(copy);
  }

  async createToken(row: TokenRow): Promise<void> {
    if (this.tokens.has(row.id)) throw new StoreConflict(`token "${row.id}" already exists`);
    this.tokens.set(row.id, copy(row));
  }
  async findTokenByHash(hash: string): Promise<TokenRow | null> {
    for (const row of this.tokens.values()) if (row.hash === hash) return copy(row);
    return null;
  }
  async revokeToken(id: string, now: number): Promise<boolean> {
    const row = this.tokens.get(id);
    if (!row || row.revokedAt !== null) return false;
    row.revokedAt = now;
    return true;
  }
  async listTokens(org: string): Promise<TokenRow[]> {
    return [...this.tokens.values()]
      .filter((t) => t.org === org)
      .sort((a, b) => a.createdAt - b.createdAt)
      .map(copy);
  }

  async addBucket(org: string, seconds: number, note: string, now: number): Promise<BucketRow> {
    const row: BucketRow = { id: this.nextBucketId++, org, seconds, note, createdAt: now };
    this.buckets.push(row);
    return copy(row);
  }
  async bucketSeconds(org: string): Promise<number> {
    return this.buckets.filter((b) => b.org === org).reduce((sum, b) => sum + b.seconds, 0);
  }
  async listBuckets(org: string): Promise<BucketRow[]> {
    return this.buckets.filter((b) => b.org === org).map(copy);
  }

  async getOrgLimits(org: string): Promise<OrgLimitsRow> {
    return copy(this.limits.get(org) ?? { org, maxBuilders: null, maxLeases: null, overdraftSeconds: 0, protectedBranches: null, updatedAt: null });
  }
  async setOrgLimits(org: string, patch: OrgLimitsPatch, now: number): Promise<OrgLimitsRow> {
    const cur = await this.getOrgLimits(org);
    const defined = Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined));
    const next: OrgLimitsRow = { ...cur, ...defined, org, updatedAt: now };
    this.limits.set(org, next);
    return copy(next);
  }
  // Single-threaded: each method runs to completion without awaiting, like SQLite's transaction.
  private book(org: string) {
    const active = [...this.leases.values()].filter((l) => l.org === org && l.endedAt === null);
    const book = {
      boughtSeconds: this.buckets.filter((b) => b.org === org).reduce((sum, b) => sum + b.seconds, 0),
      overdraftSeconds: this.limits.get(org)?.overdraftSeconds ?? 0,
      billedSeconds: [...this.leases.values()].filter((l) => l.org === org && l.endedAt !== null).reduce((s, l) => s + (l.billedSeconds ?? 0), 0),
      reservedSeconds: active.reduce((s, l) => s + (l.reservedSeconds ?? 0), 0)
    };
    return { book, active: active.length, unreserved: unreservedSeconds(book) };
  }
  async reserveLease(row: LeaseRow, policy: ReservePolicy): Promise<ReserveResult> {
    const { book, active, unreserved } = this.book(row.org);
    const maxLeases = this.limits.get(row.org)?.maxLeases ?? null;
    if (maxLeases !== null && active >= maxLeases) return { ok: false, limit: 'max_leases', maxLeases, activeLeases: active };
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
    if (this.leases.has(row.id)) throw new StoreConflict(`lease "${row.id}" already exists`);
    this.leases.set(row.id, copy({ ...row, reservedSeconds: grant }));
    return { ok: true, reservedSeconds: grant };
  }
  async extendReservation(id: string, chunkSeconds: number): Promise<number | null> {
    const row = this.leases.get(id);
    if (!row || row.endedAt !== null) return null;
    row.reservedSeconds = (row.reservedSeconds ?? 0) + extensionGrant(this.book(row.org).unreserved, chunkSeconds);
    return row.reservedSeconds;
  }
  async setLeaseBuilders(id: string, builderIds: string[]): Promise<void> {
    const row = this.leases.get(id);
    if (row) row.builderIds = [...builderIds];
  }
  async reservedSeconds(org: string): Promise<number> {
    return this.book(org).book.reservedSeconds;
  }

  async addTrust(row: Omit<TrustRow, 'id'>): Promise<TrustRow> {
    const full: TrustRow = { ...copy(row), id: this.nextTrustId++ };
    this.trust.push(full);
    return copy(full);
  }
  async listTrust(org?: string): Promise<TrustRow[]> {
    return this.trust.filter((t) => org === undefined || t.org === org).map(copy); // in id order
  }
  async removeTrust(id: number): Promise<boolean> {
    const i = this.trust.findIndex((t) => t.id === id);
    if (i < 0) return false;
    this.trust.splice(i, 1);
    return true;
  }

  async insertLease(row: LeaseRow): Promise<void> {
    if (this.leases.has(row.id)) throw new StoreConflict(`lease "${row.id}" already exists`);
    this.leases.set(row.id, copy(row));
  }
  async getLease(id: string): Promise<LeaseRow | null> {
    const row = this.leases.get(id);
    return row ? copy(row) : null;
  }
  async touchLease(id: string, now: number): Promise<void> {
    const row = this.leases.get(id);
    if (row) row.lastActiveAt = Math.max(row.lastActiveAt, now);
  }
  async endLease(id: string, endedAt: number, reason: LeaseEndReason, billedSeconds: number): Promise<boolean> {
    const row = this.leases.get(id);
    if (!row || row.endedAt !== null) return false;
    Object.assign(row, { endedAt, endReason: reason, billedSeconds });
    return true;
  }
  async activeLeases(org?: string): Promise<LeaseRow[]> {
    return [...this.leases.values()]
      .filter((l) => l.endedAt === null && (org === undefined || l.org === org))
      .sort((a, b) => a.createdAt - b.createdAt)
      .map(copy);
  }
  async leasesOfPipeline(org: string, pipelineKey: string): Promise<LeaseRow[]> {
    return [...this.leases.values()]
      .filter((l) => l.org === org && l.pipelineKey === pipelineKey)
      .sort((a, b) => a.createdAt - b.createdAt)
      .map(copy);
  }
  async billedSeconds(org: string, sinceMs?: number): Promise<number> {
    let sum = 0;
    for (const l of this.leases.values()) {
      if (l.org !== org || l.endedAt === null) continue;
      if (sinceMs !== undefined && l.endedAt < sinceMs) continue;
      sum += l.billedSeconds ?? 0;
    }
    return sum;
  }

  async insertUsageRecords(rows: UsageRecordRow[]): Promise<InsertResult[]> {
    const out: InsertResult[] = [];
    for (const r of rows) out.push(await this.insertUsageRecord(r));
    return out;
  }

  async insertUsageRecord(row: UsageRecordRow): Promise<InsertResult> {
    const key = JSON.stringify([row.org, row.leaseId ?? '', row.id]); // keyed like SQLite's migration 5
    if (this.usage.has(key)) return 'duplicate';
    this.usage.set(key, copy(row));
    return 'inserted';
  }
  // Event time in [sinceMs, untilMs), oldest first.
  async usageRecords(org: string, sinceMs: number, untilMs: number): Promise<UsageRecordRow[]> {
    return [...this.usage.values()]
      .filter((r) => r.org === org && r.time >= sinceMs && r.time < untilMs)
      .sort((a, b) => a.time - b.time)
      .map(copy);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
