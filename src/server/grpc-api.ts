// The gRPC face of the control plane: each method of the contract served by its handler in rpc-api.ts, with the
// credential from `authorization` metadata and failures as gRPC statuses (a rate limit's wait as `retry-after`
// trailing metadata, whole seconds).
import * as grpc from '@grpc/grpc-js';
import type { Logger } from './log';
import { services } from '../contract/grpc';
import type { RpcMethod } from '../contract/connect';
import { rpcFailure, type RpcApi } from './rpc-api';

// The client's address from grpc-js's peer string ("ipv4:127.0.0.1:5000", "[::1]:5000", "127.0.0.1:5000").
export function peerAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const m = /^\[([^\]]+)\]:\d+$/.exec(p) ?? /^(.*):\d+$/.exec(p);
  return m ? m[1] : p;
}

function metadataValue(md: grpc.Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  return typeof v === 'string' ? v : v ? v.toString('utf8') : undefined;
}

function unary(api: RpcApi, log: Logger, method: RpcMethod): grpc.handleUnaryCall<Record<string, unknown>, object> {
  const name = method.split('/')[1];
  return (call, callback) => {
    const gone = (): boolean => call.cancelled; // grpc-js sets it on a client cancel and when the call's deadline passes
    api[method](call.request, { authorization: metadataValue(call.metadata, 'authorization'), peer: peerAddress(call.getPeer()), gone }).then(
      (res) => callback(null, res),
      (err: unknown) => {
        const f = rpcFailure(err, log, name);
        const metadata = new grpc.Metadata();
        if (f.retryAfterSeconds !== undefined) metadata.set('retry-after', String(f.retryAfterSeconds));
        callback({ code: f.code, details: f.message, metadata });
      }
    );
  };
}

/** Adds the BuildCloud and Auth services to a gRPC server. */
export function addGrpcApi(server: grpc.Server, api: RpcApi, log: Logger): void {
  const { BuildCloud, Auth } = services();
  server.addService(BuildCloud.service, {
    Provision: unary(api, log, 'BuildCloud/Provision'),
    Release: unary(api, log, 'BuildCloud/Release'),
    Get: unary(api, log, 'BuildCloud/Get')
  });
  server.addService(Auth.service, { ExchangeToken: unary(api, log, 'Auth/ExchangeToken') });
}
