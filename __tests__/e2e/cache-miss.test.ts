// Why a step missed the cache, for real: two pipelines of one project, each on a fresh builder of its own (the first
// one's builder is gone before the second starts), the second with one COPY source changed. The second build imports
// the first one's org cache, reads the step fingerprints its image carries, and its log and job summary name the
// first executed step and the file whose content changed, with a count of the steps after it.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inflateRawSync } from 'zlib';
import { adminSetup, startServer, CLI, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';

const DOCKERFILE = `FROM scratch
ADD rootfs.tar /
COPY app.txt /app.txt
RUN cat /app.txt > /built.txt
`;

let server: ServerProcess;
let token: string;
let work: string;
let ctx: string;

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-cache-miss-'));
  // A short grace: the first pipeline's builder is destroyed before the second pipeline provisions its own.
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '0']);
  token = adminSetup(server.stateDir, 'acme', 60);
  ctx = path.join(work, 'ctx');
  await makeBusyboxContext(ctx, '');
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(ctx, 'app.txt'), 'app v1\n');
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

function job(pipeline: string): { setup: string; build: string; report: string; builder: string; label: string } {
  const home = path.join(work, pipeline);
  fs.mkdirSync(home, { recursive: true });
  const base = {
    PATH: process.env.PATH,
    HOME: home,
    RUNNER_TEMP: home,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/miss',
    BUILDCLOUD_BRANCH: 'main',
    BUILDCLOUD_PIPELINE_ID: pipeline,
    BUILDCLOUD_JOB_ID: 'build',
    BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
    BUILDCLOUD_DOCKER: DOCKER
  } as NodeJS.ProcessEnv;
  const run = (args: string[], env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 120_000 });
    if (r.status !== 0) throw new Error(`buildcloud ${args[0]} exited ${r.status}:\n${r.stderr}`);
    return r;
  };
  const setup = run(['setup', '--json'], base);
  const env = { ...base, ...JSON.parse(setup.stdout).env };
  const build = run(['build', '--context', ctx], env);
  // The fingerprints label of the image built (the builder holds this one build's image), before report ends it.
  const ids = spawnSync(DOCKER, ['image', 'ls', '--filter', 'dangling=false', '--format', '{{.ID}}'], { env, encoding: 'utf8' }).stdout.trim().split('\n');
  const labels = spawnSync(DOCKER, ['image', 'inspect', '--format', '{{json .Config.Labels}}', ids[0]], { env, encoding: 'utf8' }).stdout;
  const label = (JSON.parse(labels || 'null') as Record<string, string> | null)?.['dev.buildcloud.cache.steps'] ?? '';
  const report = run(['report'], env);
  return { setup: setup.stderr, build: build.stderr, report: report.stderr, builder: String(env.DOCKER_HOST), label };
}

test('the second pipeline names the changed COPY step and file, and counts the steps after it', async () => {
  const first = job(`miss-1-${process.pid}`);
  expect(first.build).toMatch(/Build Cloud: build success in [\d.]+ s, 0 of 3 steps cached, org cache exported/);
  // The first build imported nothing that existed: a cold cache, said plainly, once.
  expect(first.build).toMatch(
    /why steps missed the cache: \[1\/3\] ADD rootfs.tar \/: no cache yet for .*; this build will seed it \(not found: \S+( and \d+ more)?\)/
  );

  // The label the image carries wherever it is pushed: keyed with the project's key, so nothing of the build in it.
  expect(first.label).not.toBe('');
  const json = inflateRawSync(Buffer.from(first.label, 'base64url')).toString('utf8');
  expect(JSON.parse(json).v).toBe(2);
  for (const plain of ['app.txt', 'rootfs.tar', 'Dockerfile', 'COPY', 'RUN']) expect(json).not.toContain(plain);

  fs.writeFileSync(path.join(ctx, 'app.txt'), 'app v2\n');
  const second = job(`miss-2-${process.pid}`);
  // A fresh builder: nothing of the first build is on it, only in the org cache.
  expect(second.builder).not.toBe(first.builder);
  expect(second.build).toMatch(/Build Cloud: build success in [\d.]+ s, 1 of 3 steps cached/);
  const line = '[2/3] COPY app.txt /app.txt: content of app.txt changed (+1 later step rebuilt)';
  expect(second.build).toContain(`Build Cloud: why steps missed the cache: ${line}`);
  // The job summary (report) says the same, in one line for the build.
  expect(second.report).toMatch(new RegExp(`^ {2}cache miss: \\S+: ${line.replace(/[[\]().+/]/g, '\\$&')}$`, 'm'));
  // The build record carried it to the control plane: the pipeline's usage lists it with the job's lease.
  const res = await fetch(`${server.info.http}/v1/orgs/acme/pipelines/usage?key=${encodeURIComponent(`local/miss-2-${process.pid}`)}`, {
    headers: { authorization: `Bearer ${token}` }
  });
  expect(res.status).toBe(200);
  const usage = (await res.json()) as { builds: number; cacheMisses: { leaseId: string; reason: string }[] };
  expect(usage.builds).toBe(1);
  expect(usage.cacheMisses.map((m) => m.reason)).toEqual([line]);
});
