// Issue 11, cases 4 and 5, for real: the bundled runner CLI as a shell CI job runs it, against `buildcloud serve`, a
// fresh builder and the real org-cache registry.
// - A three-line build argument (quoted, given as the --build-args flag) reaches the build intact, and a multi-line
//   label (quoted, given as BUILDCLOUD_LABELS) is on the image.
// - ssh: the job's agent (default) and a key file reach RUN --mount=type=ssh; without the input that RUN fails.
// - The GitHub build action masks every line of a secret before it prints anything, and its log shows ***.
// - A three-line secret (BUILDCLOUD_SECRETS, the way GitLab and CircleCI pass it) is usable in
//   RUN --mount=type=secret, and no line of it is in the image's files, `docker history --no-trunc`, its config, any
//   blob of the registry (the exported cache image among them), or any line the job's steps printed; no secret file
//   is left on the runner, after a successful build nor after a failed one.
import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { adminSetup, startServer, CLI, DOCKER, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { githubJobEnv, requireNode24, ROOT, runStep, type JobContext } from '../../harness/github-runner';

let server: ServerProcess;
let token: string;
let work: string;
let ctx: string;

const nonce = crypto.randomBytes(6).toString('hex');
const PEM = `-----BEGIN TEST ${nonce}-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo${nonce}\n-----END TEST ${nonce}-----`;
const SECRET_LINES = [`s3cr3t-first-${nonce}`, `s3cr3t-second-${nonce}`, `s3cr3t-third-${nonce}`];
const SECRET = SECRET_LINES.join('\n');
const SECRET_SHA = crypto.createHash('sha256').update(SECRET).digest('hex');
const LABEL = `Fix the retry loop ${nonce}\n\nCo-authored-by: Ann <ann@example.com>`;

// The secret's RUN prints the secret (as a careless Dockerfile would): the CLI must show *** instead.
const DOCKERFILE = `FROM scratch
ADD rootfs.tar /
ARG PEM
RUN test "$(printf '%s' "$PEM" | wc -l)" = 2 && printf '%s' "$PEM" > /pem.txt
RUN --mount=type=secret,id=token test "$(wc -l < /run/secrets/token)" = 2 && sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha && cat /run/secrets/token
CMD ["cat", "/token.sha"]
`;
const FAILING = `FROM scratch
ADD rootfs.tar /
RUN --mount=type=secret,id=token test -s /run/secrets/token && false
`;

function jobEnv(name: string): NodeJS.ProcessEnv {
  const home = path.join(work, name);
  fs.mkdirSync(home, { recursive: true });
  return {
    PATH: process.env.PATH,
    HOME: home,
    RUNNER_TEMP: home,
    TMPDIR: home,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_PROJECT: 'acme/secrets',
    BUILDCLOUD_PIPELINE_ID: `secrets-${name}-${process.pid}`,
    BUILDCLOUD_JOB_ID: name,
    BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
    BUILDCLOUD_DOCKER: DOCKER
  };
}

function cli(args: string[], env: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const lastJson = (stdout: string) => JSON.parse(stdout.trim().split('\n').pop()!);

function setup(name: string): { env: NodeJS.ProcessEnv; printed: string } {
  const env = jobEnv(name);
  const s = cli(['setup', '--json'], env);
  expect({ status: s.status, err: s.stderr.slice(-800) }).toMatchObject({ status: 0 });
  return { env: { ...env, ...lastJson(s.stdout).env }, printed: s.stdout + s.stderr };
}

function files(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((f) => path.join(dir, f)).filter((f) => fs.statSync(f).isFile());
}

/** Every blob of the registry, decompressed where it is gzip (layers) and as stored otherwise (configs, manifests). */
function registryBlobs(): Buffer[] {
  const root = path.join(server.stateDir, 'registry');
  return files(root)
    .filter((f) => f.includes(`${path.sep}blobs${path.sep}`) && path.basename(f) === 'data')
    .map((f) => {
      const raw = fs.readFileSync(f);
      return raw[0] === 0x1f && raw[1] === 0x8b ? zlib.gunzipSync(raw) : raw;
    });
}

const holdsAnyLine = (text: Buffer | string) => SECRET_LINES.some((l) => text.includes(l));

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-secrets-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  ctx = path.join(work, 'ctx');
  await makeBusyboxContext(ctx, '');
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(work, 'Failing.Dockerfile'), FAILING);
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

test('a three-line build-arg and a multi-line label arrive intact; a three-line secret is used and found nowhere after', () => {
  const { env, printed: setupPrinted } = setup('job-ok');
  const tag = `acme/secrets-test:${nonce}`;
  const b = cli(['build', '--json', '--context', ctx, '--tags', tag, '--build-args', `VERSION=1\n"PEM=${PEM}"`], {
    ...env,
    BUILDCLOUD_LABELS: `"org.example.note=${LABEL}"\norg.example.simple=yes`,
    BUILDCLOUD_SECRETS: `"token=${SECRET}"`
  });
  expect({ status: b.status, tail: b.stderr.slice(-2000) }).toMatchObject({ status: 0 });
  expect(lastJson(b.stdout)['image-id']).toMatch(/^sha256:[0-9a-f]{64}$/);
  // The log names what the build got, never a value; the RUN that printed the secret shows *** for each line.
  // VERSION has no ARG in this Dockerfile: shown by its entry number only, and warned about (it may be a line of a value).
  expect(b.stderr).toContain('Build Cloud: build-args: entry 1 (no such ARG), PEM; labels: org.example.note, org.example.simple; secrets: token');
  expect(b.stderr).toContain('Build Cloud: build-args entry 1 names no ARG of the Dockerfile, so the build ignores it.');
  expect(b.stderr).toMatch(/^#\d+ [\d.]+ \*\*\*$/m);
  expect(holdsAnyLine(b.stdout + b.stderr + setupPrinted)).toBe(false);
  expect(b.stderr).toMatch(/org cache exported/);

  // On the builder (setup's env points docker at it): the label, whole; the build-arg's three lines in /pem.txt.
  const inspect = spawnSync(DOCKER, ['image', 'inspect', tag], { env, encoding: 'utf8' });
  expect(inspect.status).toBe(0);
  const config = JSON.parse(inspect.stdout)[0];
  expect(config.Config.Labels).toMatchObject({ 'org.example.note': LABEL, 'org.example.simple': 'yes' });
  const history = spawnSync(DOCKER, ['history', '--no-trunc', tag], { env, encoding: 'utf8' });
  expect(history.status).toBe(0);
  // The secret's RUN step is in the history (its command; BuildKit records no mount), and so is the build-arg's value:
  // why tokens go in secrets.
  expect(history.stdout).toContain('cat /run/secrets/token');
  expect(history.stdout).toContain(PEM.split('\n')[1]);
  const saved = spawnSync(DOCKER, ['save', tag], { env, maxBuffer: 256 << 20 });
  expect(saved.status).toBe(0);
  // docker save holds the layers uncompressed: the files the RUN steps wrote are there byte for byte.
  expect(saved.stdout.includes(Buffer.from(PEM))).toBe(true);
  expect(saved.stdout.includes(Buffer.from(SECRET_SHA))).toBe(true);

  // Nowhere: the image's files and config (docker save), its history, its inspect output.
  expect(holdsAnyLine(saved.stdout)).toBe(false);
  expect(holdsAnyLine(history.stdout)).toBe(false);
  expect(holdsAnyLine(inspect.stdout)).toBe(false);
  // Nor the registry: some blob holds the RUN step's layer (the exported cache image), none a line of the secret.
  const blobs = registryBlobs();
  expect(blobs.some((b) => b.includes(SECRET_SHA))).toBe(true);
  expect(blobs.filter(holdsAnyLine)).toHaveLength(0);
  // No secret file left on the runner.
  expect(files(env.HOME!).filter((f) => /secret-\d+-\d+$/.test(f))).toEqual([]);

  const r = cli(['report', '--json'], env);
  expect(r.status).toBe(0);
  expect(holdsAnyLine(r.stdout + r.stderr)).toBe(false);
});

test('a failed build leaves no secret file behind and prints no line of the secret', () => {
  const { env } = setup('job-fail');
  const b = cli(['build', '--context', ctx, '--file', path.join(work, 'Failing.Dockerfile')], { ...env, BUILDCLOUD_SECRETS: `"token=${SECRET}"` });
  expect(b.status).toBe(1);
  expect(b.stderr).toMatch(/docker build failed \(exit 1\)/);
  expect(holdsAnyLine(b.stdout + b.stderr)).toBe(false);
  expect(files(env.HOME!).filter((f) => /secret-\d+-\d+$/.test(f))).toEqual([]);
  expect(cli(['report'], env).status).toBe(0);
});

test('an invalid secrets entry fails before anything runs, naming the entry, not the value', () => {
  const { env } = setup('job-bad');
  const b = cli(['build', '--context', ctx], { ...env, BUILDCLOUD_SECRETS: `token=${SECRET_LINES[0]}\n${SECRET_LINES[1]}` });
  expect(b.status).toBe(1);
  // Named as the user gave it (the variable), never with the value.
  expect(b.stderr.trim().split('\n').pop()).toMatch(/^buildcloud: Invalid BUILDCLOUD_SECRETS: entry 2 \(line 2\) is not ID=VALUE/);
  expect(holdsAnyLine(b.stdout + b.stderr)).toBe(false);
  expect(cli(['report'], env).status).toBe(0);
});

test('the GitHub build action: each line of the secret is masked before anything else is printed, and never shown', async () => {
  requireNode24();
  const temp = fs.mkdtempSync(path.join(work, 'gha-'));
  const eventPath = path.join(temp, 'event.json');
  fs.writeFileSync(eventPath, JSON.stringify({ repository: { id: 700002, default_branch: 'main', full_name: 'acme/secrets-gha' } }));
  const gh: JobContext = {
    env: githubJobEnv({
      runId: `7${process.pid}`,
      job: 'image',
      repo: 'acme/secrets-gha',
      repoId: '700002',
      eventPath,
      temp,
      home: path.join(work, 'home-gha')
    }),
    expressions: { 'github.job': 'image', 'strategy.job-index': '0', 'job.check_run_id': '1', 'github.token': '' },
    runnerTemp: temp
  };
  const inputs = { endpoint: server.info.grpc, token };
  const main = await runStep(path.join(ROOT, 'action.yml'), 'main', inputs, gh);
  expect({ failed: main.failed, out: main.stdout.slice(-800) }).toMatchObject({ failed: false });
  const job = { ...gh, env: { ...gh.env, ...main.env } };
  const build = await runStep(path.join(ROOT, 'build/action.yml'), 'main', { context: ctx, secrets: `"token=${SECRET}"\n`, 'build-args': `"PEM=${PEM}"` }, job);
  expect({ failed: build.failed, out: build.stdout.slice(-1500) }).toMatchObject({ failed: false });
  const lines = build.stdout.split('\n');
  // The first thing the step writes: the masks, the whole value (escaped as a workflow command) and each line.
  const masks = lines.slice(
    0,
    lines.findIndex((l) => !l.startsWith('::add-mask::'))
  );
  expect(masks).toEqual(expect.arrayContaining([`::add-mask::${SECRET.replace(/\n/g, '%0A')}`, ...SECRET_LINES.map((l) => `::add-mask::${l}`)]));
  // Nothing else holds a line of it; the RUN that printed the secret shows ***.
  expect(holdsAnyLine(lines.filter((l) => !l.startsWith('::add-mask::')).join('\n'))).toBe(false);
  expect(build.stdout).toMatch(/^#\d+ [\d.]+ \*\*\*$/m);
  expect(build.stdout).toContain('Build Cloud: build-args: PEM; secrets: token');
  const post = await runStep(path.join(ROOT, 'action.yml'), 'post', inputs, job, main.state);
  expect(post.failed).toBe(false);
  expect(holdsAnyLine(post.stdout)).toBe(false);
});

test('ssh: the agent at SSH_AUTH_SOCK (default) and a key file (ID=PATH) reach RUN --mount=type=ssh', () => {
  const { env } = setup('job-ssh');
  const keys = fs.mkdtempSync(path.join(work, 'ssh-'));
  const key = path.join(keys, 'id_ed25519');
  expect(spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'bc-test', '-f', key]).status).toBe(0);
  const sock = path.join(keys, 'agent.sock');
  const agent = spawnSync('ssh-agent', ['-a', sock], { encoding: 'utf8' });
  expect(agent.status).toBe(0);
  const agentPid = /SSH_AGENT_PID=(\d+)/.exec(agent.stdout)![1];
  try {
    expect(spawnSync('ssh-add', [key], { env: { ...process.env, SSH_AUTH_SOCK: sock } }).status).toBe(0);
    const dockerfile = path.join(work, 'Ssh.Dockerfile');
    fs.writeFileSync(
      dockerfile,
      `FROM scratch\nADD rootfs.tar /\nRUN --mount=type=ssh test -S "$SSH_AUTH_SOCK"\nRUN --mount=type=ssh,id=deploy test -S "$SSH_AUTH_SOCK"\n`
    );
    const withSsh = cli(['build', '--context', ctx, '--file', dockerfile, '--ssh', `default\ndeploy=${key}`], { ...env, SSH_AUTH_SOCK: sock });
    expect({ status: withSsh.status, tail: withSsh.stderr.slice(-1500) }).toMatchObject({ status: 0 });
    expect(withSsh.stderr).toContain('Build Cloud: ssh: default, deploy');
    // The same build without the input: BuildKit 0.8 mounts nothing for an optional ssh mount, so the socket test fails:
    // the flag above is what made it work.
    const without = cli(['build', '--context', ctx, '--file', dockerfile, '--no-cache'], { ...env, SSH_AUTH_SOCK: sock });
    expect(without.status).toBe(1);
    expect(without.stderr).toContain('ERROR: executor failed running [/bin/sh -c test -S "$SSH_AUTH_SOCK"]: exit code: 1');
  } finally {
    process.kill(Number(agentPid));
  }
  expect(cli(['report'], env).status).toBe(0);
});
