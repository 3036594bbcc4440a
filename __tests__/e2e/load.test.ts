// load: true for real, through the bundled CLI as a shell CI job runs it: a second dockerd that this test owns is
// "the runner's engine" (DOCKER_HOST points at it when setup runs, as GitLab's docker:dind or a self-hosted
// runner's engine would), setup points docker at the leased builder, and `buildcloud build --load` streams the
// built image from the builder (docker save) into the runner's engine (docker load). The image, by id, is there
// afterwards and was not before. Then a runner whose engine does not answer: the step fails with one error naming
// the problem, and the build is still recorded (and metered) as a success.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, CLI, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { runnerDocker as dockerOn, startRunnerEngine, stopRunnerEngine, type RunnerEngine } from '../helpers/runner-engine';

let server: ServerProcess;
let token: string;
let work: string;
let ctx: string;
let engine: RunnerEngine | null = null;

const DOCKERFILE = `FROM scratch
ADD rootfs.tar /
COPY app.txt /app.txt
RUN cat /app.txt > /built.txt
CMD ["cat", "/built.txt"]
`;

function runnerDocker(args: string[], host: string): { status: number | null; out: string } {
  return dockerOn(args, host, work);
}

// A shell CI job's env: nothing of this test's own process leaks in.
function jobEnv(name: string, dockerHost: string): NodeJS.ProcessEnv {
  const home = path.join(work, name);
  fs.mkdirSync(home, { recursive: true });
  return {
    PATH: process.env.PATH,
    HOME: home,
    RUNNER_TEMP: home,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/load',
    BUILDCLOUD_PIPELINE_ID: `load-${name}-${process.pid}`,
    BUILDCLOUD_JOB_ID: name,
    BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
    BUILDCLOUD_DOCKER: DOCKER,
    DOCKER_HOST: dockerHost
  };
}

function cli(args: string[], env: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const lastJson = (stdout: string) => JSON.parse(stdout.trim().split('\n').pop()!);

// setup, as the job runs it: its env afterwards is what setup exported on top of the job's own.
function setup(name: string, dockerHost: string): NodeJS.ProcessEnv {
  const env = jobEnv(name, dockerHost);
  const s = cli(['setup', '--json'], env);
  expect(s.status).toBe(0);
  return { ...env, ...lastJson(s.stdout).env };
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-load-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  ctx = path.join(work, 'ctx');
  await makeBusyboxContext(ctx, '');
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(ctx, 'app.txt'), `loaded ${process.pid}\n`);
  engine = await startRunnerEngine();
});

afterAll(async () => {
  await stopRunnerEngine(engine);
  engine = null;
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

test("build --load: the image goes from the builder into the runner's own engine, and was not there before", () => {
  const host = engine!.host;
  const tag = 'acme/load-test:ci';
  // A fresh engine: no image at all, so not this one.
  expect(runnerDocker(['images', '-q'], host)).toEqual({ status: 0, out: '' });

  const env = setup('job-ok', host);
  // setup pointed docker at the builder and kept the runner's engine for load.
  expect(env.DOCKER_HOST).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
  expect(env.BUILDCLOUD_RUNNER_DOCKER_HOST).toBe(host);

  const b = cli(['build', '--json', '--context', ctx, '--tags', tag, '--load'], env);
  expect({ status: b.status, tail: b.stderr.slice(-1500) }).toMatchObject({ status: 0 });
  const out = lastJson(b.stdout);
  expect(out.loaded).toBe(true); // build --json is typed (docs/schemas/cli-build.json)
  expect(out['image-id']).toMatch(/^sha256:[0-9a-f]{64}$/);
  expect(b.stderr).toContain(`Build Cloud: loading ${tag} from the builder into the runner's Docker engine at ${host}`);
  expect(b.stderr).toContain(`Loaded image: ${tag}`);
  expect(b.stderr).toMatch(
    new RegExp(
      `Build Cloud: build success in [\\d.]+ s, \\d of \\d steps cached, org cache exported, loaded into the runner's Docker \\(${host.replace(/[/.]/g, '\\$&')}\\)`
    )
  );

  // In the runner's engine, by id (the same image the builder built) and by tag.
  expect(runnerDocker(['image', 'inspect', '--format', '{{.Id}}', out['image-id']], host)).toEqual({ status: 0, out: out['image-id'] });
  expect(runnerDocker(['image', 'inspect', '--format', '{{.Id}}', tag], host)).toEqual({ status: 0, out: out['image-id'] });
  // What load is for: the job runs its image on its own engine (the builder refuses containers).
  expect(runnerDocker(['run', '--rm', '--network', 'none', tag], host)).toEqual({ status: 0, out: `loaded ${process.pid}` });
  // And on the builder too, where it was built (docker there is the builder: setup's env).
  const onBuilder = spawnSync(DOCKER, ['image', 'inspect', '--format', '{{.Id}}', tag], { env, encoding: 'utf8' });
  expect(onBuilder.stdout.trim()).toBe(out['image-id']);

  const r = cli(['report', '--json'], env);
  expect(r.status).toBe(0);
  expect(lastJson(r.stdout).builds).toEqual([expect.objectContaining({ status: 'success', loaded: true })]);
});

test('no engine answers on the runner: the step fails with one clear error, the build is recorded and metered as a success', async () => {
  const gone = `unix://${path.join(work, 'no-engine.sock')}`;
  const env = setup('job-no-engine', gone);
  expect(env.BUILDCLOUD_RUNNER_DOCKER_HOST).toBe(gone);

  const b = cli(['build', '--json', '--context', ctx, '--tags', 'acme/load-test:none', '--load'], env);
  expect(b.status).toBe(1);
  expect(lastJson(b.stdout)).toMatchObject({ loaded: false, 'image-id': expect.stringMatching(/^sha256:/) });
  const message = b.stderr.trim().split('\n').pop()!;
  expect(message).toMatch(
    new RegExp(
      `^buildcloud: The build succeeded \\(and is recorded as a success\\), but its image was not loaded into the runner's Docker: ` +
        `load: true needs a Docker engine on this runner, and none answers at ${gone.replace(/[/.]/g, '\\$&')}: Cannot connect to the Docker daemon`
    )
  );
  expect(message).toContain('Set push: true instead of load');

  const r = cli(['report', '--json'], env);
  expect(r.status).toBe(0);
  expect(lastJson(r.stdout).builds).toEqual([expect.objectContaining({ status: 'success', loaded: false })]);
  // What the control plane metered for the pipeline: one build, none failed.
  const key = `local/${env.BUILDCLOUD_PIPELINE_ID}`;
  const res = await fetch(`${server.info.http}/v1/orgs/acme/pipelines/usage?key=${encodeURIComponent(key)}`, { headers: { authorization: `Bearer ${token}` } });
  expect(res.status).toBe(200);
  expect(await res.json()).toMatchObject({ builds: 1, failed: 0 });
});
