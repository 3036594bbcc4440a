// A builder's processes and mounts on the host: find every process of one builder (by the paths on its command
// line, or its BuildKit executor ids in its cgroup), stop them in the order that lets dockerd unmount its layers,
// and remove what it left mounted.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../log';
import { hostTool, runCommand } from './host-tools';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// Overlay mounts the daemon did not unmount make rm fail with EBUSY: unmount and retry.
export async function removeDir(dir: string, log: Logger): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 2 });
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (attempt >= 4 || (code !== 'EBUSY' && code !== 'ENOTEMPTY')) throw err;
      log.warn({ dir, code }, 'builder directory busy, unmounting leftovers');
      await unmountUnder([dir], log);
      await sleep(200 * (attempt + 1));
    }
  }
}

interface Proc {
  pid: number;
  ppid: number;
  start: string; // start time in clock ticks: tells a reused pid from the process we saw
  zombie: boolean;
  args: string[];
  cgroup: string; // read only when a search needs it
}

// How to recognise a builder's processes: a path of the builder on the command line (dockerd, containerd,
// shims, BuildKit's runc), or, for a RUN step orphaned by a killed dockerd, its BuildKit executor id in the
// cgroup path (all daemons share the /docker cgroup parent, the ids are random and per daemon).
export interface Marks {
  paths: string[];
  execIds: string[];
}

export async function listProcs(withCgroup: boolean): Promise<Map<number, Proc>> {
  const out = new Map<number, Proc>();
  for (const name of await fs.promises.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await fs.promises.readFile(`/proc/${name}/stat`, 'utf8');
      // comm (field 2) may contain spaces and parentheses: split after its closing parenthesis.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmd = await fs.promises.readFile(`/proc/${name}/cmdline`, 'utf8');
      const cgroup = withCgroup ? await fs.promises.readFile(`/proc/${name}/cgroup`, 'utf8') : '';
      const pid = Number(name);
      out.set(pid, { pid, ppid: Number(f[1]), start: f[19], zombie: f[0] === 'Z', args: cmd.split('\0'), cgroup });
    } catch {
      // exited while we looked
    }
  }
  return out;
}

export function mentions(p: Proc, marks: Marks): boolean {
  const { paths, execIds } = marks;
  return p.args.some((a) => paths.some((m) => a === m || a.includes(`${m}/`) || a.endsWith(`=${m}`))) || execIds.some((id) => p.cgroup.includes(id));
}

// BuildKit's executor dirs: <data root>/buildkit/executor, or <data root>/<uid>.<gid>/buildkit/executor under
// --userns-remap, which moves the daemon's whole root one level down.
export async function executorIds(dataRoots: string[]): Promise<string[]> {
  const dirs: string[] = [];
  for (const root of dataRoots) {
    dirs.push(path.join(root, 'buildkit', 'executor'));
    const remapped = await fs.promises.readdir(root).catch(() => [] as string[]);
    for (const e of remapped) if (/^\d+\.\d+$/.test(e)) dirs.push(path.join(root, e, 'buildkit', 'executor'));
  }
  const ids: string[] = [];
  for (const dir of dirs) {
    const entries = await fs.promises.readdir(dir, { withFileTypes: true }).catch(() => []);
    ids.push(...entries.filter((e) => e.isDirectory() && /^[a-z0-9]{16,}$/.test(e.name)).map((e) => e.name));
  }
  return ids;
}

function victimsOf(procs: Map<number, Proc>, root: number | null, trusted: boolean, markers: Marks): Proc[] {
  const found = new Map<number, Proc>();
  for (const p of procs.values()) if (mentions(p, markers)) found.set(p.pid, p);
  // Only follow the tree from a pid that is really our dockerd, not a recycled pid of something else.
  const rootProc = root ? procs.get(root) : undefined;
  if (rootProc && (trusted || mentions(rootProc, markers))) found.set(rootProc.pid, rootProc);
  // Descendants too: container processes (children of a shim or of BuildKit's runc) name none of our paths.
  const queue = [...found.keys()];
  while (queue.length) {
    const parent = queue.shift()!;
    for (const p of procs.values()) {
      if (p.ppid === parent && !found.has(p.pid)) {
        found.set(p.pid, p);
        queue.push(p.pid);
      }
    }
  }
  found.delete(process.pid);
  return [...found.values()].filter((p) => !p.zombie);
}

async function waitGone(procs: Proc[], ms: number): Promise<Proc[]> {
  const until = Date.now() + ms;
  for (;;) {
    const now = await listProcs(false);
    const left = procs.filter((p) => {
      const q = now.get(p.pid);
      return q && q.start === p.start && !q.zombie;
    });
    if (left.length === 0 || Date.now() > until) return left;
    await sleep(50);
  }
}

function signal(p: Proc, sig: NodeJS.Signals): void {
  try {
    process.kill(p.pid, sig);
  } catch {
    // already gone
  }
}

const ENGINE_BINARIES = new Set(['dockerd', 'containerd', 'containerd-shim', 'containerd-shim-runc-v2']);

// A builder's processes are disposable, its mounts are not: kill the workload (containers, BuildKit's runc) at
// once, so dockerd does not spend each container's 10 s stop timeout, then SIGTERM dockerd, which stops its
// containerd and unmounts its layers. Whatever is left after that (or after a hung dockerd) is SIGKILLed.
export async function stopProcesses(root: number | null, trusted: boolean, markers: Marks, log: Logger): Promise<void> {
  const withCgroup = markers.execIds.length > 0;
  const victims = victimsOf(await listProcs(withCgroup), root, trusted, markers);
  if (victims.length === 0) return;
  const main = victims.find((p) => p.pid === root);
  if (main) {
    for (const p of victims) if (!ENGINE_BINARIES.has(path.basename(p.args[0] ?? ''))) signal(p, 'SIGKILL');
    signal(main, 'SIGTERM');
    if ((await waitGone([main], 20_000)).length) {
      log.warn({ pid: main.pid }, 'dockerd ignored SIGTERM, killing it');
      signal(main, 'SIGKILL');
      await waitGone([main], 5_000);
    }
  }
  const rest = [...victims, ...victimsOf(await listProcs(withCgroup), null, false, markers)];
  for (const p of rest) signal(p, 'SIGKILL');
  const left = await waitGone(rest, 5_000);
  if (left.length) throw new Error(`builder processes survived SIGKILL: ${left.map((p) => p.pid).join(', ')}`);
}

function decodeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

// Unmounts everything at or under `dirs`, deepest first.
export async function unmountUnder(dirs: string[], log: Logger): Promise<void> {
  let info = '';
  try {
    info = await fs.promises.readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return;
  }
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mp): mp is string => Boolean(mp))
    .map(decodeMountPath)
    .filter((mp) => dirs.some((d) => mp === d || mp.startsWith(`${d}/`)))
    .sort((a, b) => b.length - a.length);
  for (const mp of [...new Set(points)]) {
    try {
      await runCommand(hostTool('umount'), [mp]);
    } catch {
      await runCommand(hostTool('umount'), ['-l', mp]).catch((err) => log.warn({ mp, err: String(err) }, 'unmount failed'));
    }
  }
}
