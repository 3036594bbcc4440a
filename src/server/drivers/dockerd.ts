// Builders as private Docker Engines: one `dockerd` per builder with its own data root, exec root, bridge and
// a unix socket nobody else can reach (the control plane puts a mutual-TLS proxy in front of it). With isolation
// 'userns' each engine runs with --userns-remap: its containers' and RUN steps' root is a subordinate uid.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from '../log';
import { silentLogger } from '../log';
import { BridgeAllocator, DEFAULT_SUBNET_POOL } from './bridge';
import { BuilderNat } from './builder-nat';
import { executorIds, listProcs, mentions, removeDir, sleep, stopProcesses, unmountUnder } from './host-processes';
import type { BuilderHandle, Driver, EngineHealth } from './driver';
import { probeEngine, processAlive } from './engine-probe';
import { daemonConfig, type BuilderIsolation } from './builder-isolation';
import { EngineCgroups, engineCgroupPath, type EngineEndpoint } from './engine-egress';
import { linkExists } from './host-tools';

export interface DockerdDriverOptions {
  rootDir: string;
  dockerdPath?: string;
  subnetPool?: string;
  // Outbound NAT and egress filtering for RUN steps (default true): iptables rules per builder bridge, see
  // BuilderNat in bridge.ts. False: no rules at all, so no filtering either (warned at construction).
  builderNat?: boolean;
  // IPv4 CIDRs RUN steps may reach although they are private or link-local (serve --builder-egress-allow).
  builderEgressAllow?: string[];
  // Addresses of this host the engine itself must reach (the org-cache registry proxy); with builderNat, every
  // other address of the host and every blocked range is closed to the engine's own traffic (engine-egress.ts).
  engineEndpoints?: EngineEndpoint[];
  isolation?: BuilderIsolation; // default 'none'
  log?: Logger;
  startTimeoutMs?: number;
}

interface Layout {
  id: string;
  dir: string; // rootDir/<id>: config, log, state (private to the control plane)
  dataRoot: string; // dataBase/<short>: images, build cache, containers' layers
  runDir: string; // short path: unix sockets (ours and containerd's, under the exec root) must fit in 107 bytes
  execRoot: string;
  socketPath: string;
  pidFile: string;
  logFile: string;
  bridge: string;
}

interface State {
  bridge: string;
  subnet: string | null;
  pid: number | null;
  nat?: boolean; // rules were added for the bridge (absent in state files of older versions)
  cgroup?: boolean; // the engine's own cgroup was made (engine-egress.ts)
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm/v7',
  ia32: '386',
  ppc64: 'ppc64le', // Node on Linux only runs little-endian ppc64
  s390x: 's390x',
  riscv64: 'riscv64'
};

export function findDockerd(): string | null {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  for (const d of [...dirs, '/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin']) {
    const p = path.join(d, 'dockerd');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

// GET /_ping over the unix socket: the engine is up when its API answers, whatever its log says.
export function ping(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/_ping', method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

// Builders' data roots live here, not under rootDir. With --userns-remap the remapped root must traverse every
// parent of its data root (dockerd refuses to start otherwise: "restricts access to the remapped root"), and
// rootDir is inside the control plane's state dir, which is 0700 and holds the admin token, the CA key, the
// signing keys and the database, and is itself often in a 0700 home (/root/.buildcloud). Making those
// traversable would put every secret one wrong file mode away from every local user, and /root cannot be opened
// at all. This base holds nothing but data roots: it is 0711 (traversable, not listable) and dockerd makes each
// data root 0710 root:<remapped gid>. Every isolation mode uses it, so cleanup looks in one place.
// Returns the directories that are ours, outermost first; the last one is the base.
function dataBaseDirs(): string[] {
  if (process.getuid?.() === 0) return ['/var/lib/buildcloud', '/var/lib/buildcloud/builders'];
  return [path.join(os.tmpdir(), `bc-data-${process.getuid?.() ?? 'u'}`)];
}

function runtimeBase(): string {
  // /run is tmpfs and short; elsewhere (non-root) fall back to the temp dir, still short enough in practice.
  if (process.getuid?.() === 0 && fs.existsSync('/run')) return '/run/bc';
  return path.join(os.tmpdir(), `bc-${process.getuid?.() ?? 'u'}`);
}

/**
 * What an engine's log says about how it ended: for a Go runtime crash ("fatal error: ..." or "panic: ..." followed by
 * a dump of every goroutine, often megabytes), that line and the crashing goroutine's first frames, then the log's
 * last lines; otherwise the last `lines` lines. Pure (dockerd.test covers it).
 */
export function engineEndSummary(log: string, lines = 12): string {
  const text = log.trimEnd();
  const crash = Math.max(text.lastIndexOf('\nfatal error:'), text.lastIndexOf('\npanic:'), /^(fatal error|panic):/.test(text) ? 0 : -1);
  const tail = text.split('\n').slice(-lines).join('\n');
  if (crash < 0) return tail || '(empty)';
  const head = text
    .slice(crash === 0 ? 0 : crash + 1)
    .split('\n')
    .slice(0, 16)
    .join('\n');
  return `${head}\n...\n${tail}`;
}

/** engineEndSummary of `file`'s last 8 MiB, read synchronously; '(unreadable)' if it cannot be read. */
function tailFileSync(file: string): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 8 * 1024 * 1024);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return engineEndSummary(buf.toString('utf8'));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '(unreadable)';
  }
}

async function tailFile(file: string, lines = 20): Promise<string> {
  try {
    const fh = await fs.promises.open(file, 'r');
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, 8192);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      return buf.toString('utf8').trimEnd().split('\n').slice(-lines).join('\n') || '(empty)';
    } finally {
      await fh.close();
    }
  } catch {
    return '(no log)';
  }
}

// A spawn failure (ENOENT, EACCES) is emitted asynchronously, possibly before anyone waits on the child.
const spawnErrors = new WeakMap<ChildProcess, Error>();

export class DockerdDriver implements Driver {
  readonly name = 'dockerd';
  private readonly rootDir: string;
  private readonly dockerdPath: string;
  private readonly log: Logger;
  private readonly startTimeoutMs: number;
  private readonly bridges: BridgeAllocator;
  private readonly nat: BuilderNat;
  private readonly natEnabled: boolean;
  private readonly base = runtimeBase();
  private readonly dataBaseDirs = dataBaseDirs();
  private readonly dataBase = this.dataBaseDirs[this.dataBaseDirs.length - 1];
  private dataBaseReady: Promise<void> | null = null;
  private readonly isolationMode: BuilderIsolation;
  private readonly engineEndpoints: EngineEndpoint[];
  private readonly cgroups = new EngineCgroups();
  private readonly children = new Map<string, ChildProcess>();
  private readonly active = new Set<string>(); // started (or starting) by this instance and not destroyed
  private readonly stopping = new Set<string>(); // ids being torn down: their engine's exit is expected
  private readonly exitListeners: Array<(id: string) => void> = [];

  constructor(opts: DockerdDriverOptions) {
    this.rootDir = path.resolve(opts.rootDir);
    const dockerd = opts.dockerdPath ?? findDockerd();
    if (!dockerd) throw new Error('dockerd not found: install Docker Engine (Debian: apt-get install docker.io)');
    this.dockerdPath = dockerd;
    this.log = opts.log ?? silentLogger();
    this.startTimeoutMs = opts.startTimeoutMs ?? 60_000;
    this.bridges = new BridgeAllocator(opts.subnetPool ?? DEFAULT_SUBNET_POOL, this.log);
    this.nat = new BuilderNat(this.log, { egressAllow: opts.builderEgressAllow });
    this.natEnabled = opts.builderNat ?? true;
    this.isolationMode = opts.isolation ?? 'none';
    this.engineEndpoints = opts.engineEndpoints ?? [];
    if (this.natEnabled && !this.cgroups.mount()) {
      this.log.warn(
        "no cgroup v2 hierarchy is mounted: builders' engines cannot be held to the egress rules, so a Dockerfile can make them fetch from this host's loopback, private and link-local addresses (ADD <url>, FROM)"
      );
    }
    if (!this.natEnabled) {
      this.log.warn(
        'builder NAT is off: RUN steps get no outbound NAT and no egress filtering (they can reach this host on their bridge, and whatever its firewall lets through)'
      );
      if (opts.builderEgressAllow?.length)
        this.log.warn({ builderEgressAllow: opts.builderEgressAllow }, 'builder egress allow-list ignored: builder NAT is off');
    }
  }

  get isolation(): BuilderIsolation {
    return this.isolationMode;
  }

  platforms(): string[] {
    return [`linux/${ARCH[process.arch] ?? process.arch}`];
  }

  async start(id: string): Promise<BuilderHandle> {
    const t0 = performance.now();
    const l = this.layout(id);
    if (this.active.has(id)) throw new Error(`builder ${id} is already running`);
    this.active.add(id);
    try {
      return await this.startIn(l, t0);
    } catch (err) {
      this.active.delete(id);
      throw err;
    }
  }

  private async startIn(l: Layout, t0: number): Promise<BuilderHandle> {
    const id = l.id;
    await this.teardown(l, null); // leftovers of a crashed run with the same id would break the new one
    await fs.promises.mkdir(l.dir, { recursive: true, mode: 0o700 });
    await fs.promises.chmod(l.dir, 0o700);
    await this.prepareDataBase();
    // 0711 for the remapped root; dockerd narrows it to 0710 root:<remapped gid> itself.
    await fs.promises.mkdir(l.dataRoot, { recursive: true, mode: 0o711 });
    await fs.promises.mkdir(l.execRoot, { recursive: true, mode: 0o700 });
    await fs.promises.chmod(l.runDir, 0o700);
    const configFile = path.join(l.dir, 'daemon.json');
    await fs.promises.writeFile(configFile, JSON.stringify(daemonConfig(this.isolationMode)) + '\n', { mode: 0o600 });
    const state: State = { bridge: l.bridge, subnet: null, pid: null };
    // Before anything is made on the host: what a start leaves behind if this process dies is named in its log.
    this.log.info({ builder: id, bridge: l.bridge, runDir: l.runDir, dataRoot: l.dataRoot }, 'starting dockerd');
    try {
      const lease = await this.bridges.create(l.bridge);
      state.subnet = lease.subnet;
      await this.saveState(l, state);
      // The engine's own cgroup, before its rules (iptables resolves the path when a rule is added) and before it
      // starts (it is born in it): its own traffic is filtered from its first connection.
      let procsFile: string | null = null;
      if (this.natEnabled && this.cgroups.mount()) {
        procsFile = await this.cgroups.create(l.bridge);
        state.cgroup = true;
        await this.saveState(l, state);
      }
      const engine = procsFile ? { cgroup: engineCgroupPath(l.bridge), endpoints: this.engineEndpoints } : undefined;
      // Before dockerd starts, so no RUN step ever runs on the bridge without its isolation rules.
      state.nat = this.natEnabled && (await this.nat.add(lease, engine)); // false too when the host has no iptables (warned once)
      await this.saveState(l, state);
      // Under userns the first dockerd on a host creates the `dockremap` user (four at once did not race).
      const child = this.spawnDockerd(l, configFile, state.nat ? procsFile : null);
      state.pid = child.pid ?? null;
      await this.saveState(l, state);
      await this.waitReady(l, child);
    } catch (err) {
      await this.teardown(l, state.pid).catch((e) => this.log.warn({ builder: id, err: String(e) }, 'cleanup after failed start'));
      throw err;
    }
    const startedMs = Math.round(performance.now() - t0);
    this.log.info(
      { builder: id, pid: state.pid, bridge: l.bridge, subnet: state.subnet, nat: state.nat ?? false, isolation: this.isolationMode, startedMs },
      'dockerd ready'
    );
    return {
      id,
      driver: this.name,
      platform: this.platforms()[0],
      kind: 'docker',
      socketPath: l.socketPath,
      dir: l.dir,
      pid: state.pid,
      startedMs
    };
  }

  async destroy(handle: BuilderHandle): Promise<void> {
    if (!ID_RE.test(handle.id)) return;
    const l = this.layout(handle.id);
    try {
      await this.teardown(l, handle.pid);
    } finally {
      this.active.delete(handle.id);
    }
  }

  async alive(handle: BuilderHandle): Promise<boolean> {
    return ping(handle.socketPath, 2000);
  }

  // Dead without asking the socket when the engine we spawned has exited (Node reaped it, so its pid may be
  // reused) or its pid is gone; otherwise whatever /_ping says within timeoutMs.
  async health(handle: BuilderHandle, timeoutMs: number): Promise<EngineHealth> {
    if (this.active.has(handle.id) && !this.children.has(handle.id)) return 'dead';
    if (handle.pid !== null && !processAlive(handle.pid)) return 'dead';
    return probeEngine(handle.socketPath, timeoutMs);
  }

  onEngineExit(listener: (id: string) => void): void {
    this.exitListeners.push(listener);
  }

  // Builders whose directory is still under rootDir but that this instance did not start: a previous control
  // plane died without destroying them. Removes them all (call it once at startup); returns their ids.
  async cleanupOrphans(): Promise<string[]> {
    const entries = await fs.promises.readdir(this.rootDir).catch(() => [] as string[]);
    const ids = entries.filter((e) => ID_RE.test(e) && !this.active.has(e));
    for (const id of ids) await this.teardown(this.layout(id), null);
    await this.sweepRuntimeBase();
    await this.sweepDataBase();
    const stale = await this.nat.removeStale().catch((e) => void this.log.warn({ err: String(e) }, 'stale NAT rules not removed'));
    if (stale?.length) this.log.info({ bridges: stale }, 'removed NAT rules of builder bridges that no longer exist');
    // Engine cgroups whose bridge is gone (a bridge is made before its cgroup and removed after it): stale, after
    // their rules are (a rule names its cgroup).
    for (const bridge of await this.cgroups.list()) {
      if (await linkExists(bridge)) continue;
      await this.cgroups.remove(bridge).catch((e) => this.log.warn({ bridge, err: String(e) }, 'stale engine cgroup not removed'));
    }
    return ids;
  }

  // Run dirs in the runtime base (shared by every control plane on the host) that no process uses any more, and
  // their bridges: left by a control plane that died in the middle of a destroy, whose rootDir may be gone. The
  // age check keeps us off a builder another control plane is starting right now.
  private async sweepRuntimeBase(minAgeMs = 10 * 60_000): Promise<void> {
    const names = await fs.promises.readdir(this.base).catch(() => [] as string[]);
    const procs = [...(await listProcs(false)).values()];
    for (const name of names.filter((n) => /^[0-9a-f]{10}$/.test(n))) {
      const runDir = path.join(this.base, name);
      const st = await fs.promises.stat(runDir).catch(() => null);
      if (!st || Date.now() - st.mtimeMs < minAgeMs) continue;
      if (procs.some((p) => mentions(p, { paths: [runDir], execIds: [] }))) continue;
      this.log.info({ runDir, bridge: `bc${name}` }, 'removing a stale builder run dir and its bridge');
      await unmountUnder([runDir], this.log);
      await removeDir(runDir, this.log).catch((e) => this.log.warn({ runDir, err: String(e) }, 'stale run dir not removed'));
      await this.nat.remove(`bc${name}`).catch((e) => this.log.warn({ err: String(e) }, 'stale NAT rules not removed'));
      await this.bridges.remove(`bc${name}`).catch((e) => this.log.warn({ err: String(e) }, 'stale bridge not removed'));
    }
  }

  // Data roots no process uses any more whose builder directory is gone: left by a control plane that died
  // between the two removals of a teardown, or whose rootDir was deleted with builders in it. Same age rule.
  private async sweepDataBase(minAgeMs = 10 * 60_000): Promise<void> {
    const names = await fs.promises.readdir(this.dataBase).catch(() => [] as string[]);
    const procs = [...(await listProcs(false)).values()];
    for (const name of names.filter((n) => /^[0-9a-f]{10}$/.test(n))) {
      const dataRoot = path.join(this.dataBase, name);
      const st = await fs.promises.stat(dataRoot).catch(() => null);
      if (!st || Date.now() - st.mtimeMs < minAgeMs) continue;
      if (fs.existsSync(path.join(this.base, name))) continue; // its run dir is there: sweepRuntimeBase's call
      if (procs.some((p) => mentions(p, { paths: [dataRoot], execIds: [] }))) continue;
      this.log.info({ dataRoot }, 'removing a stale builder data root');
      await unmountUnder([dataRoot], this.log);
      await removeDir(dataRoot, this.log).catch((e) => this.log.warn({ dataRoot, err: String(e) }, 'stale data root not removed'));
    }
  }

  // The data base's directories are ours: (re)made 0711 once per driver, whatever an administrator or an older
  // version left.
  private prepareDataBase(): Promise<void> {
    this.dataBaseReady ??= (async () => {
      await fs.promises.mkdir(this.dataBase, { recursive: true, mode: 0o711 });
      for (const d of this.dataBaseDirs) await fs.promises.chmod(d, 0o711);
    })().catch((err: unknown) => {
      this.dataBaseReady = null;
      throw err;
    });
    return this.dataBaseReady;
  }

  private layout(id: string): Layout {
    if (!ID_RE.test(id)) throw new Error(`invalid builder id: ${JSON.stringify(id)}`);
    // Derived from (rootDir, id) so two control planes on one host never share a run dir or a bridge name.
    const short = createHash('sha256').update(`${this.rootDir}\0${id}`).digest('hex').slice(0, 10);
    const dir = path.join(this.rootDir, id);
    const runDir = path.join(this.base, short);
    return {
      id,
      dir,
      dataRoot: path.join(this.dataBase, short),
      runDir,
      execRoot: path.join(runDir, 'exec'),
      socketPath: path.join(runDir, 'docker.sock'),
      pidFile: path.join(runDir, 'docker.pid'),
      logFile: path.join(dir, 'dockerd.log'),
      bridge: `bc${short}` // 12 chars: Linux allows 15
    };
  }

  // With `procsFile`, dockerd is born in its own cgroup: a shell writes its pid there and execs dockerd, so no
  // connection of the engine (or of its containerd) is ever made from outside it. No input of anyone reaches the
  // shell's text; the paths are its arguments.
  private spawnDockerd(l: Layout, configFile: string, procsFile: string | null): ChildProcess {
    const args = [
      '--config-file',
      configFile,
      '--data-root',
      l.dataRoot,
      '--exec-root',
      l.execRoot,
      '--pidfile',
      l.pidFile,
      '--host',
      `unix://${l.socketPath}`,
      '--bridge',
      l.bridge,
      // Builders must not touch the host firewall, all of them share one host: the driver adds their NAT.
      '--iptables=false',
      '--ip-masq=false',
      '--log-level',
      'info'
    ];
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` };
    // A control plane run by systemd (Type=notify) must not have its readiness reported by a child dockerd.
    delete env.NOTIFY_SOCKET;
    const logFd = fs.openSync(l.logFile, 'a', 0o600);
    try {
      // Own session: a Ctrl-C on the control plane's terminal must not reach builders before it destroys them.
      const [file, argv] = procsFile
        ? ['/bin/sh', ['-c', 'echo $$ > "$1" || exit 97; shift; exec "$@"', 'sh', procsFile, this.dockerdPath, ...args]]
        : [this.dockerdPath, args];
      const child = spawn(file, argv, { detached: true, stdio: ['ignore', logFd, logFd], env });
      child.on('error', (err) => {
        spawnErrors.set(child, err);
        this.log.error({ builder: l.id, err: err.message }, 'dockerd spawn error');
      });
      this.children.set(l.id, child);
      child.once('exit', (code, signal) => {
        this.children.delete(l.id);
        // An engine that ends on its own (a crash, the OOM killer) takes its reason with it when its run directory is
        // removed: its log's last lines go to serve's log first, read now, before the teardown the exit sets off.
        const stopping = this.stopping.has(l.id);
        if (stopping) this.log.info({ builder: l.id, code, signal }, 'dockerd exited');
        else this.log.warn({ builder: l.id, code, signal, logTail: tailFileSync(l.logFile) }, 'dockerd exited on its own');
        for (const listener of this.exitListeners) {
          try {
            listener(l.id);
          } catch (err) {
            this.log.error({ builder: l.id, err: String(err) }, 'engine exit listener failed');
          }
        }
      });
      child.unref();
      return child;
    } finally {
      fs.closeSync(logFd);
    }
  }

  private async waitReady(l: Layout, child: ChildProcess): Promise<void> {
    const deadline = Date.now() + this.startTimeoutMs;
    for (;;) {
      const spawnError = spawnErrors.get(child);
      if (spawnError || child.exitCode !== null || child.signalCode !== null) {
        const why = spawnError ? `could not be run (${spawnError.message})` : `exited with ${child.exitCode ?? child.signalCode}`;
        throw new Error(`dockerd for builder ${l.id} ${why} before it was ready. Log tail (${l.logFile}):\n${await tailFile(l.logFile)}`);
      }
      if (await ping(l.socketPath, 1000)) return;
      if (Date.now() > deadline) {
        throw new Error(`dockerd for builder ${l.id} not ready after ${this.startTimeoutMs} ms. Log tail (${l.logFile}):\n${await tailFile(l.logFile)}`);
      }
      await sleep(25);
    }
  }

  private async saveState(l: Layout, s: State): Promise<void> {
    await fs.promises.writeFile(path.join(l.dir, 'state.json'), JSON.stringify(s), { mode: 0o600 });
  }

  private async loadState(l: Layout): Promise<State | null> {
    try {
      return JSON.parse(await fs.promises.readFile(path.join(l.dir, 'state.json'), 'utf8')) as State;
    } catch {
      return null;
    }
  }

  // Idempotent: stops every process of the builder, unmounts what it left mounted, removes its directories, its
  // NAT rules and its bridge. Used by destroy, after a failed start, and before a start to clear a crashed run's
  // leftovers.
  private async teardown(l: Layout, pid: number | null): Promise<void> {
    this.stopping.add(l.id);
    try {
      const state = await this.loadState(l);
      let pidFromFile: number | null = null;
      try {
        pidFromFile = Number((await fs.promises.readFile(l.pidFile, 'utf8')).trim()) || null;
      } catch {
        // no pidfile: never started, or already cleaned up
      }
      // Anything whose command line names our run dir or data root is ours: dockerd, its containerd and the
      // containerd shims that outlive containerd by design.
      // l.dir also covers a builder of an older version, whose data root was l.dir/data.
      const marks = { paths: [l.runDir, l.dataRoot, l.dir], execIds: await executorIds([l.dataRoot, path.join(l.dir, 'data')]) };
      // A child we spawned and Node has not reaped cannot have had its pid recycled.
      const child = this.children.get(l.id);
      const live = child?.pid !== undefined && child.exitCode === null && child.signalCode === null;
      // Every step is tried even if an earlier one failed: a stuck directory must not also leak the bridge.
      const errors: string[] = [];
      const step = (p: Promise<void>): Promise<void> => p.catch((e: unknown) => void errors.push(String(e)));
      await step(stopProcesses(live ? child.pid! : (pid ?? state?.pid ?? pidFromFile), live, marks, this.log));
      // NAT rules before the directories (a crash in between leaves the state file for the next cleanup) and the
      // bridge (a rule never outlives its bridge unless this fails). No state: look if this driver adds rules at all;
      // cleanupOrphans sweeps rules of vanished bridges anyway.
      if (state ? state.nat !== false : this.natEnabled) await step(this.nat.remove(state?.bridge ?? l.bridge));
      // The engine's cgroup after its rules (a rule names it) and after its processes.
      if (state ? state.cgroup === true : this.natEnabled) await step(this.cgroups.remove(state?.bridge ?? l.bridge));
      await step(unmountUnder([l.dir, l.dataRoot, l.runDir], this.log));
      // The data root before l.dir: while l.dir (with state.json) is there, cleanupOrphans finds the builder again.
      await step(removeDir(l.dataRoot, this.log));
      await step(removeDir(l.dir, this.log));
      await step(removeDir(l.runDir, this.log));
      await step(this.bridges.remove(state?.bridge ?? l.bridge, state?.subnet ?? undefined));
      if (errors.length) throw new Error(`cleanup of builder ${l.id} incomplete: ${errors.join('; ')}`);
    } finally {
      this.stopping.delete(l.id);
    }
  }
}
