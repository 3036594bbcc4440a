// Trust in the registry proxy's CA for every builder engine of this host. dockerd 20.10 has no per-daemon setting
// for it: both of its registry clients read the host-wide certs.d directory, so the control plane writes (and later
// removes) one file there before the first builder starts.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Where rootful dockerd reads per-registry TLS files: hard-coded in moby (registry/config_unix.go, CertsDir). */
export const DOCKER_CERTS_DIR = '/etc/docker/certs.d';
/** The file name of the trust installRegistryTrust writes: any `*.crt` of the directory is a CA to both readers. */
export const REGISTRY_TRUST_FILE = 'buildcloud-ca.crt';
const REGISTRY_HOST_RE = /^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$/;

/**
 * Makes every dockerd started from now on trust `trustPem` (PEM certificates, public) for the registry at
 * `registryHost` ("host:port", as in image refs): writes `<certsDir>/<registryHost>/buildcloud-ca.crt`, 0644 in a
 * 0755 directory. There is no per-daemon setting for it in dockerd 20.10: both of its registry clients read the
 * host-wide directory, dockerd's own pushes and pulls per request (moby registry.ReadCertsDirectory) and BuildKit's
 * cache imports and FROM pulls once when the daemon starts (moby daemon.RegistryHosts), so this must run before the
 * first builder starts. The directory is named by the port too, so control planes on one host never share one.
 * `recordFile` (in the control plane's private state dir) remembers what was written, so a start after a crash
 * removes the previous run's file first. Resolves to the function that removes the file (and the directory when it
 * is then empty); call it after the last builder is gone. Throws when `registryHost` is not host:port or the
 * directory cannot be written (not root), naming the path.
 */
export async function installRegistryTrust(
  registryHost: string,
  trustPem: string,
  opts: { certsDir?: string; recordFile?: string } = {}
): Promise<() => Promise<void>> {
  if (!REGISTRY_HOST_RE.test(registryHost) || registryHost.includes('..')) {
    throw new Error(`registry host ${JSON.stringify(registryHost)} is invalid: expected host:port (e.g. "127.0.0.2:5000")`);
  }
  const certsDir = opts.certsDir ?? DOCKER_CERTS_DIR;
  const dir = path.join(certsDir, registryHost);
  const file = path.join(dir, REGISTRY_TRUST_FILE);
  const remove = async (f: string): Promise<void> => {
    await fs.promises.rm(f, { force: true });
    await fs.promises.rmdir(path.dirname(f)).catch(() => undefined); // only when empty: other files are not ours
  };
  if (opts.recordFile) {
    const previous = await fs.promises.readFile(opts.recordFile, 'utf8').then(
      (t) => t.trim(),
      () => ''
    );
    if (previous && previous !== file && path.basename(previous) === REGISTRY_TRUST_FILE && path.dirname(path.dirname(previous)) === certsDir) {
      await remove(previous);
    }
  }
  try {
    await fs.promises.mkdir(dir, { recursive: true, mode: 0o755 });
    const tmp = `${file}.${process.pid}.tmp`;
    await fs.promises.writeFile(tmp, trustPem, { mode: 0o644 });
    await fs.promises.chmod(tmp, 0o644);
    await fs.promises.rename(tmp, file);
  } catch (err) {
    throw new Error(
      `cannot write the registry proxy's CA for builders to ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)}): the dockerd driver needs root`
    );
  }
  if (opts.recordFile) await fs.promises.writeFile(opts.recordFile, `${file}\n`, { mode: 0o600 });
  return async () => {
    await remove(file);
    if (opts.recordFile) await fs.promises.rm(opts.recordFile, { force: true });
  };
}
