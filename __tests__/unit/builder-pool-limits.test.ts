// Per-org builder caps (issue 9, finding 4): one org cannot take every builder. The pool's check and count
// happen without an await in between, so concurrent cold starts of one org cannot all pass it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BuilderPool } from '../../src/server/builders';
import type { BuilderHandle, Driver } from '../../src/server/drivers/driver';
import { Pki } from '../../src/server/pki';
import type { ApiError } from '../../src/server/errors';

const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined } as never;

class SlowDriver implements Driver {
  readonly name = 'fake';
  started = 0;
  platforms(): string[] {
    return ['linux/amd64'];
  }
  async start(id: string): Promise<BuilderHandle> {
    this.started++;
    await new Promise((r) => setTimeout(r, 50)); // a cold start takes a while: concurrent acquires overlap
    return { id, driver: 'fake', platform: 'linux/amd64', kind: 'docker', socketPath: `/nonexistent/${id}.sock`, dir: '/nonexistent' } as BuilderHandle;
  }
  async destroy(): Promise<void> {}
  async alive(): Promise<boolean> {
    return true;
  }
}

let dir: string;
let pool: BuilderPool;
let driver: SlowDriver;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bc-pool-'));
  driver = new SlowDriver();
  const pki = await Pki.loadOrCreate(dir);
  pool = new BuilderPool({ driver, pki, host: '127.0.0.1', warmPool: 0, maxBuilders: 10, graceMs: 60_000, log, onActivity: () => undefined });
});
afterEach(async () => {
  await pool.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('concurrent cold starts of one org stop at its cap; another org still gets builders; a shared pipeline needs none', async () => {
  pool.limitOrg('acme', 2);
  const tries = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => pool.acquire(`acme-p${i}`, 'acme', 'linux/amd64', `l${i}`)));
  const ok = tries.filter((t) => t.status === 'fulfilled');
  expect(ok).toHaveLength(2);
  expect(driver.started).toBe(2);
  for (const t of tries.filter((x): x is PromiseRejectedResult => x.status === 'rejected')) {
    const e = t.reason as ApiError;
    expect(e.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(e.message).toContain('buildcloud admin org set --org acme --max-builders N');
  }
  expect(pool.orgBuilders('acme')).toBe(2);
  // Another job of a pipeline that holds a builder joins it at the cap.
  const joined = await pool.acquire('acme-p0', 'acme', 'linux/amd64', 'l-join');
  expect(joined.shared).toBe(true);
  // Another org is not starved.
  await expect(pool.acquire('beta-p0', 'beta', 'linux/amd64', 'lb')).resolves.toMatchObject({ shared: false });
  // A builder in its grace period no longer counts: the org can start another.
  const held = ok.map((t) => (t as PromiseFulfilledResult<Awaited<ReturnType<BuilderPool['acquire']>>>).value.builder);
  const first = held.find((b) => b.shareKey === 'acme-p1') ?? held[1];
  for (const lease of [...first.holders]) pool.release(first.id, lease, 'fp');
  expect(pool.orgBuilders('acme')).toBe(1);
  await expect(pool.acquire('acme-p9', 'acme', 'linux/amd64', 'l9')).resolves.toMatchObject({ shared: false });
  // No cap of its own: only --max-builders applies.
  pool.limitOrg('acme', null);
  await expect(pool.acquire('acme-p10', 'acme', 'linux/amd64', 'l10')).resolves.toMatchObject({ shared: false });
});

test("at capacity, idle builders give way: acme's builders in their grace period never keep beta from building", async () => {
  await pool.stop();
  driver = new SlowDriver();
  let destroyed = 0;
  driver.destroy = async () => void destroyed++;
  const pki = await Pki.loadOrCreate(dir);
  pool = new BuilderPool({ driver, pki, host: '127.0.0.1', warmPool: 0, maxBuilders: 2, graceMs: 60_000, log, onActivity: () => undefined });
  const a1 = await pool.acquire('acme-p1', 'acme', 'linux/amd64', 'a1');
  const a2 = await pool.acquire('acme-p2', 'acme', 'linux/amd64', 'a2');
  // Full and every builder held: refused, nothing destroyed.
  const full = (await pool.acquire('beta-p1', 'beta', 'linux/amd64', 'b0').catch((e: ApiError) => e)) as ApiError;
  expect(full.code).toBe(grpc.status.UNAVAILABLE);
  expect(destroyed).toBe(0);
  // acme's jobs end: both builders wait out their grace for later stages. beta's job takes the older one's place.
  pool.release(a1.builder.id, 'a1', 'fp1');
  pool.release(a2.builder.id, 'a2', 'fp2');
  const b = await pool.acquire('beta-p1', 'beta', 'linux/amd64', 'b1');
  expect(b.shared).toBe(false);
  expect(destroyed).toBe(1);
  expect(pool.orgBuilders('beta')).toBe(1);
  // The other acme builder still serves acme's next stage (shared, no cold start).
  const again = await pool.acquire('acme-p2', 'acme', 'linux/amd64', 'a3');
  expect([again.shared, again.builder.id]).toEqual([true, a2.builder.id]);
});

test('a builder shared at any time of a lease says so for both leases, the first one included, after it let go', async () => {
  const first = await pool.acquire('acme-pipe', 'acme', 'linux/amd64', 'la');
  expect(first.shared).toBe(false);
  expect(pool.sharedWith(first.builder.id, 'la')).toBe(false); // alone so far
  const second = await pool.acquire('acme-pipe', 'acme', 'linux/amd64', 'lb');
  expect(second.builder.id).toBe(first.builder.id);
  expect(pool.sharedWith(first.builder.id, 'la')).toBe(true); // a later job joined the first one's builder
  expect(pool.sharedWith(first.builder.id, 'lb')).toBe(true);
  pool.release(first.builder.id, 'la', 'fp-a');
  expect(pool.sharedWith(first.builder.id, 'la')).toBe(true); // still known after the hold ends
  // A builder nobody else ever held: not shared; an unknown builder: not known.
  const alone = await pool.acquire('acme-other', 'acme', 'linux/amd64', 'lc');
  expect(pool.sharedWith(alone.builder.id, 'lc')).toBe(false);
  expect(pool.sharedWith('no-such-builder', 'lc')).toBeUndefined();
});
