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
      try {
        return DECODE[method](JSON.parse(reply.text));
      } catch (err) {
        const why = err instanceof ContractError ? err.message : 'not JSON';
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
    throw failure(
      statusOfHttp(reply.status),
      `HTTP ${reply.status} from ${this.baseUrl} (not a Connect reply: is this the control plane's HTTP port?)`,
      retryAfter
    );
  }

  close(): void {
    // Node's global agent keeps no connection this client must end: each call is its own request.
  }
}

function failure(code: number, details: string, retryAfterMs?: number): RpcCallFailure {
  return { code, details, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
}
