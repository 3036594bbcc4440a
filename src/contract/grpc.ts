// The gRPC contract, loaded from the .proto text bundled into the program (esbuild's text loader), so the
// bundled CLI needs no .proto file on disk.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import protoText from '../../proto/buildcloud/v1/buildcloud.proto';

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false, // fields are camelCase in TypeScript
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true
};

let cached: grpc.GrpcObject | null = null;

export function loadContract(): grpc.GrpcObject {
  if (cached) return cached;
  const root = protobuf.parse(protoText, { keepCase: false }).root;
  const definition = protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS);
  cached = grpc.loadPackageDefinition(definition);
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

export function services(): { BuildCloud: ServiceCtor; Auth: ServiceCtor } {
  const pkg = (loadContract().buildcloud as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return { BuildCloud: pkg.BuildCloud as ServiceCtor, Auth: pkg.Auth as ServiceCtor };
}

// Shapes as the loader delivers them (camelCase, enums as their names, int64 as number).
export type Scope = 'SCOPE_UNSPECIFIED' | 'SCOPE_PIPELINE' | 'SCOPE_JOB';
export type EndpointKind = 'ENDPOINT_KIND_UNSPECIFIED' | 'ENDPOINT_KIND_DOCKER' | 'ENDPOINT_KIND_BUILDKIT';
export type LeaseState = 'LEASE_STATE_UNSPECIFIED' | 'LEASE_STATE_ACTIVE' | 'LEASE_STATE_RELEASED' | 'LEASE_STATE_EXPIRED';

export interface CIIdentityMsg {
  provider: string;
  project: string;
  branch: string;
  defaultBranch: string;
  fork: boolean;
  actor: string;
  runUrl: string;
}

export interface ProvisionRequestMsg {
  org: string;
  pipelineKey: string;
  jobId: string;
  platforms: string[];
  scope: Scope;
  identity: CIIdentityMsg | null;
}

export interface BuilderEndpointMsg {
  platform: string;
  kind: EndpointKind;
  address: string;
  builderId: string;
  warm: boolean;
  shared: boolean;
}

export interface LeaseMsg {
  id: string;
  org: string;
  pipelineKey: string;
  jobId: string;
  scope: Scope;
  state: LeaseState;
  createdAtMs: number;
  expiresAtMs: number;
  builders: BuilderEndpointMsg[];
  tls: { caPem: string; certPem: string; keyPem: string } | null;
  cache: { importRefs: string[]; exportRef: string; registry: { host: string; username: string; password: string } | null; readOnlyReason?: string } | null;
  billedSeconds: number;
  idleTimeoutS: number;
  meteringUrl: string;
  endReason?: string; // once ended: released, idle, ttl, bucket_exhausted, server_stopped, failed
  endMessage?: string; // once ended: why, in words the job can act on
}

export interface ExchangeTokenResponseMsg {
  accessToken: string;
  org: string;
  expiresAtMs: number;
}
