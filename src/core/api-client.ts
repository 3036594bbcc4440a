// The CI side's client of the control plane's API: a deadline on every call, transient failures retried with
// exponential backoff and full jitter, permanent ones reported at once with the server's message. Two transports
// carry the one contract, chosen by the endpoint (endpoint.ts parseEndpoint): gRPC (grpc-transport.ts, loaded only
// for a gRPC endpoint: @grpc/grpc-js and the protobuf runtime cost more to load than Node takes to start) and the
// Connect protocol over HTTP/1.1 JSON (connect-transport.ts, Node's own http client).
import { backoffDelay } from './backoff';
import { parseEndpoint } from './endpoint';
import type { RpcMethod } from '../contract/connect';
import type { ExchangeTokenResponseMsg, LeaseMsg, ProvisionRequestMsg } from '../contract/grpc';
import { Status, statusName } from '../contract/rpc-status';
import { ConnectTransport } from './connect-transport';

export interface ApiClientOptions {
  endpoint: string; // endpoint.ts parseEndpoint's forms: host:port, grpc(s)://host:port, http(s)://host[:port][/prefix]
  token?: string;
  deadlineMs?: number; // per attempt
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  onRetry?: (info: { method: string; attempt: number; delayMs: number; error: string }) => void;
  // A rate limit (RESOURCE_EXHAUSTED with `retry-after`) is retried after the server's delay, unless that delay is
  // longer than this (ms, default 30_000): then the error is reported at once.
  maxRetryAfterMs?: number;
  sleep?: (ms: number) => Promise<void>; // injectable for tests
}

/** What one attempt of a call failed with, in either transport's terms. */
export interface RpcCallFailure {
  code: number; // rpc-status.ts Status
  details: string;
  retryAfterMs?: number; // a rate limit's wait (gRPC `retry-after` metadata, HTTP Retry-After), whole seconds as ms
}

/** One transport: sends a call once, resolves to the reply message (grpc.ts shapes) or rejects with RpcCallFailure. */
export interface RpcTransport {
  call(method: RpcMethod, req: object, o: { token?: string; deadlineMs: number }): Promise<unknown>;
  close(): void;
}

const TRANSIENT = new Set<number>([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.ABORTED]);

export class ControlPlaneError extends Error {
  constructor(
    readonly method: string,
    readonly code: number, // rpc-status.ts Status (the gRPC status numbers)
    readonly details: string,
    readonly attempts: number,
    // From the server's `retry-after` (whole seconds), in ms; only rate limits send it.
    readonly retryAfterMs?: number
  ) {
    super(`${method} failed: ${details || statusName(code)} (${statusName(code)}${attempts > 1 ? `, after ${attempts} attempts` : ''})`);
    this.name = 'ControlPlaneError';
  }
  get transient(): boolean {
    return TRANSIENT.has(this.code);
  }
  /**
   * A per-credential rate limit: RESOURCE_EXHAUSTED that says when to retry. RESOURCE_EXHAUSTED without `retry-after`
   * (no build minutes left, an org's lease or builder cap) is not: waiting does not change it.
   */
  get rateLimited(): boolean {
    return this.code === Status.RESOURCE_EXHAUSTED && this.retryAfterMs !== undefined;
  }
}

export { backoffDelay, parseEndpoint };

function grpcTransport(address: string, secure: boolean): RpcTransport {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: @grpc/grpc-js loads only for a gRPC endpoint (issue 10)
  const { GrpcTransport } = require('./grpc-transport') as typeof import('./grpc-transport');
  return new GrpcTransport(address, secure);
}

export class ApiClient {
  private readonly transport: RpcTransport;
  private readonly o: Required<Omit<ApiClientOptions, 'token' | 'onRetry'>> & Pick<ApiClientOptions, 'token' | 'onRetry'>;

  constructor(opts: ApiClientOptions) {
    this.o = {
      deadlineMs: 30_000,
      attempts: 5,
      baseDelayMs: 500,
      maxDelayMs: 8_000,
      maxRetryAfterMs: 30_000,
      sleep: (ms: number) => new Promise((r) => setTimeout(r, ms)),
      ...opts
    };
    const where = parseEndpoint(opts.endpoint);
    this.transport = where.protocol === 'connect' ? new ConnectTransport(where.baseUrl) : grpcTransport(where.address, where.secure);
  }

  setToken(token: string): void {
    this.o.token = token;
  }

  // `limits` bound one call (e.g. to what is left of a caller's own time budget).
  provision(req: ProvisionRequestMsg, limits?: { attempts?: number; deadlineMs?: number }): Promise<LeaseMsg> {
    return this.call('BuildCloud/Provision', req, true, limits);
  }

  release(leaseId: string): Promise<LeaseMsg> {
    return this.call('BuildCloud/Release', { leaseId });
  }

  get(leaseId: string): Promise<LeaseMsg> {
    return this.call('BuildCloud/Get', { leaseId });
  }

  exchangeToken(oidcToken: string, org = ''): Promise<ExchangeTokenResponseMsg> {
    return this.call('Auth/ExchangeToken', { oidcToken, org }, false);
  }

  close(): void {
    this.transport.close();
  }

  private async call<T>(method: RpcMethod, req: object, authed = true, limits: { attempts?: number; deadlineMs?: number } = {}): Promise<T> {
    const name = method.split('/')[1];
    const attempts = limits.attempts ?? this.o.attempts;
    const deadlineMs = limits.deadlineMs ?? this.o.deadlineMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return (await this.transport.call(method, req, { token: authed ? this.o.token : undefined, deadlineMs }).catch((f: RpcCallFailure) => {
          throw new ControlPlaneError(name, f.code, f.details, attempt, f.retryAfterMs);
        })) as T;
      } catch (err) {
        const e = err as ControlPlaneError;
        const waitable = e.rateLimited && (e.retryAfterMs as number) <= this.o.maxRetryAfterMs;
        if (!(e.transient || waitable) || attempt >= attempts) throw e;
        // A rate limit: the server's delay plus up to 10% jitter, so the jobs it refused together do not return together.
        const delayMs = waitable
          ? (e.retryAfterMs as number) + Math.floor(Math.random() * 0.1 * (e.retryAfterMs as number))
          : backoffDelay(attempt, this.o.baseDelayMs, this.o.maxDelayMs);
        this.o.onRetry?.({ method: name, attempt, delayMs, error: e.details });
        await this.o.sleep(delayMs);
      }
    }
  }
}
