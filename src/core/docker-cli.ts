// The argv for docker builds: pure and table-tested. Nothing here goes through a shell, so inputs are passed as
// argv elements, never spliced. Which client to run is docker-client.ts; contexts and buildx builders,
// docker-context.ts; both are re-exported here for the callers that know this module.
import { InputError } from './settings';

export {
  DockerNotUsableError,
  dockerCandidates,
  dockerEnv,
  resolveDocker,
  runDocker,
  type CommandResult,
  type Probe,
  type ResolvedDocker
} from './docker-client';
export { buildxCreateArgs, contextCreateArgs } from './docker-context';
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
  // BuildKit secrets and SSH (--secret id=ID,src=FILE and --ssh SPEC: docker build with BuildKit since Docker 18.09,
  // and buildx). Only files reach the argv: `secretValues` are written by runBuild (build.ts) to 0600 files in the
  // runner's private dir, passed as `secrets`, and removed after the build; commonFlags never renders a value.
  secrets?: { id: string; src: string }[];
  secretValues?: { id: string; value: string }[];
  ssh?: string[]; // default | ID | ID=PATH[,PATH], paths absolute (build-inputs.ts)
  cacheScope?: string; // the `cache-scope` input; '' or absent: derived from the Dockerfile and target (build-cache.ts)
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
/**
 * `KEY=VALUE` entries (build-args, labels, as build-inputs.ts keyValueEntries returns them) → a record; values may hold
 * `=`, commas and line breaks. Throws InputError naming the input and the 1-based entry, never its text (a value may
 * be multi-line, or a secret pasted in the wrong place).
 */
export function parseKeyValueLines(lines: string[], input: string): Record<string, string> {
  const out: Record<string, string> = {};
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const eq = line.indexOf('=');
    if (eq <= 0 || /\s/.test(line.slice(0, eq))) throw new InputError(`Invalid input '${input}': entry ${i + 1} is not KEY=VALUE. Expected KEY=VALUE entries.`);
    out[line.slice(0, eq)] = line.slice(eq + 1);
  });
  return out;
}

function checkKeys(rec: Record<string, string> | undefined, input: string): void {
  for (const k of Object.keys(rec ?? {})) {
    if (!k || k.includes('=') || /\s/.test(k))
      throw new InputError(`Invalid input '${input}': key '${k.slice(0, 60)}'. Expected KEY=VALUE with a non-empty KEY.`);
  }
}

export function validateBuildOptions(opts: BuildOptions, client: BuildClient): void {
  // A leading '-' would be read as a flag by docker: refuse rather than guess.
  if (!opts.context.trim()) throw new InputError(`Invalid input 'context': empty. Expected a directory or a Git URL.`);
  if (opts.context.startsWith('-')) throw new InputError(`Invalid input 'context': '${opts.context}'. It must not start with '-' (write ./${opts.context}).`);
  if (opts.file !== undefined && opts.file !== '' && opts.file.startsWith('-'))
    throw new InputError(`Invalid input 'file': '${opts.file}'. It must not start with '-' (write ./${opts.file}).`);
  for (const t of opts.tags)
    if (!isValidReference(t))
      throw new InputError(
        `Invalid input 'tags': '${t}'. Expected an image reference such as registry.example.com/team/app:1.2 (lowercase name, tag of letters, digits, . _ -).`
      );
  for (const p of opts.platforms)
    if (!PLATFORM.test(p)) throw new InputError(`Invalid input 'platforms': '${p}'. Expected os/arch such as linux/amd64 or linux/arm/v7.`);
  if (opts.target && !STAGE.test(opts.target)) throw new InputError(`Invalid input 'target': '${opts.target}'. Expected a stage name from the Dockerfile.`);
  if (opts.network && !NETWORKS.includes(opts.network))
    throw new InputError(`Invalid input 'network': '${opts.network}'. Expected one of: ${NETWORKS.join(', ')}.`);
  checkKeys(opts.buildArgs, 'build-args');
  checkKeys(opts.labels, 'labels');
  checkSecrets(opts);
  if (opts.push && opts.tags.length === 0) throw new InputError(`Invalid input 'push': true needs at least one image in 'tags'.`);
  // docker load takes one platform's image: asked for, that is the user's mistake to name first.
  if (opts.platforms.length > 1 && opts.load) {
    throw new InputError(`Invalid input 'load': ${MULTI_PLATFORM_LOAD}; build one platform to load, or set push to true instead of load.`);
  }
  const oneNodeEngine = !client.buildx || client.driver !== 'remote';
  if (opts.platforms.length > 1 && oneNodeEngine) {
    throw new InputError(
      `Invalid input 'platforms': '${opts.platforms.join(',')}'. A Docker Engine builder builds one platform per build; build each platform separately or use a BuildKit builder with buildx.`
    );
  }
  if (opts.platforms.length > 1 && !opts.push && opts.tags.length > 0) {
    throw new InputError(`Invalid input 'push': ${MULTI_PLATFORM_LOAD}; set push to true.`);
  }
}

const MULTI_PLATFORM_LOAD = 'a multi-platform image cannot be loaded into a local Docker';

const SECRET_ID = /^[A-Za-z0-9_.-]+$/;

// Ids are checked here as well as in build-inputs.ts because a BuildOptions may come from elsewhere (the harness, the
// demo); messages name the position, never a value.
function checkSecrets(opts: BuildOptions): void {
  (opts.secrets ?? []).forEach((s, i) => {
    if (!SECRET_ID.test(s.id) || !s.src) throw new InputError(`Invalid input 'secrets': entry ${i + 1} needs an id of letters, digits, . _ - and a file.`);
  });
  (opts.ssh ?? []).forEach((spec, i) => {
    if (!/^[A-Za-z0-9_.-]+(=[^=\n]+)?$/.test(spec)) throw new InputError(`Invalid input 'ssh': entry ${i + 1}. Expected default, ID or ID=PATH[,PATH].`);
  });
}

// docker and buildx read --secret's value as one CSV record (encoding/csv): a field holding a comma or a quote is
// quoted, with "" for a quote, so a path with a comma stays one field.
function csvField(f: string): string {
  return /[",\r\n]/.test(f) ? `"${f.replace(/"/g, '""')}"` : f;
}

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
  for (const s of opts.secrets ?? []) a.push('--secret', `${csvField(`id=${s.id}`)},${csvField(`src=${s.src}`)}`);
  for (const spec of opts.ssh ?? []) a.push('--ssh', spec);
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
