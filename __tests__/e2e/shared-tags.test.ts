// Issue 11, case 3, the user's side, for real: the real `buildcloud serve`, a real dockerd pipeline builder behind
// its mTLS front, and Debian's docker 20.10 CLI with each lease's env (DOCKER_HOST at the builder). Jobs A, B and C
// of one pipeline share the builder. A builds app:test, then B builds app:test: A's later reads of app:test (inspect,
// push, save, tag, history) would act on B's image, so the front refuses them with a message saying what to do; A
// still reads its own image by Id, B reads its own tag, C (which never built app:test) reads what is there, as a
// later job pushing an earlier job's image does; and A building app:test again makes the tag A's.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, docker, dockerEnvFor, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import type { LeaseMsg } from '../../src/contract/grpc';

const TAKEN =
  "Error response from daemon: Build Cloud: 'app:test' on the pipeline's shared builder now names another job's image (built after " +
  "this job's). Give parallel jobs tags of their own (for example with the job name), or set scope: job for a builder of the job's own.";
const ID = /^sha256:[0-9a-f]{64}$/;

let server: ServerProcess;
let client: TestClient;
let work: string;
const leases: Record<string, LeaseMsg> = {};
const env: Record<string, NodeJS.ProcessEnv> = {};
let one: string;
let two: string;
let idA = '';
let idB = '';

const run = (job: string, args: string[]) => docker(args, env[job], work);
const inspect = (job: string, ref: string) => run(job, ['image', 'inspect', '--format', '{{.Id}}', ref]);

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-shared-tags-'));
  server = await startServer(['--idle-timeout', '120s', '--grace', '1s']);
  client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  for (const job of ['a', 'b', 'c']) {
    leases[job] = await client.provision({ pipelineKey: 'shared-tags/run/1', jobId: job });
    env[job] = dockerEnvFor(leases[job], path.join(work, job));
  }
  one = path.join(work, 'one');
  two = path.join(work, 'two');
  await makeBusyboxContext(one, 'RUN echo one > /which\n');
  await makeBusyboxContext(two, 'RUN echo two > /which\nRUN echo more >> /which\n');
});

afterAll(async () => {
  for (const l of Object.values(leases)) await client.release(l.id).catch(() => undefined);
  client?.close();
  if (server) {
    expect(await server.stop()).toBe(0);
    fs.rmSync(server.stateDir, { recursive: true, force: true });
  }
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('the three jobs share one pipeline builder', () => {
  const ids = new Set(Object.values(leases).map((l) => l.builders[0].builderId));
  expect(ids.size).toBe(1);
});

test('A builds app:test (image 1), then B builds app:test (image 2)', () => {
  const a = run('a', ['build', '-q', '-t', 'app:test', one]);
  expect(a.status).toBe(0);
  idA = a.out.trim();
  expect(idA).toMatch(ID);
  expect(inspect('a', 'app:test')).toEqual({ status: 0, out: `${idA}\n` });
  const b = run('b', ['build', '-q', '-t', 'app:test', two]);
  expect(b.status).toBe(0);
  idB = b.out.trim();
  expect(idB).toMatch(ID);
  expect(idB).not.toBe(idA);
});

test.each([
  ['docker image inspect app:test', ['image', 'inspect', 'app:test']],
  ['docker push app:test', ['push', 'app:test']],
  ['docker save app:test', ['save', '-o', 'a.tar', 'app:test']],
  ['docker tag app:test x', ['tag', 'app:test', 'copy-of-a:1']],
  ['docker history app:test', ['history', 'app:test']],
  ['docker image inspect docker.io/library/app:test', ['image', 'inspect', 'docker.io/library/app:test']]
])("A's %s is refused with a message saying what to do", (_name, args) => {
  const r = run('a', args);
  expect(r.status).not.toBe(0);
  expect(r.out).toContain(TAKEN);
  expect(r.out).not.toContain(idB); // nothing of B's image came back
  expect(r.out).not.toContain(leases.b.id);
  expect(fs.existsSync(path.join(work, 'a.tar'))).toBe(false);
});

test("A's docker tag of app:test made no new name on the builder", () => {
  const r = inspect('b', 'copy-of-a:1');
  expect(r.status).not.toBe(0);
  expect(r.out).toMatch(/No such image/);
});

test('A reads its own image by Id; B reads app:test; C, which never built app:test, reads it too', () => {
  expect(inspect('a', idA)).toEqual({ status: 0, out: `${idA}\n` });
  expect(inspect('b', 'app:test')).toEqual({ status: 0, out: `${idB}\n` });
  expect(inspect('c', 'app:test')).toEqual({ status: 0, out: `${idB}\n` });
  const save = run('c', ['save', '-o', 'c.tar', 'app:test']);
  expect(save.status).toBe(0);
  expect(fs.statSync(path.join(work, 'c.tar')).size).toBeGreaterThan(0);
});

test('A builds app:test again: the tag is A’s, and A reads it', () => {
  const a = run('a', ['build', '-q', '-t', 'app:test', one]);
  expect(a.status).toBe(0);
  expect(inspect('a', 'app:test')).toEqual({ status: 0, out: `${a.out.trim()}\n` });
  expect(a.out.trim()).not.toBe(idB);
  // Now B's tag is the one taken: B is told so the same way.
  const b = inspect('b', 'app:test');
  expect(b.status).not.toBe(0);
  expect(b.out).toContain(TAKEN);
});
