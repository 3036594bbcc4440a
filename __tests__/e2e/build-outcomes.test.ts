// Build outcomes for real (issue 12), against the real `buildcloud serve`, its dockerd builder and org cache:
// - the first build of a new branch: docker's own `not found` ERROR lines stay, and Build Cloud says once that there
//   is no cache yet and this build seeds it; the miss explanation says the same;
// - that build's push to a registry nothing listens on (127.0.0.1:1): the build succeeded, the push failed, the job
//   fails (exit 1) with the registry's reason, `build --json` says push-status failed, and the org's usage counts a
//   succeeded build with a failed push;
// - a missing --file and a missing context: errors naming the input, before docker, never billed or recorded.
// Every --json line is validated against its schema in docs/schemas.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, CLI, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { cliSchema, validate } from '../helpers/json-schema';

const DOCKERFILE = `FROM scratch
ADD rootfs.tar /
RUN echo built > /built.txt
`;
const TAG = '127.0.0.1:1/acme/app:x'; // nothing listens on port 1: the push is refused by the host

let server: ServerProcess;
let work: string;
let env: NodeJS.ProcessEnv;
const ORG = 'acme';
const BRANCH = `feature-${process.pid}`;

const run = (args: string[], e: NodeJS.ProcessEnv = env) =>
  spawnSync(process.execPath, [CLI, ...args], { env: e, cwd: work, encoding: 'utf8', timeout: 170_000 });

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-outcomes-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '0']);
  const token = adminSetup(server.stateDir, ORG, 60);
  await makeBusyboxContext(path.join(work, 'ctx'), '');
  fs.writeFileSync(path.join(work, 'ctx', 'Dockerfile'), DOCKERFILE);
  env = {
    PATH: process.env.PATH,
    HOME: work,
    RUNNER_TEMP: work,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/outcomes',
    BUILDCLOUD_BRANCH: BRANCH,
    BUILDCLOUD_DEFAULT_BRANCH: 'main',
    BUILDCLOUD_PIPELINE_ID: `outcomes-${process.pid}`,
    BUILDCLOUD_JOB_ID: 'build',
    BUILDCLOUD_SPOOL_DIR: path.join(work, 'spool'),
    BUILDCLOUD_DOCKER: DOCKER
  };
  const setup = run(['setup', '--json']);
  if (setup.status !== 0) throw new Error(`setup exited ${setup.status}:\n${setup.stderr}`);
  const json = JSON.parse(setup.stdout);
  expect(validate(cliSchema('setup'), json)).toEqual([]);
  expect(json.outputs.fallback).toBe(false);
  env = { ...env, ...json.env };
});

afterAll(async () => {
  if (env?.BUILDCLOUD_SESSION) run(['report']);
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('a missing --file or context: an error naming the input, before docker, nothing recorded', () => {
  const file = run(['build', '--context', 'ctx', '--file', 'Dockerfile.nope']);
  expect(file.status).toBe(1);
  expect(file.stderr).toBe(
    `buildcloud: Dockerfile 'Dockerfile.nope' not found (from --file / BUILDCLOUD_FILE): pass its path relative to ${work}, or leave it empty for the context's Dockerfile.\n`
  );
  expect(file.stderr).not.toMatch(/buildkit-mount|builders\//);
  const ctx = run(['build', '--context', 'nope']);
  expect(ctx.status).toBe(1);
  expect(ctx.stderr).toBe("buildcloud: Build context 'nope' not found (from --context / BUILDCLOUD_CONTEXT): pass an existing directory, e.g. '.'.\n");
  const notDir = run(['build', '--context', 'ctx/Dockerfile']);
  expect(notDir.stderr).toBe(
    "buildcloud: Build context 'ctx/Dockerfile' is not a directory (from --context / BUILDCLOUD_CONTEXT): pass the directory to send to the builder.\n"
  );
  // Nothing spooled: these are no builds.
  expect(fs.existsSync(path.join(work, 'spool')) ? fs.readdirSync(path.join(work, 'spool')).filter((f) => f.endsWith('.json')) : []).toEqual([]);
});

test('first build of a new branch, pushed to an unreachable registry: cold cache said once; build succeeded, push failed', async () => {
  const b = run(['build', '--context', 'ctx', '--tags', TAG, '--push', '--json']);
  // The job fails: the user asked for a push that did not go out.
  expect(b.status).toBe(1);
  const lastLine = b.stderr.trim().split('\n').pop();
  expect(lastLine).toMatch(new RegExp(`^buildcloud: build succeeded; push of '${TAG.replace(/[.]/g, '\\.')}' failed: .*127\\.0\\.0\\.1:1.*connection refused`));
  const json = JSON.parse(b.stdout);
  expect(validate(cliSchema('build'), json)).toEqual([]);
  expect(json).toMatchObject({ 'push-status': 'failed', 'pushed-tags': [], 'total-steps': 2, 'cached-steps': 0, loaded: false });
  expect(json['push-error']).toBe(lastLine!.replace('buildcloud: ', ''));
  expect(b.stderr).toMatch(/Build Cloud: build success in [\d.]+ s, 0 of 2 steps cached, org cache exported, push FAILED/);

  // Docker's lines stay; Build Cloud's one line says what they mean, once.
  expect(b.stderr).toMatch(new RegExp(`#\\d+ ERROR: \\S+:${BRANCH}: not found`));
  const cold = b.stderr.split('\n').filter((l) => l.startsWith('Build Cloud: no cache yet'));
  expect(cold).toEqual([
    `Build Cloud: no cache yet for cache scope 'ctx/Dockerfile', branch '${BRANCH}'; this build will seed it (it also imports the default branch's and the project's shared cache, where found)`
  ]);
  expect(b.stderr).toMatch(
    new RegExp(
      `Build Cloud: why steps missed the cache: \\[1/2\\] ADD rootfs.tar /: no cache yet for cache scope 'ctx/Dockerfile', branch '${BRANCH}'; this build will seed it \\(not found: .*\\(\\+1 later step rebuilt\\)`
    )
  );

  // The job's report: the build a success with its push failed; the org's usage counts it apart.
  const r = run(['report', '--json']);
  expect(r.status).toBe(0);
  const report = JSON.parse(r.stdout);
  expect(validate(cliSchema('report'), report)).toEqual([]);
  expect(report.builds).toHaveLength(1);
  expect(report.builds[0]).toMatchObject({ status: 'success', pushStatus: 'failed' });
  delete env.BUILDCLOUD_SESSION;
  const u = run(['usage', '--org', ORG, '--state-dir', server.stateDir, '--json'], { PATH: process.env.PATH, HOME: work });
  expect(u.status).toBe(0);
  const usage = JSON.parse(u.stdout);
  expect(validate(cliSchema('usage'), usage)).toEqual([]);
  expect(usage.builds).toMatchObject({ count: 1, succeeded: 1, failed: 0, pushFailed: 1, pushRefused: 0 });
});
