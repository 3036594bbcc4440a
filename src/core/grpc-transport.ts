// The gRPC transport of the control plane client (api-client.ts): @grpc/grpc-js with the contract's services
// (contract/grpc.ts). Loaded only for a gRPC endpoint: its own bundle beside the runner's (scripts/build.mjs).
import * as fs from 'fs';
import * as grpc from '@grpc/grpc-js';
import { services } from '../contract/grpc';
import type { RpcMethod } from '../contract/connect';
import { retryAfterMs } from '../contract/rpc-status';
import type { RpcCallFailure, RpcTransport } from './api-client';

/** A client of a service loaded from the .proto: its methods are named at run time. */
type ServiceClient = InstanceType<grpc.ServiceClientConstructor>;

export class GrpcTransport implements RpcTransport {
  private readonly clients: Record<'BuildCloud' | 'Auth', ServiceClient>;

  /** `address` is host:port; `secure` uses TLS with the system roots plus BUILDCLOUD_CA_FILE's CA (PEM), if set. */
  constructor(address: string, secure: boolean) {
    const ca = secure && process.env.BUILDCLOUD_CA_FILE ? fs.readFileSync(process.env.BUILDCLOUD_CA_FILE) : undefined;
    const creds = secure ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure();
    const { BuildCloud, Auth } = services();
    this.clients = { BuildCloud: new BuildCloud(address, creds), Auth: new Auth(address, creds) };
  }

  call(method: RpcMethod, req: object, o: { token?: string; deadlineMs: number }): Promise<unknown> {
    const [service, name] = method.split('/') as ['BuildCloud' | 'Auth', string];
    return new Promise((resolve, reject) => {
      const md = new grpc.Metadata();
      if (o.token) md.set('authorization', `Bearer ${o.token}`);
      this.clients[service][name](req, md, { deadline: Date.now() + o.deadlineMs }, (err: grpc.ServiceError | null, res: unknown) => {
        if (!err) return resolve(res);
        const retryAfter = err.metadata?.get('retry-after')[0];
        const failure: RpcCallFailure = { code: err.code, details: plainDetails(err.details), retryAfterMs: retryAfterMs(retryAfter) };
        reject(failure);
      });
    });
  }

  close(): void {
    this.clients.BuildCloud.close();
    this.clients.Auth.close();
  }
}

/**
 * grpc-js's connection failures as a person reads them: without the empty "Resolution note:" it appends, the
 * timestamps of its connection log, the "Error: " of a stringified error, or OpenSSL's source location (issue 12:
 * 31 warnings ended in "Resolution note:  (UNAVAILABLE)").
 */
export function plainDetails(details: string): string {
  return String(details ?? '')
    .replace(/\.?\s*Resolution note:\s*$/, '')
    .replace(/ \(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, '')
    .replace(/Last error: Error: /, 'Last error: ')
    .replace(/:\.\.\/deps\/openssl\/[^\s]*/g, '')
    .trim();
}
