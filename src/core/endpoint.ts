// Where the control plane is, decided before anything heavy loads: the wrappers call requireEndpoint first, so a
// job without an endpoint fails in the time Node takes to start (issue 10), not after the gRPC client has loaded.
import type { Env } from './identity';

export class SetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SetupError';
  }
}

/**
 * The control plane's endpoint (parseEndpoint's forms): the `endpoint` input, else BUILDCLOUD_ENDPOINT (its format was
 * checked by setupSettings). Throws SetupError naming the input when neither is set.
 */
export function requireEndpoint(settings: { endpoint: string }, env: Env): string {
  const endpoint = settings.endpoint || env.BUILDCLOUD_ENDPOINT || '';
  if (!endpoint)
    throw new SetupError(
      "Missing input 'endpoint': where the Build Cloud control plane answers (host:port of its gRPC port, or the http(s):// URL of its HTTP port), or set BUILDCLOUD_ENDPOINT."
    );
  return endpoint;
}

/**
 * How to reach the control plane, from its endpoint:
 * - `host:port`, `grpc://host:port`, `grpcs://host:port` (TLS): its gRPC port;
 * - `http://host[:port][/prefix]`, `https://host[:port][/prefix]` (TLS): its HTTP port, where the same contract is
 *   served over the Connect protocol (contract/connect.ts). The runner's first request then needs neither HTTP/2
 *   nor a gRPC stack (docs/benchmarks.md); a prefix serves a control plane behind a path-routing proxy.
 */
export type ControlPlaneAddress = { protocol: 'grpc'; address: string; secure: boolean } | { protocol: 'connect'; baseUrl: string; secure: boolean };

export const ENDPOINT_FORMS = 'host:port, grpc://host:port, grpcs://host:port, or the http:// or https:// URL of its HTTP port';

const HOST = String.raw`(?:\[[0-9a-fA-F:.]+\]|[^/\s:[\]@?#]+)`;
const GRPC_ENDPOINT = new RegExp(String.raw`^(?:(grpcs?)://)?(${HOST}:(\d{1,5}))/?$`);
const HTTP_ENDPOINT = new RegExp(String.raw`^(https?)://(${HOST}(?::(\d{1,5}))?)((?:/[A-Za-z0-9._~-]+)*)/?$`);

/** The parsed endpoint; throws Error naming the endpoint and the forms it may take. */
export function parseEndpoint(endpoint: string): ControlPlaneAddress {
  const e = endpoint.trim();
  const bad = () =>
    /^[a-z][a-z0-9+.-]*:\/\/[^/]*@/i.test(e)
      ? new Error(`Invalid endpoint: it holds credentials (user@ or user:password@), which are not accepted or shown. Expected ${ENDPOINT_FORMS}.`)
      : new Error(`Invalid endpoint '${endpoint}'. Expected ${ENDPOINT_FORMS}.`);
  const portOk = (p: string | undefined) => p === undefined || (Number(p) >= 1 && Number(p) <= 65535);
  const h = HTTP_ENDPOINT.exec(e);
  if (h) {
    if (!portOk(h[3])) throw bad();
    return { protocol: 'connect', baseUrl: `${h[1]}://${h[2]}${h[4]}`, secure: h[1] === 'https' };
  }
  const g = GRPC_ENDPOINT.exec(e);
  if (!g || !portOk(g[3])) throw bad();
  return { protocol: 'grpc', address: g[2], secure: g[1] === 'grpcs' };
}
