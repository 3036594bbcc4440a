// The side effects behind cache-miss.ts: hashing the files a build's COPY/ADD steps name (bounded), reading which
// cache imports BuildKit's stream showed, and reading the fingerprints label of an imported cache image (and the
// digest of a base image) from the org registry with the lease's own registry credentials.
//
// Everything here is best effort: a failure means no explanation, never a failed build.
import { createHash } from 'crypto';
import { createReadStream, promises as fsp } from 'fs';
import * as path from 'path';
import { expand, type DockerfileStep } from './dockerfile-steps';
import { httpRequest, headerValue, type HttpRequester } from './http-request';
import { decodeFingerprints, FINGERPRINTS_LABEL, keyedDigest, shortDigest, type CacheImport, type Fingerprints, type SourceDigests } from './cache-miss';
import type { BuildStep } from './build-progress';

/** Bounds of hashSources: the files read and their bytes, per build. Past them a source is '?' (not compared). */
export const MAX_HASHED_FILES = 5000;
export const MAX_HASHED_BYTES = 512 * 1024 * 1024;

interface Budget {
  files: number;
  bytes: number;
}

async function fileDigest(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex').slice(0, 16);
}

// Files under `abs` (a file or a directory), relative to the context, in a stable order; null past the budget.
async function walk(context: string, abs: string, budget: Budget, out: Map<string, string>): Promise<boolean> {
  let st;
  try {
    st = await fsp.lstat(abs);
  } catch {
    return true; // docker fails such a build itself; nothing to compare
  }
  if (st.isDirectory()) {
    for (const e of (await fsp.readdir(abs)).sort()) if (!(await walk(context, path.join(abs, e), budget, out))) return false;
    return true;
  }
  if (!st.isFile()) return true; // symlinks, sockets: not followed
  budget.files++;
  budget.bytes += st.size;
  if (budget.files > MAX_HASHED_FILES || budget.bytes > MAX_HASHED_BYTES) return false;
  out.set(path.relative(context, abs).split(path.sep).join('/'), await fileDigest(abs));
  return true;
}

/** The sources of a COPY/ADD as written (flags and destination dropped); [] for heredocs, --from and URLs. */
export function copySources(step: DockerfileStep): string[] {
  if (step.keyword !== 'COPY' && step.keyword !== 'ADD') return [];
  let rest = step.rest;
  for (;;) {
    const m = /^--([A-Za-z-]+)(?:=\S*)?\s+/.exec(rest);
    if (!m) break;
    if (m[1].toLowerCase() === 'from') return []; // another stage's or image's files: its own steps explain them
    rest = rest.slice(m[0].length);
  }
  if (rest.includes('<<')) return [];
  let words: string[];
  if (rest.trim().startsWith('[')) {
    try {
      words = JSON.parse(rest) as string[];
    } catch {
      return [];
    }
  } else words = rest.split(/\s+/).filter(Boolean);
  return words
    .slice(0, -1)
    .map((w) => expand(w, step.args))
    .filter((w) => !/^[a-z][a-z0-9+.-]*:\/\//i.test(w));
}

const GLOB = /[*?[]/;
const globRegex = (pattern: string) =>
  new RegExp(
    `^${pattern
      .replace(/[.+^${}()|\\]/g, '\\$&')
      .replace(/\*/g, '[^/]*')
      .replace(/\?/g, '[^/]')
      .replace(/\[!/g, '[^')}$`
  );

/**
 * Digests of the files each COPY/ADD step names, relative to the build context: per source as written and per file.
 * A source with a wildcard outside its last path element, or beyond MAX_HASHED_FILES/BYTES, is '?'.
 */
export async function hashSources(context: string, steps: DockerfileStep[]): Promise<SourceDigests> {
  const out: SourceDigests = { sources: {}, files: {} };
  const budget: Budget = { files: 0, bytes: 0 };
  for (const step of steps) {
    const sources = copySources(step);
    if (!sources.length) continue;
    const perSource: Record<string, string> = {};
    const files = new Map<string, string>();
    for (const src of sources) {
      const clean = src.replace(/^\/+/, '');
      const found = new Map<string, string>();
      let ok = true;
      const dir = path.dirname(clean);
      if (GLOB.test(dir)) ok = false;
      else if (GLOB.test(path.basename(clean))) {
        const re = globRegex(path.basename(clean));
        const entries = await fsp.readdir(path.join(context, dir)).catch(() => [] as string[]);
        for (const e of entries.filter((x) => re.test(x)).sort()) if (ok) ok = await walk(context, path.join(context, dir, e), budget, found);
      } else ok = await walk(context, path.join(context, clean), budget, found);
      perSource[src] = ok ? shortDigest([...found].map(([f, d]) => `${f}\0${d}`).join('\n')) : '?';
      if (ok) for (const [f, d] of found) files.set(f, d);
    }
    out.sources[step.name] = perSource;
    if (files.size) out.files[step.name] = Object.fromEntries(files);
  }
  return out;
}

/** The cache imports of a build, from its vertices ("importing cache manifest from REF", ERROR when it failed). */
export function cacheImports(vertices: BuildStep[]): CacheImport[] {
  const out: CacheImport[] = [];
  for (const v of vertices) {
    const m = /^importing cache manifest from (\S+)$/.exec(v.name);
    if (m) out.push({ ref: m[1], found: v.status !== 'error', ...(v.error ? { error: v.error } : {}) });
  }
  return out;
}

/** The registry the lease may read, and its credentials (lease.cache.registry). */
export interface RegistryAccess {
  host: string; // host:port
  username: string;
  password: string;
}

function splitRef(ref: string): { host: string; repo: string; reference: string } | null {
  const at = ref.indexOf('@');
  const name = at >= 0 ? ref.slice(0, at) : ref;
  const slash = name.indexOf('/');
  if (slash < 0) return null;
  const host = name.slice(0, slash);
  const rest = name.slice(slash + 1);
  const colon = rest.lastIndexOf(':');
  if (at >= 0) return { host, repo: rest, reference: ref.slice(at + 1) };
  return colon >= 0 ? { host, repo: rest.slice(0, colon), reference: rest.slice(colon + 1) } : { host, repo: rest, reference: 'latest' };
}

const MANIFESTS = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.index.v1+json'
].join(', ');

// The registry proxy speaks plain HTTP on loopback only (registry-proxy.ts); anywhere else it is https.
const baseUrl = (host: string) => `${/^(127\.|localhost(:|$)|\[::1\])/.test(host) ? 'http' : 'https'}://${host}`;

async function registryGet(reg: RegistryAccess, p: string, accept: string, method: string, request: HttpRequester) {
  const auth = Buffer.from(`${reg.username}:${reg.password}`).toString('base64');
  return request(`${baseUrl(reg.host)}${p}`, {
    method,
    headers: { accept, authorization: `Basic ${auth}` },
    signal: AbortSignal.timeout(5000),
    maxBytes: 1024 * 1024
  });
}

/** The fingerprints label of the image at `ref` in the lease's registry; null when it has none or cannot be read. */
export async function readFingerprints(ref: string, reg: RegistryAccess, request: HttpRequester = httpRequest): Promise<Fingerprints | null> {
  const r = splitRef(ref);
  if (!r || r.host !== reg.host) return null;
  try {
    let manifest = await registryGet(reg, `/v2/${r.repo}/manifests/${r.reference}`, MANIFESTS, 'GET', request);
    if (manifest.status !== 200) return null;
    let m = JSON.parse(manifest.text) as { config?: { digest?: string }; manifests?: { digest: string }[] };
    if (m.manifests?.length) {
      manifest = await registryGet(reg, `/v2/${r.repo}/manifests/${m.manifests[0].digest}`, MANIFESTS, 'GET', request);
      if (manifest.status !== 200) return null;
      m = JSON.parse(manifest.text) as typeof m;
    }
    const digest = m.config?.digest;
    if (!digest || !/^sha256:[0-9a-f]{64}$/.test(digest)) return null;
    const blob = await registryGet(reg, `/v2/${r.repo}/blobs/${digest}`, '*/*', 'GET', request);
    if (blob.status !== 200) return null;
    const config = JSON.parse(blob.text) as { config?: { Labels?: Record<string, string> } };
    return decodeFingerprints(config.config?.Labels?.[FINGERPRINTS_LABEL]);
  } catch {
    return null;
  }
}

/** Digests of the base images that live in the lease's registry (others are left out: the ref alone is compared). */
export async function baseDigests(refs: string[], reg: RegistryAccess | null, request: HttpRequester = httpRequest): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (!reg) return out;
  for (const ref of [...new Set(refs)]) {
    const r = splitRef(ref);
    if (!r || r.host !== reg.host || ref.includes('@')) continue;
    try {
      const res = await registryGet(reg, `/v2/${r.repo}/manifests/${r.reference}`, MANIFESTS, 'HEAD', request);
      const d = headerValue(res.headers, 'docker-content-digest');
      if (res.status === 200 && d) out[ref] = d;
    } catch {
      // no digest: the ref alone is compared
    }
  }
  return out;
}

/** The lease registry's credentials from the runner's private docker config (runner-config.ts wrote them there). */
export async function registryAccess(dockerConfigDir: string, host: string | undefined): Promise<RegistryAccess | null> {
  if (!dockerConfigDir || !host) return null;
  try {
    const cfg = JSON.parse(await fsp.readFile(path.join(dockerConfigDir, 'config.json'), 'utf8')) as { auths?: Record<string, { auth?: string }> };
    const auth = Buffer.from(cfg.auths?.[host]?.auth ?? '', 'base64').toString('utf8');
    const colon = auth.indexOf(':');
    return colon > 0 ? { host, username: auth.slice(0, colon), password: auth.slice(colon + 1) } : null;
  } catch {
    return null;
  }
}

/**
 * The fingerprints of the imported build: of the first found import whose label names the same Dockerfile and
 * target (stage cache images carry their stage as target), else of the first found import; null when none has any.
 * `read` reads one ref's label: the caller reads each import as the stream announces it, because once the build has
 * pushed, the control plane promotes its upload to the very tag it imported (the label there is then its own).
 */
export async function importedFingerprints(
  imports: CacheImport[],
  current: Fingerprints,
  read: (ref: string) => Promise<Fingerprints | null>,
  key: Buffer
): Promise<Fingerprints | null> {
  // Labels hold keyed strings (cache-miss.ts keyFingerprints): the current Dockerfile and target, keyed, are what match.
  const file = keyedDigest(key, current.file);
  const target = keyedDigest(key, current.target);
  let first: Fingerprints | null = null;
  for (const i of imports.filter((x) => x.found).slice(0, 4)) {
    const fp = await read(i.ref).catch(() => null);
    if (fp && fp.file === file && fp.target === target) return fp;
    first ??= fp;
  }
  return first;
}
