// The gRPC contract, loaded from the .proto text bundled into the program (esbuild's text loader), so the
// bundled CLI needs no .proto file on disk.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import protoText from '../../proto/buildcloud/v1/buildcloud.proto';

/** How the .proto is loaded: camelCase fields, enums as their names, int64 as number, defaults filled in. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false, // fields are camelCase in TypeScript
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true
};

let cached: grpc.GrpcObject | null = null;

/** The gRPC package parsed from the bundled .proto text, once per process (later calls return the same object). */
export function loadContract(): grpc.GrpcObject {
  if (cached) return cached;
  const root = protobuf.parse(protoText, { keepCase: false }).root;
  const definition = protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS);
  cached = grpc.loadPackageDefinition(definition);
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

/** The client and server constructors of the two services, BuildCloud (provision, release, get) and Auth (token exchange). */
export function services(): { BuildCloud: ServiceCtor; Auth: ServiceCtor } {
  const pkg = (loadContract().buildcloud as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return { BuildCloud: pkg.BuildCloud as ServiceCtor, Auth: pkg.Auth as ServiceCtor };
}

// Shapes as the loader delivers them (camelCase, enums as their names, int64 as number).
export type Scope = 'SCOPE_UNSPECIFIED' | 'SCOPE_PIPELINE' | 'SCOPE_JOB';
export type EndpointKind = 'ENDPOINT_KIND_UNSPECIFIED' | 'ENDPOINT_KIND_DOCKER' | 'ENDPOINT_KIND_BUILDKIT';
export type LeaseState = 'LEASE_STATE_UNSPECIFIED' | 'LEASE_STATE_ACTIVE' | 'LEASE_STATE_RELEASED' | 'LEASE_STATE_EXPIRED';

/** Who runs the job, as the job says (the control plane trusts only what a verified credential confirms). */
export interface CIIdentityMsg {
  provider: string;
  project: string;
  branch: string;
  defaultBranch: string;
  fork: boolean;
  actor: string;
  runUrl: string;
}

/** Provision: builders for (org, pipeline key, platforms), shared per pipeline or per job according to `scope`. */
export interface ProvisionRequestMsg {
  org: string;
  pipelineKey: string;
  jobId: string;
  platforms: string[];
  scope: Scope;
  identity: CIIdentityMsg | null;
}

/** One builder of a lease: where its Docker (or BuildKit) API answers, over the lease's mutual TLS. */
export interface BuilderEndpointMsg {
  platform: string;
  kind: EndpointKind;
  address: string;
  builderId: string;
  warm: boolean;
  shared: boolean;
}

/**
 * A lease: one job's hold on its builders, with the credentials that die with it (TLS client cert, registry
 * password), its cache refs, and where to send its usage records. Times are ms since the epoch.
 */
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

/** ExchangeToken: a short-lived access token for the org a CI's OIDC token was trusted for. */
export interface ExchangeTokenResponseMsg {
  accessToken: string;
  org: string;
  expiresAtMs: number;
}
