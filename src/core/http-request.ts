// One HTTP request over node:http / node:https, for the runner's small JSON calls to the control plane (the metering
// flush, the pipeline's usage). Not the global fetch: its undici parser is WebAssembly, and a process that loads it
// pays about 100 ms to compile it, most of it at exit, on every report (docs/benchmarks.md).
//
// What fetch gave the callers, kept: a timeout through an AbortSignal (rejects with the signal's reason, a
// TimeoutError for AbortSignal.timeout), network errors as "request failed" with the system error as `cause`
// (callers print `message (cause)`), a bounded reply, and https with the system roots (plus NODE_EXTRA_CA_CERTS)
// and, when BUILDCLOUD_CA_FILE names one, the control plane's private CA, as the gRPC client trusts it.
import * as fs from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as tls from 'tls';

export interface HttpRequestInit {
  method?: string; // default GET
  headers?: Record<string, string>;
  body?: string;
  signal?: AbortSignal; // aborts the request and the reading of its reply
  maxBytes?: number; // reply bodies beyond this are refused; default 4 MiB
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

let caCache: { file: string; ca: string[] } | undefined;

/** The roots for https: undefined (Node's default store) unless BUILDCLOUD_CA_FILE names a private CA. */
function trustedCa(env: NodeJS.ProcessEnv = process.env): string[] | undefined {
  const file = env.BUILDCLOUD_CA_FILE;
  if (!file) return undefined;
  if (caCache?.file === file) return caCache.ca;
  // Giving `ca` replaces Node's default store, NODE_EXTRA_CA_CERTS included: keep both beside the private CA.
  const ca = [...tls.rootCertificates];
  const extra = env.NODE_EXTRA_CA_CERTS;
  if (extra) {
    try {
      ca.push(fs.readFileSync(extra, 'utf8'));
    } catch {
      // Node itself only warns about an unreadable NODE_EXTRA_CA_CERTS
    }
  }
  ca.push(fs.readFileSync(file, 'utf8'));
  caCache = { file, ca };
  return ca;
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
    const req = (secure ? https : http).request(u, options, (res) => {
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
