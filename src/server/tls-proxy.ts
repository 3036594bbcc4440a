// The builder's network face: a mutual-TLS listener that pipes raw bytes to the engine's unix socket.
// All leases share one CA, so "signed by the CA" is not enough: a connection is kept only if its client cert's
// fingerprint is currently allowed on *this* builder. Raw piping keeps HTTP upgrades (/session, /grpc) working.
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Logger } from '../common/log';
import { silentLogger } from '../common/log';
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
  upstream: net.Socket;
}

const ACTIVITY_INTERVAL_MS = 1000;
const HANDSHAKE_TIMEOUT_MS = 10_000;
// Detects clients that vanished (CI runner killed) without a FIN, so their connections stop counting as active.
const KEEPALIVE_MS = 30_000;
// How long a client may keep its side open after the engine closed the connection.
const LINGER_MS = 10_000;
// How long a refused client gets to send its request and read the 403.
const REFUSAL_TIMEOUT_MS = 5_000;
const REFUSAL =
  'buildcloud: this client certificate is not allowed on this builder (its lease has ended or it belongs to another lease)';

export class BuilderTlsProxy {
  private readonly opts: TlsProxyOptions;
  private readonly log: Logger;
  private readonly allowed = new Set<string>();
  private readonly conns = new Set<Conn>();
  private readonly rawSockets = new Set<net.Socket>();
  private readonly lastActivity = new Map<string, number>();
  private readonly server: tls.Server;
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
      // docker's hijacked streams (attach, BuildKit session) close their write side and keep reading.
      allowHalfOpen: true,
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
    const closed = this.listening
      ? new Promise<void>((resolve) => this.server.close(() => resolve()))
      : Promise.resolve();
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
    const upstream = net.createConnection({ path: this.opts.socketPath, allowHalfOpen: true });
    const conn: Conn = { fingerprint, client, upstream };
    this.conns.add(conn);
    upstream.on('error', (err) => {
      this.log.warn({ err: err.message }, 'builder engine connection error');
      this.drop(conn);
    });
    client.on('error', () => this.drop(conn));
    // The client is gone: nothing the engine still sends can be delivered.
    client.once('close', () => this.drop(conn));
    // The engine is done: let the client drain what is still buffered (destroy would drop it), then let go.
    upstream.once('close', () => {
      if (!this.conns.has(conn)) return;
      client.end();
      setTimeout(() => this.drop(conn), LINGER_MS).unref();
    });

    this.touch(fingerprint, true);
    const onData = (): void => this.touch(fingerprint, false);
    client.on('data', onData);
    upstream.on('data', onData);
    // pipe() forwards end() (half-close) in each direction and handles backpressure.
    client.pipe(upstream);
    upstream.pipe(client);
  }

  // A bare close shows up in the docker CLI as "error during connect: ... EOF". Answering the first request with
  // a 403 makes it print "Error response from daemon: <why>" instead. Nothing reaches the engine either way.
  private refuse(client: tls.TLSSocket): void {
    const body = JSON.stringify({ message: REFUSAL });
    const response =
      'HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
    const kill = setTimeout(() => client.destroy(), REFUSAL_TIMEOUT_MS);
    kill.unref();
    client.once('close', () => clearTimeout(kill));
    client.once('end', () => client.destroy());
    // Wait for the request: a response before it is "unsolicited" to Go's HTTP client, which then reports EOF.
    client.once('data', () => client.end(response)); // further bytes are discarded: the stream stays flowing
  }

  private drop(conn: Conn): void {
    if (!this.conns.delete(conn)) return;
    conn.client.destroy();
    conn.upstream.destroy();
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
