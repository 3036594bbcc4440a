// Live builders: the warm pool, sharing per pipeline (refcount of lease holders), the grace period after the
// last release, and destruction. Builders live only in memory: a control plane that stops takes them down.
import { BuilderTlsProxy } from './tls-proxy';
import type { CertPair } from './pki';
import { exhausted, unavailable } from './errors';
import { engineHealth, handOutVerdict, HEALTH_FRESH_MS } from './builder-health';
import { newId, type Acquired, type BuilderLostListener, type BuilderPoolOptions, type LiveBuilder } from './live-builder';

export { newId, type Acquired, type BuilderLostListener, type BuilderPoolOptions, type LiveBuilder } from './live-builder';

export class BuilderPool {
  private readonly live = new Map<string, LiveBuilder>();
  private readonly byShareKey = new Map<string, LiveBuilder>();
  private starting = 0;
  private readonly startingFor = new Map<string, number>(); // cold starts under way, per org
  private readonly orgMax = new Map<string, number>(); // per-org cap on assigned builders (admin org set)
  private stopped = false;
  private readonly inflight = new Set<Promise<unknown>>(); // starts under way
  private serverCert: Promise<CertPair> | null = null;
  private readonly lostListeners: BuilderLostListener[] = [];

  constructor(private readonly opts: BuilderPoolOptions) {
    opts.driver.onEngineExit?.((id) => {
      const b = this.live.get(id);
      if (b) this.lose(b, 'its engine process exited');
    });
  }

  /** Registers `listener` for builders lost while live (see BuilderLostListener). */
  onLost(listener: BuilderLostListener): void {
    this.lostListeners.push(listener);
  }

  /**
   * Probes builder `id`'s engine for a lease that holds it (Get): a dead one is lost (its leases end, it is
   * replaced). True while it may still be used: alive, or only slow. False once gone.
   */
  async confirm(id: string): Promise<boolean> {
    const b = this.live.get(id);
    // Always a probe of its own: a job asks after something went wrong, so an earlier answer proves nothing.
    return Boolean(b && b.state !== 'destroying' && (await this.usable(b, true)));
  }

  get size(): number {
    return this.live.size + this.starting;
  }

  count(state?: LiveBuilder['state']): number {
    let n = 0;
    for (const b of this.live.values()) if (!state || b.state === state) n++;
    return n;
  }

  /**
   * Whether `leaseId` shared builder `builderId` with another lease at any time it held it (see LiveBuilder.sharedBy);
   * undefined once the builder is gone.
   */
  sharedWith(builderId: string, leaseId: string): boolean | undefined {
    return this.live.get(builderId)?.sharedBy.has(leaseId);
  }

  get(id: string): LiveBuilder | undefined {
    return this.live.get(id);
  }

  all(): LiveBuilder[] {
    return [...this.live.values()];
  }

  // Keeps `warmPool` ready builders per native platform. Failures are logged; the next call tries again.
  refill(): void {
    if (this.stopped) return;
    for (const platform of this.opts.driver.platforms()) {
      const warm = [...this.live.values()].filter((b) => b.state === 'warm' && b.platform === platform).length;
      let missing = this.opts.warmPool - warm - this.starting;
      while (missing-- > 0 && this.size < this.opts.maxBuilders) {
        this.startBuilder(platform, 'warm')
          .then(() => this.opts.onChange?.())
          .catch((err) => this.opts.log.error({ err: String(err) }, 'warm builder failed to start'));
      }
    }
  }

  /** The org's cap on builders it holds at once (null: none of its own; --max-builders still applies). */
  limitOrg(org: string, max: number | null): void {
    if (max === null) this.orgMax.delete(org);
    else this.orgMax.set(org, max);
  }

  /** Builders the org holds now: assigned to its leases or starting for it (grace ones are on their way out). */
  orgBuilders(org: string): number {
    let n = this.startingFor.get(org) ?? 0;
    for (const b of this.live.values()) if (b.org === org && b.state === 'assigned') n++;
    return n;
  }

  // One builder for (shareKey, platform): the pipeline's existing one, a warm one, or a cold start.
  async acquire(shareKey: string, org: string, platform: string, leaseId: string): Promise<Acquired> {
    const existing = this.byShareKey.get(shareKey);
    // The pipeline's builder is joined only if its engine is there: a dead one is replaced (a new one below).
    if (existing && existing.state !== 'destroying' && (await this.usable(existing)) && this.byShareKey.get(shareKey) === existing) {
      if (existing.graceTimer) clearTimeout(existing.graceTimer);
      existing.graceTimer = null;
      existing.state = 'assigned';
      existing.holders.add(leaseId);
      for (const h of existing.holders) existing.sharedBy.add(h);
      return { builder: existing, warm: false, shared: true };
    }
    let builder: LiveBuilder | undefined;
    for (;;) {
      // Checked and counted without an await in between (a cold start counts from here), so concurrent
      // provisions of one org cannot all pass the check before any builder is assigned.
      const orgMax = this.orgMax.get(org);
      if (orgMax !== undefined && this.orgBuilders(org) >= orgMax) {
        throw exhausted(
          `Org '${org}' is at its limit of ${orgMax} concurrent builder${orgMax === 1 ? '' : 's'}. Release a lease or wait for one to end, ` +
            `or raise the limit: buildcloud admin org set --org ${org} --max-builders N`
        );
      }
      builder = [...this.live.values()].find((b) => b.state === 'warm' && b.platform === platform);
      if (builder) {
        // Claimed before the probe (no concurrent acquire takes it, and it counts against the org's cap), handed
        // out only if its engine answers: a warm builder whose dockerd died is replaced, never leased.
        builder.state = 'assigned';
        builder.org = org;
        if (await this.usable(builder)) break;
        builder = undefined;
        continue;
      }
      if (this.size < this.opts.maxBuilders) break;
      // At capacity: a builder nobody holds (in its grace period, or warm for another platform) gives way, so
      // idle builders of one org never keep another org from building. Then everything is checked again.
      const idle = this.evictable(platform);
      if (!idle) throw unavailable(`The control plane is at capacity (${this.opts.maxBuilders} builders, --max-builders). Retry shortly.`);
      await this.destroy(idle.id, 'at capacity: making room for another lease');
    }
    const warm = Boolean(builder);
    if (!builder) {
      this.startingFor.set(org, (this.startingFor.get(org) ?? 0) + 1);
      try {
        builder = await this.startBuilder(platform, 'assigned');
      } catch (err) {
        throw unavailable(`Could not start a builder for ${platform}: ${(err as Error).message}`);
      } finally {
        const n = (this.startingFor.get(org) ?? 1) - 1;
        if (n > 0) this.startingFor.set(org, n);
        else this.startingFor.delete(org);
      }
      // Another job of the same pipeline may have raced us while this one was starting: share theirs.
      const raced = this.byShareKey.get(shareKey);
      if (raced && raced.state !== 'destroying') {
        builder.state = 'warm';
        return this.acquire(shareKey, org, platform, leaseId);
      }
    }
    builder.state = 'assigned';
    builder.shareKey = shareKey;
    builder.org = org;
    builder.holders.add(leaseId);
    this.byShareKey.set(shareKey, builder);
    this.opts.onChange?.();
    this.refill();
    return { builder, warm, shared: false };
  }

  // Whether `b` may be handed out now (builder-health.ts); if not, it is lost: destroyed, replaced, its leases ended.
  // Joins of one pipeline come in bursts (50 jobs of a matrix at once): they share one probe, and an engine that
  // answered within HEALTH_FRESH_MS counts as alive without another (the driver reports an engine's exit at once;
  // a probe per join put a /_ping round trip in every provision: 148 provisions/s where the bench had 855).
  private async usable(b: LiveBuilder, fresh = false): Promise<boolean> {
    const now = this.opts.now ?? Date.now;
    if (!fresh && b.healthyAt !== undefined && now() - b.healthyAt < HEALTH_FRESH_MS) return true;
    b.probe ??= engineHealth(this.opts.driver, b.handle).finally(() => (b.probe = null));
    const health = await b.probe;
    if (health === 'ok') b.healthyAt = now();
    if (b.state === 'destroying') return false;
    if (handOutVerdict(health, b.holders.size > 0) === 'use') return true;
    this.lose(b, `its engine is ${health} (probed before a hand-out)`);
    return false;
  }

  // A builder the pool did not choose to end: its holders are told (their leases end), it is destroyed and the
  // warm pool refilled.
  private lose(b: LiveBuilder, why: string): void {
    if (b.state === 'destroying' || this.stopped) return;
    const leaseIds = [...b.holders];
    this.opts.log.warn({ builder: b.id, state: b.state, leases: leaseIds, why }, 'builder lost');
    void this.destroy(b.id, `lost: ${why}`).then(() => this.refill());
    for (const listener of this.lostListeners) {
      try {
        listener(b.id, leaseIds, why);
      } catch (err) {
        this.opts.log.error({ builder: b.id, err: String(err) }, 'builder-lost listener failed');
      }
    }
  }

  // The idle builder to destroy when the pool is full: the one longest in its grace period, else a warm one of
  // another platform (a warm one of this platform would have been taken). Null when every builder is held.
  private evictable(platform: string): LiveBuilder | null {
    let best: LiveBuilder | null = null;
    for (const b of this.live.values()) {
      if (b.state === 'grace' && (!best || best.state !== 'grace' || (b.graceSince ?? 0) < (best.graceSince ?? 0))) best = b;
      else if (!best && b.state === 'warm' && b.platform !== platform) best = b;
    }
    return best;
  }

  // Drops a lease's hold; the last one starts the grace period, after which the builder is destroyed.
  release(builderId: string, leaseId: string, fingerprint: string): void {
    const b = this.live.get(builderId);
    if (!b) return;
    b.proxy.revoke(fingerprint);
    b.holders.delete(leaseId);
    if (b.holders.size > 0 || b.state === 'destroying') return;
    b.state = 'grace';
    b.graceSince = Date.now();
    if (b.graceTimer) clearTimeout(b.graceTimer);
    b.graceTimer = setTimeout(() => void this.destroy(b.id, 'grace period over'), this.opts.graceMs);
    b.graceTimer.unref();
    this.opts.onChange?.();
  }

  destroy(id: string, why: string): Promise<void> {
    const b = this.live.get(id);
    if (!b) return Promise.resolve();
    if (!b.destroyed) b.destroyed = this.doDestroy(b, why);
    return b.destroyed;
  }

  private async doDestroy(b: LiveBuilder, why: string): Promise<void> {
    const id = b.id;
    b.state = 'destroying';
    if (b.graceTimer) clearTimeout(b.graceTimer);
    if (b.shareKey && this.byShareKey.get(b.shareKey) === b) this.byShareKey.delete(b.shareKey);
    this.opts.log.info({ builder: id, why }, 'destroying builder');
    try {
      await b.proxy.close();
      await this.opts.driver.destroy(b.handle);
    } catch (err) {
      this.opts.log.warn({ builder: id, err: String(err) }, 'builder cleanup failed');
    } finally {
      this.live.delete(id);
      this.opts.onChange?.();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    // Starts under way (a warm-pool refill, a cold start) finish first and, seeing `stopped`, destroy what they
    // made: a builder still starting when the stop came must not outlive the control plane.
    await Promise.allSettled([...this.inflight]);
    await Promise.all([...this.live.keys()].map((id) => this.destroy(id, 'control plane stopping')));
  }

  private startBuilder(platform: string, state: 'warm' | 'assigned'): Promise<LiveBuilder> {
    const started = this.startBuilderNow(platform, state);
    this.inflight.add(started);
    const done = (): void => void this.inflight.delete(started);
    started.then(done, done);
    return started;
  }

  private async startBuilderNow(platform: string, state: 'warm' | 'assigned'): Promise<LiveBuilder> {
    this.starting++;
    try {
      const id = newId('b');
      const handle = await this.opts.driver.start(id);
      let proxy: BuilderTlsProxy;
      try {
        if (!this.serverCert) this.serverCert = this.opts.pki.issueServer([this.opts.host, 'localhost'], 30 * 24 * 3600_000);
        const server = await this.serverCert.catch((err: unknown) => {
          this.serverCert = null; // a failed issue is tried again by the next start, not cached
          throw err;
        });
        proxy = new BuilderTlsProxy({
          socketPath: handle.socketPath,
          server,
          caPem: this.opts.pki.caPem,
          host: this.opts.host,
          log: this.opts.log,
          onActivity: this.opts.onActivity
        });
        await proxy.listen();
      } catch (err) {
        // The engine runs but nothing can reach it: stopped here, or it would outlive every reaper (it is in no map).
        await this.opts.driver
          .destroy(handle)
          .catch((e: unknown) => this.opts.log.warn({ builder: id, err: String(e) }, 'could not stop a builder whose front failed'));
        throw err;
      }
      const b: LiveBuilder = {
        id,
        platform,
        handle,
        proxy,
        address: proxy.address,
        shareKey: null,
        org: null,
        holders: new Set(),
        sharedBy: new Set(),
        graceTimer: null,
        destroyed: null,
        state // a cold start is born assigned, so no concurrent acquire can take it as warm
      };
      this.live.set(id, b);
      this.opts.log.info({ builder: id, platform, startedMs: handle.startedMs }, 'builder ready');
      if (this.stopped) {
        await this.destroy(id, 'control plane stopping');
        throw new Error('control plane is stopping');
      }
      return b;
    } finally {
      this.starting--;
    }
  }
}
