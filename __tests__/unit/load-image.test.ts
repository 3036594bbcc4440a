// load: true. The pure parts table-tested (the runner's docker settings recorded at setup, the env and name of the
// runner's engine, what is saved, the argv); the save | load pipe run for real with a stand-in docker (a shell
// script that plays `save` against the builder and `load` against the runner's engine, checking it got the right
// env), so pipes, SIGPIPE and exit codes are the operating system's; and the build step's outcome with a failed
// load: the build stays a success, in the job's record and in the metering spool.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runBuild, type BuildResult as RunResult } from '../../src/core/build';
import { buildStep } from '../../src/core/build-step';
import type { ResolvedDocker } from '../../src/core/docker-cli';
import {
  DEFAULT_ENGINE,
  imagesToLoad,
  loadArgs,
  loadImage,
  pingArgs,
  pipeFailure,
  pipeSaveLoad,
  runnerEngineEnv,
  runnerEngineName,
  saveArgs
} from '../../src/core/load-image';
import { MeteringSpool } from '../../src/core/metering-spool';
import { runnerDockerRecord, type RunnerConfig } from '../../src/core/runner-config';
import { readBuilds, type Session } from '../../src/core/session';
import { buildSettings } from '../../src/core/settings';

jest.mock('../../src/core/build', () => ({ ...jest.requireActual('../../src/core/build'), runBuild: jest.fn() }));
const mockedRunBuild = jest.mocked(runBuild);

const BUILDER = 'tcp://127.0.0.1:23750';
const RUNNER = 'unix:///run/runner-docker.sock';
let tmp: string;
let fake: string; // the stand-in docker
let log: string; // what it did, one line per call

// `save` must run against the builder, `load` and `version` against the runner's engine; FAKE_* pick a behaviour.
const FAKE_DOCKER = `#!/bin/bash
echo "$1 DOCKER_HOST=\${DOCKER_HOST-unset} DOCKER_TLS_VERIFY=\${DOCKER_TLS_VERIFY-unset} DOCKER_CONFIG=\${DOCKER_CONFIG-unset} args=\${*:2}" >>"$FAKE_LOG"
case "$1" in
  version)
    if [ "$DOCKER_HOST" != "$FAKE_RUNNER" ] || [ -n "$FAKE_NO_ENGINE" ]; then
      echo "Client: Docker Engine - Community" ; echo "Cannot connect to the Docker daemon at \${DOCKER_HOST:-unix:///var/run/docker.sock}. Is the docker daemon running?" >&2; exit 1
    fi
    echo 20.10.24 ;;
  save)
    [ "$DOCKER_HOST" = "$FAKE_BUILDER" ] || { echo "save sent to the wrong engine: $DOCKER_HOST" >&2; exit 9; }
    case "$FAKE_SAVE" in
      missing) echo "Error response from daemon: reference does not exist" >&2; exit 1 ;;
      slow) exec sleep 30 ;;
      *) exec head -c "\${FAKE_BYTES:-3000000}" /dev/zero ;;
    esac ;;
  load)
    [ "$DOCKER_HOST" = "$FAKE_RUNNER" ] || { echo "load sent to the wrong engine: $DOCKER_HOST" >&2; exit 9; }
    case "$FAKE_LOAD" in
      refuse) echo "Error processing tar file(exit status 1): write /x: no space left on device" >&2; exit 1 ;;
      *)
        n=$(wc -c | tr -d ' ')
        if [ "$n" = 0 ]; then echo "requested load from stdin, but stdin is empty" >&2; exit 1; fi
        echo "load read $n bytes" >>"$FAKE_LOG"
        echo "Loaded image: \${FAKE_LOADED:-acme/app:test}" ;;
    esac ;;
  image)
    [ -n "$FAKE_IMAGE_ID" ] && echo "$FAKE_IMAGE_ID" ;;
esac
`;

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-load-test-'));
  fake = path.join(tmp, 'docker');
  log = path.join(tmp, 'docker.log');
  fs.writeFileSync(fake, FAKE_DOCKER, { mode: 0o755 });
  fs.writeFileSync(log, '');
  fs.writeFileSync(path.join(tmp, 'Dockerfile'), 'FROM scratch\n'); // buildStep checks the context has one (build-checks.ts)
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  mockedRunBuild.mockReset();
});

const calls = () => fs.readFileSync(log, 'utf8').split('\n').filter(Boolean);
const sides = (extra: Record<string, string> = {}) => {
  const common = { PATH: process.env.PATH, FAKE_LOG: log, FAKE_BUILDER: BUILDER, FAKE_RUNNER: RUNNER, ...extra };
  return { builderEnv: { ...common, DOCKER_HOST: BUILDER, DOCKER_TLS_VERIFY: '1' }, runnerEnv: { ...common, DOCKER_HOST: RUNNER } };
};

describe("what setup records of the runner's own docker settings", () => {
  test.each<[string, NodeJS.ProcessEnv, Record<string, string>]>([
    ["nothing set: nothing recorded (docker's default socket)", { PATH: '/bin' }, {}],
    [
      'GitLab docker:dind',
      { DOCKER_HOST: 'tcp://docker:2376', DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: '/certs/client' },
      { BUILDCLOUD_RUNNER_DOCKER_HOST: 'tcp://docker:2376', BUILDCLOUD_RUNNER_DOCKER_TLS_VERIFY: '1', BUILDCLOUD_RUNNER_DOCKER_CERT_PATH: '/certs/client' }
    ],
    [
      "a context and a config dir of the user's",
      { DOCKER_CONTEXT: 'rootless', DOCKER_CONFIG: '/home/u/.docker' },
      { BUILDCLOUD_RUNNER_DOCKER_CONTEXT: 'rootless', BUILDCLOUD_RUNNER_DOCKER_CONFIG: '/home/u/.docker' }
    ],
    ['empty values are unset', { DOCKER_HOST: '', DOCKER_CONTEXT: '' }, {}],
    [
      "setup ran before in this job: DOCKER_* are the builder's, the earlier record is kept",
      { BUILDCLOUD_SESSION: '/t/session.json', DOCKER_HOST: BUILDER, DOCKER_TLS_VERIFY: '1', BUILDCLOUD_RUNNER_DOCKER_HOST: RUNNER },
      { BUILDCLOUD_RUNNER_DOCKER_HOST: RUNNER }
    ],
    ['setup ran before on the default socket: still nothing', { BUILDCLOUD_SESSION: '/t/session.json', DOCKER_HOST: BUILDER }, {}]
  ])('%s', (_what, env, record) => {
    expect(runnerDockerRecord(env)).toEqual(record);
  });
});

describe("the runner's engine", () => {
  test("env: DOCKER_* as recorded, the builder's ones gone, everything else kept", () => {
    const jobEnv = {
      PATH: '/bin',
      HOME: '/h',
      DOCKER_HOST: BUILDER,
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: '/lease/certs',
      DOCKER_CONFIG: '/lease/config',
      DOCKER_BUILDKIT: '1'
    };
    expect(runnerEngineEnv(jobEnv, {})).toEqual({ PATH: '/bin', HOME: '/h', DOCKER_BUILDKIT: '1' });
    expect(
      runnerEngineEnv(jobEnv, {
        BUILDCLOUD_RUNNER_DOCKER_HOST: 'tcp://docker:2376',
        BUILDCLOUD_RUNNER_DOCKER_TLS_VERIFY: '1',
        BUILDCLOUD_RUNNER_DOCKER_CERT_PATH: '/certs/client'
      })
    ).toEqual({
      PATH: '/bin',
      HOME: '/h',
      DOCKER_BUILDKIT: '1',
      DOCKER_HOST: 'tcp://docker:2376',
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: '/certs/client'
    });
    expect(runnerEngineEnv(jobEnv, { BUILDCLOUD_RUNNER_DOCKER_CONTEXT: 'rootless' })).toEqual({
      PATH: '/bin',
      HOME: '/h',
      DOCKER_BUILDKIT: '1',
      DOCKER_CONTEXT: 'rootless'
    });
  });

  test.each([
    [{}, DEFAULT_ENGINE],
    [{ BUILDCLOUD_RUNNER_DOCKER_HOST: 'tcp://docker:2376' }, 'tcp://docker:2376'],
    [{ BUILDCLOUD_RUNNER_DOCKER_CONTEXT: 'rootless' }, 'docker context rootless'],
    [{ BUILDCLOUD_RUNNER_DOCKER_HOST: RUNNER, BUILDCLOUD_RUNNER_DOCKER_CONTEXT: 'rootless' }, RUNNER] // DOCKER_HOST wins, as in docker
  ])('named in messages: %j → %s', (record, name) => {
    expect(runnerEngineName(record)).toBe(name);
    expect(DEFAULT_ENGINE).toBe('unix:///var/run/docker.sock');
  });

  test('what is saved: every tag (never the cache ref), else the image id', () => {
    expect(imagesToLoad(['acme/app:1', 'acme/app:latest'], 'sha256:abc')).toEqual(['acme/app:1', 'acme/app:latest']);
    expect(imagesToLoad([], 'sha256:abc')).toEqual(['sha256:abc']);
    expect(imagesToLoad([], undefined)).toEqual([]);
  });

  test('argv', () => {
    expect(saveArgs(['acme/app:1', 'acme/app:latest'])).toEqual(['save', 'acme/app:1', 'acme/app:latest']);
    expect(loadArgs()).toEqual(['load']);
    expect(pingArgs()).toEqual(['version', '--format', '{{.Server.Version}}']);
  });
});

describe('docker save (builder) | docker load (runner), with a stand-in docker', () => {
  test('streams every byte, each side against its own engine, both exit 0', async () => {
    const { builderEnv, runnerEnv } = sides({ FAKE_BYTES: '5000000' }); // far more than a pipe buffer
    const r = await pipeSaveLoad(fake, ['acme/app:test'], builderEnv, runnerEnv);
    expect(r).toMatchObject({ save: { code: 0 }, load: { code: 0 }, bytes: 5_000_000, cancelled: false });
    expect(r.load.stdout).toContain('Loaded image: acme/app:test');
    expect(pipeFailure(r, ['acme/app:test'], RUNNER)).toBeNull();
    expect(calls()).toEqual(
      expect.arrayContaining([`save DOCKER_HOST=${BUILDER} DOCKER_TLS_VERIFY=1 DOCKER_CONFIG=unset args=acme/app:test`, 'load read 5000000 bytes'])
    );
  });

  test('save fails: the message names docker save on the builder, not the load it starved', async () => {
    const { builderEnv, runnerEnv } = sides({ FAKE_SAVE: 'missing' });
    const r = await pipeSaveLoad(fake, ['acme/app:test'], builderEnv, runnerEnv);
    expect(r.save.code).toBe(1);
    expect(r.load.code).toBe(1);
    expect(pipeFailure(r, ['acme/app:test'], RUNNER)).toBe(
      'docker save acme/app:test on the builder exited 1: Error response from daemon: reference does not exist'
    );
  });

  test('load fails at once: save is stopped rather than left blocked on a full pipe; the message names docker load', async () => {
    const { builderEnv, runnerEnv } = sides({ FAKE_LOAD: 'refuse', FAKE_BYTES: '500000000' });
    const started = Date.now();
    const r = await pipeSaveLoad(fake, ['acme/app:test'], builderEnv, runnerEnv);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.load.code).toBe(1);
    expect(r.save.code).not.toBe(0);
    expect(pipeFailure(r, ['acme/app:test'], RUNNER)).toBe(
      `docker load into the runner's Docker engine at ${RUNNER} exited 1: Error processing tar file(exit status 1): write /x: no space left on device`
    );
  });

  test('a docker that cannot be started is named as such', async () => {
    const { builderEnv, runnerEnv } = sides();
    const r = await pipeSaveLoad(path.join(tmp, 'no-such-docker'), ['acme/app:test'], builderEnv, runnerEnv);
    expect(pipeFailure(r, ['acme/app:test'], RUNNER)).toBe('docker save acme/app:test on the builder could not run (ENOENT)');
  });

  test('cancelled: both sides end, and the outcome says so', async () => {
    const { builderEnv, runnerEnv } = sides({ FAKE_SAVE: 'slow' });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const started = Date.now();
    const r = await pipeSaveLoad(fake, ['acme/app:test'], builderEnv, runnerEnv, { signal: ac.signal });
    expect(Date.now() - started).toBeLessThan(8000);
    expect(r.cancelled).toBe(true);
    expect(pipeFailure(r, ['acme/app:test'], RUNNER)).toBe('loading the image was cancelled');
  });
});

describe('loadImage', () => {
  test('no engine answers on the runner: one clear error, and nothing is saved', async () => {
    const { builderEnv, runnerEnv } = sides({ FAKE_NO_ENGINE: '1' });
    const out = await loadImage({ docker: fake, refs: ['acme/app:test'], builderEnv, runnerEnv, engine: DEFAULT_ENGINE });
    expect(out.loaded).toBe(false);
    expect(out.error).toBe(
      `load: true needs a Docker engine on this runner, and none answers at unix:///var/run/docker.sock: Cannot connect to the Docker daemon at ${RUNNER}. Is the docker daemon running?. ` +
        'Set push: true instead of load (and pull the image where it is needed), or run this job on a runner with a Docker engine (GitLab: a docker:dind service; CircleCI: a machine executor; GitHub: an ubuntu runner).'
    );
    expect(calls().map((c) => c.split(' ')[0])).toEqual(['version']);
  });

  test("the engine answers: pinged, then streamed; docker load's own lines come back", async () => {
    const { builderEnv, runnerEnv } = sides();
    const out = await loadImage({ docker: fake, refs: ['acme/app:test'], builderEnv, runnerEnv, engine: RUNNER });
    expect(out).toMatchObject({ loaded: true, refs: ['acme/app:test'], engine: RUNNER, bytes: 3_000_000, loadedLines: ['Loaded image: acme/app:test'] });
    expect(out.error).toBeUndefined();
    expect(calls()[0]).toMatch(new RegExp(`^version DOCKER_HOST=${RUNNER} `));
  });

  test('nothing to save', async () => {
    const { builderEnv, runnerEnv } = sides();
    const out = await loadImage({ docker: fake, refs: [], builderEnv, runnerEnv, engine: RUNNER });
    expect(out).toMatchObject({ loaded: false, error: expect.stringMatching(/no image to load; set tags/) });
    expect(calls()).toEqual([]);
  });
});

describe('the build step with load: true', () => {
  const DOCKER: ResolvedDocker = { path: '', version: '20.10.24', buildx: false, buildxVersion: '', reason: 'test' };
  const RUN: RunResult = {
    status: 'success',
    exitCode: 0,
    durationMs: 1234,
    totalSteps: 4,
    cachedSteps: 3,
    deduplicatedSteps: 0,
    cacheRatio: 0.75,
    stepsFrom: 'progress',
    imageId: 'sha256:' + 'b'.repeat(64),
    steps: [],
    cacheExported: true,
    pushed: [],
    outputTail: [],
    warnings: []
  };

  function session(over: Partial<Session> = {}, driver: RunnerConfig['driver'] = 'docker'): Session {
    const dir = path.join(tmp, 'session');
    fs.mkdirSync(dir, { recursive: true });
    const runner = {
      name: 'bc',
      dir,
      certDir: path.join(dir, 'certs'),
      dockerConfig: path.join(dir, 'cfg'),
      contextName: 'bc',
      contexts: ['bc'],
      buildxBuilder: '',
      builderName: 'bc',
      driver,
      env: {
        DOCKER_CONFIG: path.join(dir, 'cfg'),
        DOCKER_BUILDKIT: '1',
        DOCKER_HOST: BUILDER,
        DOCKER_TLS_VERIFY: '1',
        DOCKER_CERT_PATH: path.join(dir, 'certs')
      },
      secrets: [],
      warnings: []
    } as RunnerConfig;
    return {
      version: 1,
      dir,
      org: 'acme',
      endpoint: 'cp:7643',
      token: 't',
      meteringUrl: '',
      spoolDir: path.join(tmp, 'spool'),
      identity: { provider: 'local', jobId: 'build', pipelineKey: 'p/1', project: 'acme/app', actor: 'dev' } as Session['identity'],
      lease: { id: 'lease-1', builders: [{ platform: 'linux/amd64', builderId: 'b-1' }], cache: null } as unknown as Session['lease'],
      runner,
      docker: { ...DOCKER, path: fake },
      env: { ...runner.env, BUILDCLOUD_RUNNER_DOCKER_HOST: RUNNER },
      fallback: false,
      cache: true,
      summary: true,
      prComment: false,
      startedAtMs: 0,
      ...over
    };
  }
  const settings = (v: Record<string, string>) => buildSettings((n) => ({ context: tmp, tags: 'acme/app:test', ...v })[n] ?? '');
  const logger = () => ({ info: jest.fn(), warn: jest.fn(), debug: jest.fn() });
  const withFakeEnv = async <T>(extra: Record<string, string>, fn: () => Promise<T>): Promise<T> => {
    const saved = { ...process.env };
    Object.assign(process.env, { FAKE_LOG: log, FAKE_BUILDER: BUILDER, FAKE_RUNNER: RUNNER, ...extra });
    try {
      return await fn();
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  };

  test('loaded: output true, recorded, the summary line says where', async () => {
    mockedRunBuild.mockResolvedValue(RUN);
    const s = session();
    const l = logger();
    const r = await withFakeEnv({}, () => buildStep(s, settings({ load: 'true' }), { log: l }));
    expect(r.outputs.loaded).toBe('true');
    expect(r.loadError).toBeUndefined();
    expect(r.build).toMatchObject({ status: 'success', loaded: true });
    expect(readBuilds(s)).toEqual([r.build]);
    expect(l.info.mock.calls.map(([m]) => m).pop()).toBe(
      `Build Cloud: build success in 1.23 s, 3 of 4 steps cached, org cache exported, loaded into the runner's Docker (${RUNNER})`
    );
    expect(calls().find((c) => c.startsWith('save'))).toContain('args=acme/app:test');
    expect(mockedRunBuild.mock.calls[0][0]).toMatchObject({ load: true, tags: ['acme/app:test'] });
  });

  test("another job's build took the tag on the shared builder before the load: the load fails and says so (issue 11, case 3)", async () => {
    mockedRunBuild.mockResolvedValue(RUN);
    const other = `sha256:${'e'.repeat(64)}`;
    const r = await withFakeEnv({ FAKE_IMAGE_ID: other }, () => buildStep(session(), settings({ load: 'true' }), { log: logger() }));
    expect(r.run.status).toBe('success');
    expect(r.outputs.loaded).toBe('false');
    expect(r.loadError).toMatch(/'acme\/app:test' in the runner's Docker is another build's image: another job of this pipeline built the same tag/);
    // Control: the runner holds this build's own image under the tag.
    const ok = await withFakeEnv({ FAKE_IMAGE_ID: RUN.imageId! }, () => buildStep(session(), settings({ load: 'true' }), { log: logger() }));
    expect(ok.outputs.loaded).toBe('true');
  });

  test('the load fails after a successful build: the build stays a success (record and metering), the step gets loadError', async () => {
    mockedRunBuild.mockResolvedValue(RUN);
    const s = session();
    const l = logger();
    const r = await withFakeEnv({ FAKE_NO_ENGINE: '1' }, () => buildStep(s, settings({ load: 'true' }), { log: l }));
    expect(r.run.status).toBe('success');
    expect(r.outputs.loaded).toBe('false');
    expect(r.build).toMatchObject({ status: 'success', loaded: false });
    expect(readBuilds(s)[0]).toMatchObject({ status: 'success', loaded: false });
    const spooled = await new MeteringSpool(s.spoolDir).pending();
    expect(spooled.map((e) => (e.data as { status: string }).status)).toEqual(['success']);
    expect(r.loadError).toMatch(
      /^The build succeeded \(and is recorded as a success\), but its image was not loaded into the runner's Docker: load: true needs a Docker engine on this runner, and none answers at unix:\/\/\/run\/runner-docker\.sock: /
    );
    expect(l.info.mock.calls.map(([m]) => m).pop()).toMatch(/NOT loaded into the runner's Docker$/);
  });

  test('no load asked: nothing saved, output false, no loaded field in the record', async () => {
    mockedRunBuild.mockResolvedValue(RUN);
    const s = session();
    const r = await withFakeEnv({}, () => buildStep(s, settings({}), { log: logger() }));
    expect(r.outputs.loaded).toBe('false');
    expect(r.build).not.toHaveProperty('loaded');
    expect(r.load).toBeUndefined();
    expect(calls()).toEqual([]);
  });

  test('a failed build is not loaded', async () => {
    mockedRunBuild.mockResolvedValue({ ...RUN, status: 'failure', exitCode: 1 });
    const r = await withFakeEnv({}, () => buildStep(session(), settings({ load: 'true' }), { log: logger() }));
    expect(r.load).toBeUndefined();
    expect(r.loadError).toBeUndefined();
    expect(r.build).toMatchObject({ status: 'failure', loaded: false });
    expect(calls()).toEqual([]);
  });

  test.each([
    ["fallback: local (built on the runner's Docker already)", { runner: null, lease: null, fallback: true }, 'docker' as const],
    ['a BuildKit builder (buildx --load did it)', {}, 'remote' as const]
  ])('%s: loaded without a save', async (_what, over, driver) => {
    mockedRunBuild.mockResolvedValue(RUN);
    const r = await withFakeEnv({}, () => buildStep(session(over as Partial<Session>, driver), settings({ load: 'true' }), { log: logger() }));
    expect(r.outputs.loaded).toBe('true');
    expect(calls()).toEqual([]);
  });
});
