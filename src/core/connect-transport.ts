// The Connect transport of the control plane client (api-client.ts): the contract's unary calls as HTTP/1.1 POSTs
// of proto3 JSON (contract/connect.ts) through Node's own http client (http-request.ts: https with the system roots
// plus BUILDCLOUD_CA_FILE's CA). What a gRPC client reports, this reports alike: a connection that fails or a reply
// that never comes is UNAVAILABLE or DEADLINE_EXCEEDED, a Connect error body gives its code and message, a bare
// HTTP error (a proxy's page) the code the protocol assigns to its status.
import { CONNECT_PROTOCOL_VERSION, ContractError, exchangeTokenResponseFromJson, leaseFromJson, rpcPath, type RpcMethod } from '../contract/connect';
import { Status, retryAfterMs, statusOfConnectCode, statusOfHttp } from '../contract/rpc-status';
import type { RpcCallFailure, RpcTransport } from './api-client';
import { headerValue, httpRequest, type HttpRequester } from './http-request';

const DECODE: Record<RpcMethod, (json: unknown) => unknown> = {
  'BuildCloud/Provision': leaseFromJson,
  'BuildCloud/Release': leaseFromJson,
  'BuildCloud/Get': leaseFromJson,
  'Auth/ExchangeToken': exchangeTokenResponseFromJson
};

/** The reply bodies this client reads: a Lease with its certificates is a few kB; this is far above it. */
const MAX_REPLY_BYTES = 1 << 20;

export class ConnectTransport implements RpcTransport {
  /** `baseUrl` is the control plane's HTTP URL without a trailing slash (endpoint.ts); `request` is injectable for tests. */
  constructor(
    private readonly baseUrl: string,
    private readonly request: HttpRequester = httpRequest
  ) {}

  async call(method: RpcMethod, req: object, o: { token?: string; deadlineMs: number }): Promise<unknown> {
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'connect-protocol-version': CONNECT_PROTOCOL_VERSION,
      'connect-timeout-ms': String(Math.max(1, Math.round(o.deadlineMs)))
    };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    let reply;
    try {
      reply = await this.request(this.baseUrl + rpcPath(method), {
        method: 'POST',
        headers,
        body: JSON.stringify(req),
        signal: AbortSignal.timeout(o.deadlineMs),
        maxBytes: MAX_REPLY_BYTES,
        preconnected: true // the TLS connection the entry opened, if any (preconnect.ts)
      });
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      if (e.name === 'TimeoutError') throw failure(Status.DEADLINE_EXCEEDED, `Deadline exceeded after ${o.deadlineMs} ms`);
      const cause = e.cause?.code ?? e.cause?.message;
      throw failure(Status.UNAVAILABLE, `${e.message}${cause ? ` (${cause})` : ''}`);
    }
    if (reply.status === 200) {
      let json: unknown;
      try {
        json = JSON.parse(reply.text);
      } catch {
        const details = `The control plane's reply to ${method.split('/')[1]} does not fit the contract (not JSON).`;
        throw { ...failure(Status.INTERNAL, details), notControlPlane: notControlPlane(this.baseUrl, method, 'HTTP 200, but not JSON') };
      }
      try {
        return DECODE[method](json);
      } catch (err) {
        const why = err instanceof ContractError ? err.message : String(err);
        throw failure(Status.INTERNAL, `The control plane's reply to ${method.split('/')[1]} does not fit the contract (${why}).`);
      }
    }
    const retryAfter = retryAfterMs(headerValue(reply.headers, 'retry-after') ?? undefined);
    let body: { code?: unknown; message?: unknown } | null = null;
    try {
      body = JSON.parse(reply.text);
    } catch {
      // not a Connect error body: the HTTP status decides below
    }
    const code = typeof body?.code === 'string' ? statusOfConnectCode(body.code) : undefined;
    if (code !== undefined) throw failure(code, typeof body?.message === 'string' ? body.message : '', retryAfter);
    const f = failure(
      statusOfHttp(reply.status),
      `HTTP ${reply.status} from ${this.baseUrl} (not a Connect reply: is this the control plane's HTTP port?)`,
      retryAfter
    );
    // A proxy's page while the control plane behind it restarts or refuses (401, 403, 429, 5xx) is retried or reported
    // as it is; any other bare reply (404, 405, a redirect) comes from a server that is no control plane.
    throw BARE_BUT_MAYBE_OURS.has(reply.status) ? f : { ...f, notControlPlane: notControlPlane(this.baseUrl, method, `HTTP ${reply.status}`) };
  }

  close(): void {
    // Node's global agent keeps no connection this client must end: each call is its own request.
  }
}

const BARE_BUT_MAYBE_OURS = new Set([401, 403, 429, 500, 502, 503, 504]);

function notControlPlane(baseUrl: string, method: RpcMethod, what: string): string {
  return `this server answers HTTP/1.1 but is not a Build Cloud control plane (POST ${new URL(baseUrl + rpcPath(method)).pathname}: ${what}). Use the endpoint \`buildcloud serve\` prints (behind a proxy, with its path prefix).`;
}

function failure(code: number, details: string, retryAfterMs?: number): RpcCallFailure {
  return { code, details, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
}
