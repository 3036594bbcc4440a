// Build outcomes (issue 12): a push that fails (or is refused) after a successful build is its own outcome, in the
// message, the outputs, the usage record and the org's usage; the paths docker would read are checked before it is
// called; a cold org cache is said plainly, once. The pure parts table-tested; runBuild and buildStep run against a
// stand-in docker (a shell script playing build, tag, push and image inspect) so exit codes and streams are real.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runBuild } from '../../src/core/build';
import { checkBuildPaths, inputName } from '../../src/core/build-checks';
import { buildStep, foreignPlatformWarnings, outputStrings, type BuildValues } from '../../src/core/build-step';
import type { BuildOptions } from '../../src/core/docker-cli';
import { MeteringSpool } from '../../src/core/metering-spool';
import type { RunnerConfig } from '../../src/core/runner-config';
import { readBuilds, type Session } from '../../src/core/session';
import { buildSettings } from '../../src/core/settings';
import { renderText } from '../../src/core/summary';
import {
  cacheLabel,
  coldCacheLine,
  coldCacheWatcher,
  pushErrorMessage,
  pushFailedInBuild,
  pushFailureReason,
  TAG_TAKEN_REASON
} from '../../src/core/push-outcome';
import { ProgressParser } from '../../src/core/build-progress';
import { BUILD_COMPLETED, validateBuildCompleted } from '../../src/contract/metering-events';
import { openSqliteStore } from '../../src/server/store/sqlite';
import { computeUsage } from '../../src/server/metering/usage';
import { InputError } from '../../src/core/input-error';
import { cliSchema, validate } from '../helpers/json-schema';

const IMAGE = 'sha256:' + 'a'.repeat(64);
const OTHER = 'sha256:' + 'c'.repeat(64);
const DIGEST = 'sha256:' + 'd'.repeat(64);
const REFUSED = 'Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused';

describe('push outcome, pure', () => {
  test.each([
    ['the registry error, last', `The push refers to repository [127.0.0.1:1/app]\n${REFUSED}\n`, 1, REFUSED],
    ['a daemon prefix dropped', 'Error response from daemon: unauthorized: authentication required\n', 1, 'unauthorized: authentication required'],
    ['nothing said', '\n\n', 1, 'docker push exited 1']
  ])('pushFailureReason: %s', (_what, out, code, reason) => {
    expect(pushFailureReason(out, code)).toBe(reason);
  });

  test('the job errors, exactly', () => {
    expect(pushErrorMessage({ status: 'failed', pushed: [], failed: ['127.0.0.1:1/app:x'], reason: REFUSED }, true)).toBe(
      `build succeeded; push of '127.0.0.1:1/app:x' failed: ${REFUSED}`
    );
    expect(pushErrorMessage({ status: 'refused', pushed: [], failed: ['app:1'], reason: TAG_TAKEN_REASON }, true)).toBe(
      "build succeeded; push of 'app:1' refused: another job of this pipeline built the same tag on the shared builder at the same time; give parallel jobs tags of their own (e.g. with the job name), or set scope: job"
    );
    expect(pushErrorMessage({ status: 'refused', pushed: [], failed: ['app:1'], reason: TAG_TAKEN_REASON }, false)).toMatch(
      /^build succeeded; tag 'app:1' refused: /
    );
    expect(pushErrorMessage({ status: 'pushed', pushed: ['app:1'], failed: [] }, true)).toBeNull();
    expect(pushErrorMessage({ status: 'skipped', pushed: [], failed: [] }, false)).toBeNull();
  });

  test('buildx --push: only the export to the registry failed is a push failure; a failed step is a failed build', () => {
    const parse = (lines: string[]) => {
      const p = new ProgressParser();
      for (const l of lines) p.push(l);
      return p.vertices();
    };
    const steps = ['#5 [1/2] FROM docker.io/library/busybox', '#5 DONE 0.1s', '#6 [2/2] RUN true', '#6 DONE 0.2s'];
    const pushErr = parse([...steps, '#7 exporting to image', `#7 ERROR: failed to push 127.0.0.1:1/app:x: ${REFUSED}`]);
    expect(pushFailedInBuild(pushErr, ['127.0.0.1:1/app:x', 'b'])).toEqual({ status: 'failed', pushed: [], failed: ['127.0.0.1:1/app:x'], reason: REFUSED });
    const stepErr = parse([...steps.slice(0, 3), '#6 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1']);
    expect(pushFailedInBuild(stepErr, ['a'])).toBeNull();
  });

  test('the cold-cache line: once, right after the import of the build own ref says not found', () => {
    const out: string[] = [];
    const ref = 'reg:5000/acme/app/cache/dockerfile:feature-x';
    const line = coldCacheLine(cacheLabel('Dockerfile', ref), true);
    expect(line).toBe("Build Cloud: no cache yet for cache scope 'Dockerfile', branch 'feature-x'; this build will seed it");
    // A new branch also imports the default branch's cache: the line says so (a break-it run saw 3 of 3 steps cached
    // under a bare "no cache yet").
    expect(coldCacheLine(cacheLabel('Dockerfile', ref), true, true)).toBe(
      "Build Cloud: no cache yet for cache scope 'Dockerfile', branch 'feature-x'; this build will seed it (it also imports the default branch's and the project's shared cache, where found)"
    );
    expect(coldCacheLine(cacheLabel('', 'reg:5000/acme/app/cache:pr-1'), false)).toBe(
      "Build Cloud: no cache yet for the project's cache, branch 'pr-1'; this build does not write the org cache (a fork, or cache export off), so it will not seed it"
    );
    const watch = coldCacheWatcher(ref, line, (l) => out.push(l));
    for (const l of [
      `#3 importing cache manifest from ${ref}`,
      '#4 importing cache manifest from reg:5000/acme/app/cache:main',
      '#4 ERROR: reg:5000/acme/app/cache:main: not found', // a fallback's miss: not this build's own cache
      `#3 ERROR: ${ref}: not found`,
      `#3 ERROR: ${ref}: not found`
    ])
      watch(l);
    expect(out).toEqual([line]);
  });
});

describe('paths checked before docker', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-paths-'));
    fs.mkdirSync(path.join(dir, 'app'));
    fs.writeFileSync(path.join(dir, 'app', 'Dockerfile'), 'FROM scratch\n');
    fs.mkdirSync(path.join(dir, 'empty'));
    fs.writeFileSync(path.join(dir, 'file.txt'), 'x');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const check = (context: string, file = '', naming: 'cli' | 'action' = 'cli') => checkBuildPaths({ context, file }, dir, naming);

  test.each([
    [
      'a missing --file',
      'app',
      'Dockerfile.nope',
      `Dockerfile 'Dockerfile.nope' not found (from --file / BUILDCLOUD_FILE): pass its path relative to DIR, or leave it empty for the context's Dockerfile.`
    ],
    ['a --file that is a directory', 'app', 'empty', "Dockerfile 'empty' is not a file (from --file / BUILDCLOUD_FILE)."],
    ['a missing context', 'nope', '', "Build context 'nope' not found (from --context / BUILDCLOUD_CONTEXT): pass an existing directory, e.g. '.'."],
    [
      'a context that is a file',
      'file.txt',
      '',
      "Build context 'file.txt' is not a directory (from --context / BUILDCLOUD_CONTEXT): pass the directory to send to the builder."
    ],
    [
      'a context without a Dockerfile',
      'empty',
      '',
      "No Dockerfile in build context 'empty' (from --context / BUILDCLOUD_CONTEXT): add one, or pass its path with --file / BUILDCLOUD_FILE."
    ]
  ])('%s', async (_what, context, file, message) => {
    const err = await check(context, file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toBe(message.replace('DIR', dir));
  });

  test('the action names its inputs; remote contexts and good paths pass', async () => {
    await expect(check('nope', '', 'action')).rejects.toThrow("Build context 'nope' not found (from input 'context')");
    expect(inputName('file', 'action')).toBe("input 'file'");
    for (const ctx of ['https://github.com/acme/app.git', 'git@github.com:acme/app.git', '-']) await expect(check(ctx, 'nope')).resolves.toBeUndefined();
    await expect(check('app')).resolves.toBeUndefined();
    await expect(check('.', 'app/Dockerfile')).resolves.toBeUndefined();
  });
});

describe('the usage record: push_status', () => {
  const base = { lease_id: 'l', build_id: 'b', platform: 'linux/amd64', duration_ms: 1, total_steps: 2, cached_steps: 1, cache_ratio: 0.5 };
  test.each([
    [{ status: 'success', push_status: 'failed' }, null],
    [{ status: 'success', push_status: 'refused' }, null],
    [{ status: 'failure', push_status: 'skipped' }, null],
    [{ status: 'success' }, null], // older clients: no field
    [{ status: 'success', push_status: 'lost' }, 'data.push_status must be one of pushed, failed, refused, skipped'],
    [
      { status: 'failure', push_status: 'failed' },
      "data.push_status 'failed' needs data.status 'success' (a build that did not succeed pushes nothing: use 'skipped')"
    ]
  ])('%j → %s', (d, err) => {
    expect(validateBuildCompleted({ ...base, ...d })).toBe(err);
  });
});

// The stand-in docker: build prints FAKE_STREAM and writes the image id; push fails for FAKE_PUSH_FAIL; image inspect
// answers FAKE_TAG_ID for a tag (another job's image when set) and the repo digest for the image.
const FAKE_DOCKER = `#!/bin/bash
case "$1" in
  build)
    [ -n "$FAKE_STREAM" ] && cat "$FAKE_STREAM" >&2
    while [ $# -gt 0 ]; do [ "$1" = "--iidfile" ] && printf '%s' "$FAKE_IMAGE" >"$2"; shift; done
    exit 0 ;;
  tag) exit 0 ;;
  push)
    echo "The push refers to repository [\${2%:*}]"
    if [ "$2" = "$FAKE_PUSH_FAIL" ]; then echo '${REFUSED}' >&2; exit 1; fi
    echo "\${2##*:}: digest: $FAKE_DIGEST size: 528" ;;
  image)
    if [ "$4" = "{{.Id}}" ]; then echo "\${FAKE_TAG_ID:-$FAKE_IMAGE}"; else echo "[\\"\${FAKE_REPO}@$FAKE_DIGEST\\"]"; fi ;;
  *) exit 1 ;;
esac
`;

describe('runBuild and buildStep with a stand-in docker', () => {
  let tmp: string;
  let fake: string;
  let ctx: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-outcomes-'));
    fake = path.join(tmp, 'docker');
    fs.writeFileSync(fake, FAKE_DOCKER, { mode: 0o755 });
    ctx = path.join(tmp, 'ctx');
    fs.mkdirSync(ctx);
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY Dockerfile /\n');
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const runner = (): RunnerConfig =>
    ({
      name: 'bc',
      dir: tmp,
      certDir: '',
      dockerConfig: '',
      contextName: 'bc',
      contexts: ['bc'],
      buildxBuilder: '',
      builderName: 'bc',
      driver: 'docker',
      env: { DOCKER_BUILDKIT: '1', DOCKER_HOST: 'tcp://127.0.0.1:1' },
      secrets: [],
      warnings: []
    }) as unknown as RunnerConfig;
  const opts = (over: Partial<BuildOptions> = {}): BuildOptions => ({
    context: ctx,
    tags: ['127.0.0.1:1/app:x'],
    buildArgs: {},
    push: true,
    platforms: [],
    exportCache: false,
    ...over
  });
  const withEnv = async <T>(extra: Record<string, string>, fn: () => Promise<T>): Promise<T> => {
    const saved = { ...process.env };
    Object.assign(process.env, { FAKE_IMAGE: IMAGE, FAKE_DIGEST: DIGEST, FAKE_REPO: '127.0.0.1:1/app', ...extra });
    try {
      return await fn();
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  };
  const run = (o: BuildOptions, cache: unknown = null) =>
    runBuild(o, runner(), { cache, builders: [] } as never, { path: fake, buildx: false } as never, { trapSignals: false });

  test('push to an unreachable registry: the build succeeded, the push failed, with the registry error', async () => {
    const r = await withEnv({ FAKE_PUSH_FAIL: '127.0.0.1:1/app:x' }, () => run(opts()));
    expect(r.status).toBe('success');
    expect(r.push).toEqual({ status: 'failed', pushed: [], failed: ['127.0.0.1:1/app:x'], reason: REFUSED });
    // Control: the same build whose registry answers.
    const ok = await withEnv({}, () => run(opts()));
    expect(ok.push).toEqual({ status: 'pushed', pushed: ['127.0.0.1:1/app:x'], failed: [] });
    expect(ok.digest).toBe(DIGEST);
  });

  test('the second tag fails: the first one is said to have gone out', async () => {
    const r = await withEnv({ FAKE_PUSH_FAIL: '127.0.0.1:1/app:y' }, () => run(opts({ tags: ['127.0.0.1:1/app:x', '127.0.0.1:1/app:y'] })));
    expect(r.push).toEqual({ status: 'failed', pushed: ['127.0.0.1:1/app:x'], failed: ['127.0.0.1:1/app:y'], reason: REFUSED });
  });

  test('a tag another job took: the build succeeded, its push refused', async () => {
    const r = await withEnv({ FAKE_TAG_ID: OTHER }, () => run(opts()));
    expect(r.status).toBe('success');
    expect(r.push).toEqual({ status: 'refused', pushed: [], failed: ['127.0.0.1:1/app:x'], reason: TAG_TAKEN_REASON });
    // Without a push asked: the tag is still refused (it names another job's image), the push says so as well.
    const noPush = await withEnv({ FAKE_TAG_ID: OTHER }, () => run(opts({ push: false })));
    expect(noPush.push?.status).toBe('refused');
  });

  test('a cold cache: the line once, after docker own ERROR lines, which stay', async () => {
    const ref = 'reg:5000/acme/app/cache:main';
    const stream = path.join(tmp, 'stream.txt');
    fs.writeFileSync(
      stream,
      [`#3 importing cache manifest from ${ref}`, `#3 ERROR: ${ref}: not found`, '------', ` > importing cache manifest from ${ref}:`, '------', ''].join('\n')
    );
    const lines: string[] = [];
    await withEnv({ FAKE_STREAM: stream }, () =>
      runBuild(
        opts({ push: false, tags: [] }),
        runner(),
        { cache: { importRefs: [ref], exportRef: '' }, builders: [] } as never,
        { path: fake, buildx: false } as never,
        {
          trapSignals: false,
          onLine: (l) => lines.push(l)
        }
      )
    );
    const said = lines.filter((l) => l.startsWith('Build Cloud: no cache yet'));
    expect(said).toEqual([
      "Build Cloud: no cache yet for the project's cache, branch 'main'; this build does not write the org cache (a fork, or cache export off), so it will not seed it"
    ]);
    expect(lines.indexOf(said[0])).toBe(lines.indexOf(`#3 ERROR: ${ref}: not found`) + 1);
  });

  function session(): Session {
    return {
      version: 1,
      dir: tmp,
      org: 'acme',
      endpoint: 'cp:7643',
      token: 't',
      meteringUrl: '',
      spoolDir: path.join(tmp, 'spool'),
      identity: { provider: 'local', jobId: 'build', pipelineKey: 'p/1', project: 'acme/app', actor: 'dev' } as Session['identity'],
      lease: { id: 'lease-1', builders: [{ platform: 'linux/amd64', builderId: 'b-1' }], cache: null } as unknown as Session['lease'],
      runner: runner(),
      docker: { path: fake, buildx: false } as Session['docker'],
      env: {},
      fallback: false,
      cache: true,
      summary: true,
      prComment: false,
      startedAtMs: 0
    } as Session;
  }
  const settings = (v: Record<string, string>) => buildSettings((n) => ({ context: ctx, tags: '127.0.0.1:1/app:x', push: 'true', ...v })[n] ?? '');
  const logger = () => ({ info: jest.fn(), warn: jest.fn(), debug: jest.fn() });

  test('buildStep: a success recorded with push_status failed, the push error, typed values and string outputs', async () => {
    const s = session();
    const l = logger();
    const r = await withEnv({ FAKE_PUSH_FAIL: '127.0.0.1:1/app:x' }, () => buildStep(s, settings({}), { log: l }));
    expect(r.pushError).toBe(`build succeeded; push of '127.0.0.1:1/app:x' failed: ${REFUSED}`);
    const [rec] = await new MeteringSpool(s.spoolDir).pending();
    expect(rec.data).toMatchObject({ status: 'success', push_status: 'failed' });
    expect(validateBuildCompleted(rec.data as Record<string, unknown>)).toBeNull();
    expect(r.values).toMatchObject({ 'push-status': 'failed', 'pushed-tags': [], 'push-error': r.pushError, 'total-steps': 0, loaded: false });
    expect(typeof r.values['cache-ratio']).toBe('number');
    expect(validate(cliSchema('build'), JSON.parse(JSON.stringify(r.values)))).toEqual([]);
    expect(r.outputs['push-status']).toBe('failed');
    expect(r.outputs['total-steps']).toBe('0');
    expect(r.outputs.loaded).toBe('false');
    expect(l.info.mock.calls.map(([m]) => m).pop()).toMatch(/^Build Cloud: build success in [\d.]+ s, 0 of 0 steps cached, push FAILED$/);
    expect(readBuilds(s)).toEqual([r.build]);
    expect(renderText({ builds: [r.build] })).toContain('success, push failed');
  });

  test('buildStep: a missing --file is an input error before anything is recorded', async () => {
    const s = session();
    await expect(buildStep(s, settings({ file: path.join(ctx, 'Dockerfile.nope') }), { log: logger() })).rejects.toThrow(
      `Dockerfile '${path.join(ctx, 'Dockerfile.nope')}' not found (from --file / BUILDCLOUD_FILE)`
    );
    expect(await new MeteringSpool(s.spoolDir).pending()).toEqual([]);
    expect(readBuilds(s)).toEqual([]);
  });

  test('outputStrings: CI outputs are strings, lists one per line', () => {
    const v: BuildValues = {
      digest: DIGEST,
      'image-id': IMAGE,
      'cache-ratio': 0.5,
      'cached-steps': 2,
      'deduplicated-steps': 0,
      'total-steps': 4,
      duration: 1.5,
      loaded: true,
      'push-status': 'pushed',
      'pushed-tags': ['a:1', 'a:2'],
      'push-error': ''
    };
    expect(outputStrings(v)).toEqual({
      digest: DIGEST,
      'image-id': IMAGE,
      'cache-ratio': '0.5000',
      'cached-steps': '2',
      'deduplicated-steps': '0',
      'total-steps': '4',
      duration: '1.50',
      loaded: 'true',
      'push-status': 'pushed',
      'pushed-tags': 'a:1\na:2',
      'push-error': ''
    });
  });
});

describe('the org usage counts builds whose push failed or was refused apart', () => {
  test('succeeded includes them; pushFailed and pushRefused count them; older records count 0', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-push-usage-'));
    const store = openSqliteStore(path.join(dir, 'state.db'));
    try {
      const NOW = Date.UTC(2026, 10, 30, 12);
      await store.createOrg('acme', NOW - 100_000);
      const rec = (id: string, data: Record<string, unknown>) =>
        store.insertUsageRecord({
          id,
          org: 'acme',
          type: BUILD_COMPLETED,
          time: NOW - 30_000,
          receivedAt: NOW - 29_000,
          leaseId: 'l1',
          data: { lease_id: 'l1', build_id: id, platform: 'linux/amd64', duration_ms: 1000, total_steps: 2, cached_steps: 1, cache_ratio: 0.5, ...data }
        });
      await rec('a', { status: 'success', push_status: 'pushed' });
      await rec('b', { status: 'success', push_status: 'failed' });
      await rec('c', { status: 'success', push_status: 'refused' });
      await rec('d', { status: 'success' }); // a client from before the field
      await rec('e', { status: 'failure', push_status: 'skipped' });
      const u = await computeUsage(store, 'acme', '2026-11', NOW);
      expect(u.builds).toMatchObject({ count: 5, succeeded: 4, failed: 1, pushFailed: 1, pushRefused: 1 });
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('foreignPlatformWarnings', () => {
  test('a platform no builder of the lease runs is warned about, naming both; a native one or no builder is not', () => {
    expect(foreignPlatformWarnings(['linux/arm64'], ['linux/amd64'])).toEqual([
      `platform 'linux/arm64' is not one this job's builders run natively (linux/amd64): RUN steps need emulation for it and may fail with "exec format error"; ask setup for it (platforms: linux/arm64) to get a builder of that platform`
    ]);
    expect(foreignPlatformWarnings(['linux/amd64'], ['linux/amd64'])).toEqual([]);
    expect(foreignPlatformWarnings(['linux/arm64'], [])).toEqual([]);
    expect(foreignPlatformWarnings([], ['linux/amd64'])).toEqual([]);
  });
});
