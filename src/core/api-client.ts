// The CI side's client of the control plane's API: a deadline on every call, transient failures retried with
// exponential backoff and full jitter, permanent ones reported at once with the server's message. Two transports
// carry the one contract, chosen by the endpoint (endpoint.ts parseEndpoint): gRPC (grpc-transport.ts, loaded only
// for a gRPC endpoint: @grpc/grpc-js and the protobuf runtime cost more to load than Node takes to start) and the
// Connect protocol over HTTP/1.1 JSON (connect-transport.ts, Node's own http client).
import { backoffDelay } from './backoff';
import { parseEndpoint, type ControlPlaneAddress } from './endpoint';
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
  // The reply came from something that is no control plane, in its own words (a web server's 404, a body that is not
  // the contract's); set by the Connect transport, which sees the HTTP reply.
  notControlPlane?: string;
}

/** One transport: sends a call once, resolves to the reply message (grpc.ts shapes) or rejects with RpcCallFailure. */
export interface RpcTransport {
  call(method: RpcMethod, req: object, o: { token?: string; deadlineMs: number }): Promise<unknown>;
  close(): void;
}

const TRANSIENT = new Set<number>([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.ABORTED]);

/**
 * True when a failure's text says the server's certificate is not trusted (self-signed, unknown issuer, expired, or
 * naming another host): UNAVAILABLE, but no retry heals it (issue 12).
 */
export function untrustedCertificate(details: string): boolean {
  return /SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|CERT_HAS_EXPIRED|CERT_NOT_YET_VALID|ERR_TLS_CERT_ALTNAME_INVALID|self[- ]signed certificate|unable to verify the first certificate|unable to get local issuer certificate|certificate has expired|does not match certificate's altnames/i.test(
    details
  );
}

/** A call's failure, as the control plane (or the way to it) reported it; `transient` ones are worth retrying. */
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

/**
 * A wrong endpoint, found when the first call to it failed (endpoint-probe.ts): one message naming the endpoint and
 * the likely mistake. Never transient: retrying a wrong address only delays this message (issue 12). `reachable`
 * is false when nothing answered there (nothing listens, an unknown host): the control plane may be down, which is
 * what `fallback: local` is for; true when something else answered (a configuration mistake).
 */
export class EndpointError extends ControlPlaneError {
  constructor(
    method: string,
    code: number,
    readonly endpoint: string,
    readonly problem: string,
    readonly reachable: boolean
  ) {
    super(method, code, problem, 1);
    this.name = 'EndpointError';
    this.message = `Endpoint '${endpoint}': ${problem}`;
  }
  override get transient(): boolean {
    return false;
  }
}

export { backoffDelay, parseEndpoint };

function grpcTransport(address: string, secure: boolean): RpcTransport {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: @grpc/grpc-js loads only for a gRPC endpoint (issue 10)
  const { GrpcTransport } = require('./grpc-transport') as typeof import('./grpc-transport');
  return new GrpcTransport(address, secure);
}

// Status codes only a control plane sends: a call that got one was answered by it, so the endpoint is right.
const ANSWERED = new Set<number>([
  Status.INVALID_ARGUMENT,
  Status.NOT_FOUND,
  Status.ALREADY_EXISTS,
  Status.PERMISSION_DENIED,
  Status.RESOURCE_EXHAUSTED,
  Status.FAILED_PRECONDITION,
  Status.ABORTED,
  Status.OUT_OF_RANGE,
  Status.UNAUTHENTICATED
]);

// Calls about a lease are made to the endpoint that gave it: it answered before (perhaps in another process), so a
// refused connection there is a control plane restarting, retried, not a wrong address.
const ABOUT_A_LEASE = new Set<RpcMethod>(['BuildCloud/Release', 'BuildCloud/Get']);

/**
 * The control plane's client. Retries what can heal: UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED (a control plane
 * restarting or at capacity), a rate limit with its `retry-after`, an HTTP 503 with Retry-After (after that delay).
 * Never a wrong endpoint: when the first call fails before any reply of the control plane, one look at the port
 * (endpoint-probe.ts) tells a wrong address or protocol (EndpointError, at once) from a control plane that is there
 * but cannot serve now (retried). A refused connection after the endpoint has answered (a call of this client
 * succeeded, or a call about a lease it gave) is a restart and retried like any UNAVAILABLE.
 */
export class ApiClient {
  private readonly transport: RpcTransport;
  private readonly o: Required<Omit<ApiClientOptions, 'token' | 'onRetry'>> & Pick<ApiClientOptions, 'token' | 'onRetry'>;
  private readonly where: ControlPlaneAddress;
  // The control plane answered this client once (or a look at the port found it speaking as one): from then on a
  // failure is not a wrong endpoint.
  private answered = false;

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
    this.where = where;
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
    if (ABOUT_A_LEASE.has(method)) this.answered = true;
    for (let attempt = 1; ; attempt++) {
      let e: ControlPlaneError;
      try {
        const reply = (await this.transport.call(method, req, { token: authed ? this.o.token : undefined, deadlineMs })) as T;
        this.answered = true;
        return reply;
      } catch (err) {
        const f = err as RpcCallFailure;
        if (typeof f?.code !== 'number') throw err; // not a call's failure: a bug, with its stack
        e = (await this.wrongEndpoint(method, f)) ?? new ControlPlaneError(name, f.code, f.details, attempt, f.retryAfterMs);
      }
      // A rate limit, or a 503 that says when to come back: the server's delay, when it is not too long.
      const retryAfter = e.retryAfterMs !== undefined && e.retryAfterMs <= this.o.maxRetryAfterMs && (e.rateLimited || e.transient);
      if (!(e.transient || retryAfter) || attempt >= attempts || untrustedCertificate(e.details)) throw e;
      // The server's delay plus up to 10% jitter, so the jobs it refused together do not return together.
      const delayMs = retryAfter
        ? (e.retryAfterMs as number) + Math.floor(Math.random() * 0.1 * (e.retryAfterMs as number))
        : backoffDelay(attempt, this.o.baseDelayMs, this.o.maxDelayMs);
      this.o.onRetry?.({ method: name, attempt, delayMs, error: e.details });
      await this.o.sleep(delayMs);
    }
  }

  // Before the control plane has answered: is the failure a wrong endpoint? Replies of something that is no control
  // plane say so themselves; a failure without a reply is looked into once (endpoint-probe.ts, a few ms for every
  // case of issue 12). Anything a control plane could have sent marks the endpoint as right.
  private async wrongEndpoint(method: RpcMethod, f: RpcCallFailure): Promise<EndpointError | null> {
    if (this.answered) return null;
    const name = method.split('/')[1];
    if (ANSWERED.has(f.code)) {
      this.answered = true;
      return null;
    }
    if (f.notControlPlane) return new EndpointError(name, f.code, this.o.endpoint, f.notControlPlane, true);
    if (f.code === Status.UNIMPLEMENTED && this.where.protocol === 'grpc') {
      return new EndpointError(
        name,
        f.code,
        this.o.endpoint,
        `this port answers gRPC but does not serve ${method}: it is not a Build Cloud control plane (or one older than this client). Use the endpoint \`buildcloud serve\` prints.`,
        true
      );
    }
    if (f.code !== Status.UNAVAILABLE) return null;
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: node:tls and the probe only on a failure
    const { probe, endpointProblem, hostPort } = require('./endpoint-probe') as typeof import('./endpoint-probe');
    const { host, port } = hostPort(this.where);
    const found = endpointProblem(this.where, await probe(host, port));
    // Nothing wrong with the endpoint (it speaks as a control plane does, or the look was inconclusive): what failed
    // may heal, and the usual retries follow without another look.
    this.answered = !found;
    return found ? new EndpointError(name, f.code, this.o.endpoint, found.problem, found.reachable) : null;
  }
}
