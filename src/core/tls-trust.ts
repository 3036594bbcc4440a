// Which certificate authorities the runner's HTTPS clients trust: Node's default store (its bundled roots plus
// NODE_EXTRA_CA_CERTS), or, when BUILDCLOUD_CA_FILE names a PEM file, that store with the control plane's private CA
// added, as the gRPC client trusts it. Light on purpose: the entries' pre-connect (preconnect.ts) loads it.
import * as fs from 'fs';

let caCache: { file: string; ca: string[] } | undefined;

/**
 * The `ca` option for tls/https: undefined (Node's default store) unless BUILDCLOUD_CA_FILE names a private CA; then
 * Node's roots, NODE_EXTRA_CA_CERTS's and that file's certificates (PEM strings). Throws when the file cannot be read.
 */
export function trustedCa(env: NodeJS.ProcessEnv = process.env): string[] | undefined {
  const file = env.BUILDCLOUD_CA_FILE;
  if (!file) return undefined;
  if (caCache?.file === file) return caCache.ca;
  // Giving `ca` replaces Node's default store, NODE_EXTRA_CA_CERTS included: keep both beside the private CA.
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- node:tls only when a private CA is named
  const ca = [...(require('tls') as typeof import('tls')).rootCertificates];
  const extra = env.NODE_EXTRA_CA_CERTS;
  if (extra) {
    try {
      ca.push(fs.readFileSync(extra, 'utf8'));
    } catch {
      // Node itself only warns about an unreadable NODE_EXTRA_CA_CERTS
    }
  }
  ca.push(fs.readFileSync(file, 'utf8'));
  caCache = { file, ca };
  return ca;
}
