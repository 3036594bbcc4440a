// The CI side's client of the control plane's gRPC API: a deadline on every call, transient failures retried
// with exponential backoff and full jitter, permanent ones reported at once with the server's message.
import * as fs from 'fs';
import * as grpc from '@grpc/grpc-js';
import { backoffDelay } from './backoff';
import { services, type ExchangeTokenResponseMsg, type LeaseMsg, type ProvisionRequestMsg } from '../common/proto';

export interface ApiClientOptions {
  endpoint: string; // host:port, grpc://host:port, or grpcs://host:port (TLS)
  token?: string;
  deadlineMs?: number; // per attempt
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  onRetry?: (info: { method: string; attempt: number; delayMs: number; error: string }) => void;
}

const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.ABORTED]);

export class ControlPlaneError extends Error {
  constructor(
    readonly method: string,
    readonly code: grpc.status,
    readonly details: string,
    readonly attempts: number
  ) {
    super(`${method} failed: ${details || grpc.status[code]} (${grpc.status[code]}${attempts > 1 ? `, after ${attempts} attempts` : ''})`);
    this.name = 'ControlPlaneError';
  }
  get transient(): boolean {
    return TRANSIENT.has(this.code);
  }
}

export function parseEndpoint(endpoint: string): { address: string; secure: boolean } {
  const m = /^(?:(grpcs?):\/\/)?((?:\[[0-9a-fA-F:.]+\]|[^/\s:\[\]]+):(\d{1,5}))\/?$/.exec(endpoint.trim());
  if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) {
    throw new Error(`Invalid endpoint '${endpoint}'. Expected host:port, grpc://host:port or grpcs://host:port.`);
  }
  return { address: m[2], secure: m[1] === 'grpcs' };
}

export { backoffDelay };

export class ApiClient {
  private readonly bc: grpc.Client & Record<string, any>;
  private readonly auth: grpc.Client & Record<string, any>;
  private readonly o: Required<Omit<ApiClientOptions, 'token' | 'onRetry'>> & Pick<ApiClientOptions, 'token' | 'onRetry'>;

  constructor(opts: ApiClientOptions) {
    this.o = { deadlineMs: 30_000, attempts: 5, baseDelayMs: 500, maxDelayMs: 8_000, ...opts };
    const { address, secure } = parseEndpoint(opts.endpoint);
    // grpcs:// trusts the system roots, plus a private CA from BUILDCLOUD_CA_FILE (PEM) for self-hosted planes.
    const ca = process.env.BUILDCLOUD_CA_FILE ? fs.readFileSync(process.env.BUILDCLOUD_CA_FILE) : undefined;
    const creds = secure ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure();
    const { BuildCloud, Auth } = services();
    this.bc = new BuildCloud(address, creds) as any;
    this.auth = new Auth(address, creds) as any;
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
    client: grpc.Client & Record<string, any>,
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
            err ? reject(new ControlPlaneError(method, err.code, err.details, attempt)) : resolve(res)
          );
        });
      } catch (err) {
        const e = err as ControlPlaneError;
        if (!e.transient || attempt >= attempts) throw e;
        const delayMs = backoffDelay(attempt, this.o.baseDelayMs, this.o.maxDelayMs);
        this.o.onRetry?.({ method, attempt, delayMs, error: e.details });
        await new Promise((r) => setTimeout(r, delayMs));
      }
    }
  }
}
