// Per-credential rate limits (issue 9): token buckets keyed by who is calling, for Provision (calls per second) and
// the metering endpoint (usage records per second). Transport-neutral: the gRPC layer turns RateLimited into
// RESOURCE_EXHAUSTED with `retry-after` trailing metadata, the HTTP layer into 429 with a Retry-After header.
//
import type { ServeLimits } from './config';

// Our own token bucket rather than @fastify/rate-limit: that plugin counts requests in fixed windows, while the
// metering limit counts events (one request carries up to 1000), and the same limiter must serve gRPC too.

/** What a limit allows: `ratePerSecond` units refill per second, up to `burst` units held at once. */
export interface RateLimitSpec {
  ratePerSecond: number; // > 0; units (calls, records) per second
  burst: number; // >= 1; the most units one key may spend at once after being idle
}

/** The answer of TokenBuckets.take: allowed, or refused with how long until the cost would be allowed. */
export type TakeResult = { ok: true; remaining: number } | { ok: false; retryAfterMs: number };

export interface TokenBucketsOptions extends RateLimitSpec {
  maxKeys?: number; // keys tracked at once, default 10,000; the least recently used is forgotten beyond it
  now?: () => number; // ms clock, injectable for tests; default Date.now
}

interface Bucket {
  tokens: number; // may be negative: a cost above the burst is taken as debt (see take)
  at: number; // ms of the last refill
}

export const DEFAULT_MAX_KEYS = 10_000;

/**
 * Token buckets, one per key, with a bounded number of keys. A key not seen before starts full. Memory is at most
 * `maxKeys` buckets: beyond it the least recently used key is forgotten (a forgotten key starts full again, which is
 * what an idle key's bucket would have refilled to anyway; only a caller holding more than `maxKeys` credentials
 * could gain from it).
 */
export class TokenBuckets {
  readonly ratePerSecond: number;
  readonly burst: number;
  readonly maxKeys: number;
  private readonly now: () => number;
  private readonly buckets = new Map<string, Bucket>(); // insertion order = least recently used first

  constructor(o: TokenBucketsOptions) {
    if (!(Number.isFinite(o.ratePerSecond) && o.ratePerSecond > 0)) throw new RangeError(`ratePerSecond must be a number > 0, got ${o.ratePerSecond}`);
    if (!(Number.isFinite(o.burst) && o.burst >= 1)) throw new RangeError(`burst must be a number >= 1, got ${o.burst}`);
    const maxKeys = o.maxKeys ?? DEFAULT_MAX_KEYS;
    if (!(Number.isInteger(maxKeys) && maxKeys >= 1)) throw new RangeError(`maxKeys must be an integer >= 1, got ${maxKeys}`);
    this.ratePerSecond = o.ratePerSecond;
    this.burst = o.burst;
    this.maxKeys = maxKeys;
    this.now = o.now ?? Date.now;
  }

  /** Keys currently tracked (at most maxKeys). */
  get size(): number {
    return this.buckets.size;
  }

  /**
   * Spends `cost` units (default 1) of `key`'s bucket. Refused when the bucket holds less than the cost; then
   * `retryAfterMs` is when it will hold enough. A cost above the burst can never be covered: it is allowed when the
   * bucket is full and leaves it in debt (negative), so one oversized request is slowed down, never refused forever.
   */
  take(key: string, cost = 1): TakeResult {
    if (!(Number.isFinite(cost) && cost >= 0)) throw new RangeError(`cost must be a number >= 0, got ${cost}`);
    const b = this.refill(key);
    const need = Math.min(cost, this.burst);
    if (b.tokens >= need) {
      b.tokens -= cost;
      return { ok: true, remaining: Math.max(0, Math.floor(b.tokens)) };
    }
    return { ok: false, retryAfterMs: Math.ceil(((need - b.tokens) / this.ratePerSecond) * 1000) };
  }

  /** Whether `key` could spend `cost` now, without spending it (the same answer take would give). */
  peek(key: string, cost = 1): TakeResult {
    const b = this.buckets.get(key);
    if (!b) return { ok: true, remaining: this.burst };
    const tokens = Math.min(this.burst, b.tokens + (Math.max(0, this.now() - b.at) / 1000) * this.ratePerSecond);
    const need = Math.min(cost, this.burst);
    return tokens >= need
      ? { ok: true, remaining: Math.max(0, Math.floor(tokens)) }
      : { ok: false, retryAfterMs: Math.ceil(((need - tokens) / this.ratePerSecond) * 1000) };
  }

  private refill(key: string): Bucket {
    const t = this.now();
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-inserted below: most recently used last
      b.tokens = Math.min(this.burst, b.tokens + (Math.max(0, t - b.at) / 1000) * this.ratePerSecond);
      b.at = t;
    } else {
      b = { tokens: this.burst, at: t };
      while (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    }
    this.buckets.set(key, b);
    return b;
  }
}

/** Who a limit is kept for. Built from the authenticated principal (src/server/auth.ts); never holds a secret. */
export interface LimitedPrincipal {
  kind: 'org' | 'admin';
  org: string | null;
  subject: string; // org tokens: "token:<public id>"; access tokens: the OIDC subject
  via?: 'org-token' | 'access-token' | 'admin-token';
  trustRule?: number; // access tokens: the trust rule they were exchanged under
}

/**
 * The rate-limit key of a credential: an org token's public id; for an access token its org, its trust rule when the
 * principal names it, and its subject (every access token exchanged for the same CI identity shares the key, so
 * exchanging again does not reset the limit); `admin` for the admin token. Only public identifiers go in, so the key
 * may be logged.
 */
export function rateLimitKey(p: LimitedPrincipal): string {
  if (p.kind === 'admin') return 'admin';
  if (p.via === 'access-token') return `access:${p.org}:${p.trustRule ?? '-'}:${p.subject}`;
  return p.subject.startsWith('token:') ? p.subject : `org:${p.org}:${p.subject}`;
}

/** A refusal by a rate limit: what was limited, how long to wait, and which `serve` flag sets the limit. */
export class RateLimited extends Error {
  constructor(
    readonly limit: string, // e.g. "provision", "records"
    readonly flag: string, // e.g. "--provision-rate"
    readonly retryAfterSeconds: number, // integer >= 1
    message: string
  ) {
    super(message);
    this.name = 'RateLimited';
  }
}

export interface RateLimiterOptions extends TokenBucketsOptions {
  limit: string; // name of the limit in errors and metrics
  flag: string; // the `buildcloud serve` flag that sets the rate
  burstFlag: string; // the flag that sets the burst
  unit: string; // what is counted, plural: "Provision calls", "usage records"
  per?: string; // whose bucket, for the message (default "credential")
  onLimited?: (key: string) => void; // e.g. a metrics counter
}

/** A named per-credential limit: `check` spends from the credential's bucket or throws RateLimited. */
export class RateLimiter {
  readonly buckets: TokenBuckets;
  constructor(private readonly o: RateLimiterOptions) {
    this.buckets = new TokenBuckets(o);
  }

  /** Spends `cost` for `key`; throws RateLimited (with whole seconds to wait, at least 1) when over the limit. */
  check(key: string, cost = 1): void {
    const r = this.buckets.take(key, cost);
    if (r.ok) return;
    throw this.refusal(key, r.retryAfterMs);
  }

  /** Throws RateLimited when `key` could not spend `cost` now; spends nothing (a cheap check before costly work). */
  precheck(key: string, cost = 1): void {
    const r = this.buckets.peek(key, cost);
    if (!r.ok) throw this.refusal(key, r.retryAfterMs);
  }

  private refusal(key: string, retryAfterMs: number): RateLimited {
    this.o.onLimited?.(key);
    const s = Math.max(1, Math.ceil(retryAfterMs / 1000));
    return new RateLimited(
      this.o.limit,
      this.o.flag,
      s,
      `Rate limit exceeded: at most ${this.o.ratePerSecond} ${this.o.unit} per second per ${this.o.per ?? 'credential'} (bursts of ${this.o.burst}); ` +
        `retry after ${s} s. The control plane's operator sets this limit with ${this.o.flag} and ${this.o.burstFlag}.`
    );
  }
}

/** The limits `buildcloud serve` enforces; null where the rate is 0 (off). */
export interface ServeLimiters {
  provision: RateLimiter | null;
  records: RateLimiter | null;
  // ExchangeToken calls per client address (the caller is not authenticated yet): at the Provision rate, so a
  // flood of tokens (good or bad) neither mints access tokens without bound nor fills the log with refusals.
  exchange: RateLimiter | null;
}

/** Makes the Provision and metering limiters from the serve flags; `onLimited` sees each refusal (for metrics). */
export function createServeLimiters(
  l: Pick<ServeLimits, 'provisionRate' | 'provisionBurst' | 'recordRate' | 'recordBurst'>,
  onLimited?: (limit: 'provision' | 'records' | 'exchange') => void
): ServeLimiters {
  return {
    provision:
      l.provisionRate > 0
        ? new RateLimiter({
            limit: 'provision',
            flag: '--provision-rate',
            burstFlag: '--provision-burst',
            unit: 'Provision calls',
            ratePerSecond: l.provisionRate,
            burst: l.provisionBurst,
            onLimited: () => onLimited?.('provision')
          })
        : null,
    records:
      l.recordRate > 0
        ? new RateLimiter({
            limit: 'records',
            flag: '--record-rate',
            burstFlag: '--record-burst',
            unit: 'usage records',
            ratePerSecond: l.recordRate,
            burst: l.recordBurst,
            onLimited: () => onLimited?.('records')
          })
        : null,
    exchange:
      l.provisionRate > 0
        ? new RateLimiter({
            limit: 'exchange',
            flag: '--provision-rate',
            burstFlag: '--provision-burst',
            unit: 'ExchangeToken calls',
            per: 'client address',
            ratePerSecond: l.provisionRate,
            burst: l.provisionBurst,
            onLimited: () => onLimited?.('exchange')
          })
        : null
  };
}
