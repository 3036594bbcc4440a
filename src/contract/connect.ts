// The gRPC contract (proto/buildcloud/v1/buildcloud.proto) over HTTP/JSON: the Connect protocol's unary calls,
// served on the control plane's HTTP port beside the gRPC port. A runner that names the control plane by an
// http(s):// endpoint speaks this: Node's own http client and JSON, no HTTP/2 or gRPC stack and no protobuf runtime
// to load, which is what brings a job's first request near a bare Node start (issue 10, docs/benchmarks.md).
//
// The wire (https://connectrpc.com/docs/protocol, unary): `POST /<package>.<Service>/<Method>` with
// `Content-Type: application/json`, `Connect-Protocol-Version: 1`, optionally `Connect-Timeout-Ms`, the message in
// the proto3 JSON mapping (https://protobuf.dev/programming-guides/json/) as the body. Success: HTTP 200 and the
// reply message as JSON. Failure: a non-200 status (rpc-status.ts httpStatusOf) and `{"code": "<snake_case code>",
// "message": "..."}`; a rate limit also sends `Retry-After` (whole seconds), as gRPC sends `retry-after` metadata.
//
// The proto3 JSON mapping: lowerCamelCase names (parsers also accept the .proto's names), enums by name, int64 as a
// decimal string (parsers also accept a number), default values may be left out. The decoders below turn a reply
// into the shapes the gRPC client delivers (grpc.ts: camelCase, enums by name, int64 as number, defaults filled in,
// absent messages null), so callers do not know which transport ran; a unit test holds the field tables to the
// .proto.
import type { ExchangeTokenResponseMsg, LeaseMsg } from './grpc';

export const CONNECT_PROTOCOL_VERSION = '1';
const PACKAGE = 'buildcloud.v1';

/** The unary methods of the contract, as `Service/Method`. */
export type RpcMethod = 'BuildCloud/Provision' | 'BuildCloud/Release' | 'BuildCloud/Get' | 'Auth/ExchangeToken';

export const RPC_METHODS: readonly RpcMethod[] = ['BuildCloud/Provision', 'BuildCloud/Release', 'BuildCloud/Get', 'Auth/ExchangeToken'];

/** The HTTP path of a method, e.g. `/buildcloud.v1.BuildCloud/Provision` (also gRPC's `:path`). */
export function rpcPath(method: RpcMethod): string {
  return `/${PACKAGE}.${method}`;
}

/** A Connect error body: the code's snake_case name and a message for people. */
export interface ConnectErrorBody {
  code: string;
  message?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Field tables of the messages, for decoding (the client reads replies, the server requests). `name` is the proto3
// JSON name; the .proto's own name is derived.

type Scalar = 'string' | 'bool' | 'int64';
export interface FieldSpec {
  name: string;
  kind: Scalar | 'enum' | 'message';
  repeated?: boolean;
  enumValues?: readonly string[]; // by number
  message?: MessageSpec;
}
export interface MessageSpec {
  name: string; // the message's name in the .proto
  fields: readonly FieldSpec[];
}

const s = (name: string): FieldSpec => ({ name, kind: 'string' });
const b = (name: string): FieldSpec => ({ name, kind: 'bool' });
const i64 = (name: string): FieldSpec => ({ name, kind: 'int64' });
const e = (name: string, enumValues: readonly string[]): FieldSpec => ({ name, kind: 'enum', enumValues });
const m = (name: string, message: MessageSpec, repeated = false): FieldSpec => ({ name, kind: 'message', message, repeated });

const SCOPE = ['SCOPE_UNSPECIFIED', 'SCOPE_PIPELINE', 'SCOPE_JOB'];
const ENDPOINT_KIND = ['ENDPOINT_KIND_UNSPECIFIED', 'ENDPOINT_KIND_DOCKER', 'ENDPOINT_KIND_BUILDKIT'];
const LEASE_STATE = ['LEASE_STATE_UNSPECIFIED', 'LEASE_STATE_ACTIVE', 'LEASE_STATE_RELEASED', 'LEASE_STATE_EXPIRED'];

const BUILDER_ENDPOINT: MessageSpec = {
  name: 'BuilderEndpoint',
  fields: [s('platform'), e('kind', ENDPOINT_KIND), s('address'), s('builderId'), b('warm'), b('shared')]
};
const TLS_MATERIAL: MessageSpec = { name: 'TlsMaterial', fields: [s('caPem'), s('certPem'), s('keyPem')] };
const REGISTRY_CREDENTIALS: MessageSpec = { name: 'RegistryCredentials', fields: [s('host'), s('username'), s('password')] };
const CACHE_REFS: MessageSpec = {
  name: 'CacheRefs',
  fields: [
    { ...s('importRefs'), repeated: true },
    s('exportRef'),
    m('registry', REGISTRY_CREDENTIALS),
    s('readOnlyReason'),
    s('repository'),
    { ...s('importTags'), repeated: true },
    s('exportTag'),
    s('uploadPrefix'),
    s('fingerprintKey')
  ]
};

/** Lease, the reply of Provision, Release and Get. */
export const LEASE: MessageSpec = {
  name: 'Lease',
  fields: [
    s('id'),
    s('org'),
    s('pipelineKey'),
    s('jobId'),
    e('scope', SCOPE),
    e('state', LEASE_STATE),
    i64('createdAtMs'),
    i64('expiresAtMs'),
    m('builders', BUILDER_ENDPOINT, true),
    m('tls', TLS_MATERIAL),
    m('cache', CACHE_REFS),
    i64('billedSeconds'),
    i64('idleTimeoutS'),
    s('meteringUrl'),
    s('endReason'),
    s('endMessage')
  ]
};

/** ExchangeTokenResponse, the reply of ExchangeToken. */
export const EXCHANGE_TOKEN_RESPONSE: MessageSpec = { name: 'ExchangeTokenResponse', fields: [s('accessToken'), s('org'), i64('expiresAtMs')] };

const CI_IDENTITY: MessageSpec = {
  name: 'CIIdentity',
  fields: [s('provider'), s('project'), s('branch'), s('defaultBranch'), b('fork'), s('actor'), s('runUrl')]
};

/** The request message of each method: the server reads a Connect body with these (strictly: no type coercion). */
export const REQUESTS: Record<RpcMethod, MessageSpec> = {
  'BuildCloud/Provision': {
    name: 'ProvisionRequest',
    fields: [s('org'), s('pipelineKey'), s('jobId'), { ...s('platforms'), repeated: true }, e('scope', SCOPE), m('identity', CI_IDENTITY)]
  },
  'BuildCloud/Release': { name: 'ReleaseRequest', fields: [s('leaseId')] },
  'BuildCloud/Get': { name: 'GetRequest', fields: [s('leaseId')] },
  'Auth/ExchangeToken': { name: 'ExchangeTokenRequest', fields: [s('oidcToken'), s('org')] }
};

/** The reply message of each method. */
export const REPLIES: Record<RpcMethod, MessageSpec> = {
  'BuildCloud/Provision': LEASE,
  'BuildCloud/Release': LEASE,
  'BuildCloud/Get': LEASE,
  'Auth/ExchangeToken': EXCHANGE_TOKEN_RESPONSE
};

/** lowerCamelCase → the .proto's snake_case name (createdAtMs → created_at_ms). */
export function protoFieldName(jsonName: string): string {
  return jsonName.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** A reply that does not fit the contract: the field and what was expected (never the value: it may be a secret). */
export class ContractError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContractError';
  }
}

function scalar(kind: Scalar, v: unknown, where: string): string | boolean | number {
  if (kind === 'string') {
    if (typeof v !== 'string') throw new ContractError(`${where}: expected a string`);
    return v;
  }
  if (kind === 'bool') {
    if (typeof v !== 'boolean') throw new ContractError(`${where}: expected true or false`);
    return v;
  }
  // int64: a decimal string or a number; as a JavaScript number (the gRPC client's `longs: Number`).
  const n = typeof v === 'string' && /^-?\d{1,20}$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw new ContractError(`${where}: expected an integer`);
  return n;
}

function defaultOf(f: FieldSpec): unknown {
  if (f.repeated) return [];
  switch (f.kind) {
    case 'string':
      return '';
    case 'bool':
      return false;
    case 'int64':
      return 0;
    case 'enum':
      return (f.enumValues as readonly string[])[0];
    default:
      return null;
  }
}

function valueOf(f: FieldSpec, v: unknown, where: string): unknown {
  if (f.kind === 'message') return decodeMessage(f.message as MessageSpec, v, where);
  if (f.kind === 'enum') {
    const names = f.enumValues as readonly string[];
    if (typeof v === 'string' && names.includes(v)) return v;
    if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < names.length) return names[v];
    throw new ContractError(`${where}: expected one of ${names.join(', ')}`);
  }
  return scalar(f.kind, v, where);
}

/**
 * A proto3 JSON message as the gRPC client would deliver it (see the header). Unknown fields are ignored (a newer
 * server may add some); `null` is a field's default. Throws ContractError naming the first field that does not fit.
 */
export function decodeMessage(spec: MessageSpec, json: unknown, where = spec.name): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ContractError(`${where}: expected a JSON object`);
  const o = json as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const f of spec.fields) {
    const raw = o[f.name] !== undefined ? o[f.name] : o[protoFieldName(f.name)];
    const at = `${where}.${f.name}`;
    if (raw === undefined || raw === null) out[f.name] = defaultOf(f);
    else if (f.repeated) {
      if (!Array.isArray(raw)) throw new ContractError(`${at}: expected a JSON array`);
      out[f.name] = raw.map((v, i) => valueOf(f, v, `${at}[${i}]`));
    } else out[f.name] = valueOf(f, raw, at);
  }
  return out;
}

/** A Lease reply (Provision, Release, Get) from its proto3 JSON. Throws ContractError. */
export function leaseFromJson(json: unknown): LeaseMsg {
  return decodeMessage(LEASE, json) as unknown as LeaseMsg;
}

/** An ExchangeTokenResponse from its proto3 JSON. Throws ContractError. */
export function exchangeTokenResponseFromJson(json: unknown): ExchangeTokenResponseMsg {
  return decodeMessage(EXCHANGE_TOKEN_RESPONSE, json) as unknown as ExchangeTokenResponseMsg;
}
