// What answers at a control plane endpoint, asked only after a first call to it failed without a reply (issue 12):
// a wrong endpoint used to be retried for the whole provision-timeout (121 s, 31 warnings ending in gRPC's empty
// "Resolution note") although nothing about it could heal. One look at the port tells the likely mistake: nothing
// listens, the host name does not resolve, the port speaks the other protocol (gRPC where HTTP/1.1 was expected or
// the reverse), TLS where plaintext was expected or the reverse, a certificate this runner does not trust, or
// something that is no control plane at all. Loaded lazily by api-client.ts: node:tls costs start-up time.
import * as net from 'net';
import type * as tls from 'tls';
import type { ControlPlaneAddress } from './endpoint';
import { trustedCa } from './tls-trust';

/** What one look at host:port found. */
export type Reach =
  | { kind: 'refused' } // ECONNREFUSED: nothing listens
  | { kind: 'no-such-host'; code: string } // the name does not resolve (ENOTFOUND)
  | { kind: 'unreachable'; code: string } // no route to the address (EHOSTUNREACH, ENETUNREACH)
  | { kind: 'inconclusive' } // no answer in time, a closed connection, a temporary DNS failure: nothing to conclude
  | { kind: 'answers'; tls: boolean; speaks: Speaks; sample?: string; certError?: string };

/** The protocol a port answered in: HTTP/1.1, HTTP/2 (what gRPC runs on), or something else. */
export type Speaks = 'http1' | 'http2' | 'other';

/** How long one look may take; the issue's bound is 5 s from a wrong endpoint to its error. */
export const PROBE_TIMEOUT_MS = 2000;

/**
 * Looks at host:port once: a TLS handshake (trust as the clients have it, tls-trust.ts, but not enforced, so that
 * an untrusted certificate is named rather than hidden), else a plaintext connection; on either, one HTTP/1.1
 * request whose first reply bytes tell HTTP/1.1 from HTTP/2. Never throws; sockets are closed before it resolves.
 */
export async function probe(host: string, port: number, timeoutMs = PROBE_TIMEOUT_MS): Promise<Reach> {
  const overTls = await tlsLook(host, port, timeoutMs);
  if (overTls !== 'not-tls') return overTls;
  return plainLook(host, port, timeoutMs);
}

const UNREACHABLE = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

function failedToConnect(err: NodeJS.ErrnoException): Reach | null {
  const code = err.code ?? '';
  if (code === 'ECONNREFUSED') return { kind: 'refused' };
  if (code === 'ENOTFOUND') return { kind: 'no-such-host', code };
  if (UNREACHABLE.has(code)) return { kind: 'unreachable', code };
  if (code === 'EAI_AGAIN' || code === 'ETIMEDOUT') return { kind: 'inconclusive' }; // may heal: the usual retries
  return null;
}

// An HTTP/1.1 request any server may answer: HTTP/1.1 servers reply with a status line, HTTP/2 servers (gRPC) with
// a SETTINGS or GOAWAY frame, since the bytes are not the HTTP/2 connection preface.
function request(host: string): string {
  return `GET / HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: buildcloud-endpoint-check\r\nConnection: close\r\n\r\n`;
}

/** What the first bytes a port sent back say it speaks (pure; exported for tests). */
export function speaksOf(first: Buffer): { speaks: Speaks; sample?: string } {
  if (first.subarray(0, 5).toString('latin1') === 'HTTP/') return { speaks: 'http1' };
  // An HTTP/2 frame header: 24-bit length, type (4 SETTINGS, 7 GOAWAY), flags, stream 0.
  if (first.length >= 9 && (first[3] === 4 || first[3] === 7) && first.readUInt32BE(5) === 0) return { speaks: 'http2' };
  const sample = first
    .subarray(0, 24)
    .toString('latin1')
    .split(/[\r\n]/)[0]
    .replace(/[^\x20-\x7e]/g, '.')
    .trim();
  return { speaks: 'other', ...(sample ? { sample } : {}) };
}

/** The first bytes `socket` sends back after `request`, or null when it closes without a word or stays silent. */
function firstBytes(socket: net.Socket, host: string, timeoutMs: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(null), timeoutMs);
    const done = (b: Buffer | null) => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      socket.destroy();
      resolve(b);
    };
    socket.once('data', (d: Buffer) => done(d));
    socket.once('close', () => done(null));
    socket.on('error', () => done(null));
    socket.write(request(host));
  });
}

function tlsLook(host: string, port: number, timeoutMs: number): Promise<Reach | 'not-tls'> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- node:tls only when an endpoint failed
  const tlsModule = require('tls') as typeof tls;
  let ca: string[] | undefined;
  try {
    ca = trustedCa();
  } catch {
    ca = undefined; // an unreadable BUILDCLOUD_CA_FILE is reported by the call itself
  }
  const isAddress = net.isIP(host) !== 0;
  return new Promise((resolve) => {
    const socket = tlsModule.connect({
      host,
      port,
      ...(isAddress ? {} : { servername: host }),
      ...(ca ? { ca } : {}),
      rejectUnauthorized: false, // looked at below: an untrusted certificate is a finding, not a reason to stop looking
      ALPNProtocols: ['h2', 'http/1.1']
    });
    const timer = setTimeout(() => finish({ kind: 'inconclusive' }), timeoutMs);
    let settled = false;
    const finish = (r: Reach | 'not-tls') => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const certError = socket.authorized ? identityError(tlsModule, host, socket) : String(socket.authorizationError ?? 'not trusted');
      const found = (speaks: Speaks, sample?: string): Reach => ({
        kind: 'answers',
        tls: true,
        speaks,
        ...(sample ? { sample } : {}),
        ...(certError ? { certError } : {})
      });
      if (socket.alpnProtocol === 'h2') return finish(found('http2'));
      settled = true;
      firstBytes(socket, host, timeoutMs).then((b) => {
        if (!b) return resolve({ kind: 'inconclusive' });
        const s = speaksOf(b);
        resolve(found(s.speaks, s.sample));
      });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(failedToConnect(err) ?? 'not-tls'));
    socket.once('close', () => finish('not-tls'));
  });
}

// A trusted certificate may still name another host: what node:https would refuse the request for.
function identityError(tlsModule: typeof tls, host: string, socket: tls.TLSSocket): string | undefined {
  const err = tlsModule.checkServerIdentity(host, socket.getPeerCertificate());
  return err ? `${err.message}` : undefined;
}

function plainLook(host: string, port: number, timeoutMs: number): Promise<Reach> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => finish({ kind: 'inconclusive' }), timeoutMs);
    let settled = false;
    const finish = (r: Reach) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    socket.once('connect', () => {
      clearTimeout(timer);
      settled = true;
      firstBytes(socket, host, timeoutMs).then((b) => {
        if (!b) return resolve({ kind: 'inconclusive' });
        const s = speaksOf(b);
        resolve({ kind: 'answers', tls: false, speaks: s.speaks, ...(s.sample ? { sample: s.sample } : {}) });
      });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(failedToConnect(err) ?? { kind: 'inconclusive' }));
  });
}

/** A wrong endpoint, said once: what is wrong and what to use instead; `reachable` false when nothing answered. */
export interface EndpointProblem {
  problem: string;
  reachable: boolean; // true when something answered at that port (a configuration mistake, not an outage)
}

/**
 * What `reach` says about an endpoint the client expected to speak `where`'s protocol: the likely mistake, or null
 * when the port answers as a control plane would (then the failure is one the usual retries may heal). Pure.
 */
export function endpointProblem(where: ControlPlaneAddress, reach: Reach): EndpointProblem | null {
  const { host, port } = hostPort(where);
  const hp = `${formatHost(host)}:${port}`;
  const wantHttp1 = where.protocol === 'connect';
  switch (reach.kind) {
    case 'refused':
      return { problem: `nothing listens on ${hp}: is the control plane running, and is this its port?`, reachable: false };
    case 'no-such-host':
      return {
        problem: `the host name '${host}' does not resolve (${reach.code}): check its spelling, or use the control plane's IP address.`,
        reachable: false
      };
    case 'unreachable':
      return { problem: `${hp} cannot be reached from here (${reach.code}): is the address right, and may this runner's network reach it?`, reachable: false };
    case 'inconclusive':
      return null;
    case 'answers':
      break;
  }
  // What this port wants: the endpoint to use instead, when the protocol or TLS does not match.
  const use = (speaks: Speaks, secure: boolean) =>
    speaks === 'http2' ? (secure ? `grpcs://${hp}` : hp) : `${secure ? 'https' : 'http'}://${hp}${where.protocol === 'connect' ? pathOf(where) : ''}`;
  if (reach.speaks === 'other') {
    return {
      problem: `this port answers, but neither as HTTP/1.1 nor as gRPC${reach.sample ? ` (it sent '${reach.sample}')` : ''}: it is not a Build Cloud control plane. Use the endpoint \`buildcloud serve\` prints.`,
      reachable: true
    };
  }
  if (reach.tls !== where.secure) {
    return reach.tls
      ? { problem: `this port answers only over TLS: use ${use(reach.speaks, true)}`, reachable: true }
      : {
          problem: `this port answers without TLS: use ${use(reach.speaks, false)} (or serve TLS: buildcloud serve --tls-cert FILE --tls-key FILE).`,
          reachable: true
        };
  }
  if (wantHttp1 && reach.speaks === 'http2') {
    return { problem: `this port answers gRPC, not HTTP/1.1: use ${use('http2', where.secure)} (or the control plane's HTTP port).`, reachable: true };
  }
  if (!wantHttp1 && reach.speaks === 'http1') {
    return { problem: `this port answers HTTP/1.1, not gRPC: use ${use('http1', where.secure)}`, reachable: true };
  }
  if (reach.certError) {
    return {
      problem: `the certificate of ${hp} is not trusted here (${reach.certError}): set BUILDCLOUD_CA_FILE to the PEM file of the CA that signed it, or use the host name the certificate names.`,
      reachable: true
    };
  }
  return null;
}

/** The host (IPv6 without brackets) and port an endpoint connects to. */
export function hostPort(where: ControlPlaneAddress): { host: string; port: number } {
  if (where.protocol === 'connect') {
    const u = new URL(where.baseUrl);
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (where.secure ? 443 : 80)) };
  }
  const i = where.address.lastIndexOf(':');
  return { host: where.address.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(where.address.slice(i + 1)) };
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function pathOf(where: { baseUrl: string }): string {
  return new URL(where.baseUrl).pathname.replace(/\/$/, '');
}
