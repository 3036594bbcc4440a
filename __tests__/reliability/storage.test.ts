// Issue 14, "Cache storage that cannot fill the disk", for real: serve with its embedded registry, real dockerd
// builders, and the runner CLI run as a CI job runs it (setup, build, report), one pipeline per job so each build
// starts on a fresh builder and reuses only what the org cache kept. Branch caches fill a small per-org quota; the
// control plane's own retention and GC (cache-gc.ts) evict the least recently built branch while it serves, builds
// keep working and still hit the cache for what was kept, and an org over its quota after eviction gets a message
// saying what is over, by how much, and the command that raises it.
import { spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, DOCKER, TestClient, adminSetup, cli, startServer, waitFor, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { reportScenario } from '../helpers/reliability';
import { buildCompletedEvent } from '../../src/contract/metering-events';

const MiB = 1024 * 1024;

const DOCKERFILE = `FROM scratch
ADD rootfs.tar /
COPY blob.bin /blob.bin
RUN wc -c /blob.bin > /size.txt
`;

describe('org cache retention and quota', () => {
  let server: ServerProcess;
  let token: string;
  let work: string;

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-storage-'));
    // --cache-keep 1: a branch keeps only its newest image; the grace (5 s) keeps blobs of a push under way.
    server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '0', '--cache-keep', '1', '--cache-gc-grace', '5s']);
    token = adminSetup(server.stateDir, 'acme', 60);
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
    if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  });

  interface Usage {
    org: string;
    usedBytes: number;
    quotaBytes: number;
    overBytes: number;
    tags: string[];
  }

  function usage(): Usage {
    const r = cli(['admin', 'cache', 'usage', '--org', 'acme', '--json', '--state-dir', server.stateDir]);
    if (r.status !== 0) throw new Error(`admin cache usage exited ${r.status}: ${r.stderr}`);
    return (JSON.parse(r.stdout) as Usage[])[0] ?? { org: 'acme', usedBytes: 0, quotaBytes: 0, overBytes: 0, tags: [] };
  }

  function gcLines(): {
    orgs: Record<string, { usedBytes: number; overBytes: number }>;
    pauseMs: number;
    ms: number;
    sweptBlobs: number;
    freedBytes: number;
  }[] {
    return server
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"org cache gc"'))
      .map((l) => JSON.parse(l));
  }

  // One CI job of its own pipeline on `branch`, building a context whose blob.bin is `blob`.
  function job(name: string, branch: string, blob: Buffer): { build: string; ok: boolean } {
    const home = path.join(work, name);
    const ctx = path.join(home, 'ctx');
    fs.mkdirSync(ctx, { recursive: true });
    fs.copyFileSync(path.join(work, 'base', 'rootfs.tar'), path.join(ctx, 'rootfs.tar'));
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
    fs.writeFileSync(path.join(ctx, 'blob.bin'), blob);
    const base = {
      PATH: process.env.PATH,
      HOME: home,
      RUNNER_TEMP: home,
      BUILDCLOUD_ENDPOINT: server.info.grpc,
      BUILDCLOUD_TOKEN: token,
      BUILDCLOUD_PROJECT: 'acme/storage',
      BUILDCLOUD_BRANCH: branch,
      BUILDCLOUD_DEFAULT_BRANCH: 'main',
      BUILDCLOUD_PIPELINE_ID: `${name}-${process.pid}`,
      BUILDCLOUD_JOB_ID: 'build',
      BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
      BUILDCLOUD_DOCKER: DOCKER
    } as NodeJS.ProcessEnv;
    const run = (args: string[], env: NodeJS.ProcessEnv) => spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 180_000 });
    const setup = run(['setup', '--json'], base);
    if (setup.status !== 0) throw new Error(`setup exited ${setup.status}:\n${setup.stderr}`);
    const env = { ...base, ...JSON.parse(setup.stdout).env };
    const build = run(['build', '--context', ctx], env);
    const report = run(['report'], env);
    if (report.status !== 0) throw new Error(`report exited ${report.status}:\n${report.stderr}`);
    return { build: build.stderr, ok: build.status === 0 };
  }

  // Waits for a collection that ran after `since` GC lines and left the store as `done` says.
  async function gcAfter(since: number, what: string, done: (u: Usage) => boolean): Promise<Usage> {
    return waitFor(
      what,
      async () => {
        const u = usage();
        return gcLines().length > since && done(u) ? u : null;
      },
      60_000,
      250
    );
  }

  const tagsOf = (u: Usage, branch: string) => u.tags.filter((t) => t.endsWith(`:${branch}`));

  test('a small org quota: the least recently built branch is evicted, builds keep working and hit what was kept, and an org over its quota is told what and how to raise it', async () => {
    await makeBusyboxContext(path.join(work, 'base'), '');
    const blobs = { b1: randomBytes(MiB), b2: randomBytes(MiB), b3: randomBytes(MiB), b4: randomBytes(MiB) };
    const outcomes: boolean[] = [];

    let n = gcLines().length;
    const j1 = job('j1', 'b1', blobs.b1);
    outcomes.push(j1.ok);
    const u1 = await gcAfter(n, 'b1 cached', (u) => tagsOf(u, 'b1').length > 0);
    n = gcLines().length;
    const j2 = job('j2', 'b2', blobs.b2);
    outcomes.push(j2.ok);
    const u2 = await gcAfter(n, 'b2 cached', (u) => tagsOf(u, 'b2').length > 0);
    const perBranch = u2.usedBytes - u1.usedBytes;

    // Room for the two branches there are and half of a third: the third one's push makes the org go over.
    const quota = u2.usedBytes + Math.floor(perBranch / 2);
    expect(cli(['admin', 'cache', 'quota', '--org', 'acme', '--max', String(quota), '--state-dir', server.stateDir]).status).toBe(0);
    n = gcLines().length;
    const j3 = job('j3', 'b3', blobs.b3);
    outcomes.push(j3.ok);
    const u3 = await gcAfter(n, 'b1 evicted', (u) => tagsOf(u, 'b1').length === 0);
    const evictedLines = server
      .stderr()
      .split('\n')
      .filter((l) => l.includes('branch cache evicted'));

    // A new pipeline on the kept branch b3: a fresh builder, every step from the org cache.
    n = gcLines().length;
    const j4 = job('j4', 'b3', blobs.b3);
    outcomes.push(j4.ok);

    // Below what the kept branches need: the next push of new layers is refused with the quota message.
    expect(cli(['admin', 'cache', 'quota', '--org', 'acme', '--max', '1MiB', '--state-dir', server.stateDir]).status).toBe(0);
    await gcAfter(n, 'a collection after j4', () => true);
    const j5 = job('j5', 'b4', blobs.b4);
    outcomes.push(j5.ok);
    const u5 = usage();
    const gcs = gcLines();

    reportScenario({
      scenario: 'org cache fills a small quota',
      injected: `five CI jobs (setup, build, report), each on a fresh builder; branches b1, b2 (no quota), then quota ${quota} bytes (room for 2.5 branches) and b3, b3 again, then quota 1 MiB and b4`,
      checked:
        'b1 (least recently built) evicted by the control plane while serving, b2 and b3 kept; the b3 rebuild on a fresh builder had every step cached; under 1 MiB the b4 push was refused with the quota message (what, by how much, the command), the build still succeeded; every build succeeded',
      figures: {
        buildsOk: outcomes.filter(Boolean).length,
        buildsFailed: outcomes.filter((o) => !o).length,
        bytesPerBranch: perBranch,
        usedAfterTwoBranches: u2.usedBytes,
        quotaBytes: quota,
        usedAfterEviction: u3.usedBytes,
        tagsEvicted: evictedLines.length,
        gcRuns: gcs.length,
        gcMaxPauseMs: Math.max(...gcs.map((g) => g.pauseMs)),
        gcMaxMs: Math.max(...gcs.map((g) => g.ms)),
        blobsSwept: gcs.reduce((s, g) => s + g.sweptBlobs, 0),
        bytesFreed: gcs.reduce((s, g) => s + g.freedBytes, 0),
        usedAtEnd: u5.usedBytes
      }
    });

    expect(outcomes).toEqual([true, true, true, true, true]);
    for (const j of [j1, j2, j3]) expect(j.build).toMatch(/Build Cloud: build success in [\d.]+ s, \d of 3 steps cached, org cache exported/);
    expect(perBranch).toBeGreaterThan(MiB);
    // Eviction: b1's tags (its scope's and the project's) went, b2's and b3's stayed, and the org is under its quota.
    expect(tagsOf(u3, 'b1')).toEqual([]);
    expect(tagsOf(u3, 'b2').length).toBeGreaterThan(0);
    expect(tagsOf(u3, 'b3').length).toBeGreaterThan(0);
    expect(u3.usedBytes).toBeLessThanOrEqual(quota);
    expect(evictedLines.length).toBeGreaterThan(0);
    expect(evictedLines.every((l) => l.includes(':b1') || l.includes('"tag":"b1"'))).toBe(true);
    expect(gcs.some((g) => g.sweptBlobs > 0 && g.freedBytes >= MiB)).toBe(true);
    // The kept branch still serves the cache.
    expect(j4.build).toMatch(/Build Cloud: build success in [\d.]+ s, 3 of 3 steps cached/);
    // Over the quota: b4's new layers were not stored, the build said why and how to raise the quota, and succeeded.
    expect(j5.build).toMatch(/org 'acme' is over its org-cache storage quota: [\d.]+ MiB stored, quota 1\.0 MiB, [\d.]+ MiB over/);
    expect(j5.build).toContain('buildcloud admin cache quota --org acme --max');
    expect(j5.build).toMatch(/could not export the build cache/);
    expect(tagsOf(u5, 'b4')).toEqual([]);
  }, 900_000);
});

// The disk under the state directory fills up: a tmpfs of 96 MiB made by the test holds the whole state dir (the
// store and its WAL, pki, keys, server.json, the registry's data, builders' run directories).
describe('the disk under the state directory is full', () => {
  let mnt: string;
  let srv: ServerProcess;
  let orgToken: string;

  beforeAll(async () => {
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-full-'));
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=96m,mode=0700', 'tmpfs', mnt], { encoding: 'utf8' });
    if (m.status !== 0) throw new Error(`mount tmpfs on ${mnt} failed (root is needed): ${m.stderr}`);
    srv = await startServer(['--warm-pool', '0', '--grace', '1s', '--idle-timeout', '60s'], path.join(mnt, 'state'));
    orgToken = adminSetup(srv.stateDir, 'acme', 60);
  });

  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    const u = spawnSync('umount', [mnt], { encoding: 'utf8' });
    if (u.status === 0) fs.rmSync(mnt, { recursive: true, force: true });
    expect(u.stderr).toBe('');
  });

  const post = (events: object[]) =>
    fetch(`${srv.info.http}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${orgToken}`, 'content-type': 'application/cloudevents-batch+json' },
      body: JSON.stringify(events)
    });
  const records = (leaseId: string, prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) =>
      buildCompletedEvent('acme', {
        lease_id: leaseId,
        build_id: `${prefix}-${i}`,
        platform: 'linux/amd64',
        status: 'success',
        duration_ms: 1000,
        total_steps: 2,
        cached_steps: 1
      })
    );
  const setup = (pipeline: string) =>
    spawnSync(process.execPath, [CLI, 'setup', '--json'], {
      encoding: 'utf8',
      timeout: 180_000,
      env: {
        PATH: process.env.PATH,
        HOME: path.join(os.tmpdir(), pipeline),
        BUILDCLOUD_ENDPOINT: srv.info.grpc,
        BUILDCLOUD_TOKEN: orgToken,
        BUILDCLOUD_PROJECT: 'acme/full',
        BUILDCLOUD_BRANCH: 'main',
        BUILDCLOUD_PIPELINE_ID: pipeline,
        BUILDCLOUD_JOB_ID: 'build'
      }
    });

  test('provisions fail with one clear error, nothing acknowledged is lost, and service resumes when space returns', async () => {
    const client = new TestClient(srv.info.grpc, orgToken);
    const filler = path.join(mnt, 'filler');
    try {
      // Before the disk fills: a lease and 20 usage records, acknowledged.
      const lease = await client.provision({
        pipelineKey: `full-before-${process.pid}`,
        jobId: 'j1',
        identity: { provider: 'local', project: 'acme/full', branch: 'main', defaultBranch: 'main', actor: 'dev' }
      });
      const before = await post(records(lease.id, 'before', 20));
      const beforeBody = (await before.json()) as { accepted: number };

      // Fill it: dd writes until the filesystem has no block left.
      const dd = spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { encoding: 'utf8' });
      const st = fs.statfsSync(mnt);
      const freeBytes = Number(st.bavail) * Number(st.bsize);

      const t0 = Date.now();
      const refused = setup(`full-during-${process.pid}`);
      const refusedMs = Date.now() - t0;
      // Records sent while full: either stored (acknowledged, so durable) or refused (the client's spool keeps them).
      const during = await post(records(lease.id, 'during', 5));
      const duringBody = (await during.json().catch(() => ({}))) as { accepted?: number };
      const stillThere = await client.get(lease.id);

      // Space returns: no restart.
      fs.rmSync(filler);
      const after = setup(`full-after-${process.pid}`);
      const resent = await post(records(lease.id, 'before', 20));
      const resentBody = (await resent.json()) as { accepted: number; duplicate: number };
      // What was acknowledged while full is stored; what was refused is not (the runner's spool sends it again).
      const resentDuring = (await (await post(records(lease.id, 'during', 5))).json()) as { accepted: number; duplicate: number };
      const afterEnv = after.status === 0 ? (JSON.parse(after.stdout) as { env: Record<string, string> }).env : {};
      if (after.status === 0) spawnSync(process.execPath, [CLI, 'report'], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...afterEnv } });
      await client.release(lease.id);

      const errorLines = refused.stderr.split('\n').filter((l) => /disk is full/.test(l));
      const lastLine = refused.stderr.trim().split('\n').pop() ?? '';
      reportScenario({
        scenario: 'disk under the state directory is full',
        injected:
          'state dir on a 96 MiB tmpfs; a lease and 20 usage records acknowledged, then dd filled the filesystem; later the filler was removed, serve not restarted',
        checked:
          'setup (as a CI job runs it) failed at once, without retries, with one error naming the full disk and the state dir; the lease committed before stayed active; the 20 records stored before were still there (resent: all duplicates); after space returned setup succeeded without a restart',
        figures: {
          freeBytesWhenFull: freeBytes,
          setupWhileFullExit: refused.status ?? -1,
          setupWhileFullMs: refusedMs,
          setupWhileFullRetries: refused.stderr.split('\n').filter((l) => /retrying in/.test(l)).length,
          setupWhileFullError: lastLine,
          recordsSentBefore: 20,
          recordsAcceptedBefore: beforeBody.accepted,
          recordsWhileFullStatus: during.status,
          recordsWhileFullAccepted: duringBody.accepted ?? 0,
          recordsWhileFullResentAccepted: resentDuring.accepted,
          recordsResentDuplicate: resentBody.duplicate,
          recordsResentAccepted: resentBody.accepted,
          setupAfterSpaceReturnedExit: after.status ?? -1
        }
      });

      expect(beforeBody.accepted).toBe(20);
      expect(dd.status).not.toBe(0); // it stopped on a full disk
      expect(freeBytes).toBeLessThan(MiB);
      expect(refused.status).not.toBe(0);
      expect(errorLines.length).toBeGreaterThan(0);
      // The job's one error: the full disk and where.
      expect(lastLine).toMatch(/The control plane's disk is full: \S+ has [\d.]+ MiB free/);
      expect(lastLine).toContain(srv.stateDir);
      expect(refused.stderr).not.toMatch(/retrying in/); // refused at once: the disk waits for the operator
      expect(refused.stderr).not.toMatch(/Internal error|stack|at .*\.js:\d+/);
      expect(stillThere.state).toBe(lease.state);
      expect([200, 500, 503]).toContain(during.status);
      expect(resentDuring).toEqual(expect.objectContaining(during.status === 200 ? { accepted: 0, duplicate: 5 } : { accepted: 5, duplicate: 0 }));
      expect(resentBody).toMatchObject({ accepted: 0, duplicate: 20 });
      expect(after.status).toBe(0);
    } finally {
      fs.rmSync(filler, { force: true });
      client.close();
    }
  }, 600_000);
});
