// The README's "Any other CI, or a shell" recipe, run by bash exactly as written (only the endpoint and the image's
// tag swapped: the builders here reach no registry but the org cache's, where a lease may push only its export ref)
// against the real `buildcloud serve`, in a git checkout: setup names the identity it read from git, and after the
// recipe the shell's environment is what it was before, twice in one shell. A failing build still reports, releasing
// the lease and writing the summary; in an interactive shell (bash -i) the shell survives it. Setup twice without a
// report releases the first lease itself.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, CLI, DOCKER, ROOT, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';

let server: ServerProcess;
let token: string;
let work: string;
let bin: string;

/** The README section's first shell block, with the endpoint and the tag swapped; fails when either is not found. */
function readmeRecipe(endpoint: string): string {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Any other CI, or a shell'));
  if (!section) throw new Error('README.md has no "## Any other CI, or a shell" section');
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('the "Any other CI, or a shell" section has no ```sh block');
  let script = block[1];
  const url = /https:\/\/cp\.example\.com:\d+/;
  if (!url.test(script)) throw new Error(`the recipe names no https://cp.example.com:PORT endpoint to swap:\n${script}`);
  script = script.replace(url, endpoint);
  const tags = /--tags \S+/;
  if (!tags.test(script)) throw new Error(`the recipe has no --tags to swap:\n${script}`);
  return script.replace(tags, '--tags "$BUILDCLOUD_CACHE_TO"');
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-shell-recipe-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  token = adminSetup(server.stateDir, 'acme', 60);
  // `buildcloud` on PATH, as the README assumes: the operator's single-file CLI.
  bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'buildcloud'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`, { mode: 0o755 });
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

/** A git checkout of acme/shop on branch feature/shell with one commit: the context the recipe builds (`.`). */
async function checkout(name: string, dockerfileBody: string): Promise<{ dir: string; sha: string }> {
  const dir = path.join(work, name);
  await makeBusyboxContext(dir, dockerfileBody);
  const git = (...args: string[]) => execFileSync('git', args, { cwd: dir, encoding: 'utf8', env: { ...process.env, HOME: work } }).trim();
  git('init', '-q', '-b', 'main');
  git('-c', 'user.email=dev@example.com', '-c', 'user.name=dev', 'commit', '-q', '--allow-empty', '-m', 'first');
  git('remote', 'add', 'origin', 'git@git.example.com:acme/shop.git');
  git('checkout', '-q', '-b', 'feature/shell');
  return { dir, sha: git('rev-parse', 'HEAD') };
}

/** The shell's environment before: a runner engine of its own, a set-but-empty DOCKER_CERT_PATH, a user config. */
function shellEnv(home: string): NodeJS.ProcessEnv {
  fs.mkdirSync(home, { recursive: true });
  return {
    PATH: `${bin}:${process.env.PATH}`,
    HOME: home,
    TMPDIR: home,
    BUILDCLOUD_TOKEN: token,
    BUILDCLOUD_DOCKER: DOCKER,
    BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool'),
    DOCKER_HOST: 'unix:///run/runner-engine.sock',
    DOCKER_CERT_PATH: '',
    DOCKER_CONFIG: path.join(home, '.docker')
  };
}

// The whole environment but bash's `_` (and the test control plane's token, kept out of failure messages).
const dump = (file: string) => `env -0 | grep -zv '^_=\\|^BUILDCLOUD_TOKEN=' | sort -z > ${file}`;
const envOf = (file: string) => fs.readFileSync(file, 'utf8').split('\0').filter(Boolean);

test('the recipe, twice in one shell: each round builds on the builder, and the environment after is the one before', async () => {
  const { dir, sha } = await checkout('ok', 'RUN echo built > /built.txt\n');
  const recipe = readmeRecipe(server.info.http);
  const at = (name: string) => path.join(work, `ok-${name}`); // outside the build context
  const script = [dump(at('before')), recipe, dump(at('round1')), recipe, dump(at('round2'))].join('\n');
  const r = spawnSync('bash', ['-c', script], { cwd: dir, env: shellEnv(path.join(work, 'home-ok')), encoding: 'utf8', timeout: 300_000 });
  expect({ status: r.status, stderr: r.status === 0 ? '' : r.stderr }).toEqual({ status: 0, stderr: '' });

  const before = envOf(at('before'));
  expect(before).toEqual(expect.arrayContaining(['DOCKER_HOST=unix:///run/runner-engine.sock', 'DOCKER_CERT_PATH=']));
  expect(envOf(at('round1'))).toEqual(before);
  expect(envOf(at('round2'))).toEqual(before);

  // Setup said which identity it used and where each field came from: the git checkout.
  const identity = r.stderr.split('\n').filter((l) => l.startsWith('Build Cloud: no CI detected, identity:'));
  expect(identity).toHaveLength(2);
  expect(identity[0]).toBe(
    'Build Cloud: no CI detected, identity: project acme/shop (git remote origin), branch feature/shell (git HEAD), ' +
      `default branch main (assumed: set BUILDCLOUD_DEFAULT_BRANCH), pipeline local/commit/${sha} (commit ${sha.slice(0, 12)}: ` +
      'jobs building it share a builder; set BUILDCLOUD_PIPELINE_ID to keep runs apart), job local'
  );
  // Both rounds built and pushed on a builder, and both released their lease.
  expect(r.stderr.match(/^Build Cloud: build success in /gm)).toHaveLength(2);
  expect(r.stderr.match(/^Build Cloud: released lease /gm)).toHaveLength(2);
  expect(r.stderr).not.toContain('no session in this job');
  expect(fs.readFileSync(path.join(dir, 'summary.md'), 'utf8')).toMatch(/^## Build Cloud\n\n.*1 build/);
});

test('a failing build: the script fails with the build, and report still runs (lease released, summary written)', async () => {
  const { dir } = await checkout('fails', 'RUN exit 3\n');
  const r = spawnSync('bash', ['-c', readmeRecipe(server.info.http)], {
    cwd: dir,
    env: shellEnv(path.join(work, 'home-fails')),
    encoding: 'utf8',
    timeout: 300_000
  });
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/docker build failed \(exit 1\)/);
  expect(r.stderr).toMatch(/^Build Cloud: released lease \S+ \(\d+ s billed\)$/m);
  expect(fs.readFileSync(path.join(dir, 'summary.md'), 'utf8')).toMatch(/^## Build Cloud\n/);
});

test('a shell where report ran without eval: the next setup puts docker back, says so, and builds', async () => {
  const { dir } = await checkout('stale', 'RUN echo built > /built.txt\n');
  const endpoint = server.info.http;
  const script = [
    'set -e',
    `eval "$(buildcloud setup --endpoint ${endpoint})"`,
    'buildcloud report >/dev/null', // the README's old recipe: the shell still points at the released builder
    'test ! -e "$BUILDCLOUD_SESSION"',
    `exports=$(buildcloud setup --endpoint ${endpoint})`,
    'eval "$exports"',
    'buildcloud build --context .',
    'eval "$(buildcloud report)"',
    'printf "%s|%s|%s|%s\\n" "$DOCKER_HOST" "$DOCKER_CONFIG" "${BUILDCLOUD_SESSION-unset}" "${DOCKER_BUILDKIT-unset}"'
  ].join('\n');
  const home = path.join(work, 'home-stale');
  const env = shellEnv(home);
  const r = spawnSync('bash', ['-c', script], { cwd: dir, env, encoding: 'utf8', timeout: 300_000 });
  expect({ status: r.status, stderr: r.status === 0 ? '' : r.stderr }).toEqual({ status: 0, stderr: '' });
  expect(r.stderr).toMatch(
    /^warning: BUILDCLOUD_SESSION names a session that is gone \(\S+session\.json\): an earlier `buildcloud report` ran without restoring this shell\. DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_CONTEXT, DOCKER_CONFIG, DOCKER_BUILDKIT, BUILDX_BUILDER are back to what they were before that setup; run report as eval "\$\(buildcloud report\)" to restore the shell\.$/m
  );
  expect(r.stderr).not.toContain('buildx plugin');
  expect(r.stderr.match(/^Build Cloud: build success in /gm)).toHaveLength(1);
  // DOCKER_BUILDKIT was not set before the first setup: the repaired shell's report leaves it unset too.
  expect(r.stdout.trim().split('\n').pop()).toBe(`unix:///run/runner-engine.sock|${env.DOCKER_CONFIG}|unset|unset`);
});

test('in an interactive shell (bash -i), a failing build leaves the shell open, reported and restored', async () => {
  const { dir } = await checkout('interactive', 'RUN exit 3\n');
  const at = (name: string) => path.join(work, `interactive-${name}`);
  // Commands typed into a terminal: the recipe, then whatever comes next must still run in the same shell.
  const script = [dump(at('before')), readmeRecipe(server.info.http), 'echo "still here: $?"', dump(at('after')), 'exit 0', ''].join('\n');
  const r = spawnSync('bash', ['--norc', '--noprofile', '-i'], {
    cwd: dir,
    env: shellEnv(path.join(work, 'home-interactive')),
    input: script,
    encoding: 'utf8',
    timeout: 300_000
  });
  expect({ status: r.status, stdout: r.stdout.trim().split('\n').pop() }).toEqual({ status: 0, stdout: 'still here: 1' });
  expect(r.stderr).toMatch(/docker build failed \(exit 1\)/);
  expect(r.stderr).toMatch(/^Build Cloud: released lease \S+ \(\d+ s billed\)$/m);
  expect(envOf(at('after'))).toEqual(envOf(at('before')));
});

test('setup twice without report: the second releases the first lease, removes its files, and says so in one line', async () => {
  const { dir } = await checkout('twice', 'RUN echo built > /built.txt\n');
  const endpoint = server.info.http;
  const at = (name: string) => path.join(work, `twice-${name}`);
  const script = [
    'set -e',
    dump(at('before')),
    `exports=$(buildcloud setup --endpoint ${endpoint}); eval "$exports"`,
    'first_dir=$(dirname "$BUILDCLOUD_SESSION"); first_lease=$BUILDCLOUD_LEASE_ID; echo "first lease: $first_lease" >&2',
    // BUILDCLOUD_DEBUG shows the line the quiet release of the first lease keeps out of the log.
    `exports=$(BUILDCLOUD_DEBUG=1 buildcloud setup --endpoint ${endpoint}); eval "$exports"`,
    'test ! -e "$first_dir"',
    'test "$BUILDCLOUD_LEASE_ID" != "$first_lease"',
    'buildcloud build --context .',
    'eval "$(buildcloud report)"',
    'unset first_dir first_lease exports',
    dump(at('after'))
  ].join('\n');
  const r = spawnSync('bash', ['-c', script], { cwd: dir, env: shellEnv(path.join(work, 'home-twice')), encoding: 'utf8', timeout: 300_000 });
  expect({ status: r.status, stderr: r.status === 0 ? '' : r.stderr }).toEqual({ status: 0, stderr: '' });
  const line = r.stderr.split('\n').filter((l) => l.includes('no report ended'));
  expect(line).toHaveLength(1);
  expect(line[0]).toMatch(
    /^warning: this shell still had a Build Cloud session that no report ended \(lease \S+, \S+session\.json\): released it and removed its files before this setup\. End each build with eval "\$\(buildcloud report\)"\.$/
  );
  // The control plane released the first lease (said at debug level only); the report released the second.
  const first = /^first lease: (\S+)$/m.exec(r.stderr)?.[1];
  expect(first).toBeTruthy();
  expect(r.stderr).toMatch(new RegExp(`^debug: Build Cloud: released lease ${first} \\(\\d+ s billed\\)$`, 'm'));
  expect(r.stderr.match(/^Build Cloud: released lease /gm)).toHaveLength(1);
  // The shell is as it was before both setups.
  expect(envOf(at('after'))).toEqual(envOf(at('before')));
});
