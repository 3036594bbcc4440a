// Is the org cache there? One bounded request to the lease's registry before a build that would import from it or
// export to it. The org cache is an optimisation: when its registry is down (refused, or the control plane's proxy
// answers 5xx) or slow (no answer within the probe's timeout), the build runs without it, with one warning, instead
// of BuildKit waiting on a cache import and the pushes of the cache export failing one by one after the build.
import { httpRequest, type HttpRequester } from './http-request';

/** How long the probe waits for the registry's answer by default (BUILDCLOUD_CACHE_PROBE_TIMEOUT overrides it). */
export const DEFAULT_CACHE_PROBE_TIMEOUT_MS = 5000;

/** The lease's registry and its credentials (LeaseMsg.cache.registry). */
export interface CacheRegistry {
  host: string; // host:port
  username: string;
  password: string;
}

/**
 * The probe's timeout, ms: BUILDCLOUD_CACHE_PROBE_TIMEOUT as seconds (a number, 0.1 to 300), else the default.
 * Throws an Error naming the variable and what it expects when it is set to anything else.
 */
export function cacheProbeTimeoutMs(env: NodeJS.ProcessEnv): number {
  const raw = env.BUILDCLOUD_CACHE_PROBE_TIMEOUT;
  if (raw === undefined || raw.trim() === '') return DEFAULT_CACHE_PROBE_TIMEOUT_MS;
  const s = Number(raw.trim().replace(/s$/, ''));
  if (!Number.isFinite(s) || s < 0.1 || s > 300) {
    throw new Error(`Invalid BUILDCLOUD_CACHE_PROBE_TIMEOUT '${raw.slice(0, 40)}': expected seconds between 0.1 and 300 (e.g. 5 or 5s).`);
  }
  return Math.round(s * 1000);
}

/** How long a cache export's push may take by default: 10 minutes (BUILDCLOUD_CACHE_EXPORT_TIMEOUT overrides it). */
export const DEFAULT_CACHE_EXPORT_TIMEOUT_MS = 600_000;

/**
 * The longest a push of the org cache (a build's cache export, a stage's cache image) may take, ms:
 * BUILDCLOUD_CACHE_EXPORT_TIMEOUT as seconds (1 to 86400), else the default. A registry that stalls after the probe
 * would otherwise keep `docker push` retrying for many minutes while the build itself is done. Throws an Error
 * naming the variable and what it expects when it is set to anything else.
 */
export function cacheExportTimeoutMs(env: NodeJS.ProcessEnv): number {
  const raw = env.BUILDCLOUD_CACHE_EXPORT_TIMEOUT;
  if (raw === undefined || raw.trim() === '') return DEFAULT_CACHE_EXPORT_TIMEOUT_MS;
  const s = Number(raw.trim().replace(/s$/, ''));
  if (!Number.isFinite(s) || s < 1 || s > 86_400) {
    throw new Error(`Invalid BUILDCLOUD_CACHE_EXPORT_TIMEOUT '${raw.slice(0, 40)}': expected seconds between 1 and 86400 (e.g. 600 or 600s).`);
  }
  return Math.round(s * 1000);
}

/** The warning for a cache push stopped at its time limit. */
export function cacheExportTimedOut(ref: string, timeoutMs: number): string {
  return (
    `the org cache export to ${ref} did not finish within ${timeoutMs / 1000} s (BUILDCLOUD_CACHE_EXPORT_TIMEOUT) and was stopped: the org cache's ` +
    `registry is slow or down; the build itself is unaffected, and later builds will not reuse this one's layers`
  );
}

// The registry proxy speaks plain HTTP on loopback only (registry-proxy.ts); anywhere else it is https.
const baseUrl = (host: string) => `${/^(127\.|localhost(:|$)|\[::1\])/.test(host) ? 'http' : 'https'}://${host}`;

/**
 * Asks the registry for its API root (GET /v2/, with the lease's credentials: the control plane's proxy forwards it to
 * the registry behind it, and never holds it behind a cache repair as it may a manifest) within `timeoutMs`.
 * Resolves null when it answered as a registry does (even refused: the build's own requests then say more), or a
 * one-line reason when it did not: no connection, a 5xx (the proxy's "the cache registry is unavailable"), or no
 * answer in time. Never rejects.
 */
export async function orgCacheUnavailable(reg: CacheRegistry, timeoutMs: number, request: HttpRequester = httpRequest): Promise<string | null> {
  const started = Date.now();
  try {
    const r = await request(`${baseUrl(reg.host)}/v2/`, {
      headers: { authorization: `Basic ${Buffer.from(`${reg.username}:${reg.password}`).toString('base64')}` },
      signal: AbortSignal.timeout(timeoutMs),
      maxBytes: 64 * 1024
    });
    return r.status >= 500 ? `it answered HTTP ${r.status}` : null;
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    if (e.name === 'TimeoutError' || Date.now() - started >= timeoutMs) return `no answer within ${(timeoutMs / 1000).toFixed(1)} s`;
    return e.cause?.code ?? e.cause?.message ?? e.message;
  }
}

/** The build's one warning when the org cache is unavailable. */
export function cacheUnavailableWarning(host: string, why: string): string {
  return (
    `the org cache (registry ${host}) is unavailable (${why}): this build runs without it, importing no layers from it and exporting ` +
    `none to it; the build itself is unaffected. Later builds reuse the org cache again once its registry answers.`
  );
}
