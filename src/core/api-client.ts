// The CI side's client of the control plane's gRPC API: a deadline on every call, transient failures retried
// with exponential backoff and full jitter, permanent ones reported at once with the server's message.
import * as fs from 'fs';
import * as grpc from '@grpc/grpc-js';
import { backoffDelay } from './backoff';
import { services, type ExchangeTokenResponseMsg, type LeaseMsg, type ProvisionRequestMsg } from '../contract/grpc';

/** A client of a service loaded from the .proto: its methods are named at run time. */
type ServiceClient = InstanceType<grpc.ServiceClientConstructor>;

export interface ApiClientOptions {
  endpoint: string; // host:port, grpc://host:port, or grpcs://host:port (TLS)
  token?: string;
  deadlineMs?: number; // per attempt
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  onRetry?: (info: { method: string; attempt: number; delayMs: number; error: string }) => void;
  // A rate limit (RESOURCE_EXHAUSTED with `retry-after` metadata) is retried after the server's delay, unless that
  // delay is longer than this (ms, default 30_000): then the error is reported at once.
  maxRetryAfterMs?: number;
  sleep?: (ms: number) => Promise<void>; // injectable for tests
}

const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.ABORTED]);

export class ControlPlaneError extends Error {
  constructor(
    readonly method: string,
    readonly code: grpc.status,
    readonly details: string,
    readonly attempts: number,
    // From the server's `retry-after` trailing metadata (whole seconds), in ms; only rate limits send it.
    readonly retryAfterMs?: number
  ) {
    super(`${method} failed: ${details || grpc.status[code]} (${grpc.status[code]}${attempts > 1 ? `, after ${attempts} attempts` : ''})`);
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
    return this.code === grpc.status.RESOURCE_EXHAUSTED && this.retryAfterMs !== undefined;
  }
}

/** `retry-after` metadata as ms: whole seconds only; undefined when absent or not a number of seconds. */
export function retryAfterFromMetadata(md: grpc.Metadata | undefined): number | undefined {
  const v = md?.get('retry-after')[0];
  const s = typeof v === 'string' ? v.trim() : '';
  return /^\d{1,6}$/.test(s) ? Number(s) * 1000 : undefined;
}

export function parseEndpoint(endpoint: string): { address: string; secure: boolean } {
  const m = /^(?:(grpcs?):\/\/)?((?:\[[0-9a-fA-F:.]+\]|[^/\s:[\]]+):(\d{1,5}))\/?$/.exec(endpoint.trim());
  if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) {
    throw new Error(`Invalid endpoint '${endpoint}'. Expected host:port, grpc://host:port or grpcs://host:port.`);
  }
  return { address: m[2], secure: m[1] === 'grpcs' };
}

export { backoffDelay };

export class ApiClient {
  private readonly bc: ServiceClient;
  private readonly auth: ServiceClient;
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
    const { address, secure } = parseEndpoint(opts.endpoint);
    // grpcs:// trusts the system roots, plus a private CA from BUILDCLOUD_CA_FILE (PEM) for self-hosted planes.
    const ca = process.env.BUILDCLOUD_CA_FILE ? fs.readFileSync(process.env.BUILDCLOUD_CA_FILE) : undefined;
    const creds = secure ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure();
    const { BuildCloud, Auth } = services();
    this.bc = new BuildCloud(address, creds);
    this.auth = new Auth(address, creds);
  }

  setToken(token: string): void {
    this.o.token = token;
  }

  // `limits` bound one call (e.g. to what is left of a caller's own time budget).
  provision(req: ProvisionRequestMsg, limits?: { attempts?: number; deadlineMs?: number }): Promise<LeaseMsg> {
    return this.call(this.bc, 'Provision', req, true, limits);
  }

  release(leaseId: string): Promise<LeaseMsg> {
    return this.call(this.bc, 'Release', { leaseId });
  }

  get(leaseId: string): Promise<LeaseMsg> {
    return this.call(this.bc, 'Get', { leaseId });
  }

  exchangeToken(oidcToken: string, org = ''): Promise<ExchangeTokenResponseMsg> {
    return this.call(this.auth, 'ExchangeToken', { oidcToken, org }, false);
  }

  close(): void {
    this.bc.close();
    this.auth.close();
  }

  private async call<T>(
    client: ServiceClient,
    method: string,
    req: object,
    authed = true,
    limits: { attempts?: number; deadlineMs?: number } = {}
  ): Promise<T> {
    const attempts = limits.attempts ?? this.o.attempts;
    const deadlineMs = limits.deadlineMs ?? this.o.deadlineMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise<T>((resolve, reject) => {
          const md = new grpc.Metadata();
          if (authed && this.o.token) md.set('authorization', `Bearer ${this.o.token}`);
          client[method](req, md, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) =>
            err ? reject(new ControlPlaneError(method, err.code, err.details, attempt, retryAfterFromMetadata(err.metadata))) : resolve(res)
          );
        });
      } catch (err) {
        const e = err as ControlPlaneError;
        const waitable = e.rateLimited && (e.retryAfterMs as number) <= this.o.maxRetryAfterMs;
        if (!(e.transient || waitable) || attempt >= attempts) throw e;
        // A rate limit: the server's delay plus up to 10% jitter, so the jobs it refused together do not return together.
        const delayMs = waitable
          ? (e.retryAfterMs as number) + Math.floor(Math.random() * 0.1 * (e.retryAfterMs as number))
          : backoffDelay(attempt, this.o.baseDelayMs, this.o.maxDelayMs);
        this.o.onRetry?.({ method, attempt, delayMs, error: e.details });
        await this.o.sleep(delayMs);
      }
    }
  }
}
