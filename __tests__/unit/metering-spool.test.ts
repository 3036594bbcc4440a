import { buildSync } from 'esbuild';
import { spawn } from 'node:child_process';
import { mkdtempSync, promises as fs, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { MeteringSpool, recordFileName } from '../../src/core/metering-spool';
import { buildCompletedEvent, buildRecordId } from '../../src/contract/metering-events';

const event = (build: string, lease = 'lease-1', minute = 0) =>
  buildCompletedEvent(
    'acme',
    { lease_id: lease, build_id: build, platform: 'linux/amd64', status: 'success', duration_ms: 1000, total_steps: 4, cached_steps: 3 },
    { time: Date.UTC(2025, 0, 15, 12, minute) }
  );

const mode = (path: string) => statSync(path).mode & 0o777;

let root: string;
let dir: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'spool-test-'));
  dir = join(root, 'spool');
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('MeteringSpool', () => {
  it('starts empty, even before its directory exists', async () => {
    await expect(new MeteringSpool(dir).pending()).resolves.toEqual([]);
  });

  it('adds, lists oldest first, and forgets acked records', async () => {
    const spool = new MeteringSpool(dir);
    const [a, b, c] = [event('b1', 'lease-1', 3), event('b2', 'lease-1', 1), event('b3', 'lease-1', 2)];
    for (const e of [a, b, c]) await spool.add(e);
    expect((await spool.pending()).map((e) => e.id)).toEqual([b.id, c.id, a.id]);
    expect(await spool.pending()).toContainEqual(a); // stored as it was given, byte for byte in JSON

    await spool.ack([b.id, 'never-added', b.id]);
    expect((await spool.pending()).map((e) => e.id)).toEqual([c.id, a.id]);
    await spool.ack([a.id, c.id]);
    expect(await spool.pending()).toEqual([]);
  });

  it('stores the same id once, keeping the first copy', async () => {
    const spool = new MeteringSpool(dir);
    const first = event('b1');
    await spool.add(first);
    await spool.add({ ...first, time: '2030-01-01T00:00:00Z' }); // rebuilt after a crash: same id
    const pending = await spool.pending();
    expect(pending).toHaveLength(1);
    expect(pending[0]).toEqual(first);
    expect(pending[0].id).toBe(buildRecordId('lease-1', 'b1'));
    expect((await fs.readdir(dir)).filter((n) => n.endsWith('.json'))).toEqual([recordFileName(first.id)]);
  });

  it('keeps its directory 0700 and its files 0600, whatever the umask or an existing directory says', async () => {
    await fs.mkdir(dir, { mode: 0o755 });
    const spool = new MeteringSpool(dir);
    await spool.add(event('b1'));
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, recordFileName(event('b1').id)))).toBe(0o600);
    const file = join(root, 'carry', 'spool.json');
    await spool.exportTo(file);
    expect(mode(file)).toBe(0o600);
  });

  it('refuses a record without an id instead of storing what can never be deduplicated', async () => {
    const spool = new MeteringSpool(dir);
    await expect(spool.add({ ...event('b1'), id: '' })).rejects.toThrow(/non-empty string id/);
    await expect(spool.add({ ...event('b1'), id: 'x'.repeat(257) })).rejects.toThrow(/at most 256/);
  });

  it('lets two instances on one directory add and ack concurrently without losing or corrupting a record', async () => {
    const one = new MeteringSpool(dir);
    const two = new MeteringSpool(dir);
    const events = Array.from({ length: 60 }, (_, i) => event(`b${i}`));
    // Both write every record (same ids, like a main and a post step), interleaved.
    await Promise.all(events.flatMap((e, i) => (i % 2 ? [one.add(e), two.add(e)] : [two.add(e), one.add(e)])));
    expect((await one.pending()).map((e) => e.id).sort()).toEqual(events.map((e) => e.id).sort());

    // One acks the first half while the other adds new records and reads.
    const more = Array.from({ length: 20 }, (_, i) => event(`c${i}`));
    const [, , seen] = await Promise.all([one.ack(events.slice(0, 30).map((e) => e.id)), Promise.all(more.map((e) => two.add(e))), two.pending()]);
    for (const e of seen) expect(e.id).toBe(buildRecordId('lease-1', e.data.build_id as string)); // only whole records
    const left = (await two.pending()).map((e) => e.id).sort();
    expect(left).toEqual([...events.slice(30), ...more].map((e) => e.id).sort());
    expect((await fs.readdir(dir)).filter((n) => !/^[0-9a-f]{64}\.json$/.test(n))).toEqual([]); // no temp files left
  });

  it('survives separate processes adding and acking in one directory at once (parallel jobs on a runner)', async () => {
    // A worker adds records w0..w39 of its own plus shared s0..s39 (every worker writes those), then acks its
    // even-numbered own records. Processes, not instances: the spool must not rely on one event loop.
    const worker = join(root, 'worker.js');
    buildSync({
      stdin: {
        contents: `
          import { MeteringSpool } from './src/core/metering-spool';
          import { buildCompletedEvent } from './src/contract/metering-events';
          const [dir, name] = process.argv.slice(2);
          const ev = (b: string) => buildCompletedEvent('acme', { lease_id: 'lease-1', build_id: b, platform: 'linux/amd64',
            status: 'success', duration_ms: 1, total_steps: 1, cached_steps: 1 }, { time: 0 });
          (async () => {
            const spool = new MeteringSpool(dir);
            for (let i = 0; i < 40; i++) { await spool.add(ev(name + i)); await spool.add(ev('s' + i)); }
            await spool.pending();
            await spool.ack(Array.from({ length: 20 }, (_, i) => ev(name + 2 * i).id));
          })().catch((e) => { console.error(e); process.exit(1); });`,
        resolveDir: resolve(__dirname, '../..'),
        loader: 'ts'
      },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      outfile: worker,
      logLevel: 'silent'
    });
    const names = ['p', 'q', 'r', 's-'];
    const codes = await Promise.all(
      names.map((n) => new Promise<number | null>((done) => spawn(process.execPath, [worker, dir, n], { stdio: 'inherit' }).on('exit', done)))
    );
    expect(codes).toEqual([0, 0, 0, 0]);
    const expected = [...Array.from({ length: 40 }, (_, i) => `s${i}`), ...names.flatMap((n) => Array.from({ length: 20 }, (_, i) => `${n}${2 * i + 1}`))].map(
      (b) => buildRecordId('lease-1', b)
    );
    expect((await new MeteringSpool(dir).pending()).map((e) => e.id).sort()).toEqual(expected.sort());
    expect((await fs.readdir(dir)).filter((n) => !/^[0-9a-f]{64}\.json$/.test(n))).toEqual([]);
  }, 30_000);

  it('ignores a temp file left by a writer that crashed before its rename, and removes it once stale', async () => {
    const spool = new MeteringSpool(dir);
    await spool.add(event('b1'));
    const temp = join(dir, '.tmp-999-deadbeef');
    await fs.writeFile(temp, '{"specversion":"1.0","id":"half-writ');
    expect((await spool.pending()).map((e) => e.id)).toEqual([event('b1').id]);
    expect(await fs.readdir(dir)).toContain('.tmp-999-deadbeef'); // young: may be a live writer elsewhere

    const old = new Date(Date.now() - 60 * 60 * 1000);
    await fs.utimes(temp, old, old);
    expect(await spool.pending()).toHaveLength(1);
    expect(await fs.readdir(dir)).not.toContain('.tmp-999-deadbeef');
  });

  it('sets aside a record file whose content is damaged instead of failing every flush', async () => {
    const spool = new MeteringSpool(dir);
    await spool.add(event('b1'));
    const bad = join(dir, recordFileName('some-id'));
    await fs.writeFile(bad, '{not json');
    expect((await spool.pending()).map((e) => e.id)).toEqual([event('b1').id]);
    expect(await fs.readdir(dir)).toContain(`${recordFileName('some-id')}.corrupt`);
  });

  it('exports unsent records to one file and imports them into another spool (a later job)', async () => {
    const spool = new MeteringSpool(dir);
    const [a, b] = [event('b1'), event('b2')];
    await spool.add(a);
    await spool.add(b);
    const file = join(root, 'carry.json');
    expect(await spool.exportTo(file)).toBe(2);

    const later = new MeteringSpool(join(root, 'later'));
    await later.add(a); // already there: counted as not added
    expect(await later.importFrom(file)).toEqual({ added: 1, skipped: 0 });
    expect((await later.pending()).map((e) => e.id).sort()).toEqual([a.id, b.id].sort());
    expect(await later.importFrom(file)).toEqual({ added: 0, skipped: 0 }); // restoring twice changes nothing
  });

  it('imports a missing file as nothing and skips unusable entries', async () => {
    const spool = new MeteringSpool(dir);
    expect(await spool.importFrom(join(root, 'absent.json'))).toEqual({ added: 0, skipped: 0 });
    const file = join(root, 'mixed.json');
    await fs.writeFile(file, JSON.stringify([event('b1'), { id: '' }, 42, null]));
    expect(await spool.importFrom(file)).toEqual({ added: 1, skipped: 3 });
    await fs.writeFile(file, 'garbage');
    expect(await spool.importFrom(file)).toEqual({ added: 0, skipped: 1 });
  });
});
