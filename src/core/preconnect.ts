// Opens the TLS connection to the control plane while the rest of the program loads. A job's first request over
// https:// pays Node's TLS start-up (loading node:tls, OpenSSL's context, the root store: 11-16 ms to the ClientHello
// here, docs/benchmarks.md) on top of loading the step's own code; started from the small entry as soon as the
// inputs are checked, the handshake runs while the step's bundle is read and compiled (issue 10). The connection is
// handed to the first request to that origin (http-request.ts) and serves that one request; one that failed or
// closed meanwhile is dropped, and the request opens its own as it would have anyway, with the same trust.
import type * as net from 'net';
import type * as tls from 'tls';
import { parseEndpoint } from './endpoint';
import { trustedCa } from './tls-trust';

interface Held {
  socket: tls.TLSSocket;
  failed: boolean;
}

// On globalThis: the entry (e.g. dist/runner.js) and the step's bundle that adopts the socket are separate scripts.
const KEY = Symbol.for('buildcloud.preconnected');
function held(): Map<string, Held> {
  const g = globalThis as unknown as Record<symbol, Map<string, Held> | undefined>;
  return (g[KEY] ??= new Map());
}

/**
 * Starts a TLS connection to an https:// endpoint's origin (endpoint.ts forms); does nothing for any other endpoint,
 * one that does not parse, or a BUILDCLOUD_CA_FILE that cannot be read (the request then reports it). Never throws;
 * the socket never keeps the process alive on its own. True when a connection is on its way: the caller lets the
 * event loop turn once before its own synchronous work, so that the handshake starts.
 */
export function preconnect(endpoint: string, env: NodeJS.ProcessEnv = process.env): boolean {
  try {
    const where = parseEndpoint(endpoint);
    if (where.protocol !== 'connect' || !where.secure) return false;
    const u = new URL(where.baseUrl);
    if (held().has(u.origin)) return true;
    const ca = trustedCa(env);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    // SNI takes a host name, never an address (RFC 6066 section 3), as node:https decides it.
    const isAddress = host.includes(':') || /^[\d.]+$/.test(host);
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- node:tls only for an https:// endpoint
    const socket = (require('tls') as typeof tls).connect({
      host,
      port: Number(u.port || 443),
      ...(isAddress ? {} : { servername: host }),
      ...(ca ? { ca } : {}),
      ALPNProtocols: ['http/1.1']
    });
    const h: Held = { socket, failed: false };
    socket.on('error', () => (h.failed = true)); // the request that adopts it hears its own errors; before that, drop it
    socket.unref();
    held().set(u.origin, h);
    return true;
  } catch {
    return false; // a pre-connect is only ever a head start
  }
}

/** The pre-connected socket to `origin` (scheme://host:port), handed over once; null when none is open. */
export function adoptPreconnected(origin: string): net.Socket | null {
  const h = held().get(origin);
  if (!h) return null;
  held().delete(origin);
  if (h.failed || h.socket.destroyed) {
    h.socket.destroy();
    return null;
  }
  h.socket.ref();
  return h.socket;
}
