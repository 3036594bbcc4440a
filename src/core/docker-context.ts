// Docker contexts and buildx builders for a lease's endpoints: the argv that makes them with the CLI, and the
// context store written directly, which spares setup a `docker context create` per endpoint.
//
// The store format (docker/cli cli/context/store: metadatastore.go, tlsstore.go, store.go; cli/context/docker
// load.go), the same from the clients that introduced contexts (19.03) to 28.x, and what both clients on these
// machines wrote for `docker context create NAME --description D --docker host=H,ca=..,cert=..,key=..`
// (Debian's 20.10.24 and 28.2.2, compared byte for byte on 2026-11-30):
//   $DOCKER_CONFIG/contexts/meta/<id>/meta.json
//     {"Name":NAME,"Metadata":{"Description":D},"Endpoints":{"docker":{"Host":H,"SkipTLSVerify":false}}}
//   $DOCKER_CONFIG/contexts/tls/<id>/docker/{ca,cert,key}.pem   (copies of the files named)
// where <id> is the hex SHA-256 of NAME (go-digest FromString(NAME).Encoded()). Removing a context is removing
// both <id> directories.
import { createHash } from 'crypto';
import { promises as fsp } from 'fs';
import * as path from 'path';
import { majorVersion } from './docker-client';

const CONTEXT_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.+-]+$/; // docker/cli cli/context/store/store.go validNameFormat
const TCP = /^tcp:\/\/[^\s/,"]+:\d{1,5}$/;

// `--docker` (pflag StringToString) and `--driver-opt` (buildx csvToMap) are parsed as CSV records, so a value
// holding a comma or a quote is quoted.
function csvField(kv: string): string {
  return /[",\n]/.test(kv) ? `"${kv.replace(/"/g, '""')}"` : kv;
}

function checkEndpoint(name: string, address: string, certDir: string): void {
  if (!CONTEXT_NAME.test(name)) throw new Error(`Invalid docker context name '${name}': expected ${CONTEXT_NAME.source}.`);
  if (!TCP.test(address)) throw new Error(`Invalid builder address '${address}': expected tcp://host:port.`);
  if (!path.isAbsolute(certDir)) throw new Error(`Cert directory '${certDir}' must be an absolute path.`);
}

export function contextCreateArgs(name: string, address: string, certDir: string): string[] {
  checkEndpoint(name, address, certDir);
  const fields = [`host=${address}`, `ca=${path.join(certDir, 'ca.pem')}`, `cert=${path.join(certDir, 'cert.pem')}`, `key=${path.join(certDir, 'key.pem')}`];
  return ['context', 'create', name, '--description', 'Build Cloud remote builder', '--docker', fields.map(csvField).join(',')];
}

/**
 * For BuildKit endpoints: one `buildx create --driver remote` invocation per node; the first creates the builder,
 * each further platform is appended as its own node so buildx routes that platform there.
 */
export function buildxCreateArgs(name: string, endpoints: { platform: string; address: string }[], certDir: string): string[][] {
  if (endpoints.length === 0) throw new Error('buildxCreateArgs: no endpoints');
  return endpoints.map((ep, i) => {
    checkEndpoint(name, ep.address, certDir);
    const a = ['buildx', 'create', '--name', name];
    if (i > 0) a.push('--append');
    a.push('--node', `${name}${i}`);
    if (i === 0) a.push('--driver', 'remote');
    // remote driver: cacert/cert/key must be absolute paths (buildx driver/remote/factory.go).
    for (const [k, f] of [
      ['cacert', 'ca.pem'],
      ['cert', 'cert.pem'],
      ['key', 'key.pem']
    ])
      a.push('--driver-opt', csvField(`${k}=${path.join(certDir, f)}`));
    if (ep.platform) a.push('--platform', ep.platform);
    return [...a, ep.address];
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The context store, written directly

/** The description every context made here carries (what `docker context ls` shows). */
export const CONTEXT_DESCRIPTION = 'Build Cloud remote builder';

/** The directory name of a context in the store: hex SHA-256 of its name (docker/cli cli/context/store/store.go contextdirOf). */
export function contextId(name: string): string {
  return createHash('sha256').update(name).digest('hex');
}

/** meta.json of a Docker endpoint context with TLS, exactly as docker/cli's metadata store marshals it. */
export function contextMeta(name: string, address: string, description = CONTEXT_DESCRIPTION): string {
  return JSON.stringify({ Name: name, Metadata: { Description: description }, Endpoints: { docker: { Host: address, SkipTLSVerify: false } } });
}

/**
 * Whether a client of this version reads the store format above, so that writing it stands for
 * `docker context create`: 19.03 (contexts appeared) up to 28.x (the newest client seen reading it). A client
 * outside that range, or one whose version does not parse, gets the CLI.
 */
export function contextStoreKnown(clientVersion: string): boolean {
  const major = majorVersion(clientVersion);
  if (major === null) return false;
  const minor = Number(/^v?\d+\.(\d+)/.exec(clientVersion)?.[1] ?? 0);
  return (major > 19 || (major === 19 && minor >= 3)) && major <= 28;
}

/**
 * Writes the context `name` (a Docker endpoint at `address`, tcp://host:port, with mutual TLS from certDir's ca.pem,
 * cert.pem and key.pem) into the store under `dockerConfig`, what `docker context create` would write. Directories
 * are 0700 and files 0600 (docker makes meta/ 0755 and meta.json 0644; they hold no secret, but the stricter modes
 * cost nothing, and the store lives in the job's private config anyway). meta.json is written last, by rename, so
 * no client ever sees a context without its TLS files. Throws on an invalid name, address or cert dir (as
 * contextCreateArgs) and on any file system error; a context of that name is replaced.
 */
export async function writeDockerContext(dockerConfig: string, name: string, address: string, certDir: string): Promise<void> {
  checkEndpoint(name, address, certDir);
  const id = contextId(name);
  const tlsDir = path.join(dockerConfig, 'contexts', 'tls', id, 'docker');
  const metaDir = path.join(dockerConfig, 'contexts', 'meta', id);
  for (const d of [
    path.join(dockerConfig, 'contexts'),
    path.join(dockerConfig, 'contexts', 'tls'),
    path.join(dockerConfig, 'contexts', 'tls', id),
    tlsDir,
    path.join(dockerConfig, 'contexts', 'meta'),
    metaDir
  ]) {
    await fsp.mkdir(d, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  for (const f of ['ca.pem', 'cert.pem', 'key.pem']) {
    await fsp.writeFile(path.join(tlsDir, f), await fsp.readFile(path.join(certDir, f)), { mode: 0o600 });
  }
  const meta = path.join(metaDir, 'meta.json');
  const tmp = `${meta}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, contextMeta(name, address), { mode: 0o600 });
  await fsp.rename(tmp, meta);
}

/** Removes the context `name` from the store under `dockerConfig` (what `docker context rm --force` does); absent is fine. */
export async function removeDockerContext(dockerConfig: string, name: string): Promise<void> {
  const id = contextId(name);
  await fsp.rm(path.join(dockerConfig, 'contexts', 'meta', id), { recursive: true, force: true });
  await fsp.rm(path.join(dockerConfig, 'contexts', 'tls', id), { recursive: true, force: true });
}
