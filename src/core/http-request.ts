// One HTTP request over node:http / node:https, for the runner's small JSON calls to the control plane (the metering
// flush, the pipeline's usage). Not the global fetch: its undici parser is WebAssembly, and a process that loads it
// pays about 100 ms to compile it, most of it at exit, on every report (docs/benchmarks.md).
//
// What fetch gave the callers, kept: a timeout through an AbortSignal (rejects with the signal's reason, a
// TimeoutError for AbortSignal.timeout), network errors as "request failed" with the system error as `cause`
// (callers print `message (cause)`), a bounded reply, and https with the system roots (plus NODE_EXTRA_CA_CERTS)
// and, when BUILDCLOUD_CA_FILE names one, the control plane's private CA, as the gRPC client trusts it.
import * as http from 'http';
import type * as https from 'https';
import type * as net from 'net';
import { trustedCa } from './tls-trust';
import { adoptPreconnected } from './preconnect';

// node:https (and node:tls under it) only for https URLs: about 3 ms of a start-up that is ~25 ms (issue 10).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const httpsModule = (): typeof https => require('https') as typeof https;

export interface HttpRequestInit {
  method?: string; // default GET
  headers?: Record<string, string>;
  body?: string;
  signal?: AbortSignal; // aborts the request and the reading of its reply
  maxBytes?: number; // reply bodies beyond this are refused; default 4 MiB
  // Use the connection preconnect.ts opened to this URL's origin, if there is one still open (once: it is handed over).
  preconnected?: boolean;
}

export interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders; // lower-case names
  text: string;
}

/** The seam the clients take (tests inject one that hangs or fails); httpRequest is the real one. */
export type HttpRequester = (url: string, init: HttpRequestInit) => Promise<HttpReply>;

export const DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024;

/** A header's single value (the first when repeated), null when absent: what fetch's headers.get gave. */
export function headerValue(headers: http.IncomingHttpHeaders, name: string): string | null {
  const v = headers[name.toLowerCase()];
  if (v === undefined) return null;
  return Array.isArray(v) ? (v[0] ?? null) : v;
}

export const httpRequest: HttpRequester = (url, init) =>
  new Promise<HttpReply>((resolve, reject) => {
    const signal = init.signal;
    if (signal?.aborted) return reject(signal.reason);
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return reject(new Error(`invalid URL ${url}`));
    }
    const secure = u.protocol === 'https:';
    if (!secure && u.protocol !== 'http:') return reject(new Error(`unsupported protocol ${u.protocol}`));
    const maxBytes = init.maxBytes ?? DEFAULT_MAX_REPLY_BYTES;
    const headers: Record<string, string | number> = { ...init.headers };
    if (init.body !== undefined) headers['content-length'] = Buffer.byteLength(init.body);

    let done = false;
    const finish = (err: unknown, reply?: HttpReply) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(reply as HttpReply);
    };
    let ca: string[] | undefined;
    try {
      ca = secure ? trustedCa() : undefined;
    } catch (err) {
      return reject(failed(`could not read BUILDCLOUD_CA_FILE: ${(err as Error).message}`, err));
    }
    const options: https.RequestOptions = { method: init.method ?? 'GET', headers, ...(ca ? { ca } : {}) };
    const early: net.Socket | null = init.preconnected ? adoptPreconnected(u.origin) : null;
    if (early) {
      // That socket was opened with the same trust (tls-trust.ts) and server name; it serves this one request. No
      // agent: node:http uses createConnection only when none is given (agent: false would make a fresh one).
      options.createConnection = () => early;
    }
    const req = (secure ? httpsModule() : http).request(u, options, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) {
          req.destroy();
          finish(new Error(`the reply is larger than ${maxBytes} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on('error', (err) => finish(failed('reading the reply failed', err)));
      res.on('end', () => finish(null, { status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    const onAbort = () => {
      finish(signal?.reason ?? Object.assign(new Error('the request was aborted'), { name: 'AbortError' }));
      req.destroy();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err) => finish(failed('request failed', err)));
    req.end(init.body);
  });

// fetch's shape: a generic message, and the system error (code, address) as the cause.
function failed(message: string, cause: unknown): Error {
  return Object.assign(new Error(message), { cause });
}
