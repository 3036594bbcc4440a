// `buildcloud serve`: wires the store, PKI, registry, builder driver, leases, gRPC and HTTP together, and takes
// all of it down again on stop.
import * as fs from 'fs';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from './log';
import * as net from 'net';
import { ConfigError, DEFAULT_CACHE_STORAGE, DEFAULT_LIMITS, PORT_FLAGS, isLoopbackHost, listenError, type ServerConfig } from './config';
import { openSqliteStore } from './store/sqlite';
import type { Store } from './store/store';
import { Pki } from './pki';
import { Authenticator, OidcVerifier, loadOrCreateAdminToken, loadOrCreateFingerprintSecret, loadOrCreateSigningKey } from './auth';
import { EmbeddedRegistry, findRegistryBinary } from './registry';
import { CacheStorage } from './cache-gc';
import { RegistryProxy, registryProxyTls, type RegistryPrincipal } from './registry-proxy';
import { NullDriver } from './drivers/null';
import { DockerdDriver, findDockerd } from './drivers/dockerd';
import { installRegistryTrust } from './drivers/registry-trust';
import { dockerdVersion, resolveIsolation, type BuilderIsolation } from './drivers/builder-isolation';
import type { Driver } from './drivers/driver';
import { BuilderPool } from './builders';
import { LeaseManager } from './leases';
import { addGrpcApi } from './grpc-api';
import { createRpcApi } from './rpc-api';
import { buildHttpApp, createMetrics } from './http';
import { computeUsage } from './metering/usage';
import { createServeLimiters, rateLimitKey } from './rate-limit';
import { acquireStateLock, StateDirLockedError, type StateLock } from './state-lock';
import { reapPreviousRun, updateLastSignsOfLife } from './recovery';

export interface ServerInfo {
  pid: number;
  stateDir: string;
  grpc: string; // host:port
  http: string; // http://host:port
  registry: string; // host:port builders push the org cache to (HTTPS; plain HTTP too on a loopback host)
  registryCaFile: string; // PEM that verifies the registry proxy's cert (what builders' engines trust for it)
  driver: string;
  builderIsolation: string | null; // userns | none; null without a builder driver
  platforms: string[];
  adminTokenFile: string;
}

export interface RunningServer {
  info: ServerInfo;
  store: Store;
  leases: LeaseManager;
  stop(): Promise<void>;
}

export function serverInfoFile(stateDir: string): string {
  return path.join(stateDir, 'server.json');
}

export function storeFile(stateDir: string): string {
  return path.join(stateDir, 'buildcloud.db');
}

export async function startServer(config: ServerConfig, log: Logger): Promise<RunningServer> {
  const cleanups: Array<() => Promise<void> | void> = [];
  const stopAll = async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        log.warn({ err: String(err) }, 'cleanup step failed');
      }
    }
    cleanups.length = 0;
  };
  // The state dir's lock first, before anything of it is read or changed: a second serve on it refuses here with one
  // line naming the running one, having touched nothing (state-lock.ts). Released last, after everything stopped.
  const lock = lockStateDir(config.stateDir);
  cleanups.push(() => lock.release());
  try {
    // A busy port is found before anything starts (the registry, builders): one line naming the flag to change.
    // The listens below map the same errors alike, for a port taken in between.
    await checkPortsFree(config);
    fs.chmodSync(config.stateDir, 0o700);
    // What a previous run that did not stop cleanly left running besides its builders and leases (recovery.ts).
    await reapPreviousRun(config.stateDir, serverInfoFile(config.stateDir), lock.previous, log);
    const store = openSqliteStore(storeFile(config.stateDir));
    cleanups.push(() => store.close());
    const pki = await Pki.loadOrCreate(path.join(config.stateDir, 'pki'));
    pki.warm();
    cleanups.push(() => pki.close());
    const signingKey = await loadOrCreateSigningKey(path.join(config.stateDir, 'keys'));
    const fingerprintSecret = await loadOrCreateFingerprintSecret(path.join(config.stateDir, 'keys'));
    const adminToken = await loadOrCreateAdminToken(config.stateDir);

    let upstream: ConstructorParameters<typeof RegistryProxy>[0]['upstream'];
    let cacheStorage: CacheStorage | null = null;
    if (config.registryUrl) {
      // Credentials for an external registry may ride in the URL's userinfo; they are never logged.
      const u = new URL(config.registryUrl);
      const username = decodeURIComponent(u.username);
      const password = decodeURIComponent(u.password);
      u.username = '';
      u.password = '';
      upstream = { url: u.toString().replace(/\/$/, ''), ...(username ? { username, password } : {}) };
    } else {
      const bin = findRegistryBinary();
      if (!bin) {
        throw new ConfigError(
          "No registry for the org cache: Debian's docker-registry was not found. Install it (apt-get install docker-registry) or pass --registry URL of an OCI registry."
        );
      }
      const registry = new EmbeddedRegistry({ dir: path.join(config.stateDir, 'registry'), registryPath: bin, log });
      await registry.start();
      cleanups.push(() => registry.stop());
      upstream = { socketPath: registry.socketPath };
      // Retention, quota and GC of the org cache, run by the control plane while it serves (cache-gc.ts).
      const settings = config.cacheStorage ?? DEFAULT_CACHE_STORAGE;
      cacheStorage = new CacheStorage({ stateDir: config.stateDir, dataDir: path.join(config.stateDir, 'registry', 'data'), settings, log });
    }

    const metrics = createMetrics();
    let registryPrincipal: (u: string, p: string) => Promise<RegistryPrincipal | null> = async () => null;
    const tls = config.tls ? { cert: fs.readFileSync(config.tls.certFile, 'utf8'), key: fs.readFileSync(config.tls.keyFile, 'utf8') } : undefined;
    // The proxy serves HTTPS (the operator's cert when it names --host, else one of our CA); plain HTTP only on a
    // loopback host, for BuildKit, which cannot speak TLS to a loopback registry (RegistryProxyOptions).
    const loopback = isLoopbackHost(config.host);
    const proxyTls = await registryProxyTls(config.host, pki, tls);
    const proxy = new RegistryProxy({
      upstream,
      authenticate: (u, p) => registryPrincipal(u, p),
      tls: proxyTls,
      plainHttpOnLoopback: loopback,
      host: config.host,
      port: config.registryPort,
      log,
      ...(cacheStorage ? { writeGate: cacheStorage } : {})
    });
    await proxy.listen().catch((err) => {
      throw listenError(err, config.host, config.registryPort, PORT_FLAGS.registry);
    });
    cleanups.push(() => proxy.close());
    if (cacheStorage) {
      const cs = cacheStorage;
      cs.start();
      cleanups.push(() => cs.stop());
    }
    log.info({ registry: proxy.host, cert: proxyTls.source, plainHttp: loopback ? 'loopback connections' : 'refused' }, 'registry proxy serves TLS');
    const registryCaFile = path.join(config.stateDir, 'registry-ca.pem');
    fs.writeFileSync(registryCaFile, proxyTls.trustPem, { mode: 0o644 });

    // Builders' engines reach no address of this host but the registry proxy (drivers/engine-egress.ts): it listens
    // before the first builder starts.
    let driver: Driver | null = null;
    let builderIsolation: BuilderIsolation | null = null;
    if (config.driver === 'dockerd') {
      const dockerd = findDockerd();
      if (dockerd) {
        // Off loopback engines verify the proxy's cert: trust goes in before the first builder's dockerd starts (its
        // BuildKit reads certs.d once, at start) and is removed after the pool's builders (cleanups run in reverse).
        // On loopback neither engine client reads it (dockerd skips verification for 127.0.0.0/8, BuildKit uses HTTP).
        if (!loopback) cleanups.push(await installRegistryTrust(proxy.host, proxyTls.trustPem, { recordFile: path.join(config.stateDir, 'registry-trust') }));
        const resolved = resolveIsolation(config.builderIsolation, await dockerdVersion(dockerd));
        builderIsolation = resolved.mode;
        const registry = proxy.engineEndpoint;
        driver = new DockerdDriver({
          isolation: resolved.mode,
          rootDir: path.join(config.stateDir, 'builders'),
          dockerdPath: dockerd,
          subnetPool: config.subnetPool,
          builderNat: config.builderNat,
          builderEgressAllow: config.builderEgressAllow,
          engineEndpoints: registry ? [registry] : [],
          log
        });
        if (resolved.mode === 'none') {
          log.warn(
            { builderIsolation: 'none', reason: resolved.reason },
            'BUILDERS RUN WITHOUT USER NAMESPACES: a RUN step that escapes its container is root on this host. The engine API allow-list and the egress rules still hold.'
          );
        } else {
          log.info({ builderIsolation: 'userns', reason: resolved.reason }, 'builders run with user namespaces (dockerd --userns-remap)');
        }
      } else log.warn('dockerd not found: provisioning will be refused until docker.io is installed');
    } else if (config.driver === 'null') {
      driver = new NullDriver(`linux/${process.arch === 'x64' ? 'amd64' : process.arch}`);
      log.warn('driver null: builders are only bookkeeping, for benchmarks and tests; nobody can build on them');
    }
    if (driver?.cleanupOrphans) {
      const removed = await driver.cleanupOrphans();
      if (removed.length) log.warn({ removed }, 'removed builders a previous run left behind');
    }

    let leases: LeaseManager | null = null;
    const pool = driver
      ? new BuilderPool({
          driver,
          pki,
          host: config.host,
          warmPool: config.warmPool,
          maxBuilders: config.maxBuilders,
          graceMs: config.graceMs,
          log,
          onActivity: (fp) => leases?.activity(fp),
          onChange: () => {
            metrics.activeBuilders.set(pool?.count() ?? 0);
            metrics.warmBuilders.set(pool?.count('warm') ?? 0);
          }
        })
      : null;
    if (pool) cleanups.push(() => pool.stop());

    let meteringUrl = '';
    const lm = new LeaseManager({
      store,
      pool,
      platforms: driver?.platforms() ?? [],
      pki,
      config,
      registryHost: proxy.host,
      fingerprintSecret,
      meteringUrl: () => meteringUrl,
      log,
      metrics
    });
    leases = lm;
    registryPrincipal = (u, p) => lm.registryPrincipal(u, p);
    // Leases a crashed run left active end at their last sign of life: the latest the store knows (recovery.ts).
    const resumed = await updateLastSignsOfLife(store, Date.now());
    if (resumed) log.info({ leases: resumed }, "last activity of the previous run's leases taken from their usage records");
    const recovered = await lm.recover();
    if (recovered) log.warn({ leases: recovered }, 'ended leases left active by a previous run');
    lm.startReaper();
    cleanups.push(() => lm.stop());
    pool?.refill();

    const authenticator = new Authenticator(store, signingKey, adminToken);
    const oidc = new OidcVerifier({ allowInsecureIssuers: config.insecureOidcIssuers });
    const creds = tls
      ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(tls.cert), private_key: Buffer.from(tls.key) }], false)
      : grpc.ServerCredentials.createInsecure();
    const grpcServer = new grpc.Server({ 'grpc.max_receive_message_length': 1 << 20 });
    // Per-credential rate limits and record caps (issue 9; docs/metering.md, docs/api.md).
    const limits = config.limits ?? DEFAULT_LIMITS;
    const limiters = createServeLimiters(limits, (limit) => metrics.rateLimited.inc({ limit }));
    const rpcApi = createRpcApi({
      leases: lm,
      store,
      authenticator,
      oidc,
      signingKey,
      accessTokenTtlS: config.accessTokenTtlS,
      log,
      provisionLimiter: limiters.provision,
      exchangeLimiter: limiters.exchange
    });
    addGrpcApi(grpcServer, rpcApi, log);
    const grpcPort = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync(`${listenHost(config.host)}:${config.grpcPort}`, creds, (err, port) =>
        err ? reject(listenError(err, config.host, config.grpcPort, PORT_FLAGS.grpc)) : resolve(port)
      )
    );
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            grpcServer.forceShutdown();
            resolve();
          }, 3000);
          grpcServer.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        })
    );

    const app = buildHttpApp({
      store,
      authenticate: async (token) => {
        const p = await authenticator.authenticate(token);
        return p ? { kind: p.kind, org: p.org, subject: p.subject, limitKey: rateLimitKey(p), scope: p.scope } : null;
      },
      recordLimiter: limiters.records,
      recordCaps: { perLease: limits.maxRecordsPerLease, perOrgDay: limits.maxRecordsPerOrgDay },
      metrics,
      usage: (org, month) => computeUsage(store, org, month, Date.now(), lm.activeSeconds(org)),
      log,
      tls,
      rpc: { api: rpcApi, log }
    });
    await app.listen({ host: config.host, port: config.httpPort }).catch((err) => {
      throw listenError(err, config.host, config.httpPort, PORT_FLAGS.http);
    });
    cleanups.push(() => app.close());
    const addr = app.server.address();
    const httpPort = typeof addr === 'object' && addr ? addr.port : config.httpPort;
    const scheme = tls ? 'https' : 'http';
    // The addresses handed to clients: --host as given (never a wildcard: checkListenHost), an IPv6 one in brackets.
    const clientHost = listenHost(config.host);
    meteringUrl = `${scheme}://${clientHost}:${httpPort}/v1/events`;

    const info: ServerInfo = {
      pid: process.pid,
      stateDir: config.stateDir,
      grpc: `${tls ? 'grpcs://' : ''}${clientHost}:${grpcPort}`,
      http: `${scheme}://${clientHost}:${httpPort}`,
      registry: proxy.host,
      registryCaFile,
      driver: driver ? driver.name : 'none',
      builderIsolation,
      platforms: driver?.platforms() ?? [],
      adminTokenFile: path.join(config.stateDir, 'admin-token')
    };
    fs.writeFileSync(serverInfoFile(config.stateDir), JSON.stringify(info, null, 2) + '\n', { mode: 0o600 });
    cleanups.push(() => fs.rmSync(serverInfoFile(config.stateDir), { force: true }));

    return { info, store, leases: lm, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

// The lock, or one line saying why not: held by a live serve (StateDirLockedError names it), or the directory is
// not ours to write (a ConfigError naming it).
function lockStateDir(stateDir: string): StateLock {
  try {
    return acquireStateLock(stateDir);
  } catch (err) {
    if (err instanceof StateDirLockedError) throw err;
    throw new ConfigError(`Cannot lock the state directory ${stateDir}: ${(err as Error).message}. Give a directory this user can write with --state-dir.`);
  }
}

// host:port as grpc-js and clients take it (endpoint.ts): an IPv6 address in brackets.
function listenHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/**
 * Fails with listenError's one line when a fixed port of `config` (grpc, http, registry; 0 = any is never busy)
 * cannot be listened on: each is opened and closed again at once, before the control plane starts anything.
 */
export async function checkPortsFree(config: Pick<ServerConfig, 'host' | 'grpcPort' | 'httpPort' | 'registryPort'>): Promise<void> {
  const ports: Array<[number, string]> = [
    [config.grpcPort, PORT_FLAGS.grpc],
    [config.httpPort, PORT_FLAGS.http],
    [config.registryPort, PORT_FLAGS.registry]
  ];
  for (const [port, flag] of ports) {
    if (port === 0) continue;
    await new Promise<void>((resolve, reject) => {
      const probe = net.createServer();
      probe.once('error', (err) => reject(listenError(err, config.host, port, flag)));
      probe.listen({ port, host: config.host.replace(/^\[(.*)\]$/, '$1'), exclusive: true }, () => probe.close(() => resolve()));
    });
  }
}
