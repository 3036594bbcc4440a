// Org isolation in front of the cache registry.
//
// Builders' dockerd/BuildKit (and skopeo, docker CLI) talk to it over TLS (registryProxyTls below: the operator's
// --tls-cert, or a cert of the control plane's CA) with Basic credentials the control plane issued. Plain HTTP is
// answered only on a connection made to a loopback address, and only when the control plane listens on loopback
// (plainHttpOnLoopback): BuildKit cannot speak TLS to a loopback registry. The upstream registry has no auth
// of its own (the embedded one listens on a private unix socket), so THIS is the access check: a caller may only
// touch repositories under its org's prefix ("acme/..."), may not list the catalog, and nothing else is routed.
// Within the org a lease has an exact scope (leaseDenial below): it reads its import refs' repositories and its
// project's cache scopes (`<org>/<project>/cache/<scope>`), and writes only its own branch's tag (in the unscoped
// repository and in any scope of its project) and its own upload tags, so a feature branch cannot plant layers in
// the cache release builds import, nor one project in another's.
import * as http from 'node:http';
import * as https from 'node:https';
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import { isIP, type AddressInfo } from 'node:net';
import type { Logger } from './log';
import { isUploadTag, orgRepoPrefix, scopeRepository, type RegistryScope } from './cache-refs';
import { CacheRepairs, type UpstreamCallOptions, type UpstreamReply } from './cache-repair';
import { IMAGE_MANIFEST_TYPES, MAX_CONFIG_BYTES } from './inline-cache';
import { promoteUpload } from './cache-promotion';

export interface RegistryPrincipal {
  org: string;
  // Forks import only: a read-only principal may GET/HEAD but never push (an addition to the brief's shape).
  readOnly?: boolean;
  // A lease's exact scope within the org. Absent: the whole org prefix (a credential for the org itself; the
  // control plane's leases always carry one).
  scope?: RegistryScope;
}

export type RegistryUpstream = { socketPath: string } | { url: string; username?: string; password?: string };

/** The proxy's TLS identity: PEM strings (Basic credentials travel on every request, so the proxy always has one). */
export interface RegistryProxyTls {
  cert: string; // PEM: the server cert, then any intermediates
  key: string; // PEM: its private key
}

export interface RegistryProxyOptions {
  upstream: RegistryUpstream;
  authenticate: (username: string, password: string) => Promise<RegistryPrincipal | null>;
  tls: RegistryProxyTls;
  /**
   * Also answer plain HTTP, on connections whose local address is loopback (127.0.0.0/8, ::1) only; default false:
   * TLS only. Needed when the proxy's host is loopback, because BuildKit inside dockerd (cache imports with
   * `--cache-from`, FROM pulls) always speaks plain HTTP to a registry at a loopback address: containerd's
   * remotes/docker MatchLocalhost (net.IP.IsLoopback in containerd 1.6, which Debian 12's dockerd 20.10 links) is
   * applied by BuildKit's util/resolver whenever no PlainHTTP is configured, and dockerd's daemon.json cannot
   * configure it; seen here as `Head "http://127.0.0.2:PORT/v2/...": EOF` against a TLS-only proxy (127.0.0.1
   * alike). Loopback traffic never leaves the host.
   */
  plainHttpOnLoopback?: boolean;
  host?: string; // default 127.0.0.1
  port?: number; // default 0: any free port
  log?: Logger;
  orgPrefix?: (org: string) => string; // default orgRepoPrefix
  // Org-cache storage (cache-gc.ts): may refuse a write (the org's quota) or hold it (a collection under way).
  writeGate?: {
    enter(org: string, method: string, name: string, tail: string): Promise<string | null>;
    leave(org: string, method: string, tail: string, status: number): void;
  };
  // How long the upstream registry may take to start its answer once a client's request reached it in full, ms
  // (default UPSTREAM_ANSWER_TIMEOUT_MS). A registry that hangs then gets the client a 504 instead of a request
  // that never ends: BuildKit's cache import and `docker push` give up and the build goes on without the cache.
  upstreamTimeoutMs?: number;
}

/** Default of RegistryProxyOptions.upstreamTimeoutMs: 30 s for the registry to start answering. */
export const UPSTREAM_ANSWER_TIMEOUT_MS = 30_000;

// Repository name as distribution accepts it. Every alternative is anchored by a mandatory alphanumeric run, so
// the pattern cannot backtrack exponentially on hostile paths.
const COMP = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const NAME = `${COMP}(?:/${COMP})*`;
const TAG = '[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const UUID = '[A-Za-z0-9_.=-]+';
// The tail after the name is strictly validated (no "/" except in uploads/, no "%", no ".."), so the name we
// authorise is exactly the name the registry will act on.
const ROUTE = new RegExp(`^/v2/(${NAME})/(manifests/(?:${TAG}|${DIGEST})|blobs/(?:${DIGEST}|uploads/(?:${UUID})?)|tags/list)$`);
const NAME_ONLY = new RegExp(`^${NAME}$`);
const TAG_ONLY = new RegExp(`^${TAG}$`);
const DIGEST_ONLY = new RegExp(`^${DIGEST}$`);
// What a lease may PUT a manifest by: a digest the registry really takes as one (distribution registers sha256 and
// sha512, lower-case hex of their full length). Anything else digest-shaped ("main:000…", "sha256:<32 hex>",
// upper case) the registry parses as a TAG, so allowing it would let a lease write tags other than its own.
const PUT_DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const MAX_PATH = 4096;

// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded either way.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'];
// Never forwarded upstream: hop-by-hop headers, the caller's credentials, and anything that would let a caller steer
// the Location URLs the registry builds (X-Forwarded-*, Forwarded).
const DROP_REQUEST = new Set([
  ...HOP_BY_HOP,
  'authorization',
  'host',
  'expect',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-real-ip'
]);
const DROP_RESPONSE = new Set([...HOP_BY_HOP, 'www-authenticate']);

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };

function sendError(res: http.ServerResponse, status: number, code: string, message: string, extra: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ errors: [{ code, message }] });
  res.writeHead(status, { ...API_VERSION, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body), ...extra });
  res.end(body);
}

function parseBasic(header: string | undefined): { username: string; password: string } | null {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return null;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i <= 0) return null;
  return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
}

function filterHeaders(headers: http.IncomingHttpHeaders, drop: Set<string>): http.OutgoingHttpHeaders {
  const connectionListed = String(headers.connection ?? '')
    .toLowerCase()
    .split(',')
    .map((s) => s.trim());
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v !== undefined && !drop.has(k) && !connectionListed.includes(k)) out[k] = v;
  }
  return out;
}

export class RegistryProxy {
  private readonly opts: RegistryProxyOptions;
  private readonly server: net.Server; // the port: dispatches each connection to tlsServer or plainServer
  private readonly tlsServer: https.Server;
  private readonly plainServer: http.Server | null;
  private readonly sockets = new Set<net.Socket>();
  private readonly agent: http.Agent;
  private readonly upstreamUrl: URL | null;
  private readonly orgPrefix: (org: string) => string;
  private readonly repairs: CacheRepairs;
  private address: AddressInfo | null = null;

  constructor(opts: RegistryProxyOptions) {
    this.opts = opts;
    this.orgPrefix = opts.orgPrefix ?? orgRepoPrefix;
    this.upstreamUrl = 'url' in opts.upstream ? new URL(opts.upstream.url) : null;
    // keepAlive with no socket cap: parallel jobs each get their own upstream connection, never a shared queue.
    this.agent = this.upstreamUrl?.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    this.repairs = new CacheRepairs((method, p, o) => this.upstreamCall(method, p, o), opts.log);
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.handle(req, res).catch((err: Error) => {
        opts.log?.error({ err: err.message }, 'registry proxy: request failed');
        sendError(res, 500, 'UNKNOWN', 'internal error in the registry proxy');
      });
    };
    this.tlsServer = https.createServer({ cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' }, onRequest);
    this.tlsServer.on('tlsClientError', (_err, socket) => socket.destroy());
    this.plainServer = opts.plainHttpOnLoopback ? http.createServer(onRequest) : null;
    for (const srv of [this.tlsServer, this.plainServer]) {
      if (!srv) continue;
      // Blob uploads can take long: no whole-request deadline, only one for the headers.
      srv.requestTimeout = 0;
      srv.headersTimeout = 60_000;
      srv.on('clientError', (_err, socket) => socket.destroy());
    }
    // The first byte of a connection says which protocol it speaks: 0x16 is a TLS handshake record (RFC 8446 5.1).
    // Anything else is plain HTTP, answered only when allowed and the connection is to a loopback address; otherwise
    // the socket is destroyed unread, so a credential sent in clear is never parsed, let alone answered.
    this.server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      socket.setTimeout(60_000, () => socket.destroy()); // a connection that never says anything
      socket.once('data', (first: Buffer) => {
        socket.setTimeout(0);
        socket.pause();
        socket.unshift(first);
        const target = first[0] === 0x16 ? this.tlsServer : this.plainServer && isLoopbackAddress(socket.localAddress) ? this.plainServer : null;
        if (!target) return socket.destroy();
        target.emit('connection', socket);
        process.nextTick(() => socket.resume());
      });
      socket.on('error', () => socket.destroy());
    });
  }

  /** "127.0.0.1:PORT" (IPv6: "[addr]:PORT"), the registry host builders use in image refs. Valid after listen(). */
  get host(): string {
    if (!this.address) throw new Error('registry proxy is not listening');
    const h = this.address.family === 'IPv6' ? `[${this.address.address}]` : this.address.address;
    return `${h}:${this.address.port}`;
  }

  /**
   * Where a builder's engine connects to push and pull the org cache, for its egress rules: the listening address
   * (0.0.0.0 is reached as 127.0.0.1), or null for an IPv6 listener (engines' IPv6 egress has no such exception).
   */
  get engineEndpoint(): { address: string; port: number } | null {
    if (!this.address || this.address.family === 'IPv6') return null;
    return { address: this.address.address === '0.0.0.0' ? '127.0.0.1' : this.address.address, port: this.address.port };
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => {
        this.server.off('error', reject);
        this.address = this.server.address() as AddressInfo;
        // The inner servers never listen themselves: 'listening' starts their headersTimeout checks (node:http).
        this.tlsServer.emit('listening');
        this.plainServer?.emit('listening');
        this.opts.log?.info({ host: this.host }, 'registry proxy listening');
        resolve(this.address.port);
      });
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const socket of this.sockets) socket.destroy();
    });
    // Pending cache repairs finish first (bounded), while the upstream registry is still up.
    await this.repairs.close();
    this.agent.destroy();
  }

  /** Resolves when no cache repair is queued or running (tests; shutdown uses close()). */
  repairsIdle(): Promise<void> {
    return this.repairs.idle();
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const pathname = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const rawQuery = q < 0 ? '' : rawUrl.slice(q + 1);
    const query = new URLSearchParams(rawQuery);
    const started = Date.now();
    res.on('finish', () => this.opts.log?.debug({ method: req.method, path: pathname, status: res.statusCode, ms: Date.now() - started }, 'registry proxy'));

    if (pathname !== '/v2' && !pathname.startsWith('/v2/')) return sendError(res, 404, 'UNSUPPORTED', 'not a registry API path');
    const principal = await this.authenticate(req);
    if (!principal) {
      return sendError(res, 401, 'UNAUTHORIZED', 'authentication required', { 'WWW-Authenticate': 'Basic realm="buildcloud"' });
    }
    if (pathname === '/v2' || pathname === '/v2/') return this.forward(req, res, '/v2/');
    if (pathname === '/v2/_catalog') return sendError(res, 403, 'DENIED', 'listing repositories is not allowed');

    const m = pathname.length <= MAX_PATH ? ROUTE.exec(pathname) : null;
    if (!m) return sendError(res, 404, 'UNSUPPORTED', 'unsupported registry API path');
    const name = m[1];
    const prefix = this.orgPrefix(principal.org);
    if (!name.startsWith(prefix)) {
      return sendError(res, 403, 'DENIED', `access to repository "${name}" is denied: this token may only use repositories under "${prefix}"`);
    }
    if (principal.readOnly && req.method !== 'GET' && req.method !== 'HEAD') {
      return sendError(res, 403, 'DENIED', `this token is read-only (e.g. a fork's pull request): ${req.method} on "${name}" is not allowed`);
    }
    const scope = principal.scope;
    const denial = scope ? leaseDenial(scope, req.method ?? '', name, m[2], this.address ? this.host : '') : null;
    if (denial) return sendError(res, 403, 'DENIED', denial);
    const gate = this.opts.writeGate;
    if (gate && req.method !== 'GET' && req.method !== 'HEAD') {
      const refused = await gate.enter(principal.org, req.method ?? '', name, m[2]);
      if (refused) return sendError(res, 403, 'DENIED', refused);
      res.once('close', () => gate.leave(principal.org, req.method ?? '', m[2], res.statusCode));
    }
    // A cross-repository mount reads the blob from `from`: only from a repository the caller may read (its org's;
    // a lease's own import repositories). Otherwise drop the mount and the registry starts an ordinary upload
    // (202), which clients handle like a failed mount: docker offers mounts from wherever it pulled a layer.
    const froms = query.getAll('from');
    const mountAllowed = froms.length === 1 && NAME_ONLY.test(froms[0]) && froms[0].startsWith(prefix) && (!scope || mayRead(scope, froms[0]));
    let target = rawUrl;
    if ((query.has('mount') || froms.length > 0) && !mountAllowed) {
      // Rebuild from the raw pairs (URLSearchParams would re-encode the signed _state needlessly), comparing
      // DECODED keys, as the registry does: "%6Dount" is "mount" too.
      const kept = rawQuery.split('&').filter((pair) => {
        const key = decodeQueryKey(pair.split('=')[0]);
        return key !== null && key !== 'mount' && key !== 'from';
      });
      target = kept.length ? `${pathname}?${kept.join('&')}` : pathname;
    }
    // Inline-cache repair (cache-repair.ts): an image manifest pushed to a cache tag is repaired after the push;
    // reads of that tag wait (briefly) for a repair still under way, so the next build imports the repaired one.
    const tag = isCacheRepository(name, scope) && m[2].startsWith('manifests/') ? m[2].slice('manifests/'.length) : '';
    // A build's cache pushed under one of its lease's upload tags: written to the scope's tag instead (promoted).
    if (req.method === 'PUT' && scope?.push && isUploadTag(scope, tag)) return this.promoteUpload(req, res, name, tag, scope.push.tag, scope.push.repository);
    if (TAG_ONLY.test(tag)) {
      const type = String(req.headers['content-type'] ?? '')
        .split(';')[0]
        .trim();
      if (req.method === 'PUT' && IMAGE_MANIFEST_TYPES.includes(type)) {
        const push = this.repairs.begin(name, tag, res);
        const previous = await this.repairs.current(name, tag); // before the push lands: the previous cache
        return this.forward(req, res, target, (status, headers) => {
          const digest = headers['docker-content-digest'];
          if (status >= 200 && status < 300 && typeof digest === 'string' && DIGEST_ONLY.test(digest)) push.landed(digest, previous);
        });
      }
      if (req.method === 'GET' || req.method === 'HEAD') await this.repairs.settled(name, tag);
    }
    return this.forward(req, res, target);
  }

  /**
   * A manifest PUT to one of the lease's upload tags: read (bounded: a manifest), then written where it belongs by
   * cache-promotion.ts, and answered as that says.
   */
  private async promoteUpload(req: http.IncomingMessage, res: http.ServerResponse, name: string, upload: string, tag: string, project: string): Promise<void> {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > MAX_CONFIG_BYTES) return sendError(res, 413, 'MANIFEST_INVALID', `a cache manifest larger than ${MAX_CONFIG_BYTES} bytes is not accepted`);
      chunks.push(c);
    }
    const type = String(req.headers['content-type'] ?? '')
      .split(';')[0]
      .trim();
    const deps = { call: (method: string, p: string, o?: UpstreamCallOptions) => this.upstreamCall(method, p, o), repairs: this.repairs, log: this.opts.log };
    const r = await promoteUpload(deps, { name, upload, tag, project, body: Buffer.concat(chunks), type });
    if ('error' in r) return sendError(res, 502, 'UNAVAILABLE', r.error);
    if ('digest' in r) {
      res.writeHead(201, { ...API_VERSION, 'Docker-Content-Digest': r.digest, Location: `/v2/${name}/manifests/${r.digest}`, 'Content-Length': 0 });
      return void res.end();
    }
    res.writeHead(r.status, { ...API_VERSION, 'Content-Type': r.contentType, 'Content-Length': r.body.length });
    res.end(r.body);
  }

  private async authenticate(req: http.IncomingMessage): Promise<RegistryPrincipal | null> {
    const creds = parseBasic(req.headers.authorization);
    if (!creds) return null;
    return this.opts.authenticate(creds.username, creds.password);
  }

  private forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    pathAndQuery: string,
    onResponse?: (status: number, headers: http.IncomingHttpHeaders) => void
  ): void {
    const clientHost = req.headers.host ?? this.host;
    // Locations come back in the scheme the client used (plain HTTP only on loopback, see plainHttpOnLoopback).
    const clientScheme = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
    const headers = filterHeaders(req.headers, DROP_REQUEST);
    const up = this.opts.upstream;
    let upstreamHost: string;
    let options: http.RequestOptions;
    if ('socketPath' in up) {
      // The registry builds absolute Location URLs from Host: give it the client's, so uploads come back here.
      upstreamHost = clientHost;
      options = { socketPath: up.socketPath };
    } else {
      const u = this.upstreamUrl as URL;
      upstreamHost = u.host;
      options = { protocol: u.protocol, hostname: u.hostname, port: u.port || undefined };
      if (up.username !== undefined) {
        headers.authorization = `Basic ${Buffer.from(`${up.username}:${up.password ?? ''}`).toString('base64')}`;
      }
    }
    headers.host = upstreamHost;
    const transport = this.upstreamUrl?.protocol === 'https:' ? https : http;
    const upReq = transport.request({ ...options, agent: this.agent, method: req.method, path: pathAndQuery, headers });
    // The clock starts once the client's request (an upload's body included) reached the registry in full.
    const waitMs = this.opts.upstreamTimeoutMs ?? UPSTREAM_ANSWER_TIMEOUT_MS;
    let silent: NodeJS.Timeout | undefined;
    let timedOut = false;
    upReq.on('finish', () => {
      silent = setTimeout(() => {
        timedOut = true;
        upReq.destroy();
      }, waitMs);
    });
    upReq.on('close', () => clearTimeout(silent));

    upReq.on('response', (upRes) => {
      clearTimeout(silent);
      if (res.destroyed) return upRes.destroy();
      if (upRes.statusCode === 401) {
        // Only an external registry rejecting the control plane's own credentials gets here.
        upRes.resume();
        this.opts.log?.error({ path: pathAndQuery.split('?')[0] }, 'registry proxy: upstream registry refused the configured credentials');
        return sendError(res, 502, 'UNAVAILABLE', "the cache registry refused the control plane's credentials");
      }
      onResponse?.(upRes.statusCode ?? 502, upRes.headers);
      if ((upRes.statusCode ?? 502) >= 500) {
        // The registry's own 5xx bodies name its storage driver and paths on this host: logged, never forwarded.
        upRes.resume();
        this.opts.log?.warn({ status: upRes.statusCode, path: pathAndQuery.split('?')[0] }, 'registry proxy: upstream server error');
        return sendError(res, 502, 'UNAVAILABLE', `the cache registry failed (HTTP ${upRes.statusCode}); the control plane's log has the request`);
      }
      const outHeaders = filterHeaders(upRes.headers, DROP_RESPONSE);
      const loc = upRes.headers.location;
      if (loc) outHeaders.location = rewriteLocation(loc, upstreamHost, clientHost, clientScheme);
      res.writeHead(upRes.statusCode ?? 502, outHeaders);
      upRes.pipe(res);
      upRes.on('error', () => res.destroy());
      upRes.on('aborted', () => res.destroy());
    });
    upReq.on('error', (err) => {
      req.unpipe(upReq);
      if (res.writableEnded || res.destroyed) return;
      if (timedOut) {
        this.opts.log?.warn({ waitMs, path: pathAndQuery.split('?')[0] }, 'registry proxy: upstream registry did not answer in time');
        return sendError(res, 504, 'UNAVAILABLE', `the cache registry did not answer within ${waitMs / 1000} s`);
      }
      this.opts.log?.warn({ err: err.message, path: pathAndQuery.split('?')[0] }, 'registry proxy: upstream error');
      sendError(res, 502, 'UNAVAILABLE', 'the cache registry is unavailable');
    });
    // A client that goes away mid-upload or mid-download must not leave the upstream request hanging.
    res.on('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });
    req.on('error', () => upReq.destroy());
    req.pipe(upReq);
  }

  /**
   * A request of the control plane's own to the upstream registry (the cache repair's reads and writes): a path
   * on the upstream, with its credentials; or an absolute URL (a blob storage redirect), without them.
   */
  private upstreamCall(method: string, target: string, o: UpstreamCallOptions = {}): Promise<UpstreamReply> {
    const headers: http.OutgoingHttpHeaders = { ...o.headers };
    if (o.body) headers['content-length'] = o.body.length;
    if (/^https?:\/\//.test(target)) {
      const u = new URL(target);
      return requestOnce(
        u.protocol === 'https:' ? https : http,
        { method, hostname: u.hostname, port: u.port || undefined, path: `${u.pathname}${u.search}`, headers },
        o
      );
    }
    const up = this.opts.upstream;
    let options: http.RequestOptions;
    if ('socketPath' in up) {
      headers.host = this.host; // as for clients' requests; only the path of a returned Location is used
      options = { socketPath: up.socketPath };
    } else {
      const u = this.upstreamUrl as URL;
      headers.host = u.host;
      options = { protocol: u.protocol, hostname: u.hostname, port: u.port || undefined };
      if (up.username !== undefined) headers.authorization = `Basic ${Buffer.from(`${up.username}:${up.password ?? ''}`).toString('base64')}`;
    }
    const transport = this.upstreamUrl?.protocol === 'https:' ? https : http;
    return requestOnce(transport, { ...options, agent: this.agent, method, path: target, headers }, o);
  }
}

/** True for an IPv4 loopback address (127.0.0.0/8), ::1, or either IPv4-mapped (::ffff:127.x.y.z). */
export function isLoopbackAddress(address: string | undefined): boolean {
  const a = String(address ?? '')
    .toLowerCase()
    .replace(/^::ffff:/, '');
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}

/** The proxy's cert and what builders' engines must trust for it (see registryProxyTls). */
export interface RegistryProxyIdentity extends RegistryProxyTls {
  trustPem: string; // PEM certificates an engine trusts for the proxy (certs.d/<host:port>/buildcloud-ca.crt)
  source: 'operator' | 'control-plane-ca';
}

/**
 * The registry proxy's TLS identity for `host` (its listen address: an IP literal or a DNS name).
 * - `operator` (serve --tls-cert/--tls-key, PEM strings) when its first certificate names `host` (an IP SAN for an
 *   IP, a DNS SAN or CN match for a name, per Node's X509Certificate.checkIP/checkHost). Engines then trust exactly
 *   the certificates of that file (the leaf and any chain): Go's crypto/x509 accepts a leaf found in its root pool,
 *   so a public CA, a private CA and a self-signed cert all work, and only that cert is trusted for the proxy.
 * - Otherwise (no --tls-cert, as on the loopback default, or a cert for another name) a server cert issued now by
 *   the control plane's CA with `host` as its SAN, kept in memory only (a new one each start); engines trust the
 *   CA's cert.
 * Throws when the operator's cert cannot be parsed, naming the flag; never includes key material.
 */
export async function registryProxyTls(
  host: string,
  pki: { caPem: string; issueServer(hosts: string[]): Promise<{ certPem: string; keyPem: string }> },
  operator?: RegistryProxyTls
): Promise<RegistryProxyIdentity> {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  if (operator) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(operator.cert);
    } catch (err) {
      throw new Error(`--tls-cert is not a PEM certificate (${(err as Error).message}): expected the server cert first, then any intermediates`);
    }
    const covers = isIP(bare) ? cert.checkIP(bare) !== undefined : cert.checkHost(bare) !== undefined;
    if (covers) return { cert: operator.cert, key: operator.key, trustPem: operator.cert, source: 'operator' };
  }
  const issued = await pki.issueServer([bare]);
  return { cert: issued.certPem, key: issued.keyPem, trustPem: pki.caPem, source: 'control-plane-ca' };
}

function requestOnce(transport: typeof http | typeof https, options: http.RequestOptions, o: UpstreamCallOptions): Promise<UpstreamReply> {
  const maxBytes = o.maxBytes ?? 64 * 1024;
  return new Promise((resolve, reject) => {
    const req = transport.request(options, (upRes) => {
      const chunks: Buffer[] = [];
      let n = 0;
      upRes.on('data', (c: Buffer) => {
        n += c.length;
        if (n > maxBytes) return req.destroy(new Error(`response larger than ${maxBytes} bytes`));
        chunks.push(c);
      });
      upRes.on('end', () => resolve({ status: upRes.statusCode ?? 0, headers: upRes.headers, body: Buffer.concat(chunks) }));
      upRes.on('error', reject);
      upRes.on('aborted', () => reject(new Error('upstream response aborted')));
    });
    req.setTimeout(o.timeoutMs ?? 15_000, () => req.destroy(new Error('upstream request timed out')));
    req.on('error', reject);
    req.end(o.body);
  });
}

function mayRead(scope: RegistryScope, name: string): boolean {
  return scope.pull.includes(name) || scope.push?.repository === name || scopeRepository(name, scope.scopes) !== null;
}

/**
 * Why a lease may not make this request, or null when it may. `tail` is the part of the path after the name
 * (manifests/<ref>, blobs/<digest>, blobs/uploads/[<uuid>], tags/list). Reads: its import and export repositories.
 * Writes, in its export repository only: blob uploads (POST/PATCH/PUT, and DELETE to cancel one), a manifest PUT
 * with its export tag, and a manifest PUT by digest. The digest PUT is allowed because containerd and BuildKit
 * push the per-platform manifests of an index by digest before the index by tag (multi-platform builds,
 * `--cache-to type=registry`), and it is harmless: content-addressed, it moves no tag, so nothing another build
 * imports by tag changes. Deleting manifests or blobs is never allowed: in the shared cache repository a digest
 * DELETE would remove another branch's cache.
 */
export function leaseDenial(scope: RegistryScope, method: string, name: string, tail: string, registryHost = ''): string | null {
  const host = registryHost ? `${registryHost}/` : '';
  const ref = scope.push ? (scope.push.ref ?? `${host}${scope.push.repository}:${scope.push.tag}`) : '';
  const scoped = scopeRepository(name, scope.scopes) !== null;
  const scopes = scope.push && scope.scopes ? ` and "${host}${scope.scopes}/<scope>:${scope.push.tag}" (its cache scopes)` : '';
  const mayWrite = ref
    ? `this lease may write only "${ref}" (its export ref)${scopes}`
    : "this lease may not write the org cache (it has no export ref: a fork's pull request or a build without a branch)";
  if (method === 'GET' || method === 'HEAD') {
    if (mayRead(scope, name)) return null;
    const readable = scope.pull.map((r) => `"${r}"`).join(', ') || 'none';
    return `read access to repository "${name}" is denied: this lease may read only its cache refs' repositories (${readable})`;
  }
  const what = `${method} ${name}/${tail}`;
  if (!scope.push || (name !== scope.push.repository && !scoped)) return `${what} is denied: ${mayWrite}`;
  if (tail.startsWith('blobs/uploads/')) {
    return ['POST', 'PATCH', 'PUT', 'DELETE'].includes(method) ? null : `${what} is denied: not a blob upload`;
  }
  if (tail.startsWith('manifests/') && method === 'PUT') {
    const r = tail.slice('manifests/'.length);
    if (r === scope.push.tag || PUT_DIGEST.test(r) || (scoped && isUploadTag(scope, r))) return null;
    return `${what} is denied: ${mayWrite}`;
  }
  return `${what} is denied: a lease may upload blobs and put manifests, nothing else; ${mayWrite}`;
}

// Cache repositories (their tags get the inline-cache repair): a project's unscoped `.../cache`, and, for a lease,
// its scoped ones (`.../cache/<scope>`).
function isCacheRepository(name: string, scope: RegistryScope | undefined): boolean {
  return name.endsWith('/cache') || (scope !== undefined && scopeRepository(name, scope.scopes) !== null) || /\/cache\/[a-z0-9._-]+$/.test(name);
}

function decodeQueryKey(raw: string): string | null {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return null; // undecodable: drop the pair rather than guess what the registry would make of it
  }
}

// Absolute Location URLs that point at the upstream registry are turned back into URLs of this proxy; anything
// else (relative URLs, redirects to blob storage) is left alone.
function rewriteLocation(location: string, upstreamHost: string, clientHost: string, scheme: 'http' | 'https'): string {
  if (location.startsWith('/')) return location;
  try {
    const u = new URL(location);
    if (u.host !== upstreamHost) return location;
    return `${scheme}://${clientHost}${u.pathname}${u.search}`;
  } catch {
    return location;
  }
}
