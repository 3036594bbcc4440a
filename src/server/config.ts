// Settings of `buildcloud serve`: one validated object, defaults documented in docs/operations.md.
import * as os from 'os';
import * as path from 'path';
import { DEFAULT_MAX_BATCH } from '../contract/cloudevents';
import { BUILDER_ISOLATION_SETTINGS, type BuilderIsolationSetting } from './drivers/builder-isolation';
import { normalizeIpv4Cidr } from './drivers/builder-egress';
import type { CacheStorageSettings } from './cache-gc';
import { parseSize } from './cache-retention';

export interface ServerConfig {
  stateDir: string;
  host: string; // where gRPC, HTTP, builders and the registry proxy listen
  grpcPort: number; // 0 = any free port
  httpPort: number;
  registryUrl: string | null; // external upstream registry; null = start the embedded one
  registryPort: number; // the org-cache registry proxy builders push to
  driver: 'dockerd' | 'null' | 'none'; // null: builders that are only bookkeeping (drivers/null.ts), for benchmarks
  warmPool: number;
  maxBuilders: number;
  // Builders one org may hold at once unless `admin org set --max-builders` says otherwise: null = no cap of its
  // own; undefined = orgMaxBuildersDefault(maxBuilders), so one org alone never takes the whole pool.
  orgMaxBuilders?: number | null;
  idleTimeoutMs: number;
  maxTtlMs: number;
  graceMs: number;
  reapIntervalMs: number;
  accessTokenTtlS: number;
  subnetPool: string;
  builderIsolation: BuilderIsolationSetting; // how builders' engines are kept from the host (drivers/builder-isolation.ts)
  builderNat: boolean; // outbound NAT for builders' RUN steps: iptables rules of our own, IPv4 forwarding on
  builderEgressAllow: string[]; // IPv4 CIDRs RUN steps may reach although private or link-local (normalized)
  insecureOidcIssuers: boolean; // accept http:// issuers (tests, self-hosted GitLab on a private network)
  tls: { certFile: string; keyFile: string } | null; // gRPC and HTTP over TLS with the operator's certificate
  insecure?: boolean; // --insecure: plaintext although --host is not loopback (checkListenSecurity)
  limits?: ServeLimits; // rate limits and record caps (docs/operations.md); DEFAULT_LIMITS when absent
  cacheStorage?: CacheStorageSettings; // org-cache retention, quota and GC (cache-gc.ts); DEFAULT_CACHE_STORAGE when absent
}

// Org-cache retention, quota and GC (issue 14; docs/operations.md "Org cache storage").
export const DEFAULT_CACHE_STORAGE: CacheStorageSettings = {
  keepPerTag: 3, // the image a branch tag points at and the two before it
  expireMs: 30 * 86_400_000, // a branch not built for 30 days loses its cache
  quotaBytes: 20 * 1024 ** 3, // 20 GiB per org
  intervalMs: 3600_000,
  graceMs: 3600_000 // unreferenced blobs younger than an hour may belong to a push under way
};

/**
 * Parses serve's --cache-* flags (strings as commander gives them; undefined: the default). Throws ConfigError
 * naming the flag and what it expects.
 */
export function parseCacheStorage(o: {
  cacheKeep?: string;
  cacheExpireDays?: string;
  cacheQuota?: string;
  cacheGcInterval?: string;
  cacheGcGrace?: string;
}): CacheStorageSettings {
  const d = DEFAULT_CACHE_STORAGE;
  let quotaBytes = d.quotaBytes;
  if (o.cacheQuota !== undefined) {
    try {
      quotaBytes = parseSize(o.cacheQuota, '--cache-quota');
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  const s: CacheStorageSettings = {
    keepPerTag: o.cacheKeep === undefined ? d.keepPerTag : parseIntFlag(o.cacheKeep, '--cache-keep', 1, 1000),
    expireMs: o.cacheExpireDays === undefined ? d.expireMs : parseIntFlag(o.cacheExpireDays, '--cache-expire-days', 0, 36500) * 86_400_000,
    quotaBytes,
    intervalMs: o.cacheGcInterval === undefined ? d.intervalMs : parseDuration(o.cacheGcInterval, '--cache-gc-interval'),
    graceMs: o.cacheGcGrace === undefined ? d.graceMs : parseDuration(o.cacheGcGrace, '--cache-gc-grace')
  };
  if (s.intervalMs < 1000) throw new ConfigError(`Invalid --cache-gc-interval '${o.cacheGcInterval}'. Expected at least 1s, e.g. 1h.`);
  // The grace keeps blobs of pushes still under way: 0 would let a sweep take a layer a push is writing.
  if (s.graceMs < 1000)
    throw new ConfigError(`Invalid --cache-gc-grace '${o.cacheGcGrace}'. Expected at least 1s (default 1h): younger blobs may belong to pushes under way.`);
  return s;
}

// Per-credential rate limits and usage-record caps (issue 9). A rate of 0 (or a cap of 0) turns that limit off.
export interface ServeLimits {
  provisionRate: number; // Provision calls per second per credential (--provision-rate)
  provisionBurst: number; // Provision calls at once after idling (--provision-burst)
  recordRate: number; // usage records (events, not requests) per second per credential (--record-rate)
  recordBurst: number; // records at once (--record-burst); at least one full batch (1000)
  maxRecordsPerLease: number; // stored usage records per lease (--max-records-per-lease)
  maxRecordsPerOrgDay: number; // usage records an org may store per UTC day (--max-records-per-org-day)
}

// Far above legitimate use: the demo runs 12 builds, e2e tests provision 50 at once with one token, and a job's post
// step sends its records in batches of 100. A flood from one credential is slowed down long before it hurts.
export const DEFAULT_LIMITS: ServeLimits = {
  provisionRate: 20,
  provisionBurst: 200,
  recordRate: 500,
  recordBurst: 5000,
  maxRecordsPerLease: 10_000,
  maxRecordsPerOrgDay: 200_000
};

// The batch limit of POST /v1/events: a record burst below it would refuse a full batch for ever.
const MIN_RECORD_BURST = DEFAULT_MAX_BATCH;

/**
 * Parses the rate and cap flags of `serve` (strings as commander gives them). Throws ConfigError naming the flag and
 * what it expects. Rates are numbers of units per second (decimals allowed, e.g. 0.5); bursts and caps whole numbers.
 */
export function parseLimits(o: Partial<Record<keyof ServeLimits, string>>): ServeLimits {
  const rate = (v: string | undefined, flag: string, dflt: number): number => {
    if (v === undefined) return dflt;
    const s = String(v).trim();
    const n = Number(s);
    if (!/^\d+(\.\d+)?$/.test(s) || !(n <= 1_000_000)) {
      throw new ConfigError(`Invalid ${flag} '${v}'. Expected a number per second from 0 (no limit) to 1000000, e.g. 20 or 0.5.`);
    }
    return n;
  };
  const whole = (v: string | undefined, flag: string, dflt: number, min: number, max: number): number =>
    v === undefined ? dflt : parseIntFlag(v, flag, min, max);
  const l: ServeLimits = {
    provisionRate: rate(o.provisionRate, '--provision-rate', DEFAULT_LIMITS.provisionRate),
    provisionBurst: whole(o.provisionBurst, '--provision-burst', DEFAULT_LIMITS.provisionBurst, 1, 1_000_000),
    recordRate: rate(o.recordRate, '--record-rate', DEFAULT_LIMITS.recordRate),
    recordBurst: whole(o.recordBurst, '--record-burst', DEFAULT_LIMITS.recordBurst, 1, 100_000_000),
    maxRecordsPerLease: whole(o.maxRecordsPerLease, '--max-records-per-lease', DEFAULT_LIMITS.maxRecordsPerLease, 0, 100_000_000),
    maxRecordsPerOrgDay: whole(o.maxRecordsPerOrgDay, '--max-records-per-org-day', DEFAULT_LIMITS.maxRecordsPerOrgDay, 0, 1_000_000_000)
  };
  if (l.recordBurst < MIN_RECORD_BURST) {
    throw new ConfigError(
      `Invalid --record-burst '${o.recordBurst}'. Expected a whole number of at least ${MIN_RECORD_BURST} (one full batch of POST /v1/events).`
    );
  }
  return l;
}

export const DEFAULTS = {
  host: '127.0.0.1',
  grpcPort: 7643,
  httpPort: 7644,
  registryPort: 7645,
  warmPool: 1,
  maxBuilders: 16,
  idleTimeoutMs: 10 * 60_000, // a runner that died stops being billed 10 minutes after its last sign of life
  maxTtlMs: 2 * 3600_000, // like Docker Build Cloud's 2 h build cancellation
  graceMs: 60_000, // later stages of the pipeline reuse the warm builder
  reapIntervalMs: 1_000,
  accessTokenTtlS: 2 * 3600,
  subnetPool: '10.213.0.0/16',
  // userns where the engine builds correctly under it (drivers/builder-isolation.ts).
  builderIsolation: 'auto' as BuilderIsolationSetting,
  builderNat: true,
  builderEgressAllow: [] as string[]
};

/** The default per-org builder cap: three quarters of --max-builders (at least 1), a quarter kept for the rest. */
export function orgMaxBuildersDefault(maxBuilders: number): number {
  return Math.max(1, Math.floor((maxBuilders * 3) / 4));
}

export function defaultStateDir(): string {
  return process.env.BUILDCLOUD_STATE_DIR || path.join(os.homedir(), '.buildcloud');
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/;

// "90s", "10m", "2h", "500ms" or a number of seconds.
export function parseDuration(value: string, flag: string): number {
  const m = DURATION.exec(String(value).trim());
  if (!m) throw new ConfigError(`Invalid ${flag} '${value}'. Expected a duration such as 500ms, 30s, 10m or 2h.`);
  const n = Number(m[1]);
  const unit = m[2] || 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3600_000;
  return Math.round(n * factor);
}

export function parseIntFlag(value: string, flag: string, min: number, max: number): number {
  const s = String(value).trim();
  if (!/^\d+$/.test(s)) throw new ConfigError(`Invalid ${flag} '${value}'. Expected a whole number from ${min} to ${max}.`);
  const n = Number(s);
  if (n < min || n > max) throw new ConfigError(`Invalid ${flag} '${value}'. Expected a whole number from ${min} to ${max}.`);
  return n;
}

// A URL as it may be shown in an error or a log: the password of its userinfo becomes ***. Works on strings that are
// not valid URLs too (the error for an unparsable --registry must not echo its password either).
export function redactUrl(value: string): string {
  return String(value).replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/?#@]*)@/i, (_m, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return colon < 0 ? `${scheme}${userinfo}@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
  });
}

export function parseRegistryUrl(value: string): string {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new ConfigError(`Invalid --registry '${redactUrl(value)}'. Expected a URL such as http://127.0.0.1:5000.`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new ConfigError(`Invalid --registry '${redactUrl(value)}'. Expected an http:// or https:// URL.`);
  }
  return u.toString().replace(/\/$/, '');
}

// Loopback only: 127.0.0.0/8, ::1 and localhost. 0.0.0.0 and :: listen on every address, so they are not.
export function isLoopbackHost(host: string): boolean {
  const h = String(host)
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  return /^127(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/.test(h);
}

export const INSECURE_WARNING =
  'WARNING: serving gRPC and HTTP WITHOUT TLS on a non-loopback address (--insecure). Every Provision reply carries a ' +
  "lease's private key, CA and registry password, and tokens travel in the clear: anyone on the network path can take " +
  'them. Give --tls-cert and --tls-key instead (docs/operations.md).';

// TLS by default off loopback: what Provision replies carry must not cross a network in the clear unless the operator
// said so. Returns the warning to print at every start when --insecure is what allows it, null when nothing to say.
export function checkListenSecurity(c: Pick<ServerConfig, 'host' | 'tls' | 'insecure'>): string | null {
  if (c.tls || isLoopbackHost(c.host)) return null;
  if (!c.insecure) {
    throw new ConfigError(
      `Refusing to listen on ${c.host} without TLS: Provision replies carry private keys and registry passwords. ` +
        'Give --tls-cert <file> and --tls-key <file> (PEM), or --insecure to serve plaintext anyway (for a private, trusted network only).'
    );
  }
  return INSECURE_WARNING;
}

// --builder-egress-allow, one range per use of the flag: normalized to the network address as iptables stores it,
// duplicates dropped.
export function parseEgressAllow(values: string[]): string[] {
  const out: string[] = [];
  for (const v of values) {
    const cidr = normalizeIpv4Cidr(String(v));
    if (!cidr) throw new ConfigError(`Invalid --builder-egress-allow '${v}'. Expected an IPv4 CIDR such as 10.20.0.0/16.`);
    if (!out.includes(cidr)) out.push(cidr);
  }
  return out;
}

export function parseBuilderIsolation(value: string): BuilderIsolationSetting {
  const v = String(value).trim();
  if ((BUILDER_ISOLATION_SETTINGS as readonly string[]).includes(v)) return v as BuilderIsolationSetting;
  if (v === 'rootless') {
    throw new ConfigError(
      "Invalid --builder-isolation 'rootless': not supported. A rootless builder's engine reaches the network through slirp4netns, so it cannot reach the org-cache registry on this host's loopback, and its RUN steps bypass the builder egress rules (see docs/operations.md). Use auto, userns, or none on a host without user namespaces."
    );
  }
  throw new ConfigError(`Invalid --builder-isolation '${value}'. Expected ${BUILDER_ISOLATION_SETTINGS.join(', ')}.`);
}

export function validateConfig(c: ServerConfig): ServerConfig {
  const ports: Array<[string, number]> = [
    ['--grpc-port', c.grpcPort],
    ['--http-port', c.httpPort],
    ['--registry-port', c.registryPort]
  ];
  for (const [i, [flag, port]] of ports.entries()) {
    const same = ports.slice(i + 1).find(([, p]) => p === port && port !== 0);
    if (same) throw new ConfigError(`${flag} and ${same[0]} are both ${port}: give each its own port (0 = any free port).`);
  }
  if (c.idleTimeoutMs < 1000) throw new ConfigError('Invalid --idle-timeout: expected at least 1s.');
  if (c.maxTtlMs < c.idleTimeoutMs) throw new ConfigError('Invalid --max-ttl: expected at least the idle timeout.');
  if (c.warmPool > c.maxBuilders) throw new ConfigError('Invalid --warm-pool: expected at most --max-builders.');
  return c;
}

/** The flag of `serve` that sets each port it listens on, for the messages that say which one to change. */
export const PORT_FLAGS = { grpc: '--grpc-port', http: '--http-port', registry: '--registry-port' } as const;

/**
 * Why `serve` could not listen on `host`:`port`, as one line naming the flag to change (ConfigError: printed without
 * a stack); any other error is returned as it is. Reads the errno code of node:net errors and the text of grpc-js's
 * bind error ("No address added ... [listen EADDRINUSE: ...]"), which carries no code.
 */
export function listenError(err: unknown, host: string, port: number, flag: string): unknown {
  const e = err as NodeJS.ErrnoException;
  const code = e?.code ?? /\b(EADDRINUSE|EADDRNOTAVAIL|EACCES)\b/.exec(String(e?.message ?? ''))?.[1];
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  switch (code) {
    case 'EADDRINUSE':
      return new ConfigError(
        `Port ${port} is already in use on ${host} (${where}): another program, or another buildcloud serve, listens there. Stop it, or pass ${flag} with a free port (0 = any free port).`
      );
    case 'EADDRNOTAVAIL':
      return new ConfigError(`Cannot listen on ${host}: it is not an address of this machine. Pass --host with one of its addresses${suggestHost()}.`);
    case 'EACCES':
      return new ConfigError(`Not allowed to listen on ${where} (ports below 1024 need privileges): pass ${flag} with a port from 1024 up.`);
    default:
      return err;
  }
}

/** 0.0.0.0, ::, and their spellings: "every address", which no client can connect to from another machine. */
export function isWildcardHost(host: string): boolean {
  const h = String(host)
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  return h === '0.0.0.0' || /^[0:]+$/.test(h); // ::, ::0, 0:0:0:0:0:0:0:0
}

/**
 * Refuses a wildcard --host. The control plane hands its own address to every job (the endpoint it prints, the
 * metering URL in each lease, builders' addresses, the org-cache registry in cache refs) and names it in the
 * certificates it issues: 0.0.0.0 would reach clients as an address they cannot use. Decided: refuse, and say which
 * address to pass, rather than guess one (a machine has several; a container's own address is not its host's).
 */
export function checkListenHost(host: string, addresses: string[] = machineAddresses()): void {
  if (!isWildcardHost(host)) return;
  throw new ConfigError(
    `Refusing --host ${host}: it listens on every address, but the control plane gives its --host to jobs (endpoint, metering URL, builders, org-cache registry), and ${host} is not an address they can use. ` +
      `Pass the address clients use${suggestHost(addresses)} (with --tls-cert/--tls-key for a certificate that names it).`
  );
}

/** This machine's own addresses clients could use: not loopback, not link-local; IPv4 first. */
export function machineAddresses(): string[] {
  const all = Object.values(os.networkInterfaces()).flatMap((l) => l ?? []);
  const usable = all.filter((a) => !a.internal && !(a.family === 'IPv6' && /^fe80:/i.test(a.address)) && !a.address.startsWith('169.254.'));
  return [...usable.filter((a) => a.family === 'IPv4'), ...usable.filter((a) => a.family === 'IPv6')].map((a) => a.address);
}

function suggestHost(addresses: string[] = machineAddresses()): string {
  const first = addresses[0];
  return first ? `, e.g. --host ${first} (an address of this machine) or a name that resolves to it` : ', or a name that resolves to one';
}
