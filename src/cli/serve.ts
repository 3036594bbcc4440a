import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { createLogger } from '../server/log';
import {
  ConfigError,
  DEFAULTS,
  DEFAULT_LIMITS,
  checkListenHost,
  checkListenSecurity,
  defaultStateDir,
  parseBuilderIsolation,
  parseDuration,
  parseCacheStorage,
  parseEgressAllow,
  parseIntFlag,
  parseLimits,
  parseRegistryUrl,
  validateConfig,
  type ServerConfig
} from '../server/config';

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description(
      'Run the control plane: gRPC API, metering endpoint, builders (dockerd) and the org cache registry. With no flags: the embedded default on loopback.'
    )
    .option('--state-dir <dir>', 'where state lives: SQLite database, CA, keys, registry data, builders (env BUILDCLOUD_STATE_DIR)', defaultStateDir())
    .option(
      '--host <ip>',
      'address to listen on for gRPC, HTTP, builders and the registry proxy, and that clients use to reach them (not 0.0.0.0 or ::)',
      DEFAULTS.host
    )
    .option('--grpc-port <n>', 'gRPC port (0 = any free port)', String(DEFAULTS.grpcPort))
    .option('--http-port <n>', 'HTTP port: metering endpoint, usage, /healthz, /metrics (0 = any)', String(DEFAULTS.httpPort))
    .option('--registry-port <n>', 'port of the org-cache registry proxy builders push to (0 = any)', String(DEFAULTS.registryPort))
    .option('--registry <url>', "an existing OCI registry for the org cache (default: start Debian's docker-registry)")
    .option(
      '--driver <name>',
      'builder driver: dockerd (real builders) | null (benchmarks and tests: builders that are only bookkeeping; nobody can build on them) | none (refuse every provision)',
      'dockerd'
    )
    .option('--warm-pool <n>', 'ready builders kept for fast provisioning', String(DEFAULTS.warmPool))
    .option('--max-builders <n>', 'most builders alive at once', String(DEFAULTS.maxBuilders))
    .option(
      '--org-max-builders <n>',
      "builders one org may hold at once unless `admin org set --max-builders` says otherwise, or 'unlimited' (default: 3/4 of --max-builders)"
    )
    .option('--idle-timeout <duration>', 'end a lease with no sign of life for this long', '10m')
    .option('--max-ttl <duration>', 'end any lease this long after it started', '2h')
    .option('--grace <duration>', 'keep a released builder this long for later stages of the pipeline', '60s')
    .option('--access-token-ttl <duration>', 'lifetime of access tokens from OIDC exchange', '2h')
    .option('--subnet-pool <cidr>', "builders' bridge networks are /24s from this pool", DEFAULTS.subnetPool)
    .option(
      '--builder-isolation <mode>',
      "how builders' engines are kept from this host: none (rootful engines) | userns (dockerd --userns-remap; on Docker Engine before 26, ADD of a local archive yields an empty layer)",
      DEFAULTS.builderIsolation
    )
    .option('--builder-nat', "outbound NAT for builders' RUN steps (iptables rules of our own; turns IPv4 forwarding on)", DEFAULTS.builderNat)
    .option('--no-builder-nat', 'builders get no outbound NAT and no egress filtering; the host firewall is left alone')
    .option('--builder-egress-allow <cidr>', "an IPv4 range builders' RUN steps may reach although it is private or link-local (repeatable)", collect, [])
    .option('--insecure-oidc-issuers', 'accept http:// OIDC issuers (tests, self-hosted GitLab on a private network)', false)
    .option('--tls-cert <file>', 'serve gRPC and HTTP over TLS with this certificate (PEM; clients use grpcs:// and https://)')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option(
      '--insecure',
      'allow plaintext gRPC and HTTP on a non-loopback --host (without it, such a host needs --tls-cert/--tls-key); warns at every start',
      false
    )
    .option(
      '--provision-rate <per-second>',
      'Provision calls per second per credential, refused beyond with RESOURCE_EXHAUSTED (0 = no limit)',
      String(DEFAULT_LIMITS.provisionRate)
    )
    .option('--provision-burst <n>', 'Provision calls one credential may make at once after idling', String(DEFAULT_LIMITS.provisionBurst))
    .option(
      '--record-rate <per-second>',
      'usage records (events, not requests) per second per credential, refused beyond with HTTP 429 (0 = no limit)',
      String(DEFAULT_LIMITS.recordRate)
    )
    .option('--record-burst <n>', 'usage records one credential may send at once after idling (at least 1000)', String(DEFAULT_LIMITS.recordBurst))
    .option('--max-records-per-lease <n>', 'usage records stored per lease; more are rejected (0 = no cap)', String(DEFAULT_LIMITS.maxRecordsPerLease))
    .option(
      '--max-records-per-org-day <n>',
      'usage records an org may store per UTC day; more are rejected (0 = no cap)',
      String(DEFAULT_LIMITS.maxRecordsPerOrgDay)
    )
    .option('--cache-keep <n>', 'org cache: images kept per scope and branch (default 3)')
    .option('--cache-expire-days <n>', 'org cache: a branch not built for this many days loses its cache (0 = never; default 30)')
    .option('--cache-quota <size>', "org cache: each org's storage quota, e.g. 20GiB (0 = none; default 20GiB; `admin cache quota` sets one org's)")
    .option('--cache-gc-interval <duration>', 'org cache: how often retention and garbage collection run (default 1h; also soon after cache pushes)')
    .option('--cache-gc-grace <duration>', 'org cache: blobs no image references are kept this long, for pushes under way (default 1h)')
    .option('--json', 'print where it listens as one JSON line on stdout', false)
    .action(async (o) => {
      const config: ServerConfig = validateConfig({
        stateDir: path.resolve(o.stateDir),
        host: o.host,
        grpcPort: parseIntFlag(o.grpcPort, '--grpc-port', 0, 65535),
        httpPort: parseIntFlag(o.httpPort, '--http-port', 0, 65535),
        registryPort: parseIntFlag(o.registryPort, '--registry-port', 0, 65535),
        registryUrl: o.registry ? parseRegistryUrl(o.registry) : null,
        driver: o.driver === 'none' || o.driver === 'null' || o.driver === 'dockerd' ? o.driver : badDriver(o.driver),
        warmPool: parseIntFlag(o.warmPool, '--warm-pool', 0, 64),
        maxBuilders: parseIntFlag(o.maxBuilders, '--max-builders', 1, 1024),
        orgMaxBuilders:
          o.orgMaxBuilders === undefined ? undefined : o.orgMaxBuilders === 'unlimited' ? null : parseIntFlag(o.orgMaxBuilders, '--org-max-builders', 1, 1024),
        idleTimeoutMs: parseDuration(o.idleTimeout, '--idle-timeout'),
        maxTtlMs: parseDuration(o.maxTtl, '--max-ttl'),
        graceMs: parseDuration(o.grace, '--grace'),
        reapIntervalMs: DEFAULTS.reapIntervalMs,
        accessTokenTtlS: Math.round(parseDuration(o.accessTokenTtl, '--access-token-ttl') / 1000),
        subnetPool: o.subnetPool,
        builderIsolation: parseBuilderIsolation(o.builderIsolation),
        builderNat: o.builderNat !== false,
        builderEgressAllow: parseEgressAllow(o.builderEgressAllow),
        insecureOidcIssuers: Boolean(o.insecureOidcIssuers),
        tls: tlsFiles(o.tlsCert, o.tlsKey),
        insecure: Boolean(o.insecure),
        limits: parseLimits(o),
        cacheStorage: parseCacheStorage(o)
      });
      checkListenHost(config.host); // a wildcard is no address to give clients: throws, naming the one to pass
      const insecureWarning = checkListenSecurity(config); // throws before anything listens
      const log = createLogger();
      if (insecureWarning) {
        // Both: a plain line a human sees in a terminal or a journal, and a structured one for log pipelines.
        process.stderr.write(`buildcloud serve: ${insecureWarning}\n`);
        log.warn({ host: config.host, insecure: true }, insecureWarning);
      }
      // Signal handlers go in before anything starts: a SIGTERM that arrives while the server starts, or in the
      // instant between the ready line and the line after it (a supervisor reacting to "ready"), must stop the
      // server cleanly, not kill the process by default action and leave its builders and registry behind.
      let server: Awaited<ReturnType<typeof import('../server/server').startServer>> | null = null;
      let stopSignal: string | null = null;
      const stop = (signal: string) => {
        if (stopSignal) return;
        stopSignal = signal;
        if (server) shutDown(server, signal);
        else log.info({ signal }, 'stop requested while starting: stopping as soon as the start completes');
      };
      const shutDown = (s: NonNullable<typeof server>, signal: string) => {
        log.info({ signal }, 'stopping: ending leases, destroying builders, stopping the registry');
        s.stop().then(
          () => process.exit(process.exitCode ?? 0),
          (err) => {
            log.error({ err: String(err) }, 'stop failed');
            process.exit(1);
          }
        );
      };
      process.on('SIGINT', () => stop('SIGINT'));
      process.on('SIGTERM', () => stop('SIGTERM'));
      // A closed terminal or an ssh session that ends: by default Node dies of SIGHUP at once, leaving every builder.
      process.on('SIGHUP', () => stop('SIGHUP'));
      // A bug that throws outside any request (an event handler, a timer) must not end the process by Node's default
      // action either, with builders, their bridges and rules left on the host: it is logged and the control plane
      // stops as for a signal, exiting 1. During a stop the stop goes on (it is the only way to clean up).
      const crashed = (kind: string) => (err: unknown) => {
        log.error({ err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, `${kind}: stopping the control plane`);
        process.exitCode = 1;
        if (!stopSignal) stop(kind);
      };
      process.on('uncaughtException', crashed('uncaught exception'));
      process.on('unhandledRejection', crashed('unhandled rejection'));
      // From here the process lives until a signal's stop calls process.exit: the CLI must not exit when this
      // action returns (src/cli/index.ts), including when a stop was asked for during the start.
      process.env.BUILDCLOUD_SERVING = '1';
      const { startServer } = await import('../server/server');
      server = await startServer(config, log);
      if (stopSignal) return shutDown(server, stopSignal);
      const i = server.info;
      if (o.json) process.stdout.write(JSON.stringify(i) + '\n');
      else {
        process.stdout.write(
          `buildcloud serve: ready\n  endpoint  ${i.http}  (give jobs this: BUILDCLOUD_ENDPOINT or the endpoint input)\n` +
            `  gRPC      ${i.grpc}  (the same API over gRPC)\n  HTTP      ${i.http}  (the API over HTTP/JSON, metering, usage, /healthz, /metrics)\n` +
            `  registry  ${i.registry}  (org cache)\n  driver    ${i.driver} ${i.platforms.join(', ')}${i.builderIsolation ? `, builder isolation ${i.builderIsolation}` : ''}\n  state     ${i.stateDir}\n` +
            `  admin token in ${i.adminTokenFile}\n`
        );
      }
    });
}

function tlsFiles(cert: string | undefined, key: string | undefined): ServerConfig['tls'] {
  if (!cert && !key) return null;
  if (!cert || !key) throw new ConfigError('Give --tls-cert and --tls-key together (PEM files of the server certificate and its key).');
  for (const [flag, file] of [
    ['--tls-cert', cert],
    ['--tls-key', key]
  ]) {
    if (!fs.existsSync(file)) throw new ConfigError(`Invalid ${flag} '${file}': no such file.`);
  }
  return { certFile: path.resolve(cert), keyFile: path.resolve(key) };
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function badDriver(name: string): never {
  throw new ConfigError(`Invalid --driver '${name}'. Expected dockerd, null or none.`);
}
