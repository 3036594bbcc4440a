// Leases: a job's hold on one builder per platform. Provision, release, get, reaping of abandoned leases,
// and billing from the control plane's own lease records (per second, no minimum).
import { randomBytes } from 'crypto';
import { fingerprintKey, hashToken, sameSecret } from './auth';
import type { Logger } from './log';
import type { LeaseMsg, ProvisionRequestMsg } from '../contract/grpc';
import type { LeaseEndReason, LeaseRow, ReserveResult, Store } from './store/store';
import { orgMaxBuildersDefault, type ServerConfig } from './config';
import type { Pki } from './pki';
import { BuilderPool, newId, type LiveBuilder } from './builders';
import { cacheRefs, registryScope } from './cache-refs';
import type { RegistryPrincipal } from './registry-proxy';
import {
  balance,
  billableSeconds,
  MIN_LEASE_SECONDS,
  minutesUp,
  reapDecision,
  RESERVATION_CHUNK_SECONDS,
  reservationEnd,
  reservationState,
  settledSeconds
} from './billing';
import { status as grpcStatus } from '@grpc/grpc-js';
import { ApiError, denied, exhausted, invalid, notFound, precondition } from './errors';
import { normalisePlatforms, validateKey } from './validate';
import type { ServerMetrics } from './metrics-types';
import { KeyedMutex } from './mutex';
import { DEFAULT_PROTECTED_BRANCHES, ScopeError, resolveLeaseIdentity, scopeCoversLease, type LeaseIdentity, type PrincipalScope } from './scope';

interface LiveLease {
  row: LeaseRow;
  lastActiveAt: number;
  persistedActiveAt: number;
}

export interface LeaseManagerDeps {
  store: Store;
  pool: BuilderPool | null;
  platforms: string[];
  pki: Pki;
  config: ServerConfig;
  registryHost: string;
  fingerprintSecret?: Buffer; // keys each project's step fingerprints (auth.ts fingerprintKey); absent: none given
  meteringUrl: () => string; // known once the HTTP server listens
  log: Logger;
  metrics: ServerMetrics;
  now?: () => number;
}

const ACTIVITY_PERSIST_MS = 5_000;

export class LeaseManager {
  private readonly live = new Map<string, LiveLease>();
  private readonly byFingerprint = new Map<string, string>();
  private readonly locks = new KeyedMutex();
  private reaper: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(private readonly d: LeaseManagerDeps) {
    this.now = d.now ?? Date.now;
    d.pool?.onLost((builderId, leaseIds, why) => {
      void this.builderLost(builderId, leaseIds, why).catch((err) =>
        d.log.error({ builder: builderId, err: String(err) }, 'ending leases of a lost builder failed')
      );
    });
  }

  // A builder's engine died under its leases: they end now (billing stops at the loss), 'builder_lost'; the pool is
  // already destroying it, so the pipeline's next job gets a new one.
  private async builderLost(builderId: string, leaseIds: string[], why: string): Promise<void> {
    const now = this.now();
    for (const id of leaseIds) {
      const l = this.live.get(id);
      if (!l) continue;
      this.d.log.warn({ lease: id, org: l.row.org, builder: builderId, why }, 'ending lease: its builder was lost');
      this.d.metrics.reapedLeases.inc({ reason: 'builder_lost' });
      await this.end(l.row, now, 'builder_lost');
    }
  }

  // Leases left active by a control plane that died end now, billed up to their last sign of life.
  async recover(): Promise<number> {
    const stale = await this.d.store.activeLeases();
    for (const l of stale) {
      await this.d.store.endLease(l.id, l.lastActiveAt, 'server_stopped', settledSeconds(l.createdAt, l.lastActiveAt, l.reservedSeconds));
    }
    return stale.length;
  }

  startReaper(): void {
    this.reaper = setInterval(() => void this.reap().catch((err) => this.d.log.error({ err: String(err) }, 'reaper failed')), this.d.config.reapIntervalMs);
    this.reaper.unref();
  }

  // Called by builders' TLS proxies on traffic: a lease in use is not idle.
  activity(fingerprint: string): void {
    const id = this.byFingerprint.get(fingerprint);
    const l = id ? this.live.get(id) : undefined;
    if (!l) return;
    l.lastActiveAt = l.row.lastActiveAt = this.now();
    if (l.lastActiveAt - l.persistedActiveAt >= ACTIVITY_PERSIST_MS) {
      l.persistedActiveAt = l.lastActiveAt;
      void this.d.store.touchLease(l.row.id, l.lastActiveAt).catch(() => undefined);
    }
  }

  /**
   * Provisions a lease for `org`: applies the credential's `scope` to the requested identity (scope.ts; undefined =
   * the org-admin credential), reserves minutes, acquires a builder per platform. Throws ApiError:
   * INVALID_ARGUMENT (bad identity), PERMISSION_DENIED (identity outside the credential's scope),
   * RESOURCE_EXHAUSTED (bucket or org limits), FAILED_PRECONDITION (no driver).
   */
  async provision(org: string, req: ProvisionRequestMsg, credentialScope?: PrincipalScope): Promise<LeaseMsg> {
    const started = this.now();
    const pool = this.d.pool;
    if (!pool)
      throw precondition(
        'This control plane has no builder driver (dockerd was not found). Install docker.io or start serve with --driver dockerd on a host that has it.'
      );
    const pipelineKey = validateKey(req.pipelineKey, 'pipeline_key');
    const jobId = validateKey(req.jobId, 'job_id');
    const scope = req.scope === 'SCOPE_JOB' ? 'job' : 'pipeline';
    const platforms = normalisePlatforms(req.platforms ?? [], this.d.platforms);
    const id = req.identity;
    const identity = {
      provider: id?.provider ?? '',
      project: id?.project ?? '',
      branch: id?.branch ?? '',
      defaultBranch: id?.defaultBranch ?? '',
      fork: Boolean(id?.fork),
      actor: id?.actor ?? '',
      runUrl: id?.runUrl ?? '',
      // Set below from the credential's scope; stored with the lease so the registry proxy's scope matches.
      readOnly: false,
      readOnlyReason: '',
      verified: false,
      changeRequest: false
    };
    if (!identity.project && !credentialScope?.verified)
      throw invalid('Missing identity.project. Expected the repository or project path, e.g. acme/widget-api.');
    const limits = await this.d.store.getOrgLimits(org);
    // The credential decides what the request may claim: project and branch from verified OIDC claims, a scoped
    // token's patterns, and who may write a protected branch's cache (scope.ts).
    let resolved: LeaseIdentity;
    try {
      resolved = resolveLeaseIdentity(credentialScope, identity, limits.protectedBranches ?? DEFAULT_PROTECTED_BRANCHES);
    } catch (err) {
      if (!(err instanceof ScopeError)) throw err;
      this.d.metrics.provisions.inc({ result: 'denied' });
      throw denied(err.message);
    }
    Object.assign(identity, {
      project: resolved.project,
      branch: resolved.branch,
      readOnly: resolved.readOnly,
      readOnlyReason: resolved.readOnlyReason,
      verified: resolved.verified,
      changeRequest: resolved.changeRequest
    });
    const leaseId = newId('l');
    let refs: ReturnType<typeof cacheRefs>;
    try {
      refs = cacheRefs({
        leaseId,
        registryHost: this.d.registryHost,
        org,
        project: identity.project,
        branch: identity.branch,
        defaultBranch: identity.defaultBranch || identity.branch,
        fork: resolved.readOnly
      });
    } catch (err) {
      throw invalid(`Invalid identity: ${(err as Error).message}`);
    }

    const cert = await this.d.pki.issueClient(leaseId, this.d.config.maxTtlMs + 3600_000);
    const registryPassword = randomBytes(24).toString('base64url');
    const now = this.now();
    const row: LeaseRow = {
      id: leaseId,
      org,
      pipelineKey,
      jobId,
      scope,
      platforms,
      builderIds: [], // set once acquired: the lease is stored first, holding its reservation
      identity,
      actor: identity.actor,
      certFingerprint: cert.fingerprint,
      registryUser: leaseId,
      registryPasswordHash: hashToken(registryPassword),
      createdAt: now,
      lastActiveAt: now,
      endedAt: null,
      endReason: null,
      billedSeconds: null
    };
    // Minutes are reserved before any builder is taken, in one transaction with the balance and max-leases
    // checks: concurrent provisions cannot race past the bucket (docs/metering.md, "Buckets of minutes").
    const reserved = await this.d.store.reserveLease(row, { minSeconds: MIN_LEASE_SECONDS, chunkSeconds: RESERVATION_CHUNK_SECONDS });
    if (!reserved.ok) {
      this.d.metrics.provisions.inc({ result: reserved.limit === 'balance' ? 'bucket_empty' : 'org_limit' });
      throw exhausted(refusal(org, reserved));
    }
    row.reservedSeconds = reserved.reservedSeconds;
    // The org's own cap, else, when several orgs share this control plane, the server's per-org share
    // (--org-max-builders, default 3/4 of --max-builders): one org alone cannot hold every builder.
    let serverOrgMax: number | null = null;
    if (limits.maxBuilders === null && (await this.d.store.countOrgs()) > 1) {
      serverOrgMax = this.d.config.orgMaxBuilders === undefined ? orgMaxBuildersDefault(this.d.config.maxBuilders) : this.d.config.orgMaxBuilders;
    }
    pool.limitOrg(org, limits.maxBuilders ?? serverOrgMax);
    const acquired: Array<{ builder: LiveBuilder; warm: boolean; shared: boolean }> = [];
    try {
      for (const platform of platforms) {
        // A builder holds its leases' images and in-flight builds, and pipeline keys are visible in run URLs, so
        // only leases of one trust level share it: the same project and what it may write (its export ref; a
        // read-only lease, only with read-only leases of its branch). Otherwise a pull request's read-only job
        // sending main's pipeline key would tag images on main's builder that main's build then uses and pushes
        // to cache:main. JSON keeps the parts apart whatever characters they hold.
        const writes = refs.exportRef !== '' ? `writes:${refs.exportRef}` : `read-only:${identity.branch}`;
        const shareKey =
          scope === 'job'
            ? JSON.stringify([org, identity.project, pipelineKey, 'job', jobId, leaseId, platform])
            : JSON.stringify([org, identity.project, pipelineKey, writes, platform]);
        const a = await this.locks.run(shareKey, () => pool.acquire(shareKey, org, platform, leaseId));
        a.builder.proxy.allow(cert.fingerprint);
        acquired.push(a);
      }
    } catch (err) {
      for (const a of acquired) pool.release(a.builder.id, leaseId, cert.fingerprint);
      // No builder, no bill: the reservation goes back to the bucket.
      await this.d.store.endLease(leaseId, now, 'failed', 0).catch(() => undefined);
      const orgCap = err instanceof ApiError && err.code === grpcStatus.RESOURCE_EXHAUSTED; // the org's --max-builders
      this.d.metrics.provisions.inc({ result: orgCap ? 'org_limit' : 'error' });
      throw err;
    }

    row.builderIds = acquired.map((a) => a.builder.id);
    await this.d.store.setLeaseBuilders(leaseId, row.builderIds);
    this.live.set(leaseId, { row, lastActiveAt: now, persistedActiveAt: now });
    this.byFingerprint.set(cert.fingerprint, leaseId);
    const allWarm = acquired.every((a) => a.warm || a.shared);
    this.d.metrics.provisions.inc({ result: 'ok' });
    this.d.metrics.provisionLatency.observe({ warm: String(allWarm) }, (this.now() - started) / 1000);
    this.gauges();
    this.d.log.info({ lease: leaseId, org, pipelineKey, jobId, scope, builders: row.builderIds }, 'lease provisioned');

    const msg = this.toMsg(row, acquired);
    msg.tls = { caPem: this.d.pki.caPem, certPem: cert.certPem, keyPem: cert.keyPem };
    msg.cache = {
      importRefs: refs.importRefs,
      exportRef: refs.exportRef,
      repository: refs.repository,
      importTags: refs.importTags,
      exportTag: refs.exportTag,
      uploadPrefix: refs.uploadPrefix,
      fingerprintKey: this.d.fingerprintSecret ? fingerprintKey(this.d.fingerprintSecret, org, identity.project) : '',
      registry: { host: this.d.registryHost, username: leaseId, password: registryPassword },
      readOnlyReason: refs.exportRef === '' ? resolved.readOnlyReason || (identity.branch === '' ? 'no branch (a tag build or a detached ref)' : '') : ''
    };
    return msg;
  }

  /** Ends a lease of `org` within the credential's `scope` (NOT_FOUND otherwise); idempotent. */
  async release(org: string, leaseId: string, scope?: PrincipalScope): Promise<LeaseMsg> {
    const row = await this.owned(org, leaseId, scope);
    const shared = this.sharedNow(row); // read before the release, which may end the builder's life
    if (row.endedAt === null) await this.end(row, this.now(), 'released');
    return this.toMsg((await this.d.store.getLease(leaseId)) ?? row, undefined, shared);
  }

  /** A lease of `org` within the credential's `scope` (NOT_FOUND otherwise); a heartbeat for a live one. */
  async get(org: string, leaseId: string, scope?: PrincipalScope): Promise<LeaseMsg> {
    const row = await this.owned(org, leaseId, scope);
    // A job asking after a failed build learns whether its builder is gone: a dead engine ends the lease here
    // (builderLost, through the pool) even if its exit was not seen yet.
    const held = this.live.get(leaseId);
    if (held) for (const b of held.row.builderIds) await this.d.pool?.confirm(b);
    const l = this.live.get(leaseId);
    if (l) {
      l.lastActiveAt = this.now();
      // Best effort, as activity()'s: the time lives in memory, the row only helps a restart (a full disk must not
      // fail a job's status call).
      await this.d.store.touchLease(leaseId, l.lastActiveAt).catch((err) => this.d.log.warn({ leaseId, err: String(err) }, 'could not record lease activity'));
      l.row.lastActiveAt = l.lastActiveAt;
      return this.toMsg(l.row);
    }
    return this.toMsg(row);
  }

  // Registry proxy credentials: the lease id and its password, valid while the lease is active. The principal
  // carries the lease's exact scope: it reads its import refs' repositories and writes only its export ref's tag
  // (none for a fork's pull request). The refs are recomputed from the stored identity with the same inputs as
  // Provision's, so the scope is exactly what the lease was told.
  async registryPrincipal(username: string, password: string): Promise<RegistryPrincipal | null> {
    const l = this.live.get(username);
    if (!l || !sameSecret(l.row.registryPasswordHash, hashToken(password))) return null;
    const i = l.row.identity;
    const str = (v: unknown): string => (typeof v === 'string' ? v : '');
    // Leases stored before identity.readOnly existed: a fork was their only read-only case.
    const readOnly = Boolean(i.fork) || i.readOnly === true;
    try {
      const refs = cacheRefs({
        leaseId: l.row.id,
        registryHost: this.d.registryHost,
        org: l.row.org,
        project: str(i.project),
        branch: str(i.branch),
        defaultBranch: str(i.defaultBranch) || str(i.branch),
        fork: readOnly
      });
      return { org: l.row.org, readOnly, scope: registryScope(refs, this.d.registryHost) };
    } catch {
      return { org: l.row.org, readOnly: true, scope: { pull: [], push: null } }; // unreachable (Provision checked): fail closed
    }
  }

  async balanceOf(org: string): Promise<ReturnType<typeof balance>> {
    const bought = await this.d.store.bucketSeconds(org);
    const billed = await this.d.store.billedSeconds(org);
    return balance(bought, billed, this.activeSeconds(org));
  }

  activeSeconds(org: string): number {
    const now = this.now();
    let s = 0;
    for (const l of this.live.values()) if (l.row.org === org) s += billableSeconds(l.row.createdAt, now);
    return s;
  }

  async reap(): Promise<void> {
    const now = this.now();
    const opts = { idleTimeoutMs: this.d.config.idleTimeoutMs, maxTtlMs: this.d.config.maxTtlMs };
    for (const l of [...this.live.values()]) {
      const open = l.row.builderIds.some((b) => (this.d.pool?.get(b)?.proxy.activeConnections(l.row.certFingerprint) ?? 0) > 0);
      // An open connection (a long, quiet build step) is a sign of life: the idle clock restarts when it closes.
      if (open) this.activity(l.row.certFingerprint);
      const decision = reapDecision({ createdAt: l.row.createdAt, lastActiveAt: l.lastActiveAt }, now, opts, open);
      if (!decision) {
        await this.holdReservation(l, now);
        continue;
      }
      this.d.log.warn({ lease: l.row.id, org: l.row.org, reason: decision.reason }, 'reaping abandoned lease');
      this.d.metrics.reapedLeases.inc({ reason: decision.reason });
      await this.end(l.row, decision.endedAt, decision.reason);
    }
  }

  async stop(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    const now = this.now();
    for (const l of [...this.live.values()]) await this.end(l.row, now, 'server_stopped');
  }

  // Extends a live lease's reservation shortly before it runs out; when the bucket has nothing left and the
  // reservation is used up, the lease ends (bucket_exhausted), billed exactly its reservation.
  private async holdReservation(l: LiveLease, now: number): Promise<void> {
    const state = reservationState(l.row.createdAt, l.row.reservedSeconds, now);
    if (state === 'ok') return;
    const next = await this.d.store.extendReservation(l.row.id, RESERVATION_CHUNK_SECONDS);
    if (next === null) return; // ended meanwhile (release, another replica)
    if (next > (l.row.reservedSeconds ?? 0)) {
      l.row.reservedSeconds = next;
      return;
    }
    if (state !== 'exhausted') return;
    this.d.log.warn({ lease: l.row.id, org: l.row.org, reservedSeconds: next }, 'ending lease: bucket of minutes exhausted');
    this.d.metrics.reapedLeases.inc({ reason: 'bucket_exhausted' });
    await this.end(l.row, reservationEnd(l.row.createdAt, next), 'bucket_exhausted');
  }

  /**
   * Ends a lease whose Provision caller went away before the reply reached it (its deadline passed, or it cancelled):
   * the job never received the lease's certificate, so nothing could use it and nothing is billed (end reason
   * `failed`, 0 seconds); its builders are released as at any end. A client that retries would otherwise leave one
   * lease (and reservation, and builder hold) per abandoned attempt until the idle reaper came. No-op once ended.
   */
  async abandon(leaseId: string): Promise<void> {
    const l = this.live.get(leaseId);
    if (!l) return;
    this.d.log.warn(
      { lease: leaseId, org: l.row.org, pipelineKey: l.row.pipelineKey, jobId: l.row.jobId },
      'provision caller gone before the reply: lease ended unbilled'
    );
    await this.end(l.row, this.now(), 'failed', 0);
  }

  private async end(
    row: LeaseRow,
    endedAt: number,
    reason: LeaseEndReason,
    billed = settledSeconds(row.createdAt, endedAt, row.reservedSeconds)
  ): Promise<void> {
    await this.d.store.endLease(row.id, endedAt, reason, billed);
    this.live.delete(row.id);
    this.byFingerprint.delete(row.certFingerprint);
    for (const b of row.builderIds) this.d.pool?.release(b, row.id, row.certFingerprint);
    this.gauges();
    this.d.log.info({ lease: row.id, org: row.org, reason, billedSeconds: billed }, 'lease ended');
  }

  // Another org's lease is reported as missing, never as forbidden: its existence is not revealed.
  // A lease the credential could not have provisioned itself (another project's, another branch's, a push's lease
  // to a pull request's job: scope.ts scopeCoversLease) is missing to it as well: lease ids are printed in CI
  // logs, and releasing one would end another team's (or the release) build.
  private async owned(org: string, leaseId: string, scope?: PrincipalScope): Promise<LeaseRow> {
    validateKey(leaseId, 'lease_id', 64);
    const row = await this.d.store.getLease(leaseId);
    if (!row || row.org !== org || !scopeCoversLease(scope, row.identity)) throw notFound(`Lease '${leaseId}' not found for org '${org}'.`);
    return row;
  }

  private gauges(): void {
    this.d.metrics.activeLeases.set(this.live.size);
  }

  // Per builder of the lease: whether another lease held it too while this one did (BuilderPool.sharedWith).
  private sharedNow(row: LeaseRow): Array<boolean | undefined> {
    return row.builderIds.map((bid) => this.d.pool?.sharedWith(bid, row.id));
  }

  private toMsg(row: LeaseRow, acquired?: Array<{ builder: LiveBuilder; warm: boolean; shared: boolean }>, shared = this.sharedNow(row)): LeaseMsg {
    const deadline = Math.min(row.lastActiveAt + this.d.config.idleTimeoutMs, row.createdAt + this.d.config.maxTtlMs);
    const state = row.endedAt === null ? 'LEASE_STATE_ACTIVE' : row.endReason === 'released' ? 'LEASE_STATE_RELEASED' : 'LEASE_STATE_EXPIRED';
    const builders = row.builderIds.map((bid, i) => {
      const a = acquired?.[i];
      const b = a?.builder ?? this.d.pool?.get(bid);
      return {
        platform: row.platforms[i] ?? '',
        kind: 'ENDPOINT_KIND_DOCKER' as const,
        address: row.endedAt === null && b ? b.address : '',
        builderId: bid,
        warm: a?.warm ?? false,
        // At provision: whether it joined a builder another lease had; later (Get, Release): whether another lease
        // held it while this one did, so the first job of a pipeline learns that a later one joined it.
        shared: (a?.shared || shared[i]) ?? false
      };
    });
    return {
      id: row.id,
      org: row.org,
      pipelineKey: row.pipelineKey,
      jobId: row.jobId,
      scope: row.scope === 'job' ? 'SCOPE_JOB' : 'SCOPE_PIPELINE',
      state,
      createdAtMs: row.createdAt,
      expiresAtMs: row.endedAt ?? deadline,
      builders,
      tls: null,
      cache: null,
      billedSeconds: row.billedSeconds ?? 0,
      idleTimeoutS: Math.round(this.d.config.idleTimeoutMs / 1000),
      meteringUrl: this.d.meteringUrl(),
      endReason: row.endReason ?? '',
      endMessage: row.endedAt === null ? '' : endMessage(row)
    };
  }
}

// Why a lease ended, in words the job can act on (Get and Release answer it).
export function endMessage(row: Pick<LeaseRow, 'org' | 'endReason' | 'reservedSeconds' | 'billedSeconds'>): string {
  switch (row.endReason) {
    case 'released':
      return 'Released by the job.';
    case 'idle':
      return 'Ended by the control plane: no sign of life for the idle timeout.';
    case 'ttl':
      return 'Ended by the control plane: the lease reached its maximum TTL (--max-ttl).';
    case 'server_stopped':
      return 'Ended because the control plane stopped.';
    case 'failed':
      return 'Provisioning failed; nothing was billed.';
    case 'builder_lost':
      return (
        "Ended by the control plane: the lease's builder was lost (its engine stopped: a platform failure, not your " +
        'Dockerfile). Billing stopped then; run the job again: the next provision gets a new builder.'
      );
    case 'bucket_exhausted':
      return (
        `Ended by the control plane: org '${row.org}' ran out of build minutes (this lease used its reservation of ` +
        `${row.reservedSeconds ?? 0} s and the bucket had none left). Add a bucket: buildcloud admin bucket add --org ${row.org} --minutes N`
      );
    default:
      return '';
  }
}

// The RESOURCE_EXHAUSTED message of a refused reservation: what ran out, and the command that adds to it.
export function refusal(org: string, r: Exclude<ReserveResult, { ok: true }>): string {
  if (r.limit === 'max_leases') {
    return (
      `Org '${org}' is at its limit of ${r.maxLeases} concurrent lease${r.maxLeases === 1 ? '' : 's'} (${r.activeLeases} active). Release a lease or wait ` +
      `for one to end, or raise the limit: buildcloud admin org set --org ${org} --max-leases N`
    );
  }
  return (
    `Org '${org}' has no build minutes left to start a lease: ${minutesUp(r.unreservedSeconds)} of ${minutesUp(r.boughtSeconds)} ` +
    `minutes unreserved (${minutesUp(r.usedSeconds)} billed, ${minutesUp(r.reservedSeconds)} reserved by running leases; ` +
    `a lease reserves at least ${MIN_LEASE_SECONDS / 60} minute). Add a bucket: buildcloud admin bucket add --org ${org} --minutes N`
  );
}

export function checkOrgMatch(principalOrg: string, requested: string): string {
  if (requested && requested !== principalOrg) {
    throw denied(`This token belongs to org '${principalOrg}', not '${requested}'. Use a token of '${requested}' or leave org empty.`);
  }
  return principalOrg;
}
