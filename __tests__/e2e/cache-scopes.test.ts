// Issue 11, cases 1 and 3, for real: `buildcloud serve`, fresh dockerd builders, the real registry behind the
// registry proxy, and the runner's own build code (configureRunner + runBuild, as the action and the CLI run it).
//  1. Two images of one project built in one pipeline each keep their own cache (a scope per image): the next
//     pipeline, on a fresh builder, rebuilds `a` with all 3 of its steps cached.
//  3. Two jobs of one pipeline, on the shared pipeline builder, different Dockerfiles, the same local tag, started
//     together, three times: each build's cache lands on its own scope's tag (through an upload tag unique to the
//     build, promoted by the control plane), and no job reports success for a tag that names the other's image.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, registryRequest, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { resolveDocker, type BuildOptions, type ResolvedDocker } from '../../src/core/docker-cli';
import { cleanupRunner, configureRunner, runnerName, type RunnerConfig } from '../../src/core/runner-config';
import { runBuild, type BuildResult } from '../../src/core/build';
import type { LeaseMsg } from '../../src/contract/grpc';

const MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';

let server: ServerProcess;
let client: TestClient;
let docker: ResolvedDocker;
let work: string;
const held: Array<{ lease: LeaseMsg; cfg: RunnerConfig }> = [];

async function job(pipelineKey: string, jobId: string): Promise<{ lease: LeaseMsg; cfg: RunnerConfig }> {
  const lease = await client.provision({
    pipelineKey,
    jobId,
    identity: { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main', actor: 'dev' }
  });
  const cfg = await configureRunner(lease, runnerName(['local', 'acme/app', pipelineKey, jobId]), { tempRoot: path.join(work, 'tmp'), docker });
  held.push({ lease, cfg });
  return { lease, cfg };
}

async function end(j: { lease: LeaseMsg; cfg: RunnerConfig }): Promise<void> {
  await cleanupRunner(j.cfg, docker);
  await client.release(j.lease.id);
}

const opts = (context: string, o: Partial<BuildOptions> = {}): BuildOptions => ({
  context,
  tags: [],
  buildArgs: {},
  push: false,
  platforms: [],
  exportCache: true,
  ...o
});

/**
 * The layers (config diff_ids) of the image a cache ref's tag holds now, read through the proxy with the lease's
 * credentials. Layers, not the config digest: the inline-cache repair may rewrite the config's cache records.
 */
async function layersAt(lease: LeaseMsg, ref: string): Promise<string[]> {
  const r = lease.cache!.registry!;
  const noHost = ref.slice(r.host.length + 1);
  const i = noHost.lastIndexOf(':');
  const repo = noHost.slice(0, i);
  const get = async (p: string) => {
    const res = await registryRequest(server.info, `https://${r.host}/v2/${repo}/${p}`, {
      method: 'GET',
      headers: { authorization: `Basic ${Buffer.from(`${r.username}:${r.password}`).toString('base64')}`, accept: MANIFEST_V2 }
    });
    if (res.status !== 200) throw new Error(`GET ${ref} ${p}: HTTP ${res.status} ${res.body}`);
    return JSON.parse(res.body);
  };
  const manifest = await get(`manifests/${noHost.slice(i + 1)}`);
  return (await get(`blobs/${manifest.config.digest}`)).rootfs.diff_ids;
}

/** The layers of an image on the lease's builder, by id. */
function layersOf(cfg: RunnerConfig, imageId: string): string[] {
  const r = spawnSync(docker.path, ['image', 'inspect', '--format', '{{json .RootFS.Layers}}', imageId], {
    env: { PATH: process.env.PATH, HOME: work, ...cfg.env },
    encoding: 'utf8'
  });
  return JSON.parse(r.stdout);
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-scopes-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  docker = await resolveDocker();
});

afterAll(async () => {
  for (const j of held) {
    await cleanupRunner(j.cfg, docker).catch(() => undefined);
    await client.release(j.lease.id).catch(() => undefined);
  }
  client?.close();
  expect(await server?.stop()).toBe(0);
  fs.rmSync(work, { recursive: true, force: true });
});

describe('case 1: two images of one project keep their own caches', () => {
  let a: string;
  let b: string;
  let firstBuilder = '';

  beforeAll(async () => {
    a = path.join(work, 'a');
    b = path.join(work, 'b');
    await makeBusyboxContext(a, 'COPY a.txt /a.txt\nRUN cat /a.txt > /a.out && sleep 1\n');
    fs.writeFileSync(path.join(a, 'a.txt'), 'a\n');
    await makeBusyboxContext(b, 'RUN echo b > /b.out && sleep 1\n');
  });

  test('pipeline 1 builds a/ and b/: each exports to its own scope', async () => {
    const j = await job('scopes/run1/1', 'build');
    firstBuilder = j.lease.builders[0].builderId;
    try {
      const ra = await runBuild(opts(a), j.cfg, j.lease, docker);
      const rb = await runBuild(opts(b), j.cfg, j.lease, docker);
      expect(ra).toMatchObject({ status: 'success', totalSteps: 3, cachedSteps: 0, cacheExported: true, warnings: [] });
      expect(rb).toMatchObject({ status: 'success', totalSteps: 2, cacheExported: true, warnings: [] });
      const repo = j.lease.cache!.repository!;
      expect(ra.cacheRef).toMatch(new RegExp(`^${repo.replace(/[.[\]]/g, '\\$&')}/[a-z0-9._-]+:main$`));
      expect(rb.cacheRef).not.toBe(ra.cacheRef);
      // Each scope's tag holds its own image (not the other's, as the one unscoped tag did).
      expect(await layersAt(j.lease, ra.cacheRef!)).toEqual(layersOf(j.cfg, ra.imageId!));
      expect(await layersAt(j.lease, rb.cacheRef!)).toEqual(layersOf(j.cfg, rb.imageId!));
      expect(layersOf(j.cfg, ra.imageId!)).not.toEqual(layersOf(j.cfg, rb.imageId!));
      // The project's unscoped tag holds the newest image scope's cache (b's), the fallback every build imports after
      // its own scope's; the upload tags the builds pushed under were never stored.
      expect(await layersAt(j.lease, j.lease.cache!.exportRef)).toEqual(layersOf(j.cfg, rb.imageId!));
      expect(ra.pushed[0]).toContain(`:${j.lease.cache!.uploadPrefix}`);
      await expect(layersAt(j.lease, ra.pushed[0])).rejects.toThrow(/HTTP 404/);
    } finally {
      await end(j);
    }
  });

  test('pipeline 2 on a fresh builder rebuilds a/: 3 of 3 steps cached', async () => {
    const j = await job('scopes/run2/1', 'build');
    try {
      expect(j.lease.builders[0].builderId).not.toBe(firstBuilder);
      const ra = await runBuild(opts(a), j.cfg, j.lease, docker);
      expect({ status: ra.status, total: ra.totalSteps, cached: ra.cachedSteps }).toEqual({ status: 'success', total: 3, cached: 3 });
    } finally {
      await end(j);
    }
  });
});

describe('case 3: parallel jobs on the shared pipeline builder', () => {
  let one: string;
  let two: string;

  beforeAll(async () => {
    one = path.join(work, 'one');
    two = path.join(work, 'two');
    await makeBusyboxContext(one, 'RUN echo one > /which && sleep 1\n');
    await makeBusyboxContext(two, 'RUN echo two > /which && sleep 1\nRUN echo more >> /which\n');
  });

  const inspect = (cfg: RunnerConfig, ref: string): string =>
    spawnSync(docker.path, ['image', 'inspect', '--format', '{{.Id}}', ref], {
      env: { PATH: process.env.PATH, HOME: work, ...cfg.env },
      encoding: 'utf8'
    }).stdout.trim();

  test.each([1, 2, 3])("run %i: both caches intact; neither job reports success for the other job's image", async (n) => {
    const j1 = await job(`parallel/run${n}/1`, 'one');
    const j2 = await job(`parallel/run${n}/1`, 'two');
    try {
      expect(j2.lease.builders[0].builderId).toBe(j1.lease.builders[0].builderId); // one pipeline builder
      const tag = 'app:test';
      const [r1, r2]: BuildResult[] = await Promise.all([
        runBuild(opts(one, { tags: [tag] }), j1.cfg, j1.lease, docker, { trapSignals: false }),
        runBuild(opts(two, { tags: [tag] }), j2.cfg, j2.lease, docker, { trapSignals: false })
      ]);
      for (const r of [r1, r2]) expect(r.imageId).toMatch(/^sha256:/);
      expect(r1.imageId).not.toBe(r2.imageId);
      // Caches: each on its own scope tag, each holding its own job's image, both reported exported.
      expect(r1.cacheExported && r2.cacheExported).toBe(true);
      expect(r1.cacheRef).not.toBe(r2.cacheRef);
      const [l1, l2] = [layersOf(j1.cfg, r1.imageId!), layersOf(j2.cfg, r2.imageId!)];
      expect(l1).not.toEqual(l2);
      expect(await layersAt(j1.lease, r1.cacheRef!)).toEqual(l1);
      expect(await layersAt(j2.lease, r2.cacheRef!)).toEqual(l2);
      // The user tag: a job that succeeded had its own image under it when it finished; a job whose tag the other
      // job took in the meantime built, had its tag refused (push-outcome.ts), and said so.
      // Read through the lease that can: the front refuses a job the tag it set once the other job took it.
      const now = inspect(j1.cfg, tag) || inspect(j2.cfg, tag);
      expect([r1.imageId, r2.imageId]).toContain(now);
      for (const r of [r1, r2]) {
        if (r.status === 'success' && r.push?.status !== 'refused') continue;
        expect(r).toMatchObject({ status: 'success', push: { status: 'refused' } });
        expect(r.outputTail.join('\n')).toMatch(/now names another build's image/);
      }
      process.stdout.write(`parallel run ${n}: job one ${r1.status}, job two ${r2.status}; app:test names job ${now === r1.imageId ? 'one' : 'two'}'s image\n`);
      const winner = [r1, r2].find((r) => r.imageId === now)!;
      expect(winner.status).toBe('success');
      expect(winner.push?.status).not.toBe('refused');
    } finally {
      await end(j1);
      await end(j2);
    }
  });
});

describe('case 2: builder-pattern stages, every stage cached', () => {
  const DOCKERFILE = [
    'FROM scratch AS base',
    'ADD rootfs.tar /',
    'FROM base AS deps',
    'COPY lock.txt /lock.txt',
    'RUN cat /lock.txt > /deps && sleep 1',
    'FROM base AS build',
    'COPY --from=deps /deps /deps',
    'COPY src.txt /src.txt',
    'RUN cat /deps /src.txt > /app && sleep 1',
    'FROM base',
    'COPY --from=build /app /app',
    ''
  ].join('\n');
  let ctx: string;
  const builders: string[] = [];

  beforeAll(async () => {
    ctx = path.join(work, 'stages');
    await makeBusyboxContext(ctx, '');
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
    fs.writeFileSync(path.join(ctx, 'lock.txt'), 'left-pad 1.3.0\n');
  });

  async function pipeline(n: number): Promise<BuildResult> {
    fs.writeFileSync(path.join(ctx, 'src.txt'), `app version ${n}\n`);
    const j = await job(`stages/run${n}/1`, 'build');
    try {
      expect(builders).not.toContain(j.lease.builders[0].builderId); // a fresh builder each time
      builders.push(j.lease.builders[0].builderId);
      return await runBuild(opts(ctx), j.cfg, j.lease, docker);
    } finally {
      await end(j);
    }
  }

  test('pipeline 1 (cold): 0 of 7 cached, every step counted once', async () => {
    const r = await pipeline(1);
    expect({ status: r.status, total: r.totalSteps, cached: r.cachedSteps, warnings: r.warnings }).toEqual({
      status: 'success',
      total: 7,
      cached: 0,
      warnings: []
    });
  });

  test.each([2, 3])('pipeline %i, only the app source changed, fresh builder: 4 of 7 cached (base, deps and the copy of deps)', async (n) => {
    const r = await pipeline(n);
    expect({ status: r.status, total: r.totalSteps, cached: r.cachedSteps }).toEqual({ status: 'success', total: 7, cached: 4 });
    expect(r.steps.filter((s) => s.cached).map((s) => s.name)).toEqual([
      '[base 1/1] ADD rootfs.tar /',
      '[deps 1/2] COPY lock.txt /lock.txt',
      '[deps 2/2] RUN cat /lock.txt > /deps && sleep 1',
      '[build 1/3] COPY --from=deps /deps /deps'
    ]);
  });
});
