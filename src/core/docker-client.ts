// Which docker client to drive, found with as few processes as the choice allows, and how to run it.
//
// What can be read from files is read: which clients exist (stat), whether a buildx plugin is installed (the CLI's
// plugin directories), and, for a packaged client, its version (dpkg's database). A client is run only for what
// no file answers: `docker --version` for a client no package owns, `docker buildx version` where a plugin file
// exists (it proves the plugin runs and gives its version). On a machine with Debian's 20.10 client and a 28.x
// client without buildx that is one process (the 28.x client's `--version`), where this used to take seven.
// Answers are kept per binary (path, inode, size, mtime) in $RUNNER_TEMP for later setups of the same job.
// Nothing here goes through a shell: inputs are argv elements, never spliced.
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

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

/**
 * The environment for a docker child: `base` plus `extra` (an undefined value removes the variable), always
 * without DOCKER_CONTEXT. A DOCKER_CONTEXT naming a context that lives in another DOCKER_CONFIG makes every command
 * fail, and the caller's choice of daemon is carried by DOCKER_HOST or --builder instead, so it never reaches a child.
 */
export function dockerEnv(base: NodeJS.ProcessEnv, extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base, ...extra };
  delete env.DOCKER_CONTEXT;
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  return env;
}

/**
 * Runs `file args` without a shell and resolves (never rejects) with its exit code and output. `error` is set when
 * it could not be started (the errno code, e.g. ENOENT) or ran longer than `timeoutMs` (then killed).
 */
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

// ---------------------------------------------------------------------------------------------------------------
// What the file system says

/** stat(2) of a path, symlinks followed; what resolveDocker needs to know of a file. */
export interface FileFacts {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  mode: number; // permission bits and file type, as fs.Stats.mode
  uid: number;
}

/** The file system as resolveDocker reads it: the real one, or a table in tests. Each answers null when absent. */
export interface ClientHost {
  stat(p: string): FileFacts | null;
  realpath(p: string): string | null;
  readFile(p: string): string | null;
}

export const fsHost: ClientHost = {
  stat(p) {
    try {
      const s = fs.statSync(p);
      return { dev: s.dev, ino: s.ino, size: s.size, mtimeMs: s.mtimeMs, mode: s.mode, uid: s.uid };
    } catch {
      return null;
    }
  },
  realpath(p) {
    try {
      return fs.realpathSync(p);
    } catch {
      return null;
    }
  },
  readFile(p) {
    try {
      return fs.readFileSync(p, 'utf8');
    } catch {
      return null;
    }
  }
};

const isExecutableFile = (s: FileFacts | null): s is FileFacts => !!s && (s.mode & fs.constants.S_IFMT) === fs.constants.S_IFREG && (s.mode & 0o111) !== 0;

const FALLBACK_PATHS = ['/usr/bin/docker', '/usr/local/bin/docker'];

/**
 * Where to look for a docker client, in order: PATH (what the user's own `docker` would be), then the usual install
 * places; one entry per file (by real path), since /bin is /usr/bin on merged-/usr systems. Absent files are kept:
 * an error message lists every place looked at.
 */
export function dockerCandidates(env: NodeJS.ProcessEnv, host: ClientHost = fsHost): string[] {
  const dirs = (env.PATH ?? '').split(path.delimiter).filter((d) => path.isAbsolute(d));
  const seen = new Set<string>();
  const out: string[] = [];
  for (const p of [...dirs.map((d) => path.join(d, 'docker')), ...FALLBACK_PATHS]) {
    const key = host.realpath(p) ?? p;
    if (!seen.has(key)) {
      seen.add(key);
      out.push(p);
    }
  }
  return out;
}

// docker/cli cli-plugins/manager (getPluginDirs; manager_unix.go defaultSystemPluginDirs): the config's
// `cliPluginsExtraDirs`, then $DOCKER_CONFIG/cli-plugins (default ~/.docker), then the system directories. Newer
// clients also read DOCKER_CLI_PLUGIN_EXTRA_DIRS, and Homebrew on Linux installs into its own prefix. Looking in a
// directory the client does not search costs nothing but a `buildx version` that then says no.
const SYSTEM_PLUGIN_DIRS = [
  '/usr/local/lib/docker/cli-plugins',
  '/usr/local/libexec/docker/cli-plugins',
  '/usr/lib/docker/cli-plugins',
  '/usr/libexec/docker/cli-plugins',
  '/home/linuxbrew/.linuxbrew/lib/docker/cli-plugins'
];

/** The directories a docker client searches for CLI plugins under `env`, in its order (docker/cli cli-plugins/manager). */
export function pluginDirs(env: NodeJS.ProcessEnv, host: ClientHost = fsHost): string[] {
  const configDir = env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker');
  let extra: string[] = [];
  const cfg = host.readFile(path.join(configDir, 'config.json'));
  if (cfg) {
    try {
      const v = JSON.parse(cfg)?.cliPluginsExtraDirs;
      if (Array.isArray(v)) extra = v.filter((d): d is string => typeof d === 'string' && path.isAbsolute(d));
    } catch {
      // docker itself refuses a broken config.json; the plugin search is not the place to say so
    }
  }
  const fromEnv = (env.DOCKER_CLI_PLUGIN_EXTRA_DIRS ?? '').split(':').filter((d) => path.isAbsolute(d));
  return [...new Set([...fromEnv, ...extra, path.join(configDir, 'cli-plugins'), ...SYSTEM_PLUGIN_DIRS])];
}

/** The first `docker-buildx` plugin file a client would find under `env`, or null when there is none. */
export function findBuildxPlugin(env: NodeJS.ProcessEnv, host: ClientHost = fsHost): string | null {
  for (const d of pluginDirs(env, host)) {
    const p = path.join(d, 'docker-buildx');
    if (isExecutableFile(host.stat(p))) return p;
  }
  return null;
}

// Packages that install a docker CLI at /usr/bin/docker: Debian/Ubuntu's docker.io (docker-cli in newer Ubuntu),
// Docker's docker-ce-cli, Microsoft's moby-cli (GitHub's hosted runners).
const DPKG_PACKAGES = ['docker.io', 'docker-cli', 'docker-ce-cli', 'moby-cli'];
const DPKG = '/var/lib/dpkg';

/**
 * The upstream version of the dpkg package that installed `file` (e.g. 20.10.24+dfsg1 from docker.io's
 * 20.10.24+dfsg1-1+deb12u1: epoch and Debian revision dropped, which is what that client's `--version` prints),
 * or null: not installed by one of the known packages, or the file is newer than dpkg's last write (replaced by
 * hand since, so the package no longer says what it is). Reads /var/lib/dpkg/info/<pkg>.list and
 * /var/lib/dpkg/status (deb-control(5) paragraphs).
 */
export function dpkgVersion(file: string, host: ClientHost = fsHost): string | null {
  const real = host.realpath(file) ?? file;
  const names = new Set([file, real]);
  const owner = DPKG_PACKAGES.find((pkg) => {
    const list = host.readFile(path.join(DPKG, 'info', `${pkg}.list`)) ?? host.readFile(path.join(DPKG, 'info', `${pkg}:${dpkgArch()}.list`));
    return list !== null && list.split('\n').some((l) => names.has(l));
  });
  if (!owner) return null;
  const statusFacts = host.stat(path.join(DPKG, 'status'));
  const bin = host.stat(real);
  if (!statusFacts || !bin || bin.mtimeMs > statusFacts.mtimeMs) return null;
  const status = host.readFile(path.join(DPKG, 'status'));
  if (!status) return null;
  // The package's paragraph only (the file is about 700 kB on a small system: no split of the whole).
  const head = `Package: ${owner}\n`;
  const found = status.startsWith(head) ? -1 : status.indexOf(`\n${head}`);
  if (found < 0 && !status.startsWith(head)) return null;
  const at = found + 1;
  const end = status.indexOf('\n\n', at);
  const para = status.slice(at, end < 0 ? undefined : end);
  if (!/^Status: install ok installed$/m.test(para)) return null;
  const v = /^Version: (\S+)$/m.exec(para)?.[1];
  return v ? v.replace(/^\d+:/, '').replace(/-[^-]*$/, '') : null;
}

function dpkgArch(): string {
  return (
    ({ x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch
  );
}

/** The leading major number of a docker version (20 of 20.10.24+dfsg1, 28 of 28.2.2), or null when there is none. */
export function majorVersion(v: string): number | null {
  const m = /^v?(\d+)\.\d+/.exec(v);
  return m ? Number(m[1]) : null;
}

// ---------------------------------------------------------------------------------------------------------------
// Answers kept for later setups of the same job

interface CacheEntry {
  key: string; // dev:ino:size:mtimeMs of the real file
  version?: string;
  // Per plugin file (real path and its dev:ino:size:mtimeMs): the buildx version it reports through this client,
  // '' when it did not run.
  buildx?: Record<string, string>;
}
type Cache = Record<string, CacheEntry>;

const fileKey = (s: FileFacts) => `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;

/** Where answers are kept: $RUNNER_TEMP (a directory of this job alone) or nowhere. */
export function clientCacheFile(env: NodeJS.ProcessEnv): string {
  return env.RUNNER_TEMP && path.isAbsolute(env.RUNNER_TEMP) ? path.join(env.RUNNER_TEMP, 'buildcloud-docker-clients.json') : '';
}

function readCache(file: string): Cache {
  if (!file) return {};
  try {
    const st = fs.lstatSync(file);
    // Only a regular file of this user that nobody else may write: anything else could name a client for us.
    if (!st.isFile() || (typeof process.getuid === 'function' && st.uid !== process.getuid()) || (st.mode & 0o022) !== 0) return {};
    const v = JSON.parse(fs.readFileSync(file, 'utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  } catch {
    return {};
  }
}

function writeCache(file: string, cache: Cache): void {
  if (!file) return;
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, JSON.stringify(cache), { mode: 0o600 });
    fs.renameSync(tmp, file);
  } catch {
    fs.rmSync(tmp, { force: true }); // a cache that cannot be written costs the next setup a probe, nothing more
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The choice

interface Probed {
  path: string;
  version: string;
  buildx: string; // buildx version or ''
  classicBuildKit: boolean;
}

function why(p: Probed): string {
  if (p.classicBuildKit) return `${p.path} ${p.version} has no buildx plugin`;
  return `${p.path} ${p.version} has no buildx plugin and cannot build with BuildKit without it`;
}

const INSTALL_HINT =
  "Install the buildx plugin (docker-buildx-plugin from Docker's apt repository, or a release binary as ~/.docker/cli-plugins/docker-buildx), " +
  "or Debian's docker.io package (its 20.10 client /usr/bin/docker builds with BuildKit via DOCKER_BUILDKIT=1), " +
  'or set BUILDCLOUD_DOCKER to the path of a client that has one.';

export interface ResolveOptions {
  host?: ClientHost;
  cacheFile?: string; // default clientCacheFile(env); '' keeps nothing
}

/**
 * Picks the docker client: the first (PATH order, then /usr/bin, /usr/local/bin; or BUILDCLOUD_DOCKER alone) whose
 * buildx plugin runs, else the first that builds with BuildKit on its own: a client before 23.0 (from 23.0,
 * `docker build` with DOCKER_BUILDKIT=1 needs the buildx plugin and says "BuildKit is enabled but the buildx
 * component is missing or broken"). A client's version comes from its package or, failing that, `--version`; a
 * version that does not parse is settled by `build --help` under DOCKER_BUILDKIT=1, as before. Should the plugin
 * search find nothing and no client qualify, each client is asked `buildx version` before giving up (a plugin in a
 * directory this search does not know). Throws DockerNotUsableError naming every client and why it was passed over.
 */
export async function resolveDocker(env: NodeJS.ProcessEnv = process.env, probe: Probe = runDocker, opts: ResolveOptions = {}): Promise<ResolvedDocker> {
  const host = opts.host ?? fsHost;
  const cacheFile = opts.cacheFile ?? clientCacheFile(env);
  const cache = readCache(cacheFile);
  let cacheChanged = false;
  const override = env.BUILDCLOUD_DOCKER?.trim();
  const candidates = override ? [override] : dockerCandidates(env, host);
  const src = override ? ' (BUILDCLOUD_DOCKER)' : '';
  const penv = dockerEnv(env);
  const plugin = findBuildxPlugin(penv, host);
  const pluginFacts = plugin ? host.stat(plugin) : null;

  // Each client's facts, asked for only when the choice needs them; null when it does not run as a docker client.
  const facts = new Map<string, FileFacts | null>();
  const factsOf = (c: string) => {
    if (!facts.has(c)) {
      const s = host.stat(c);
      facts.set(c, isExecutableFile(s) ? s : null);
    }
    return facts.get(c)!;
  };
  const entry = (c: string): CacheEntry | null => {
    const s = factsOf(c);
    if (!s) return null;
    const real = host.realpath(c) ?? c;
    const e = cache[real];
    if (e && e.key === fileKey(s)) return e;
    cache[real] = { key: fileKey(s) };
    cacheChanged = true;
    return cache[real];
  };
  const versionOf = async (c: string): Promise<string | null> => {
    const e = entry(c);
    if (!e) return null;
    if (e.version) return e.version;
    let v = dpkgVersion(c, host);
    if (!v) {
      // `--version` never contacts a daemon, so a DOCKER_HOST that is down cannot slow this down.
      const r = await probe(c, ['--version'], penv);
      if (r.error || r.code !== 0) return null;
      v = /version\s+([^\s,]+)/i.exec(r.stdout)?.[1] ?? 'unknown';
    }
    e.version = v;
    cacheChanged = true;
    return v;
  };
  const buildxOf = async (c: string, pluginKey: string): Promise<string> => {
    const e = entry(c);
    if (!e) return '';
    const kept = pluginKey ? e.buildx?.[pluginKey] : undefined;
    if (kept !== undefined) return kept;
    const r = await probe(c, ['buildx', 'version'], penv);
    const out = r.stdout.trim();
    const v = r.code === 0 && /buildx/.test(out) ? (/\s(v?\d+\.\d+\S*)/.exec(out)?.[1] ?? 'unknown') : '';
    if (pluginKey) {
      e.buildx = { ...e.buildx, [pluginKey]: v };
      cacheChanged = true;
    }
    return v;
  };
  const classic = async (c: string, version: string): Promise<boolean> => {
    const major = majorVersion(version);
    if (major !== null) return major < 23;
    const help = await probe(c, ['build', '--help'], { ...penv, DOCKER_BUILDKIT: '1' });
    return help.code === 0;
  };
  const describe = async (c: string, buildx: string): Promise<Probed | null> => {
    const version = await versionOf(c);
    if (version === null) return null;
    return { path: c, version, buildx, classicBuildKit: buildx ? false : await classic(c, version) };
  };

  try {
    const because = (ps: Probed[]) => (ps.length ? ` because ${ps.map(why).join('; ')}` : '');
    const withBuildx = (p: Probed, passed: Probed[]): ResolvedDocker => ({
      path: p.path,
      version: p.version,
      buildx: true,
      buildxVersion: p.buildx,
      reason: `using ${p.path}${src} ${p.version} with buildx ${p.buildx}${because(passed)}`
    });
    const passed: Probed[] = [];
    for (const c of candidates) {
      if (!factsOf(c)) continue;
      // A plugin file exists: `buildx version` proves it runs with this client; the version is asked alongside.
      const [bx, p] = pluginFacts
        ? await Promise.all([buildxOf(c, `${host.realpath(plugin!) ?? plugin}:${fileKey(pluginFacts)}`), versionOf(c)])
        : ['', await versionOf(c)];
      if (p === null) continue;
      const d = await describe(c, bx);
      if (!d) continue;
      if (d.buildx) return withBuildx(d, passed);
      passed.push(d);
      // Without a plugin file no later client can have buildx: the first that builds on its own is the answer.
      if (!pluginFacts && d.classicBuildKit) break;
    }
    const i = passed.findIndex((p) => p.classicBuildKit);
    if (i >= 0) {
      // Only clients ahead of it in PATH order need explaining: those are what a plain `docker` would have run.
      const { path: file, version } = passed[i];
      return {
        path: file,
        version,
        buildx: false,
        buildxVersion: '',
        reason: `using ${file}${src} ${version} (no buildx; BuildKit via DOCKER_BUILDKIT=1)${because(passed.slice(0, i))}`
      };
    }
    if (!pluginFacts) {
      // Last resort before refusing: a plugin in a directory the search above does not know.
      for (const [k, p] of passed.entries()) {
        const bx = await buildxOf(p.path, ''); // not kept: nothing on disk says when it would change
        if (bx) return withBuildx({ ...p, buildx: bx }, passed.slice(0, k));
      }
    }
    if (override && passed.length === 0)
      throw new DockerNotUsableError(`BUILDCLOUD_DOCKER is '${override}', which does not run as a docker client. ${INSTALL_HINT}`);
    if (passed.length === 0) throw new DockerNotUsableError(`No docker client found (looked for: ${candidates.join(', ')}). ${INSTALL_HINT}`);
    const lead = override ? `BUILDCLOUD_DOCKER is '${override}', which is not usable: ` : 'No usable docker client: ';
    throw new DockerNotUsableError(`${lead}${passed.map(why).join('; ')}. ${INSTALL_HINT}`);
  } finally {
    if (cacheChanged) writeCache(cacheFile, cache);
  }
}
