// The state directory's lock (src/server/state-lock.ts): one serve per state dir; a stale lock (dead pid, a pid
// reused by another program, another boot) is taken over; a live one refuses with its pid.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StateDirLockedError, acquireStateLock, holderAlive, lockFile, parseHolder, processStartTicks, selfHolder } from '../../src/server/state-lock';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-lock-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A process that has exited and been reaped: its pid names nobody (until reused). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => child.once('exit', r));
  return child.pid!;
}

describe('holderAlive', () => {
  const me = selfHolder();
  test.each([
    ['this process', me, true],
    ['a pid reused by another program (other start time)', { ...me, startTicks: String(Number(me.startTicks) + 1) }, false],
    ['a lock from before a reboot', { ...me, bootId: 'another-boot' }, false],
    ['no pid', { ...me, pid: 0 }, false]
  ])('%s', (_what, holder, alive) => {
    expect(holderAlive(holder)).toBe(alive);
  });

  test('a dead pid', async () => {
    expect(holderAlive({ ...me, pid: await deadPid() })).toBe(false);
  });

  test('start ticks of a process that does not exist are null', async () => {
    expect(processStartTicks(await deadPid())).toBeNull();
    expect(processStartTicks(process.pid)).toMatch(/^\d+$/);
  });
});

describe('parseHolder', () => {
  test.each(['', 'not json', '{"pid":"12"}', '{"pid":12,"startTicks":1,"bootId":"b"}'])('rejects %j', (text) => {
    expect(parseHolder(text)).toBeNull();
  });
  test('reads what selfHolder writes', () => {
    const h = selfHolder();
    expect(parseHolder(JSON.stringify(h))).toEqual(h);
  });
});

describe('acquireStateLock', () => {
  test('a free state dir: taken, no previous holder; released, it is free again', () => {
    const lock = acquireStateLock(path.join(dir, 'state'));
    expect(lock.previous).toBeNull();
    expect(parseHolder(fs.readFileSync(lockFile(path.join(dir, 'state')), 'utf8'))?.pid).toBe(process.pid);
    expect(fs.statSync(path.join(dir, 'state')).mode & 0o777).toBe(0o700);
    lock.release();
    expect(fs.existsSync(lock.file)).toBe(false);
    acquireStateLock(path.join(dir, 'state')).release();
  });

  test('held by a live process: refused with one line naming its pid, and the lock file is left alone', () => {
    const holder = { ...selfHolder(), pid: process.ppid, startTicks: processStartTicks(process.ppid)! };
    fs.writeFileSync(lockFile(dir), JSON.stringify(holder));
    const before = fs.readFileSync(lockFile(dir), 'utf8');
    let err: unknown;
    try {
      acquireStateLock(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StateDirLockedError);
    expect((err as Error).message).toContain(`pid ${process.ppid}`);
    expect((err as Error).message).toContain(dir);
    expect((err as Error).message).not.toContain('\n');
    expect(fs.readFileSync(lockFile(dir), 'utf8')).toBe(before);
    expect(fs.readdirSync(dir)).toEqual(['serve.lock']); // nothing else made: no temp file, no takeover guard
  });

  test.each([
    ['its pid is dead', async () => ({ ...selfHolder(), pid: await deadPid() })],
    ['its pid was reused by another program', async () => ({ ...selfHolder(), pid: process.ppid, startTicks: '1' })],
    ['it is garbage', async () => null]
  ])('a stale lock (%s) is taken over and its holder returned', async (_what, make) => {
    const stale = await make();
    fs.writeFileSync(lockFile(dir), stale ? JSON.stringify(stale) : 'garbage');
    const lock = acquireStateLock(dir);
    expect(lock.previous).toEqual(stale);
    expect(parseHolder(fs.readFileSync(lock.file, 'utf8'))?.pid).toBe(process.pid);
    lock.release();
  });

  test('release leaves a lock that is no longer ours', () => {
    const lock = acquireStateLock(dir);
    const other = JSON.stringify({ ...selfHolder(), pid: process.ppid, startTicks: processStartTicks(process.ppid)! });
    fs.writeFileSync(lock.file, other);
    lock.release();
    expect(fs.readFileSync(lock.file, 'utf8')).toBe(other);
  });

  test('a takeover guard left by a taker that died is removed', async () => {
    fs.writeFileSync(lockFile(dir), JSON.stringify({ ...selfHolder(), pid: await deadPid() }));
    fs.mkdirSync(`${lockFile(dir)}.takeover`);
    fs.writeFileSync(path.join(`${lockFile(dir)}.takeover`, 'owner'), JSON.stringify({ ...selfHolder(), pid: await deadPid() }));
    const lock = acquireStateLock(dir);
    expect(fs.existsSync(`${lockFile(dir)}.takeover`)).toBe(false);
    lock.release();
  });

  test('two processes taking one stale lock over at once: exactly one wins, the other names it', async () => {
    fs.writeFileSync(lockFile(dir), JSON.stringify({ ...selfHolder(), pid: await deadPid() }));
    // The module as plain JavaScript for the child processes (it imports node builtins only).
    const bundle = path.join(dir, 'state-lock.cjs');
    // The esbuild CLI, not its API: the API's service process would keep Jest from exiting.
    const esbuild = spawnSync(
      path.join(__dirname, '../../node_modules/.bin/esbuild'),
      [path.join(__dirname, '../../src/server/state-lock.ts'), '--bundle', '--platform=node', '--format=cjs', `--outfile=${bundle}`],
      { encoding: 'utf8' }
    );
    expect(esbuild.stderr).not.toMatch(/error/i);
    const script = `
      const { acquireStateLock } = require(${JSON.stringify(bundle)});
      try { acquireStateLock(${JSON.stringify(dir)}); console.log('won'); setTimeout(() => {}, 1500); }
      catch (e) { console.log('lost ' + e.message); }`;
    const run = () =>
      new Promise<string>((resolve) => {
        const c = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        c.stdout.on('data', (d) => (out += d));
        c.once('exit', () => resolve(out.trim()));
      });
    const results = await Promise.all([run(), run(), run()]);
    expect(results.filter((r) => r === 'won')).toHaveLength(1);
    for (const r of results.filter((x) => x !== 'won')) expect(r).toMatch(/^lost State directory .* is in use by another buildcloud serve \(pid \d+/);
  }, 30_000);
});
