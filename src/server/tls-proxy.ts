// The builder's network face: a mutual-TLS listener in front of the engine's unix socket that admits only the
// Docker Engine API calls a build client needs (engine-api-policy.ts) and forwards them request by request.
// All leases share one CA, so "signed by the CA" is not enough: a connection is kept only if its client cert's
// fingerprint is currently allowed on *this* builder. BuildKit's upgraded streams (/session, /grpc) are piped as
// raw bytes once the engine has answered 101; nothing is ever buffered whole.
// Image names are shared by the jobs of a pipeline on one builder: the front records which lease last pointed each
// name at a new image and refuses a lease's read of a name it set that another lease has since taken
// (image-names.ts), so a job never silently pushes, saves or inspects another job's image under its own tag.
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Logger } from './log';
import { silentLogger } from './log';
import { checkEngineRequest } from './engine-api-policy';
import { familiarImageName, ImageNameLedger, imageAccess, normaliseImageName, takenNameMessage } from './image-names';
import type { CertPair } from './pki';

export interface TlsProxyOptions {
  socketPath: string;
  server: CertPair;
  caPem: string;
  host?: string; // default 127.0.0.1
  port?: number; // default 0 (any free port)
  log?: Logger;
  // Called on connect and, at most once a second per fingerprint, on traffic.
  onActivity?: (fingerprint: string) => void;
}

interface Conn {
  fingerprint: string;
  client: tls.TLSSocket;
  // What this connection opened towards the engine: requests in flight and upgraded streams.
  upstream: Set<http.ClientRequest | Duplex>;
}

const ACTIVITY_INTERVAL_MS = 1000;
const HANDSHAKE_TIMEOUT_MS = 10_000;
// Detects clients that vanished (CI runner killed) without a FIN, so their connections stop counting as active.
const KEEPALIVE_MS = 30_000;
// How long a refused client gets to send its request and read the 403.
const REFUSAL_TIMEOUT_MS = 5_000;
// docker sends every registry credential of the user's config in X-Registry-Config with a build; Go's servers
// (the engine's too) accept 1 MiB of headers, Node 16 KiB by default.
const MAX_HEADER_BYTES = 1 << 20;
// The front's own engine calls (what a name points to): a build's end waits for them, so they must not hang.
const ENGINE_CALL_TIMEOUT_MS = 10_000;
const REFUSAL = 'buildcloud: this client certificate is not allowed on this builder (its lease has ended or it belongs to another lease)';
// Connection-level headers of one hop (RFC 9110 7.6.1): each side of the proxy frames its own messages.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate'
]);

export class BuilderTlsProxy {
  private readonly opts: TlsProxyOptions;
  private readonly log: Logger;
  private readonly allowed = new Set<string>();
  private readonly conns = new Set<Conn>();
  private readonly bySocket = new WeakMap<object, Conn>();
  private readonly rawSockets = new Set<net.Socket>();
  private readonly lastActivity = new Map<string, number>();
  private readonly names = new ImageNameLedger();
  private readonly server: tls.Server;
  // Never listens: admitted TLS connections are handed to it, so Node's HTTP parser frames every request.
  private readonly http: http.Server;
  private port = 0;
  private listening = false;
  private closed = false;

  constructor(opts: TlsProxyOptions) {
    this.opts = opts;
    this.log = opts.log ?? silentLogger();
    this.server = tls.createServer({
      cert: opts.server.certPem,
      key: opts.server.keyPem,
      ca: opts.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      allowHalfOpen: true
    });
    this.server.on('connection', (raw: net.Socket) => {
      this.rawSockets.add(raw);
      raw.once('close', () => this.rawSockets.delete(raw));
      raw.on('error', () => undefined); // reported through the TLS socket or tlsClientError
      raw.setKeepAlive(true, KEEPALIVE_MS);
      raw.setNoDelay(true);
    });
    this.server.on('secureConnection', (sock) => this.onSecure(sock));
    this.server.on('tlsClientError', (err, sock) => {
      this.log.debug({ err: err.message, remote: sock.remoteAddress }, 'TLS handshake refused');
      sock.destroy();
    });
    this.server.on('error', (err) => this.log.error({ err: err.message }, 'builder TLS listener error'));

    // requestTimeout 0: a request body may legitimately stream for as long as a build context upload takes.
    this.http = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: 0, keepAliveTimeout: 30_000 }, (req, res) => this.onRequest(req, res));
    this.http.on('upgrade', (req: http.IncomingMessage, sock: Duplex, head: Buffer) => this.onUpgrade(req, sock, head));
    this.http.on('clientError', (err: NodeJS.ErrnoException, sock: Duplex) => {
      this.log.debug({ err: err.message, code: err.code }, 'malformed request on a builder connection');
      if (sock.writable && !(sock as net.Socket).destroyed) sock.end(rawResponse(400, 'Bad Request', 'buildcloud: malformed HTTP request'));
      else sock.destroy();
    });
  }

  get address(): string {
    const host = this.opts.host ?? '127.0.0.1';
    return `tcp://${net.isIPv6(host) ? `[${host}]` : host}:${this.port}`;
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: this.opts.host ?? '127.0.0.1', port: this.opts.port ?? 0 }, () => {
        this.server.off('error', onError);
        this.port = (this.server.address() as net.AddressInfo).port;
        this.listening = true;
        resolve(this.port);
      });
    });
  }

  allow(fingerprint: string): void {
    this.allowed.add(normalise(fingerprint));
  }

  // Also cuts connections already open with that cert: a released lease must lose the builder at once.
  revoke(fingerprint: string): void {
    const fp = normalise(fingerprint);
    this.allowed.delete(fp);
    this.lastActivity.delete(fp);
    this.names.forget(fp);
    for (const c of [...this.conns]) if (c.fingerprint === fp) this.drop(c);
  }

  activeConnections(fingerprint?: string): number {
    if (fingerprint === undefined) return this.conns.size;
    const fp = normalise(fingerprint);
    let n = 0;
    for (const c of this.conns) if (c.fingerprint === fp) n++;
    return n;
  }

  async close(): Promise<void> {
    const closed = this.listening ? new Promise<void>((resolve) => this.server.close(() => resolve())) : Promise.resolve();
    this.listening = false;
    this.closed = true;
    for (const c of [...this.conns]) this.drop(c);
    for (const raw of [...this.rawSockets]) raw.destroy(); // connections still in their handshake
    await closed;
  }

  private onSecure(client: tls.TLSSocket): void {
    client.on('error', (err) => this.log.debug({ err: err.message }, 'client connection error'));
    const peer = client.getPeerCertificate();
    if (this.closed || !client.authorized || !peer || !peer.raw) {
      client.destroy();
      return;
    }
    const fingerprint = createHash('sha256').update(peer.raw).digest('hex');
    if (!this.allowed.has(fingerprint)) {
      // Signed by our CA but not for this builder: another lease's cert, or a revoked one.
      this.log.warn({ fingerprint: fingerprint.slice(0, 16), remote: client.remoteAddress }, 'client cert not allowed on this builder');
      this.refuse(client);
      return;
    }
    const conn: Conn = { fingerprint, client, upstream: new Set() };
    this.conns.add(conn);
    this.bySocket.set(client, conn);
    client.once('close', () => this.drop(conn));
    this.touch(fingerprint, true);
    this.http.emit('connection', client);
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const conn = this.bySocket.get(req.socket);
    if (!conn) {
      req.socket.destroy();
      return;
    }
    this.touch(conn.fingerprint, false);
    const decision = checkEngineRequest(engineRequest(req));
    if (!decision.allowed) {
      this.log.warn({ fingerprint: conn.fingerprint.slice(0, 16), method: req.method, path: pathOf(req.url) }, 'engine API call refused');
      // The request's body (if any) is read and dropped so the connection stays usable for the next request.
      req.resume();
      sendJson(res, decision.status, decision.message);
      return;
    }
    const access = imageAccess(req.method ?? '', req.url ?? '');
    const verify = this.names.toVerify(conn.fingerprint, access);
    if (verify.length === 0) {
      this.forward(conn, req, res, access.sets);
      return;
    }
    // A name this lease set that another lease has set since: read only if it still names this lease's image.
    this.currentImageIds(verify).then(
      (current) => {
        if (res.destroyed || !this.conns.has(conn)) return;
        const refused = this.names.refused(conn.fingerprint, verify, current);
        if (refused.length === 0) {
          this.forward(conn, req, res, access.sets);
          return;
        }
        this.log.warn(
          { fingerprint: conn.fingerprint.slice(0, 16), method: req.method, path: pathOf(req.url) },
          'read of an image name another lease took refused'
        );
        req.resume();
        sendJson(res, 409, takenNameMessage(refused));
      },
      (err: Error) => {
        this.log.warn({ err: err.message }, 'builder engine connection error');
        req.resume();
        if (!res.destroyed) sendJson(res, 502, "buildcloud: the builder's engine is not answering");
      }
    );
  }

  // Sends one admitted request to the engine and its answer back as it streams. When the request may point names
  // at an image (`sets`), the end of the answer waits until the front has read what those names point to now, so
  // the client's next request is already decided on the new record.
  private forward(conn: Conn, req: http.IncomingMessage, res: http.ServerResponse, sets: string[]): void {
    const up = http.request({ socketPath: this.opts.socketPath, method: req.method, path: req.url, headers: forwardHeaders(req), agent: false });
    conn.upstream.add(up);
    up.on('response', (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, forwardHeaders(upRes));
      // A build streams its progress: send each piece as the engine writes it.
      res.flushHeaders();
      upRes.on('data', () => this.touch(conn.fingerprint, false));
      const record = sets.length > 0 && (upRes.statusCode ?? 500) < 300;
      upRes.pipe(res, { end: !record });
      if (record) upRes.once('end', () => void this.recordSets(conn.fingerprint, sets).finally(() => res.end()));
      upRes.on('error', () => res.destroy());
    });
    up.on('error', (err) => {
      this.log.warn({ err: err.message }, 'builder engine connection error');
      if (!res.headersSent) sendJson(res, 502, "buildcloud: the builder's engine is not answering");
      else res.destroy();
    });
    up.on('close', () => conn.upstream.delete(up));
    // The client went away before the engine finished (Ctrl-C on a build): the engine must see it go too.
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.on('data', () => this.touch(conn.fingerprint, false));
    const length = Number(req.headers['content-length'] ?? NaN);
    if (hasBody(req) && Number.isInteger(length) && length <= SMALL_BODY_BYTES) {
      // A small body of known length (`/auth`'s JSON) goes in one write with the request, so the engine has all of
      // it before it answers and closes: piping it could write after that close (EPIPE) and lose the engine's answer
      // (the client then saw a 502 for most `docker login`s). Streams (build contexts, pushes) are piped as they come.
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => up.end(Buffer.concat(chunks)));
    } else if (hasBody(req)) req.pipe(up);
    else {
      req.resume();
      up.end();
    }
  }

  // BuildKit's /session and /grpc: forwarded as an HTTP upgrade; once the engine switches protocols the two
  // streams are piped as they are. Anything the engine does not answer with 101 ends the connection, so no
  // later request on it can pass unchecked.
  private onUpgrade(req: http.IncomingMessage, sock: Duplex, head: Buffer): void {
    const conn = this.bySocket.get(req.socket);
    if (!conn) {
      sock.destroy();
      return;
    }
    sock.on('error', () => this.drop(conn));
    const decision = checkEngineRequest(engineRequest(req));
    const upgradable = decision.allowed && (decision.route === 'session' || decision.route === 'grpc');
    if (!upgradable) {
      const status = decision.allowed ? 403 : decision.status;
      const message = decision.allowed ? `buildcloud: ${req.method} ${pathOf(req.url)} cannot be upgraded on a remote builder.` : decision.message;
      this.log.warn({ fingerprint: conn.fingerprint.slice(0, 16), method: req.method, path: pathOf(req.url) }, 'engine API upgrade refused');
      sock.end(rawResponse(status, 'Forbidden', message));
      return;
    }
    this.touch(conn.fingerprint, false);
    const headers = forwardHeaders(req);
    headers.push('Connection', 'Upgrade', 'Upgrade', String(req.headers.upgrade ?? ''));
    const up = http.request({ socketPath: this.opts.socketPath, method: req.method, path: req.url, headers, agent: false });
    conn.upstream.add(up);
    up.on('upgrade', (upRes, upSock, upHead) => {
      conn.upstream.add(upSock);
      upSock.on('close', () => {
        conn.upstream.delete(upSock);
        sock.destroy();
      });
      upSock.on('error', () => sock.destroy());
      sock.on('close', () => upSock.destroy());
      sock.write(`HTTP/1.1 101 ${upRes.statusMessage || 'Switching Protocols'}\r\n${rawHeaderLines(upRes.rawHeaders)}\r\n`);
      if (upHead.length) sock.write(upHead);
      if (head.length) upSock.write(head);
      const onData = (): void => this.touch(conn.fingerprint, false);
      sock.on('data', onData);
      upSock.on('data', onData);
      sock.pipe(upSock);
      upSock.pipe(sock);
    });
    up.on('response', (upRes) => {
      // Not switched: pass the engine's answer on, then close.
      const lines = rawHeaderLines(upRes.rawHeaders.filter((_, i, a) => !HOP_BY_HOP.has(String(a[i - (i % 2)]).toLowerCase())));
      sock.write(`HTTP/1.1 ${upRes.statusCode} ${upRes.statusMessage ?? ''}\r\n${lines}Connection: close\r\n\r\n`);
      upRes.pipe(sock);
    });
    up.on('error', (err) => {
      this.log.warn({ err: err.message }, 'builder engine connection error');
      sock.end(rawResponse(502, 'Bad Gateway', "buildcloud: the builder's engine is not answering"));
    });
    up.on('close', () => conn.upstream.delete(up));
    up.end();
  }

  // After a build or tag by `fingerprint`: each name whose image changed is now this lease's (image-names.ts).
  private async recordSets(fingerprint: string, sets: string[]): Promise<void> {
    try {
      const current = await this.currentImageIds(sets);
      for (const [name, id] of current) if (id !== null && this.names.recordSet(fingerprint, name, id)) this.log.debug({ name }, 'image name set');
    } catch (err) {
      this.log.warn({ err: String(err) }, 'could not read which images a build or tag named');
    }
  }

  // What each canonical name points to on the engine now (null: no such image). One engine call: an inspect for
  // one name, the image list filtered by reference for several.
  private async currentImageIds(names: string[]): Promise<Map<string, string | null>> {
    const out = new Map<string, string | null>(names.map((n) => [n, null]));
    if (names.length === 1) {
      const r = await this.engineGet(`/images/${familiarImageName(names[0])}/json`);
      if (r.status === 404) return out;
      if (r.status !== 200) throw new Error(`image inspect answered HTTP ${r.status}`);
      out.set(names[0], String((JSON.parse(r.body) as { Id?: unknown }).Id ?? '') || null);
      return out;
    }
    const filters = JSON.stringify({ reference: names.map(familiarImageName) });
    const r = await this.engineGet(`/images/json?filters=${encodeURIComponent(filters)}`);
    if (r.status !== 200) throw new Error(`image list answered HTTP ${r.status}`);
    for (const img of JSON.parse(r.body) as Array<{ Id?: string; RepoTags?: string[] | null }>) {
      for (const t of img.RepoTags ?? []) {
        const n = normaliseImageName(t);
        if (n !== null && out.has(n) && img.Id) out.set(n, img.Id);
      }
    }
    return out;
  }

  // A GET of the front's own on the engine's socket: small JSON answers only (inspect, a filtered list).
  private engineGet(path: string): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = http.get({ socketPath: this.opts.socketPath, path, agent: false, timeout: ENGINE_CALL_TIMEOUT_MS }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('the engine did not answer in time')));
      req.on('error', reject);
    });
  }

  // A bare close shows up in the docker CLI as "error during connect: ... EOF". Answering the first request with
  // a 403 makes it print "Error response from daemon: <why>" instead. Nothing reaches the engine either way.
  private refuse(client: tls.TLSSocket): void {
    const kill = setTimeout(() => client.destroy(), REFUSAL_TIMEOUT_MS);
    kill.unref();
    client.once('close', () => clearTimeout(kill));
    client.once('end', () => client.destroy());
    // Wait for the request: a response before it is "unsolicited" to Go's HTTP client, which then reports EOF.
    client.once('data', () => client.end(rawResponse(403, 'Forbidden', REFUSAL))); // later bytes are discarded
  }

  private drop(conn: Conn): void {
    if (!this.conns.delete(conn)) return;
    conn.client.destroy();
    for (const u of conn.upstream) u.destroy();
    conn.upstream.clear();
  }

  private touch(fingerprint: string, force: boolean): void {
    const cb = this.opts.onActivity;
    if (!cb) return;
    const now = Date.now();
    const last = this.lastActivity.get(fingerprint) ?? 0;
    if (!force && now - last < ACTIVITY_INTERVAL_MS) return;
    this.lastActivity.set(fingerprint, now);
    try {
      cb(fingerprint);
    } catch (err) {
      this.log.error({ err: String(err) }, 'onActivity callback threw');
    }
  }
}

// Accepts Node's "AB:CD:..." form too, so callers may pass either.
function normalise(fp: string): string {
  return fp.replace(/:/g, '').toLowerCase();
}

// What the policy decides on: the method, the target, and every Content-Type header as sent (Node keeps only the
// first in req.headers, the engine too; the policy refuses more than one rather than trust that both agree).
function engineRequest(req: http.IncomingMessage): { method: string; url: string; contentTypes: string[] } {
  const contentTypes: string[] = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) if (req.rawHeaders[i].toLowerCase() === 'content-type') contentTypes.push(req.rawHeaders[i + 1]);
  return { method: req.method ?? '', url: req.url ?? '', contentTypes };
}

function pathOf(url: string | undefined): string {
  return String(url ?? '')
    .split('?')[0]
    .slice(0, 200);
}

// A request has a body only when it says so (RFC 9112 6.3); then its own framing is kept towards the engine, so
// what the engine reads as one request is exactly what the policy checked.
// Bodies up to this size with a Content-Length are sent to the engine in one write (forward).
const SMALL_BODY_BYTES = 64 * 1024;

function hasBody(req: http.IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
}

// rawHeaders (name, value, name, value, ...) without the hop-by-hop ones; a chunked request body stays chunked.
function forwardHeaders(msg: http.IncomingMessage): string[] {
  const out: string[] = [];
  const raw = msg.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!HOP_BY_HOP.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  }
  if (msg instanceof http.IncomingMessage && msg.method && msg.headers['transfer-encoding'] !== undefined) out.push('Transfer-Encoding', 'chunked');
  return out;
}

function rawHeaderLines(raw: string[]): string {
  let s = '';
  for (let i = 0; i + 1 < raw.length; i += 2) s += `${raw[i]}: ${raw[i + 1]}\r\n`;
  return s;
}

function sendJson(res: http.ServerResponse, status: number, message: string): void {
  const body = JSON.stringify({ message });
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function rawResponse(status: number, reason: string, message: string): string {
  const body = JSON.stringify({ message });
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
