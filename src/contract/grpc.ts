// The gRPC contract, loaded from the .proto text bundled into the program (esbuild's text loader), so the
// bundled CLI needs no .proto file on disk.
//
// The services are built from protobufjs's parse of that text with the method definitions @grpc/proto-loader makes
// (same paths, same serializers: fromObject + encode, decode + toObject with the options below), without
// proto-loader itself: its fromJSON loads Google's common protos and encodes a file descriptor per file for
// reflection, which nothing here uses, and that was about 15 ms of every setup and report (issue 10).
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';
import protoText from '../../proto/buildcloud/v1/buildcloud.proto';

/** How messages are read: camelCase fields, enums as their names, int64 as number, defaults filled in. */
export const LOADER_OPTIONS: protobuf.IConversionOptions & { keepCase: boolean } = {
  keepCase: false, // fields are camelCase in TypeScript
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true
};

const PACKAGE = 'buildcloud.v1';

type ServiceCtor = grpc.ServiceClientConstructor;
let cached: { BuildCloud: ServiceCtor; Auth: ServiceCtor } | null = null;
let parsed: protobuf.Root | null = null;

function root(): protobuf.Root {
  if (!parsed) {
    parsed = protobuf.parse(protoText, { keepCase: false }).root;
    parsed.resolveAll();
  }
  return parsed;
}

/** A message type of the contract by its name in the .proto (e.g. `Lease`); throws for a name it does not define. */
export function messageType(name: string): protobuf.Type {
  return root().lookupType(`${PACKAGE}.${name}`);
}

/** The request and reply message types of a method (`Service/Method`, e.g. `BuildCloud/Provision`). */
export function methodTypes(method: string): { request: protobuf.Type; response: protobuf.Type } {
  const [service, name] = method.split('/');
  const m = root().lookupService(`${PACKAGE}.${service}`).methods[name];
  if (!m) throw new Error(`no method ${method} in the contract`);
  m.resolve();
  return { request: m.resolvedRequestType as protobuf.Type, response: m.resolvedResponseType as protobuf.Type };
}

/** A service's method definitions, as @grpc/proto-loader's createServiceDefinition makes them. */
function definitionOf(service: protobuf.Service): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const m of service.methodsArray) {
    m.resolve();
    const req = m.resolvedRequestType as protobuf.Type;
    const res = m.resolvedResponseType as protobuf.Type;
    const serialize = (t: protobuf.Type) => (arg: object) => {
      if (Array.isArray(arg)) throw new Error(`Failed to serialize message: expected object with ${t.name} structure, got array instead`);
      return Buffer.from(t.encode(t.fromObject(arg)).finish());
    };
    const deserialize = (t: protobuf.Type) => (buf: Buffer) => t.toObject(t.decode(buf), LOADER_OPTIONS);
    def[m.name] = {
      path: `/${PACKAGE}.${service.name}/${m.name}`,
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
      requestSerialize: serialize(req),
      requestDeserialize: deserialize(req),
      responseSerialize: serialize(res),
      responseDeserialize: deserialize(res),
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1)
    };
  }
  return def;
}

/** The client and server constructors of the two services, BuildCloud (provision, release, get) and Auth (token exchange). */
export function services(): { BuildCloud: ServiceCtor; Auth: ServiceCtor } {
  if (cached) return cached;
  const ctor = (name: string) => grpc.makeGenericClientConstructor(definitionOf(root().lookupService(`${PACKAGE}.${name}`)), name);
  cached = { BuildCloud: ctor('BuildCloud'), Auth: ctor('Auth') };
  return cached;
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
  cache: {
    importRefs: string[];
    exportRef: string;
    registry: { host: string; username: string; password: string } | null;
    readOnlyReason?: string;
    // Cache scopes (absent from older control planes): see CacheRefs in the .proto.
    repository?: string;
    importTags?: string[];
    exportTag?: string;
    uploadPrefix?: string;
    fingerprintKey?: string; // base64url, 32 bytes: keys the step fingerprints of the project's cache images
  } | null;
  billedSeconds: number;
  idleTimeoutS: number;
  meteringUrl: string;
  endReason?: string; // once ended: released, idle, ttl, bucket_exhausted, server_stopped, failed, builder_lost
  endMessage?: string; // once ended: why, in words the job can act on
}

/** ExchangeToken: a short-lived access token for the org a CI's OIDC token was trusted for. */
export interface ExchangeTokenResponseMsg {
  accessToken: string;
  org: string;
  expiresAtMs: number;
}
