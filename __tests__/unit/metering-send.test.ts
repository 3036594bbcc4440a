// The build's record sent when the build ends (src/core/metering-send.ts): spooled first, sent under a short deadline,
// only the lease's own records, and what is not answered for stays in the spool for the report step.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUILD_END_DEADLINE_MS, recordAndSend, leaseView } from '../../src/core/metering-send';
import { MeteringSpool } from '../../src/core/metering-spool';
import type { HttpRequester, HttpRequestInit } from '../../src/core/http-request';
import type { CloudEvent } from '../../src/contract/cloudevents';
import { buildCompletedEvent } from '../../src/contract/metering-events';

const TOKEN = 'bct_tok1_s3cr3t-value';
const record = (lease: string, build: string) =>
  buildCompletedEvent('acme', {
    lease_id: lease,
    build_id: build,
    platform: 'linux/amd64',
    status: 'success',
    duration_ms: 10,
    total_steps: 2,
    cached_steps: 1
  });

let dir: string;
let sentBatches: string[][];
// An endpoint that stores everything it is sent (accepted), as the real one answers.
const healthy: HttpRequester = async (_url, init) => {
  const batch = JSON.parse(init.body ?? '[]') as CloudEvent[];
  sentBatches.push(batch.map((e) => e.id));
  return { status: 200, headers: {}, text: JSON.stringify({ results: batch.map((e, index) => ({ index, id: e.id, status: 'accepted' })) }) };
};
// An endpoint that never answers: only the request's own signal ends it.
const hanging: HttpRequester = (_url, init: HttpRequestInit) =>
  new Promise((_resolve, reject) => init.signal?.addEventListener('abort', () => reject(init.signal?.reason), { once: true }));

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bc-send-'));
  sentBatches = [];
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const target = (meteringUrl = 'http://metering.test:7644') => ({ spoolDir: join(dir, 'spool'), meteringUrl, token: TOKEN });

test("sends the lease's records and leaves another lease's in the spool", async () => {
  const spool = new MeteringSpool(join(dir, 'spool'));
  const other = record('lease-2', 'b1');
  const earlier = record('lease-1', 'b0'); // an earlier build of this job whose send failed
  await spool.add(other);
  await spool.add(earlier);
  const mine = record('lease-1', 'b1');
  const s = await recordAndSend(target(), 'lease-1', mine, { request: healthy });
  expect(await s.sent).toEqual([]);
  expect(sentBatches.map((b) => [...b].sort())).toEqual([[earlier.id, mine.id].sort()]);
  expect((await spool.pending()).map((e) => e.id)).toEqual([other.id]);
});

test('an endpoint that hangs: the send ends by its deadline, the record stays, a warning names the report step', async () => {
  const started = Date.now();
  const ev = record('lease-1', 'b1');
  const s = await recordAndSend(target(), 'lease-1', ev, { request: hanging, deadlineMs: 300, requestTimeoutMs: 200, baseDelayMs: 10 });
  const warnings = await s.sent;
  expect(Date.now() - started).toBeLessThan(2_000);
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatch(
    /^Build Cloud metering: 1 usage record not sent yet to http:\/\/metering\.test:7644: no reply within \d+ ms; the flush deadline of 300 ms passed\./
  );
  expect(warnings[0]).toMatch(/sent by the report step, or by a later job on this runner\.$/);
  expect(warnings[0]).not.toContain(TOKEN);
  expect((await new MeteringSpool(join(dir, 'spool')).pending()).map((e) => e.id)).toEqual([ev.id]);
});

test('the record is on disk before `sent` settles, and stays there when nothing is sent (no metering endpoint)', async () => {
  const ev = record('lease-1', 'b1');
  const s = await recordAndSend(target(''), 'lease-1', ev, { request: healthy });
  expect((await new MeteringSpool(join(dir, 'spool')).pending()).map((e) => e.id)).toEqual([ev.id]);
  expect(await s.sent).toEqual([]);
  expect(sentBatches).toEqual([]);
});

test('a spool that cannot be written rejects (the build step warns), and nothing is sent', async () => {
  writeFileSync(join(dir, 'a-file'), ''); // a spool directory under a file: ENOTDIR
  const blocked = { ...target(), spoolDir: join(dir, 'a-file', 'spool') };
  await expect(recordAndSend(blocked, 'lease-1', record('lease-1', 'b1'), { request: healthy })).rejects.toThrow();
  expect(sentBatches).toEqual([]);
});

test("leaseView lists only the lease's records; acks go to the spool", async () => {
  const spool = new MeteringSpool(join(dir, 'spool'));
  const a = record('lease-1', 'b1');
  const b = record('lease-2', 'b1');
  await spool.add(a);
  await spool.add(b);
  const view = leaseView(spool, 'lease-2');
  expect((await view.pending()).map((e) => e.id)).toEqual([b.id]);
  await view.ack([b.id]);
  expect((await spool.pending()).map((e) => e.id)).toEqual([a.id]);
});

test('the build-end deadline is a few seconds at most', () => {
  expect(BUILD_END_DEADLINE_MS).toBeGreaterThan(0);
  expect(BUILD_END_DEADLINE_MS).toBeLessThanOrEqual(5_000);
});
