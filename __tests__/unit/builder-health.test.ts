// Builder health before a hand-out (issue 14): the probe tells a dead engine from a slow one, and the pool never
// leases a dead builder: a dead warm one is replaced, a dead pipeline builder is not joined (its leases are told),
// a slow one that others are building on is still joined.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BuilderPool } from '../../src/server/builders';
import { handOutVerdict, HEALTH_FRESH_MS } from '../../src/server/builder-health';
import type { BuilderHandle, Driver, EngineHealth } from '../../src/server/drivers/driver';
import { probeEngine } from '../../src/server/drivers/engine-probe';
import { Pki } from '../../src/server/pki';

const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined } as never;

test.each([
  ['ok', false, 'use'],
  ['ok', true, 'use'],
  ['dead', false, 'replace'],
  ['dead', true, 'replace'],
  ['unresponsive', false, 'replace'],
  ['unresponsive', true, 'use']
] as const)('an engine %s, held by others: %s -> %s', (health, held, verdict) => {
  expect(handOutVerdict(health, held)).toBe(verdict);
});

describe('probeEngine', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'bc-probe-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const listen = (server: net.Server, path: string): Promise<void> => new Promise((resolve) => server.listen(path, () => resolve()));
  const close = (server: net.Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()));

  test('ok when /_ping answers 200; unresponsive on another status', async () => {
    let status = 200;
    const server = http.createServer((req, res) => {
      res.statusCode = req.url === '/_ping' ? status : 404;
      res.end('OK');
    });
    await listen(server, join(dir, 'ok.sock'));
    expect(await probeEngine(join(dir, 'ok.sock'), 1000)).toBe('ok');
    status = 500;
    expect(await probeEngine(join(dir, 'ok.sock'), 1000)).toBe('unresponsive');
    await close(server);
  });

  test('dead when the socket is missing or nobody accepts on it', async () => {
    expect(await probeEngine(join(dir, 'missing.sock'), 1000)).toBe('dead');
    writeFileSync(join(dir, 'stale.sock'), ''); // not a socket: connect is refused
    expect(['dead']).toContain(await probeEngine(join(dir, 'stale.sock'), 1000));
  });

  test('unresponsive when the engine accepts but does not answer in time', async () => {
    const held: net.Socket[] = [];
    const server = net.createServer((s) => void held.push(s)); // accepts, never answers
    await listen(server, join(dir, 'hung.sock'));
    const t0 = Date.now();
    expect(await probeEngine(join(dir, 'hung.sock'), 200)).toBe('unresponsive');
    expect(Date.now() - t0).toBeLessThan(2000);
    for (const s of held) s.destroy();
    await close(server);
  });
});

// A driver whose engines' health the test sets, and whose engine exits it can raise.
class FakeDriver implements Driver {
  readonly name = 'fake';
  readonly health_ = new Map<string, EngineHealth>();
  readonly probes: string[] = []; // builder ids, one per health() call
  readonly started: string[] = [];
  readonly destroyed: string[] = [];
  private exit: ((id: string) => void) | null = null;
  platforms(): string[] {
    return ['linux/amd64'];
  }
  async start(id: string): Promise<BuilderHandle> {
    this.started.push(id);
    return { id, driver: 'fake', platform: 'linux/amd64', kind: 'docker', socketPath: `/nonexistent/${id}.sock`, dir: '', pid: null, startedMs: 0 };
  }
  async destroy(h: BuilderHandle): Promise<void> {
    this.destroyed.push(h.id);
  }
  async alive(): Promise<boolean> {
    return true;
  }
  async health(h: BuilderHandle): Promise<EngineHealth> {
    this.probes.push(h.id);
    await new Promise((r) => setImmediate(r)); // an answer takes a turn, as a socket's would
    return this.health_.get(h.id) ?? 'ok';
  }
  onEngineExit(listener: (id: string) => void): void {
    this.exit = listener;
  }
  exited(id: string): void {
    this.exit?.(id);
  }
}

describe('BuilderPool hand-out', () => {
  let dir: string;
  let pool: BuilderPool;
  let driver: FakeDriver;
  let lost: Array<[string, string[]]>;
  let clock: number;
  let pki: Pki;

  const until = async (what: string, cond: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
    if (!cond()) throw new Error(`not reached: ${what}`);
  };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bc-pool-health-'));
    driver = new FakeDriver();
    pki = await Pki.loadOrCreate(dir);
    clock = 1_000_000;
    pool = new BuilderPool({
      driver,
      pki,
      host: '127.0.0.1',
      warmPool: 1,
      maxBuilders: 4,
      graceMs: 60_000,
      log,
      onActivity: () => undefined,
      now: () => clock
    });
    lost = [];
    pool.onLost((id, leases) => void lost.push([id, leases]));
    pool.refill();
    await until('a warm builder', () => pool.count('warm') === 1);
  });
  afterEach(async () => {
    await pool.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a dead warm builder is never leased: destroyed, a new one serves the lease, the pool refilled', async () => {
    const [dead] = driver.started;
    driver.health_.set(dead, 'dead');
    const a = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    expect(a.builder.id).not.toBe(dead);
    expect(a.warm).toBe(false);
    expect(driver.destroyed).toContain(dead);
    expect(lost).toEqual([[dead, []]]); // nobody held it
    await until('the pool refilled', () => pool.count('warm') === 1);
  });

  test('an unresponsive warm builder nobody holds is replaced too', async () => {
    const [slow] = driver.started;
    driver.health_.set(slow, 'unresponsive');
    const a = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    expect(a.builder.id).not.toBe(slow);
    expect(driver.destroyed).toContain(slow);
  });

  test("a dead pipeline builder is not joined: the next job gets a new one, the dead one's leases are told", async () => {
    const first = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    driver.health_.set(first.builder.id, 'dead');
    clock += HEALTH_FRESH_MS; // its last good answer is no longer fresh (a dead engine's exit is reported at once anyway)
    const next = await pool.acquire('p1', 'acme', 'linux/amd64', 'l2');
    expect(next.builder.id).not.toBe(first.builder.id);
    expect(next.shared).toBe(false);
    expect(lost).toEqual([[first.builder.id, ['l1']]]);
    expect(driver.destroyed).toContain(first.builder.id);
  });

  test('a slow pipeline builder that others build on is still joined (destroying it would break their builds)', async () => {
    const first = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    driver.health_.set(first.builder.id, 'unresponsive');
    const next = await pool.acquire('p1', 'acme', 'linux/amd64', 'l2');
    expect(next).toMatchObject({ shared: true });
    expect(next.builder.id).toBe(first.builder.id);
    expect(lost).toEqual([]);
  });

  test('an engine that exits under its leases: they are told at once, the builder destroyed, confirm() false', async () => {
    const a = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    await pool.acquire('p1', 'acme', 'linux/amd64', 'l2');
    driver.exited(a.builder.id);
    expect(lost).toEqual([[a.builder.id, ['l1', 'l2']]]);
    await until('destroyed', () => driver.destroyed.includes(a.builder.id));
    expect(await pool.confirm(a.builder.id)).toBe(false);
    // An exit the pool caused (a destroy) is no loss.
    const warm = pool.all().find((b) => b.state === 'warm')!;
    await pool.destroy(warm.id, 'test');
    driver.exited(warm.id);
    expect(lost).toHaveLength(1);
  });

  test('confirm(): a dead held builder is lost when a lease asks; a live one is fine', async () => {
    const a = await pool.acquire('p1', 'acme', 'linux/amd64', 'l1');
    expect(await pool.confirm(a.builder.id)).toBe(true);
    driver.health_.set(a.builder.id, 'dead');
    expect(await pool.confirm(a.builder.id)).toBe(false);
    expect(lost).toEqual([[a.builder.id, ['l1']]]);
  });

  test('joins of one pipeline share one probe, and an answer under HEALTH_FRESH_MS old is not asked again', async () => {
    const first = await pool.acquire('p2', 'acme', 'linux/amd64', 'l1');
    const probes = () => driver.probes.filter((id) => id === first.builder.id).length;
    const before = probes();
    clock += HEALTH_FRESH_MS; // stale: the next joins probe, once for all of them
    const joins = await Promise.all(Array.from({ length: 20 }, (_, i) => pool.acquire('p2', 'acme', 'linux/amd64', `j${i}`)));
    expect(joins.every((j) => j.builder.id === first.builder.id && j.shared)).toBe(true);
    expect(probes()).toBe(before + 1);
    await pool.acquire('p2', 'acme', 'linux/amd64', 'k'); // fresh: no probe
    expect(probes()).toBe(before + 1);
  });

  test('a builder whose front cannot start is stopped, not leaked; the failed cert is not cached for the next start', async () => {
    await pool.stop();
    const fresh = new BuilderPool({ driver, pki, host: '127.0.0.1', warmPool: 0, maxBuilders: 4, graceMs: 60_000, log, onActivity: () => undefined });
    const issue = jest.spyOn(pki, 'issueServer').mockRejectedValueOnce(new Error('disk full'));
    try {
      await expect(fresh.acquire('p3', 'acme', 'linux/amd64', 'l1')).rejects.toThrow('disk full');
      const leaked = driver.started[driver.started.length - 1];
      expect(driver.destroyed).toContain(leaked);
      const next = await fresh.acquire('p3', 'acme', 'linux/amd64', 'l2');
      expect(next.builder.id).not.toBe(leaked);
      expect(issue).toHaveBeenCalledTimes(2);
    } finally {
      issue.mockRestore();
      await fresh.stop();
    }
  });
});
