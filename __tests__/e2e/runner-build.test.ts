// The CI side for real: provision from `buildcloud serve`, configure the runner with the lease (certs, private
// DOCKER_CONFIG, docker context), build a multi-stage Dockerfile on the remote builder with the resolved docker
// client, export the org cache, and reuse it from a second pipeline's fresh builder. Then clean up.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { resolveDocker, type BuildOptions, type ResolvedDocker } from '../../src/core/docker-cli';
import { cleanupRunner, configureRunner, runnerName, type RunnerConfig } from '../../src/core/runner-config';
import type { HttpRequester } from '../../src/core/http-request';
import { runBuild } from '../../src/core/build';
import { contextId, contextMeta } from '../../src/core/docker-context';
import type { LeaseMsg } from '../../src/contract/grpc';

// Multi-stage, each stage built on the previous one: with inline cache (the 20.10 path) the layers of every stage
// are in the final image, so all of them travel through the registry. Editing app.txt leaves two steps untouched.
const DOCKERFILE = `FROM scratch AS base
ADD rootfs.tar /

FROM base AS deps
RUN echo dependencies > /deps.txt && sleep 1

FROM deps AS app
COPY app.txt /app.txt
RUN cat /deps.txt /app.txt > /built.txt && sleep 1
CMD ["cat", "/built.txt"]
`;
const UNTOUCHED_BY_APP_CHANGE = ['[base 1/1] ADD rootfs.tar /', '[deps 1/1] RUN echo dependencies > /deps.txt && sleep 1'];

let server: ServerProcess;
let client: TestClient;
let docker: ResolvedDocker;
let work: string;
let ctx: string;
let userConfig: string;
const timings: Record<string, number> = {};

const mode = (p: string) => fs.statSync(p).mode & 0o777;
const opts = (o: Partial<BuildOptions> = {}): BuildOptions => ({ context: ctx, tags: [], buildArgs: {}, push: false, platforms: [], exportCache: true, ...o });

function dockerOut(args: string[], env: NodeJS.ProcessEnv): { status: number | null; out: string } {
  const r = spawnSync(docker.path, args, { env: { PATH: process.env.PATH, HOME: work, ...env }, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

async function provision(pipelineKey: string, identity: object = {}): Promise<LeaseMsg> {
  return client.provision({
    pipelineKey,
    jobId: 'build',
    identity: { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main', actor: 'dev', ...identity }
  });
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-runner-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '1']);
  client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  docker = await resolveDocker();
  ctx = path.join(work, 'ctx');
  await makeBusyboxContext(ctx, '');
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(ctx, 'app.txt'), 'app v1\n');
  // A user's own docker config: a login elsewhere, a current context of theirs, and a credential helper that does
  // not exist here. None of it may break the builder's config, and none of it may be written to.
  userConfig = path.join(work, 'user-docker');
  fs.mkdirSync(userConfig);
  fs.writeFileSync(
    path.join(userConfig, 'config.json'),
    JSON.stringify({ auths: { 'ghcr.io': { auth: Buffer.from('me:pat').toString('base64') } }, currentContext: 'my-laptop', credsStore: 'bc-no-such-helper' })
  );
});

afterAll(async () => {
  client?.close();
  expect(await server?.stop()).toBe(0);
  // Its builders are gone with it (it stops what it started), so its state dir can go too.
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  // Measured on this machine; the report quotes them.
  console.log(`runner-build timings (ms): ${JSON.stringify(timings)}`);
  fs.rmSync(work, { recursive: true, force: true });
});

test('resolves a docker client that can build with BuildKit, and says which and why', () => {
  expect(docker.reason).toMatch(new RegExp(`^using ${docker.path} `));
  const newer = spawnSync('/usr/local/bin/docker', ['buildx', 'version']);
  // On these machines /usr/local/bin/docker is a newer client without buildx: it must have been passed over.
  if (fs.existsSync('/usr/local/bin/docker') && newer.status !== 0) {
    expect(docker.path).not.toBe('/usr/local/bin/docker');
    expect(docker.reason).toMatch(/because \/usr\/local\/bin\/docker \S+ has no buildx plugin/);
  }
});

describe('one pipeline, then a second one on a fresh builder', () => {
  let lease1: LeaseMsg;
  let cfg1: RunnerConfig;

  test('configureRunner: private 0700 dir, 0600 certs and config, a context only it can see', async () => {
    lease1 = await provision('repo/pipeline-1/1');
    cfg1 = await configureRunner(lease1, runnerName(['local', 'acme/app', lease1.pipelineKey, 'build']), {
      tempRoot: path.join(work, 'tmp'),
      docker,
      userDockerConfig: userConfig
    });
    expect(cfg1.name).toMatch(/^bc-local-acme-app-repo-pipeline-1-1-build-[0-9a-f]{8}$/);
    for (const d of [cfg1.dir, cfg1.certDir, cfg1.dockerConfig]) expect(mode(d)).toBe(0o700);
    for (const f of ['ca.pem', 'cert.pem', 'key.pem']) expect(mode(path.join(cfg1.certDir, f))).toBe(0o600);
    expect(mode(path.join(cfg1.dockerConfig, 'config.json'))).toBe(0o600);
    // docker copies the certs into the context store inside the private config, 0600 (its meta.json, which holds
    // only the address, is 0644, but sits inside the 0700 directory).
    const tlsStore = path.join(cfg1.dockerConfig, 'contexts', 'tls');
    const stored = (fs.readdirSync(tlsStore, { recursive: true }) as string[]).map((f) => path.join(tlsStore, f)).filter((f) => fs.statSync(f).isFile());
    expect(stored.map((f) => path.basename(f)).sort()).toEqual(['ca.pem', 'cert.pem', 'key.pem']);
    for (const f of stored) expect(mode(f)).toBe(0o600);

    const host = lease1.cache!.registry!.host;
    const written = JSON.parse(fs.readFileSync(path.join(cfg1.dockerConfig, 'config.json'), 'utf8'));
    expect(Object.keys(written.auths).sort()).toEqual(['ghcr.io', host].sort());
    expect(written.currentContext).toBeUndefined();
    expect(written.credHelpers).toEqual({ [host]: '' });
    expect(cfg1.secrets).toEqual(expect.arrayContaining([lease1.tls!.keyPem, lease1.cache!.registry!.password]));

    expect(cfg1.contextName).toBe(cfg1.name);
    // A docker context is also the buildx builder of the docker driver: one name for both.
    expect(cfg1.builderName).toBe(cfg1.contextName);
    expect(cfg1.env).toMatchObject({
      DOCKER_HOST: lease1.builders[0].address,
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: cfg1.certDir,
      DOCKER_CONFIG: cfg1.dockerConfig,
      DOCKER_BUILDKIT: '1'
    });
    // The context reaches the builder through the lease's mutual TLS on its own, without DOCKER_HOST...
    const viaContext = dockerOut(['--context', cfg1.contextName, 'version', '--format', '{{.Server.Version}}'], { DOCKER_CONFIG: cfg1.dockerConfig });
    expect(viaContext).toMatchObject({ status: 0 });
    // The context was written as files (docker-context.ts), not by `docker context create`: both clients of this
    // machine read it and reach the builder through it, Debian's 20.10 and the 28.x one.
    for (const client of ['/usr/bin/docker', '/usr/local/bin/docker'].filter((c) => fs.existsSync(c))) {
      const r = spawnSync(client, ['--context', cfg1.contextName, 'version', '--format', '{{.Server.Version}}'], {
        env: { PATH: process.env.PATH, HOME: work, DOCKER_CONFIG: cfg1.dockerConfig },
        encoding: 'utf8'
      });
      expect({ client, status: r.status, out: r.stdout.trim(), err: r.stderr.trim() }).toMatchObject({
        client,
        status: 0,
        out: expect.stringMatching(/^\d+\.\d+/)
      });
      const inspect = spawnSync(client, ['context', 'inspect', cfg1.contextName], {
        env: { PATH: process.env.PATH, HOME: work, DOCKER_CONFIG: cfg1.dockerConfig },
        encoding: 'utf8'
      });
      const [seen] = JSON.parse(inspect.stdout);
      expect({ client, ...seen, TLSMaterial: { docker: [...seen.TLSMaterial.docker].sort() }, Storage: undefined }).toEqual({
        client,
        Name: cfg1.contextName,
        Metadata: { Description: 'Build Cloud remote builder' },
        Endpoints: { docker: { Host: lease1.builders[0].address, SkipTLSVerify: false } },
        TLSMaterial: { docker: ['ca.pem', 'cert.pem', 'key.pem'] },
        Storage: undefined
      });
    }
    // ...the env does too, and the user's own config never hears of the context.
    expect(dockerOut(['version', '--format', '{{.Server.Version}}'], { ...cfg1.env }).status).toBe(0);
    expect(dockerOut(['context', 'ls', '--format', '{{.Name}}'], { DOCKER_CONFIG: cfg1.dockerConfig }).out).toContain(cfg1.contextName);
    expect(fs.existsSync(path.join(userConfig, 'contexts'))).toBe(false);
  });

  test('cold build: every step runs, the cache is exported and the image pushed', async () => {
    const lines: string[] = [];
    // The user's image goes to the lease's export ref: a lease may push nothing else to the org cache registry
    // (docs/security.md, trust-boundary-cache.test.ts), and builders here reach no other registry.
    const tag = lease1.cache!.exportRef;
    const r = await runBuild(opts({ tags: [tag], push: true }), cfg1, lease1, docker, { onLine: (l) => lines.push(l) });
    timings.cold = r.durationMs;
    expect(r).toMatchObject({ status: 'success', exitCode: 0, totalSteps: 4, cachedSteps: 0, cacheRatio: 0, cacheExported: true, warnings: [] });
    // The cache goes out under an upload tag of this build's own in its scope (promoted by the control plane to the
    // scope's branch tag, r.cacheRef), then the user's tag.
    const upload = new RegExp(`^${lease1.cache!.repository!.replace(/[.[\]]/g, '\\$&')}/[a-z0-9._-]+:${lease1.cache!.uploadPrefix}[0-9a-f]{12}$`);
    expect(r.pushed).toEqual([expect.stringMatching(upload), tag]);
    expect(r.cacheRef).toBe(`${r.pushed[0].replace(/:[^:]+$/, '')}:main`);
    expect(r.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(r.imageId).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(r.steps.map((s) => s.status)).toEqual(['done', 'done', 'done', 'done']);
    expect(lines.some((l) => /\[deps 1\/1\] RUN/.test(l))).toBe(true);
    expect(lines.some((l) => /digest: sha256:/.test(l))).toBe(true);
  });

  test('the same build again on the same builder: every step cached', async () => {
    const r = await runBuild(opts(), cfg1, lease1, docker);
    timings.cachedSameBuilder = r.durationMs;
    expect(r).toMatchObject({ status: 'success', totalSteps: 4, cachedSteps: 4, cacheRatio: 1 });
  });

  test('a failing RUN is a failure with the error in the output tail, and nothing is pushed', async () => {
    const bad = path.join(work, 'bad');
    await makeBusyboxContext(bad, 'RUN echo about to fail && exit 3\n');
    const r = await runBuild(opts({ context: bad }), cfg1, lease1, docker);
    expect(r).toMatchObject({ status: 'failure', exitCode: 1, totalSteps: 2, pushed: [], cacheExported: false });
    expect(r.steps[1]).toMatchObject({ status: 'error' });
    expect(r.outputTail.join('\n')).toMatch(/exit code: 3/);
  });

  test('aborting cancels the build promptly', async () => {
    const slow = path.join(work, 'slow');
    await makeBusyboxContext(slow, 'RUN echo started && sleep 60\n');
    const ac = new AbortController();
    const p = runBuild(opts({ context: slow }), cfg1, lease1, docker, { signal: ac.signal, onLine: (l) => /#\d+ [\d.]+ started/.test(l) && ac.abort() });
    const t = Date.now();
    const r = await p;
    expect(r.status).toBe('cancelled');
    expect(Date.now() - t).toBeLessThan(20_000);
    expect(r.pushed).toEqual([]);
  });

  test("a second pipeline's fresh builder reuses every step the code change left untouched", async () => {
    const lease2 = await provision('repo/pipeline-2/1');
    expect(lease2.builders[0].builderId).not.toBe(lease1.builders[0].builderId);
    const cfg2 = await configureRunner(lease2, runnerName(['local', 'acme/app', lease2.pipelineKey, 'build']), {
      tempRoot: path.join(work, 'tmp'),
      docker,
      userDockerConfig: userConfig
    });
    try {
      fs.writeFileSync(path.join(ctx, 'app.txt'), 'app v2\n');
      const r = await runBuild(opts(), cfg2, lease2, docker);
      timings.freshBuilderAppChanged = r.durationMs;
      expect(r.status).toBe('success');
      expect(r.cachedSteps).toBeGreaterThan(0);
      expect(r.cachedSteps).toBe(UNTOUCHED_BY_APP_CHANGE.length);
      expect(r.steps.filter((s) => s.cached).map((s) => s.name)).toEqual(UNTOUCHED_BY_APP_CHANGE);
      expect(r.totalSteps).toBe(4);

      // And a third fresh builder with nothing changed reuses all of it.
      fs.writeFileSync(path.join(ctx, 'app.txt'), 'app v2\n');
      const lease3 = await provision('repo/pipeline-3/1', { fork: true });
      expect(lease3.cache!.exportRef).toBe('');
      const cfg3 = await configureRunner(lease3, runnerName(['local', 'acme/app', lease3.pipelineKey, 'build']), {
        tempRoot: path.join(work, 'tmp'),
        docker,
        userDockerConfig: userConfig
      });
      const r3 = await runBuild(opts(), cfg3, lease3, docker);
      timings.freshBuilderImported = r3.durationMs;
      expect(r3).toMatchObject({ status: 'success', totalSteps: 4, cachedSteps: 4 });
      // A fork imports but never writes the org cache.
      expect(r3).toMatchObject({ cacheExported: false, pushed: [] });
      expect(await cleanupRunner(cfg3, docker)).toEqual([]);
      await client.release(lease3.id);
    } finally {
      expect(await cleanupRunner(cfg2, docker)).toEqual([]);
      await client.release(lease2.id);
    }
  });

  test('cleanupRunner leaves no directory and no context, and is safe to run twice', async () => {
    const dir = cfg1.dir;
    expect(await cleanupRunner(cfg1, docker)).toEqual([]);
    expect(fs.existsSync(dir)).toBe(false);
    expect(fs.readdirSync(path.join(work, 'tmp'))).toEqual([]);
    // Neither the private store (gone with the dir) nor the user's config knows the context.
    expect(dockerOut(['context', 'ls', '--format', '{{.Name}}'], { DOCKER_CONFIG: userConfig }).out).not.toContain(cfg1.contextName);
    expect(JSON.parse(fs.readFileSync(path.join(userConfig, 'config.json'), 'utf8')).currentContext).toBe('my-laptop');
    expect(await cleanupRunner(cfg1, docker)).toEqual([]);
    await client.release(lease1.id);
  });
});

// No buildx exists on these machines, so its paths are held to their command boundary: the exact docker argv and
// environment, with a stand-in for docker, and the real files on disk.
describe('buildx paths at their command boundary', () => {
  type Call = { file: string; args: string[]; env: NodeJS.ProcessEnv };
  const BUILDX: ResolvedDocker = { path: '/fake/docker', version: '27.5.1', buildx: true, buildxVersion: 'v0.20.1', reason: 'test' };
  const fakeLease = (kind: LeaseMsg['builders'][0]['kind'], n = 1): LeaseMsg => ({
    id: 'lease-x',
    org: 'acme',
    pipelineKey: 'p/1',
    jobId: 'j',
    scope: 'SCOPE_PIPELINE',
    state: 'LEASE_STATE_ACTIVE',
    createdAtMs: 0,
    expiresAtMs: 0,
    builders: ['linux/amd64', 'linux/arm64']
      .slice(0, n)
      .map((platform, i) => ({ platform, kind, address: `tcp://127.0.0.1:${41000 + i}`, builderId: `b${i}`, warm: false, shared: false })),
    tls: { caPem: 'CA', certPem: 'CERT', keyPem: 'KEY' },
    cache: {
      importRefs: ['127.0.0.1:5000/acme/app/cache:main'],
      exportRef: '127.0.0.1:5000/acme/app/cache:main',
      registry: { host: '127.0.0.1:5000', username: 'u', password: 'pw' }
    },
    billedSeconds: 0,
    idleTimeoutS: 600,
    meteringUrl: ''
  });
  const recorder =
    (calls: Call[], fail: (args: string[]) => boolean = () => false) =>
    async (file: string, args: string[], env: NodeJS.ProcessEnv) => {
      calls.push({ file, args, env });
      return fail(args) ? { code: 1, stdout: '', stderr: `cannot ${args[1]}` } : { code: 0, stdout: '', stderr: '' };
    };
  let tempRoot: string;
  beforeEach(() => {
    tempRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-runner-bx-'));
  });
  afterEach(() => fs.rmSync(tempRoot, { recursive: true, force: true }));

  test('BuildKit endpoints: one remote-driver builder, a node per platform, no DOCKER_HOST', async () => {
    const calls: Call[] = [];
    const cfg = await configureRunner(fakeLease('ENDPOINT_KIND_BUILDKIT', 2), 'bc-bk', {
      tempRoot,
      docker: BUILDX,
      userDockerConfig: path.join(tempRoot, 'none'),
      run: recorder(calls)
    });
    expect(calls.map((c) => c.args.slice(0, 6))).toEqual([
      ['buildx', 'create', '--name', 'bc-bk', '--node', 'bc-bk0'],
      ['buildx', 'create', '--name', 'bc-bk', '--append', '--node']
    ]);
    expect(calls[0].args).toContain(`cacert=${path.join(cfg.certDir, 'ca.pem')}`);
    // buildx keeps its builders under $DOCKER_CONFIG/buildx: the private config, never the user's.
    expect(calls.every((c) => c.env.DOCKER_CONFIG === cfg.dockerConfig && c.env.DOCKER_HOST === undefined)).toBe(true);
    expect(cfg).toMatchObject({ builderName: 'bc-bk', buildxBuilder: 'bc-bk', contexts: [], contextName: '', driver: 'remote' });
    expect(cfg.env).toEqual({ DOCKER_CONFIG: cfg.dockerConfig, DOCKER_BUILDKIT: '1', BUILDX_BUILDER: 'bc-bk' });

    const cleanup: Call[] = [];
    const warnings = await cleanupRunner(
      cfg,
      BUILDX,
      recorder(cleanup, () => true)
    );
    expect(cleanup.map((c) => c.args)).toEqual([['buildx', 'rm', 'bc-bk']]);
    expect(warnings).toEqual(['docker buildx rm bc-bk failed: cannot rm']); // warned, not thrown
    expect(fs.existsSync(cfg.dir)).toBe(false);
  });

  test('Docker Engine endpoints with buildx: the context is the builder; further platforms get their own context', async () => {
    const calls: Call[] = [];
    const plugins = path.join(tempRoot, 'user', 'cli-plugins');
    fs.mkdirSync(plugins, { recursive: true });
    const cfg = await configureRunner(fakeLease('ENDPOINT_KIND_DOCKER', 2), 'bc-dk', {
      tempRoot,
      docker: BUILDX,
      userDockerConfig: path.join(tempRoot, 'user'),
      run: recorder(calls)
    });
    // A client that reads the known context store gets its contexts as files: no `docker context create`.
    expect(calls).toEqual([]);
    for (const [ctx, host] of [
      ['bc-dk', 'tcp://127.0.0.1:41000'],
      ['bc-dk-linux-arm64', 'tcp://127.0.0.1:41001']
    ]) {
      expect(fs.readFileSync(path.join(cfg.dockerConfig, 'contexts', 'meta', contextId(ctx), 'meta.json'), 'utf8')).toBe(contextMeta(ctx, host));
    }
    expect(cfg).toMatchObject({ builderName: 'bc-dk', contextName: 'bc-dk', contexts: ['bc-dk', 'bc-dk-linux-arm64'], buildxBuilder: '', driver: 'docker' });
    expect(cfg.env).toMatchObject({ BUILDX_BUILDER: 'bc-dk', DOCKER_HOST: 'tcp://127.0.0.1:41000' });
    // A user-installed buildx plugin stays reachable from the private DOCKER_CONFIG.
    expect(fs.readlinkSync(path.join(cfg.dockerConfig, 'cli-plugins'))).toBe(plugins);
    const cleanup: Call[] = [];
    expect(await cleanupRunner(cfg, BUILDX, recorder(cleanup))).toEqual([]);
    // The contexts live in the private DOCKER_CONFIG: they go with the directory, no `docker context rm`.
    expect(cleanup).toEqual([]);
    expect(fs.existsSync(cfg.dir)).toBe(false);
  });

  test.each<[string, LeaseMsg, ResolvedDocker, RegExp]>([
    [
      'a BuildKit endpoint without buildx',
      fakeLease('ENDPOINT_KIND_BUILDKIT'),
      { ...BUILDX, buildx: false, path: '/usr/bin/docker' },
      /only buildx can drive, and \/usr\/bin\/docker has no buildx plugin/
    ],
    ['a lease without TLS material', { ...fakeLease('ENDPOINT_KIND_DOCKER'), tls: null }, BUILDX, /carries no TLS material: only Provision's reply has it/],
    ['a lease without builders', { ...fakeLease('ENDPOINT_KIND_DOCKER'), builders: [] }, BUILDX, /has no builders/]
  ])('refuses %s', async (_what, lease, docker, message) => {
    await expect(configureRunner(lease, 'bc-x', { tempRoot, docker, run: recorder([]) })).rejects.toThrow(message);
    expect(fs.readdirSync(tempRoot)).toEqual([]);
  });

  test('a client outside the known context store format makes its contexts itself; a failed context create leaves nothing behind', async () => {
    const calls: Call[] = [];
    const unknown = { ...BUILDX, version: '29.0.0' };
    const cfg = await configureRunner(fakeLease('ENDPOINT_KIND_DOCKER'), 'bc-y', {
      tempRoot,
      docker: unknown,
      userDockerConfig: path.join(tempRoot, 'none'),
      run: recorder(calls)
    });
    expect(calls.map((c) => c.args.slice(0, 3))).toEqual([['context', 'create', 'bc-y']]);
    await cleanupRunner(cfg, unknown, recorder([]));
    const err = await configureRunner(fakeLease('ENDPOINT_KIND_DOCKER'), 'bc-x', {
      tempRoot,
      docker: unknown,
      userDockerConfig: path.join(tempRoot, 'none'),
      run: recorder([], () => true)
    }).catch((e) => e);
    expect(err.message).toBe('docker context create bc-x failed: cannot create');
    expect(fs.readdirSync(tempRoot)).toEqual([]);
  });

  // A stand-in docker: records its argv, writes the metadata file buildx would, prints a progress log.
  function fakeBuildx(progressText: string): { docker: ResolvedDocker; argv: () => string[] } {
    const fake = path.join(tempRoot, 'docker');
    const log = path.join(tempRoot, 'argv.json');
    const progress = path.join(tempRoot, 'progress.txt');
    fs.writeFileSync(progress, progressText);
    fs.writeFileSync(
      fake,
      `#!${process.execPath}
const fs = require('fs');
const a = process.argv.slice(2);
// The builder's clock and build-cache records (build-dedup.ts): an empty builder, read the way docker prints them.
if (a[0] === 'info') { process.stdout.write(JSON.stringify(new Date().toISOString()) + '\\n'); process.exit(0); }
if (a[0] === 'system') { process.stdout.write('[]\\n'); process.exit(0); }
fs.writeFileSync(${JSON.stringify(log)}, JSON.stringify(a));
const m = a.indexOf('--metadata-file');
fs.writeFileSync(a[m + 1], JSON.stringify({ 'containerimage.digest': 'sha256:${'d'.repeat(64)}', 'containerimage.config.digest': 'sha256:${'c'.repeat(64)}' }));
process.stderr.write(fs.readFileSync(${JSON.stringify(progress)}, 'utf8'));
`,
      { mode: 0o755 }
    );
    return { docker: { ...BUILDX, path: fake }, argv: () => JSON.parse(fs.readFileSync(log, 'utf8')) };
  }
  // The fake lease's registry (127.0.0.1:5000) is not there: the org cache's probe before the build is answered as a
  // live registry answers it, so these tests see the build path, not the registry-down path (build-faults tests that).
  const registryUp: HttpRequester = async () => ({ status: 200, headers: {}, text: '{}' });
  const pushOpts = (): BuildOptions => ({
    context: tempRoot,
    tags: ['127.0.0.1:5000/acme/app:1'],
    buildArgs: {},
    push: true,
    platforms: ['linux/amd64'],
    exportCache: true
  });

  test('runBuild with buildx on a remote builder: buildx pushes, the digest comes from the metadata file', async () => {
    const fake = fakeBuildx(fs.readFileSync(path.join(__dirname, '../fixtures/progress/multistage-imported-fresh-builder.txt'), 'utf8'));
    const lease = fakeLease('ENDPOINT_KIND_BUILDKIT');
    const cfg = await configureRunner(lease, 'bc-bk', { tempRoot, docker: fake.docker, userDockerConfig: path.join(tempRoot, 'none'), run: recorder([]) });
    const r = await runBuild(pushOpts(), cfg, lease, fake.docker, { request: registryUp });
    expect(r).toMatchObject({
      status: 'success',
      totalSteps: 6,
      cachedSteps: 6,
      digest: `sha256:${'d'.repeat(64)}`,
      imageId: `sha256:${'c'.repeat(64)}`,
      cacheExported: true,
      pushed: [],
      warnings: []
    });
    const argv = fake.argv();
    expect(argv.slice(0, 5)).toEqual(['buildx', 'build', '--builder', 'bc-bk', '--progress=plain']);
    expect(argv).toContain('type=registry,ref=127.0.0.1:5000/acme/app/cache:main,mode=max,ignore-error=true');
    expect(argv.slice(-2)).toEqual(['--push', tempRoot]);
    // The metadata file is removed with the build; the directory holds only what configureRunner made.
    expect(fs.readdirSync(cfg.dir).sort()).toEqual(['certs', 'docker-config']);
    expect(await cleanupRunner(cfg, fake.docker, recorder([]))).toEqual([]);
  });

  test('a registry cache export that fails (ignored by buildx) is a warning, not a failure', async () => {
    const fake = fakeBuildx(
      [
        '#1 [build 1/1] RUN make',
        '#1 DONE 0.5s',
        '',
        '#2 exporting cache to registry',
        '#2 ERROR: failed to push 127.0.0.1:5000/acme/app/cache:main: 503 Service Unavailable',
        ''
      ].join('\n')
    );
    const lease = fakeLease('ENDPOINT_KIND_BUILDKIT');
    const cfg = await configureRunner(lease, 'bc-bk', { tempRoot, docker: fake.docker, userDockerConfig: path.join(tempRoot, 'none'), run: recorder([]) });
    const r = await runBuild(pushOpts(), cfg, lease, fake.docker, { request: registryUp });
    expect(r).toMatchObject({ status: 'success', totalSteps: 1, cacheExported: false });
    expect(r.warnings).toEqual([
      "could not export the build cache to 127.0.0.1:5000/acme/app/cache:main: failed to push 127.0.0.1:5000/acme/app/cache:main: 503 Service Unavailable; later builds will not reuse this one's layers"
    ]);
    await cleanupRunner(cfg, fake.docker, recorder([]));
  });
});
