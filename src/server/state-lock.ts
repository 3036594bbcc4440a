// One `serve` per state directory. The state dir holds the builders' bookkeeping, the registry's data and
// server.json; a second control plane on it would take the running one's builders for a crashed run's leftovers and
// remove them (issue 14). The lock is a file naming its holder by pid, the process's start time (clock ticks since
// boot, /proc/<pid>/stat field 22) and the boot id: a pid that is dead, or reused by another program since, or from
// before a reboot, holds nothing, and the lock is taken over.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Who holds a state directory: what the lock file says. */
export interface LockHolder {
  pid: number;
  startTicks: string; // the holder's start time, clock ticks since boot ('' where /proc is missing)
  bootId: string; // /proc/sys/kernel/random/boot_id ('' where it is missing)
  startedAt: string; // ISO time the lock was taken, for the operator
}

/** The refusal of a second control plane: one line naming the running one. */
export class StateDirLockedError extends Error {
  constructor(
    readonly stateDir: string,
    readonly holder: LockHolder
  ) {
    super(
      `State directory ${stateDir} is in use by another buildcloud serve (pid ${holder.pid}, since ${holder.startedAt}). ` +
        `Stop that one first (kill -TERM ${holder.pid}), or give this one another --state-dir.`
    );
    this.name = 'StateDirLockedError';
  }
}

/** A held lock. `previous` is the holder of a stale lock taken over: a control plane that did not stop cleanly. */
export interface StateLock {
  file: string;
  previous: LockHolder | null;
  /** Removes the lock file if it is still ours. Never throws. */
  release(): void;
}

export function lockFile(stateDir: string): string {
  return path.join(stateDir, 'serve.lock');
}

function readOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return fallback;
  }
}

/** The start time of process `pid` in clock ticks since boot, or null when there is no such process. */
export function processStartTicks(pid: number): string | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm (field 2) may hold spaces and parentheses: fields after its closing one, state being field 3.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return f[0] === 'Z' ? null : (f[19] ?? null); // a zombie holds nothing
}

const bootId = (): string => readOr('/proc/sys/kernel/random/boot_id', '');

/** This process, as a lock holder. */
export function selfHolder(now = new Date()): LockHolder {
  return { pid: process.pid, startTicks: processStartTicks(process.pid) ?? '', bootId: bootId(), startedAt: now.toISOString() };
}

/**
 * Whether `h` still runs: same boot, its pid alive, and started when the lock says (else the pid was reused).
 * Without /proc (start ticks unknown) a live pid is taken as the holder: refusing wrongly is the safe mistake.
 */
export function holderAlive(h: LockHolder, current = { bootId: bootId(), ticksOf: processStartTicks }): boolean {
  if (!Number.isInteger(h.pid) || h.pid <= 0) return false;
  if (h.bootId && current.bootId && h.bootId !== current.bootId) return false;
  const ticks = current.ticksOf(h.pid);
  if (ticks === null) return false;
  return !h.startTicks || h.startTicks === ticks;
}

/** The holder a lock file names; null when the file is missing or not one of ours (a torn write, garbage). */
export function parseHolder(text: string): LockHolder | null {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (typeof v.pid !== 'number' || typeof v.startTicks !== 'string' || typeof v.bootId !== 'string') return null;
    return { pid: v.pid, startTicks: v.startTicks, bootId: v.bootId, startedAt: typeof v.startedAt === 'string' ? v.startedAt : '?' };
  } catch {
    return null;
  }
}

function sameHolder(a: LockHolder | null, b: LockHolder): boolean {
  return !!a && a.pid === b.pid && a.startTicks === b.startTicks && a.bootId === b.bootId;
}

// Creates `file` holding `text`, atomically: complete or absent, never half written. False if it exists.
function createExclusive(file: string, text: string): boolean {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  try {
    fs.linkSync(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Takes the lock of `stateDir` (made 0700 if missing) for this process, before anything else of the state dir is
 * touched. Throws StateDirLockedError when a live control plane holds it; takes a stale lock over (its holder is
 * returned as `previous`). Two processes taking the same stale lock over at once are serialised by a takeover
 * directory, so exactly one wins.
 */
export function acquireStateLock(stateDir: string): StateLock {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = lockFile(stateDir);
  const me = selfHolder();
  const text = JSON.stringify(me) + '\n';
  const lock = (previous: LockHolder | null): StateLock => ({
    file,
    previous,
    release: () => {
      try {
        if (sameHolder(parseHolder(fs.readFileSync(file, 'utf8')), me)) fs.rmSync(file, { force: true });
      } catch {
        // gone already
      }
    }
  });
  if (createExclusive(file, text)) return lock(null);
  const guard = `${file}.takeover`;
  takeGuard(guard);
  try {
    const current = fs.existsSync(file) ? parseHolder(readOr(file, '')) : null;
    if (current && holderAlive(current)) throw new StateDirLockedError(stateDir, current);
    fs.rmSync(file, { force: true });
    if (!createExclusive(file, text)) {
      // Only a first-time taker (no guard) can have come in between: it is alive, it just wrote the file.
      const winner = parseHolder(readOr(file, ''));
      throw new StateDirLockedError(stateDir, winner ?? { pid: 0, startTicks: '', bootId: '', startedAt: '?' });
    }
    return lock(current);
  } finally {
    fs.rmSync(guard, { recursive: true, force: true });
  }
}

// The takeover guard: a directory (mkdir is atomic) with its owner inside; one left by a taker that died is removed.
function takeGuard(guard: string): void {
  for (let attempt = 0; ; attempt++) {
    try {
      fs.mkdirSync(guard, { mode: 0o700 });
      fs.writeFileSync(path.join(guard, 'owner'), JSON.stringify(selfHolder()));
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = parseHolder(readOr(path.join(guard, 'owner'), ''));
      // An owner not yet written is a taker between its mkdir and its write: wait for it, as for a live one, unless
      // the guard is older than any takeover takes (its taker died right after the mkdir).
      const age = Date.now() - (fs.statSync(guard, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if ((owner && !holderAlive(owner)) || (!owner && age > 5_000)) fs.rmSync(guard, { recursive: true, force: true });
      else if (attempt >= 700)
        throw new Error(`${guard} stays in place: another serve is taking this state directory over. Retry, or remove it if no serve runs.`);
      else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); // 10 ms, synchronously (no event loop yet)
    }
  }
}
