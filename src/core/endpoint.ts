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
 * The control plane's gRPC address: the `endpoint` input, else BUILDCLOUD_ENDPOINT (its format was checked by
 * setupSettings). Throws SetupError naming the input when neither is set.
 */
export function requireEndpoint(settings: { endpoint: string }, env: Env): string {
  const endpoint = settings.endpoint || env.BUILDCLOUD_ENDPOINT || '';
  if (!endpoint) throw new SetupError("Missing input 'endpoint': the gRPC address of the Build Cloud control plane (host:port), or set BUILDCLOUD_ENDPOINT.");
  return endpoint;
}
