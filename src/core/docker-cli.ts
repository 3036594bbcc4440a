// Which docker client to drive, and the argv for it. Everything but resolveDocker/runDocker is pure and
// table-tested; nothing here ever goes through a shell, so inputs are passed as argv elements, never spliced.
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { InputError } from './settings';

export interface ResolvedDocker {
  path: string;
  version: string; // client version, e.g. 20.10.24+dfsg1
  buildx: boolean;
  buildxVersion: string; // '' without buildx
  reason: string; // one sentence for the log: which client and why
}

export interface CommandResult {
  code: number | null; // null when killed by a signal
  stdout: string;
  stderr: string;
  error?: string; // could not be started (ENOENT, EACCES) or timed out
}

export type Probe = (file: string, args: string[], env: NodeJS.ProcessEnv) => Promise<CommandResult>;

export class DockerNotUsableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DockerNotUsableError';
  }
}

// DOCKER_CONTEXT naming a context that lives in another DOCKER_CONFIG makes every command fail, and the caller's
// choice of daemon is carried by DOCKER_HOST or --builder instead, so it never reaches a child.
export function dockerEnv(base: NodeJS.ProcessEnv, extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base, ...extra };
  delete env.DOCKER_CONTEXT;
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  return env;
}

export function runDocker(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
      if (e && typeof e.code === 'string') return resolve({ code: null, stdout, stderr, error: e.code });
      if (e?.killed) return resolve({ code: null, stdout, stderr, error: `timed out after ${timeoutMs} ms` });
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr });
    });
  });
}

const FALLBACK_PATHS = ['/usr/bin/docker', '/usr/local/bin/docker'];

// PATH order first (what the user's own `docker` would be), then the usual install places; one entry per file,
// since /bin is /usr/bin on merged-/usr systems.
export function dockerCandidates(env: NodeJS.ProcessEnv): string[] {
  const dirs = (env.PATH ?? '').split(path.delimiter).filter((d) => path.isAbsolute(d));
  const seen = new Set<string>();
  const out: string[] = [];
  for (const p of [...dirs.map((d) => path.join(d, 'docker')), ...FALLBACK_PATHS]) {
    let key = p;
    try {
      key = fs.realpathSync(p);
    } catch {
      // absent: the probe will say so
    }
    if (!seen.has(key)) {
      seen.add(key);
      out.push(p);
    }
  }
  return out;
}

interface Probed {
  path: string;
  version: string;
  buildx: string; // buildx version or ''
  classicBuildKit: boolean;
  missing: boolean;
}

async function probeOne(p: string, env: NodeJS.ProcessEnv, probe: Probe): Promise<Probed> {
  // `--version` and `--help` never contact a daemon, so a DOCKER_HOST that is down cannot slow this down.
  const v = await probe(p, ['--version'], env);
  if (v.error || v.code !== 0) return { path: p, version: '', buildx: '', classicBuildKit: false, missing: true };
  const version = /version\s+([^\s,]+)/i.exec(v.stdout)?.[1] ?? 'unknown';
  const bx = await probe(p, ['buildx', 'version'], env);
  const bxOut = bx.stdout.trim();
  if (bx.code === 0 && /buildx/.test(bxOut)) {
    return { path: p, version, buildx: /\s(v?\d+\.\d+\S*)/.exec(bxOut)?.[1] ?? 'unknown', classicBuildKit: false, missing: false };
  }
  // Clients before 23.0 carry BuildKit themselves; from 23.0 `docker build` with DOCKER_BUILDKIT=1 needs the
  // buildx plugin and says "BuildKit is enabled but the buildx component is missing or broken".
  const help = await probe(p, ['build', '--help'], { ...env, DOCKER_BUILDKIT: '1' });
  return { path: p, version, buildx: '', classicBuildKit: help.code === 0, missing: false };
}

function why(p: Probed): string {
  if (p.classicBuildKit) return `${p.path} ${p.version} has no buildx plugin`;
  return `${p.path} ${p.version} has no buildx plugin and cannot build with BuildKit without it`;
}

const INSTALL_HINT =
  'Install the buildx plugin (docker-buildx-plugin from Docker\'s apt repository, or a release binary as ~/.docker/cli-plugins/docker-buildx), ' +
  "or Debian's docker.io package (its 20.10 client /usr/bin/docker builds with BuildKit via DOCKER_BUILDKIT=1), " +
  'or set BUILDCLOUD_DOCKER to the path of a client that has one.';

/** Picks the docker client: one with buildx first, else one that builds with BuildKit on its own (< 23.0). */
export async function resolveDocker(env: NodeJS.ProcessEnv = process.env, probe: Probe = runDocker): Promise<ResolvedDocker> {
  const override = env.BUILDCLOUD_DOCKER?.trim();
  const candidates = override ? [override] : dockerCandidates(env);
  const src = override ? ' (BUILDCLOUD_DOCKER)' : '';
  const because = (ps: Probed[]) => (ps.length ? ` because ${ps.map(why).join('; ')}` : '');
  const passed: Probed[] = [];
  for (const c of candidates) {
    const p = await probeOne(c, dockerEnv(env), probe);
    if (p.missing) continue;
    if (p.buildx) {
      return { path: p.path, version: p.version, buildx: true, buildxVersion: p.buildx, reason: `using ${p.path}${src} ${p.version} with buildx ${p.buildx}${because(passed)}` };
    }
    passed.push(p);
  }
  const i = passed.findIndex((p) => p.classicBuildKit);
  if (i >= 0) {
    // Only clients ahead of it in PATH order need explaining: those are what a plain `docker` would have run.
    const { path: file, version } = passed[i];
    return { path: file, version, buildx: false, buildxVersion: '', reason: `using ${file}${src} ${version} (no buildx; BuildKit via DOCKER_BUILDKIT=1)${because(passed.slice(0, i))}` };
  }
  if (override && passed.length === 0) throw new DockerNotUsableError(`BUILDCLOUD_DOCKER is '${override}', which does not run as a docker client. ${INSTALL_HINT}`);
  if (passed.length === 0) throw new DockerNotUsableError(`No docker client found (looked for: ${candidates.join(', ')}). ${INSTALL_HINT}`);
  const lead = override ? `BUILDCLOUD_DOCKER is '${override}', which is not usable: ` : 'No usable docker client: ';
  throw new DockerNotUsableError(`${lead}${passed.map(why).join('; ')}. ${INSTALL_HINT}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Build argv

export type BuildxDriver = 'docker' | 'remote';

export interface BuildOptions {
  context: string;
  file?: string;
  tags: string[];
  buildArgs: Record<string, string>;
  target?: string;
  push: boolean;
  // Into the runner's own Docker engine after the build: load-image.ts for Docker Engine builders; a BuildKit
  // builder (buildx remote driver) loads through buildx's own --load.
  load?: boolean;
  platforms: string[];
  labels?: Record<string, string>;
  noCache?: boolean;
  pull?: boolean;
  exportCache: boolean;
  network?: string; // default | host | none (BuildKit knows no others)
}

export interface CacheRefs {
  importRefs: string[];
  exportRef: string; // '' for forks: never exported
}

export interface BuildClient {
  buildx: boolean;
  builder?: string; // buildx only
  // buildx only. The docker driver (a docker context used as a builder) cannot export a registry cache unless
  // the engine uses the containerd image store (buildx driver/docker/driver.go Features), so it gets inline cache.
  driver?: BuildxDriver;
  metadataFile?: string; // buildx only: where buildx writes containerimage.digest
  iidFile?: string; // classic only
}

// distribution/reference's grammar: [host[:port]/]path[:tag]; path components lowercase. No digest: a build tag.
const DOMAIN = String.raw`(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?`;
const COMPONENT = String.raw`[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`;
const REFERENCE = new RegExp(String.raw`^(?:${DOMAIN}/)?${COMPONENT}(?:/${COMPONENT})*(?::[\w][\w.-]{0,127})?$`);
const PLATFORM = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/;
const STAGE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const NETWORKS = ['default', 'host', 'none'];

export function isValidReference(ref: string): boolean {
  const name = ref.replace(/:[\w][\w.-]{0,127}$/, '');
  return REFERENCE.test(ref) && name.length <= 255;
}

/** `KEY=VALUE` lines (build-args, labels) → a record; values may hold `=` and commas. */
export function parseKeyValueLines(lines: string[], input: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of lines) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf('=');
    if (eq <= 0 || /\s/.test(line.slice(0, eq))) throw new InputError(`Invalid input '${input}': '${line.slice(0, 60)}'. Expected KEY=VALUE on each line.`);
    out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

function checkKeys(rec: Record<string, string> | undefined, input: string): void {
  for (const k of Object.keys(rec ?? {})) {
    if (!k || k.includes('=') || /\s/.test(k)) throw new InputError(`Invalid input '${input}': key '${k.slice(0, 60)}'. Expected KEY=VALUE with a non-empty KEY.`);
  }
}

export function validateBuildOptions(opts: BuildOptions, client: BuildClient): void {
  // A leading '-' would be read as a flag by docker: refuse rather than guess.
  if (!opts.context.trim()) throw new InputError(`Invalid input 'context': empty. Expected a directory or a Git URL.`);
  if (opts.context.startsWith('-')) throw new InputError(`Invalid input 'context': '${opts.context}'. It must not start with '-' (write ./${opts.context}).`);
  if (opts.file !== undefined && opts.file !== '' && opts.file.startsWith('-')) throw new InputError(`Invalid input 'file': '${opts.file}'. It must not start with '-' (write ./${opts.file}).`);
  for (const t of opts.tags) if (!isValidReference(t)) throw new InputError(`Invalid input 'tags': '${t}'. Expected an image reference such as registry.example.com/team/app:1.2 (lowercase name, tag of letters, digits, . _ -).`);
  for (const p of opts.platforms) if (!PLATFORM.test(p)) throw new InputError(`Invalid input 'platforms': '${p}'. Expected os/arch such as linux/amd64 or linux/arm/v7.`);
  if (opts.target && !STAGE.test(opts.target)) throw new InputError(`Invalid input 'target': '${opts.target}'. Expected a stage name from the Dockerfile.`);
  if (opts.network && !NETWORKS.includes(opts.network)) throw new InputError(`Invalid input 'network': '${opts.network}'. Expected one of: ${NETWORKS.join(', ')}.`);
  checkKeys(opts.buildArgs, 'build-args');
  checkKeys(opts.labels, 'labels');
  if (opts.push && opts.tags.length === 0) throw new InputError(`Invalid input 'push': true needs at least one image in 'tags'.`);
  // docker load takes one platform's image: asked for, that is the user's mistake to name first.
  if (opts.platforms.length > 1 && opts.load) {
    throw new InputError(`Invalid input 'load': ${MULTI_PLATFORM_LOAD}; build one platform to load, or set push to true instead of load.`);
  }
  const oneNodeEngine = !client.buildx || client.driver !== 'remote';
  if (opts.platforms.length > 1 && oneNodeEngine) {
    throw new InputError(`Invalid input 'platforms': '${opts.platforms.join(',')}'. A Docker Engine builder builds one platform per build; build each platform separately or use a BuildKit builder with buildx.`);
  }
  if (opts.platforms.length > 1 && !opts.push && opts.tags.length > 0) {
    throw new InputError(`Invalid input 'push': ${MULTI_PLATFORM_LOAD}; set push to true.`);
  }
}

const MULTI_PLATFORM_LOAD = 'a multi-platform image cannot be loaded into a local Docker';

function checkRefs(cache: CacheRefs): void {
  for (const r of [...cache.importRefs, cache.exportRef].filter(Boolean)) {
    if (!isValidReference(r)) throw new Error(`The control plane returned an invalid cache ref '${r}'.`);
  }
}

function commonFlags(opts: BuildOptions): string[] {
  const a: string[] = [];
  if (opts.file) a.push('-f', opts.file);
  if (opts.target) a.push('--target', opts.target);
  if (opts.platforms.length) a.push('--platform', opts.platforms.join(','));
  if (opts.network && opts.network !== 'default') a.push('--network', opts.network);
  if (opts.pull) a.push('--pull');
  if (opts.noCache) a.push('--no-cache');
  for (const [k, v] of Object.entries(opts.buildArgs)) if (k !== 'BUILDKIT_INLINE_CACHE') a.push('--build-arg', `${k}=${v}`);
  for (const [k, v] of Object.entries(opts.labels ?? {})) a.push('--label', `${k}=${v}`);
  return a;
}

function exporting(opts: BuildOptions, cache: CacheRefs): boolean {
  return opts.exportCache && cache.exportRef !== '';
}

// Inline cache: the cache metadata rides in the image config, so exporting means tagging the result as the export
// ref and pushing that tag. It covers the final image's layers only (mode=min): stages that are not part of the
// final image are not shared across builders.
function inlineCache(client: BuildClient): boolean {
  return !client.buildx || client.driver !== 'remote';
}

export function buildArgs(opts: BuildOptions, cache: CacheRefs, client: BuildClient): string[] {
  validateBuildOptions(opts, client);
  checkRefs(cache);
  const imports = opts.noCache ? [] : cache.importRefs;
  const exp = exporting(opts, cache);
  if (!client.buildx) {
    const a = ['build', '--progress=plain', '--build-arg', 'BUILDKIT_INLINE_CACHE=1'];
    for (const r of imports) a.push('--cache-from', r);
    a.push(...commonFlags(opts));
    if (client.iidFile) a.push('--iidfile', client.iidFile);
    for (const t of opts.tags) a.push('-t', t);
    if (exp) a.push('-t', cache.exportRef);
    return [...a, opts.context];
  }
  if (!client.builder) throw new Error('buildArgs: a buildx build needs the builder name');
  if (!client.metadataFile) throw new Error('buildArgs: a buildx build needs a metadata file path');
  const a = ['buildx', 'build', '--builder', client.builder, '--progress=plain'];
  for (const r of imports) a.push('--cache-from', `type=registry,ref=${r}`);
  if (exp && inlineCache(client)) a.push('--cache-to', 'type=inline');
  // mode=max exports every stage's layers, not just the final image's: that is what lets another builder reuse
  // a multi-stage build's intermediate stages. ignore-error: a cache that cannot be written must not fail the build.
  if (exp && !inlineCache(client)) a.push('--cache-to', `type=registry,ref=${cache.exportRef},mode=max,ignore-error=true`);
  a.push(...commonFlags(opts), '--metadata-file', client.metadataFile);
  for (const t of opts.tags) a.push('-t', t);
  if (exp && inlineCache(client)) a.push('-t', cache.exportRef);
  // The docker driver keeps the image in the engine; pushes then go through `docker push` (pushesAfterBuild).
  // A remote builder loads through buildx itself (an image tarball streamed to the docker engine of the client's
  // own endpoint, the runner's: setup leaves DOCKER_HOST alone for BuildKit leases). --push with --load needs
  // buildx and BuildKit 0.13 or later (multiple exporters); older ones refuse the pair with their own error.
  if (inlineCache(client)) a.push('--load');
  else if (opts.push) a.push('--push', ...(opts.load ? ['--load'] : []));
  else if (opts.tags.length || opts.load) a.push('--load');
  return [...a, opts.context];
}

/** What to `docker push` after a successful build, the cache export first; [] where buildx pushes itself. */
export function pushesAfterBuild(opts: BuildOptions, cache: CacheRefs, client: BuildClient): { ref: string; cache: boolean }[] {
  if (!inlineCache(client)) return [];
  const out = exporting(opts, cache) ? [{ ref: cache.exportRef, cache: true }] : [];
  return [...out, ...(opts.push ? opts.tags.map((ref) => ({ ref, cache: false })) : [])];
}

// ---------------------------------------------------------------------------------------------------------------
// Contexts and builders

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
    for (const [k, f] of [['cacert', 'ca.pem'], ['cert', 'cert.pem'], ['key', 'key.pem']]) a.push('--driver-opt', csvField(`${k}=${path.join(certDir, f)}`));
    if (ep.platform) a.push('--platform', ep.platform);
    return [...a, ep.address];
  });
}
