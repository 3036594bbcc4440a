// A job outside GitHub Actions, GitLab CI and CircleCI: its identity from BUILDCLOUD_* variables, else from the git
// checkout (real repositories made here with git init, remote add, checkout -b), else the defaults; and the line
// setup prints about where each field came from.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describeIdentity, identityFromEnv } from '../../src/core/identity';
import { gitFactsForLocalRun, gitRunner, originUrlFromConfig, projectFromRemoteUrl, readGitFacts, type GitFacts } from '../../src/core/identity-git';

let root: string;
const git = (cwd: string, ...args: string[]) =>
  execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: root } }).trim();

/** A repository with one commit on `branch`, and `origin` when a URL is given. */
function repo(name: string, o: { branch?: string; origin?: string; originHead?: string } = {}): { dir: string; sha: string } {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  git(dir, 'init', '-q', '-b', 'trunk');
  git(dir, 'config', 'user.email', 'dev@example.com');
  git(dir, 'config', 'user.name', 'dev');
  fs.writeFileSync(path.join(dir, 'Dockerfile'), 'FROM scratch\n');
  git(dir, 'add', 'Dockerfile');
  git(dir, 'commit', '-q', '-m', 'first');
  if (o.branch) git(dir, 'checkout', '-q', '-b', o.branch);
  if (o.origin) git(dir, 'remote', 'add', 'origin', o.origin);
  if (o.originHead) {
    // What `git clone` records: the remote's branch and origin/HEAD pointing at it.
    git(dir, 'update-ref', `refs/remotes/origin/${o.originHead}`, 'HEAD');
    git(dir, 'symbolic-ref', 'refs/remotes/origin/HEAD', `refs/remotes/origin/${o.originHead}`);
  }
  return { dir, sha: git(dir, 'rev-parse', 'HEAD') };
}

const facts = (dir: string) => readGitFacts({ cwd: dir, env: { ...process.env, HOME: root } });
const host = os
  .hostname()
  .toLowerCase()
  .replace(/[^a-z0-9.-]+/g, '-');

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-identity-git-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('projectFromRemoteUrl: any URL form', () => {
  test.each([
    ['https://github.com/acme/app.git', 'acme/app'],
    ['https://github.com/acme/app', 'acme/app'],
    ['https://github.com/acme/app/', 'acme/app'],
    ['https://x-access-token:ghs_secret@github.com/acme/app.git', 'acme/app'],
    ['http://git.internal:8080/acme/app.git', 'acme/app'],
    ['git@github.com:acme/app.git', 'acme/app'],
    ['git@github.com:acme/app', 'acme/app'],
    ['github.com:acme/app.git', 'acme/app'],
    ['ssh://git@github.com/acme/app.git', 'acme/app'],
    ['ssh://git@gitlab.example.com:2222/platform/team/api.git', 'platform/team/api'],
    ['git://git.example.com/acme/app.git', 'acme/app'],
    ['https://dev.azure.com/acme/web/_git/app', 'acme/web/_git/app'],
    ['file:///srv/git/acme/app.git', 'acme/app'],
    ['/srv/git/acme/app.git', 'acme/app'],
    ['../app.git', 'app'],
    ['https://github.com/acme/my%20app.git', ''], // a space: not a project name the control plane takes
    ['https://github.com/', ''],
    ['', '']
  ])('%s → %s', (url, project) => {
    expect(projectFromRemoteUrl(url)).toBe(project);
  });

  test('a token in the URL never reaches the project', () => {
    expect(projectFromRemoteUrl('https://oauth2:glpat-s3cret@gitlab.com/acme/app.git')).not.toContain('s3cret');
  });
});

describe('readGitFacts: real repositories', () => {
  test('a branch, its commit, the origin remote and origin/HEAD', async () => {
    const { dir, sha } = repo('feature', { branch: 'feature/x', origin: 'git@github.com:acme/app.git', originHead: 'main' });
    expect(await facts(dir)).toEqual({ branch: 'feature/x', sha, project: 'acme/app', defaultBranch: 'main' });
  });

  test('detached HEAD: no branch (the cache is read-only then)', async () => {
    const { dir, sha } = repo('detached', { origin: 'https://github.com/acme/app.git' });
    git(dir, 'checkout', '-q', '--detach');
    expect(await facts(dir)).toEqual({ branch: '', sha, project: 'acme/app' });
  });

  test('no origin remote, no origin/HEAD: those fields are left out', async () => {
    const { dir, sha } = repo('bare-local');
    expect(await facts(dir)).toEqual({ branch: 'trunk', sha });
  });

  test('an unborn branch (git init, nothing committed) still names its branch', async () => {
    const dir = path.join(root, 'unborn');
    fs.mkdirSync(dir);
    git(dir, 'init', '-q', '-b', 'dev');
    expect(await facts(dir)).toEqual({ branch: 'dev' });
  });

  test('a subdirectory of the checkout reads the same checkout', async () => {
    const { dir, sha } = repo('nested', { branch: 'fix-1', origin: 'https://gitlab.com/platform/team/api.git' });
    fs.mkdirSync(path.join(dir, 'services', 'api'), { recursive: true });
    expect(await facts(path.join(dir, 'services', 'api'))).toMatchObject({ branch: 'fix-1', sha, project: 'platform/team/api' });
  });

  test('not a checkout: null', async () => {
    const dir = path.join(root, 'plain');
    fs.mkdirSync(dir);
    expect(await readGitFacts({ cwd: dir, env: { ...process.env, GIT_CEILING_DIRECTORIES: root } })).toBeNull();
  });

  // git missing from PATH inside a checkout: the checkout's own files say the branch, commit and origin, rather than
  // identity falling back to the default branch (and writing its cache).
  const noGit = (cwd: string) => readGitFacts({ cwd, run: gitRunner(process.env, path.join(root, 'no-such-git')) });

  test('no git on PATH, in a checkout: the same facts, read from .git/HEAD, the refs and .git/config', async () => {
    const { dir, sha } = repo('no-git', { branch: 'feature/y', origin: 'ssh://git@git.example.com:2222/acme/shop.git', originHead: 'main' });
    expect(await noGit(dir)).toEqual({ branch: 'feature/y', sha, project: 'acme/shop', defaultBranch: 'main' });
    expect(await noGit(dir)).toEqual(await facts(dir)); // what git itself says
    // Refs packed (git gc): the commit from packed-refs; a subdirectory reads the same checkout.
    git(dir, 'pack-refs', '--all');
    fs.mkdirSync(path.join(dir, 'sub'));
    expect(await noGit(path.join(dir, 'sub'))).toEqual({ branch: 'feature/y', sha, project: 'acme/shop', defaultBranch: 'main' });
  });

  test('no git on PATH, detached HEAD (a sha in .git/HEAD): no branch', async () => {
    const { dir, sha } = repo('no-git-detached', { origin: 'https://github.com/acme/app.git' });
    git(dir, 'checkout', '-q', '--detach');
    expect(fs.readFileSync(path.join(dir, '.git', 'HEAD'), 'utf8').trim()).toBe(sha);
    expect(await noGit(dir)).toEqual({ branch: '', sha, project: 'acme/app' });
  });

  test('no git on PATH, no checkout: null', async () => {
    const dir = path.join(root, 'plain-no-git');
    fs.mkdirSync(dir);
    expect(await noGit(dir)).toBeNull();
  });

  test('the origin URL from a config with other remotes and sections', () => {
    const config =
      '[core]\n\tbare = false\n[remote "upstream"]\n\turl = git@github.com:other/app.git\n[remote "origin"]\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\turl = https://tok@github.com/acme/app.git\n';
    expect(originUrlFromConfig(config)).toBe('https://tok@github.com/acme/app.git');
    expect(originUrlFromConfig('[remote "upstream"]\n\turl = x\n')).toBe('');
  });

  test('a git that refuses the directory: the problem, as git said it, for the log', async () => {
    const refuse = async () => {
      throw Object.assign(new Error('exit 128'), {
        code: 128,
        stderr: "fatal: detected dubious ownership in repository at '/builds/app'\nTo add an exception..."
      });
    };
    expect(await readGitFacts({ cwd: root, run: refuse })).toEqual({ problem: "fatal: detected dubious ownership in repository at '/builds/app'" });
  });

  test('git runs with argv, no shell, and each command gets the timeout', async () => {
    const calls: Array<{ args: string[]; timeoutMs: number }> = [];
    await readGitFacts({
      cwd: root,
      timeoutMs: 1500,
      run: async (args, o) => {
        calls.push({ args, timeoutMs: o.timeoutMs });
        return 'main';
      }
    });
    expect(calls).toEqual([
      { args: ['symbolic-ref', '--quiet', '--short', 'HEAD'], timeoutMs: 1500 },
      { args: ['rev-parse', '--verify', '--quiet', 'HEAD'], timeoutMs: 1500 },
      { args: ['remote', 'get-url', 'origin'], timeoutMs: 1500 },
      { args: ['symbolic-ref', '--quiet', '--short', 'refs/remotes/origin/HEAD'], timeoutMs: 1500 }
    ]);
  });

  test('gitFactsForLocalRun: only outside the three CIs, and only when some field is not set', async () => {
    const { dir } = repo('local-run', { branch: 'feature/y' });
    expect(await gitFactsForLocalRun({ GITLAB_CI: 'true' }, { cwd: dir })).toBeNull();
    const all = { BUILDCLOUD_PROJECT: 'a/b', BUILDCLOUD_BRANCH: 'x', BUILDCLOUD_DEFAULT_BRANCH: 'main', BUILDCLOUD_PIPELINE_ID: '7' };
    expect(await gitFactsForLocalRun(all, { cwd: dir })).toBeNull();
    expect(await gitFactsForLocalRun({ ...process.env, HOME: root, GITHUB_ACTIONS: '' }, { cwd: dir })).toMatchObject({ branch: 'feature/y' });
  });
});

describe('identityFromEnv: a local run from git', () => {
  const SHA = '3f2a1b2c9d0e4f5a6b7c8d9e0f1a2b3c4d5e6f7a';
  const FACTS: GitFacts = { branch: 'feature/x', sha: SHA, project: 'acme/app', defaultBranch: 'trunk' };

  test('every field from git, and where it came from', () => {
    const id = identityFromEnv({ USER: 'dev' }, undefined, {}, FACTS);
    expect(id).toMatchObject({
      provider: 'local',
      project: 'acme/app',
      branch: 'feature/x',
      defaultBranch: 'trunk',
      pipelineKey: `local/commit/${SHA}`,
      jobId: 'local',
      sha: SHA
    });
    expect(describeIdentity(id)).toBe(
      'Build Cloud: no CI detected, identity: project acme/app (git remote origin), branch feature/x (git HEAD), ' +
        `default branch trunk (git origin/HEAD), pipeline local/commit/${SHA} (commit 3f2a1b2c9d0e: jobs building it share a ` +
        'builder; set BUILDCLOUD_PIPELINE_ID to keep runs apart), job local'
    );
  });

  test('two jobs of one pipeline (same commit, other processes or machines) get the same pipeline key', () => {
    const a = identityFromEnv({ BUILDCLOUD_JOB_ID: 'api' }, undefined, {}, FACTS);
    const b = identityFromEnv({ BUILDCLOUD_JOB_ID: 'web', HOSTNAME: 'other' }, undefined, {}, FACTS);
    expect(a.pipelineKey).toBe(b.pipelineKey);
    expect(a.jobId).not.toBe(b.jobId);
  });

  test('BUILDCLOUD_* variables win over git', () => {
    const env = {
      BUILDCLOUD_PROJECT: 'acme/widget',
      BUILDCLOUD_BRANCH: 'release/2',
      BUILDCLOUD_DEFAULT_BRANCH: 'main',
      BUILDCLOUD_PIPELINE_ID: 'jenkins-412'
    };
    const id = identityFromEnv(env, undefined, {}, FACTS);
    expect(id).toMatchObject({ project: 'acme/widget', branch: 'release/2', defaultBranch: 'main', pipelineKey: 'local/jenkins-412', sha: SHA });
    expect(describeIdentity(id)).toBe(
      'Build Cloud: no CI detected, identity: project acme/widget (BUILDCLOUD_PROJECT), branch release/2 (BUILDCLOUD_BRANCH), ' +
        'default branch main (BUILDCLOUD_DEFAULT_BRANCH), pipeline local/jenkins-412 (BUILDCLOUD_PIPELINE_ID), job local'
    );
  });

  test('detached HEAD: no branch, so the org cache is read-only, and the line says how to name one', () => {
    const id = identityFromEnv({}, undefined, {}, { ...FACTS, branch: '' });
    expect(id.branch).toBe('');
    expect(describeIdentity(id)).toContain('branch (none: the org cache is read-only) (detached HEAD: set BUILDCLOUD_BRANCH to write the cache)');
  });

  test('a checkout without origin: the directory name, and a default branch assumed', () => {
    const id = identityFromEnv({ PWD: '/builds/widget-api' }, undefined, {}, { branch: 'dev', sha: SHA });
    expect(id).toMatchObject({ project: 'widget-api', branch: 'dev', defaultBranch: 'main' });
    expect(describeIdentity(id)).toContain(
      "project widget-api (the directory's name (no origin remote): set BUILDCLOUD_PROJECT), branch dev (git HEAD), default branch main (assumed: set BUILDCLOUD_DEFAULT_BRANCH)"
    );
  });

  test('no git: as before (directory name, the default branch, this process), and the line says so', () => {
    const id = identityFromEnv({ PWD: '/home/dev/widget-api' }, undefined, {}, null);
    expect(id).toMatchObject({ project: 'widget-api', branch: 'main', defaultBranch: 'main', pipelineKey: `local/${host}/${process.pid}`, sha: '' });
    expect(describeIdentity(id)).toBe(
      "Build Cloud: no CI detected, identity: project widget-api (the directory's name (no git checkout here): set BUILDCLOUD_PROJECT), " +
        'branch main (no git checkout here: the default branch; set BUILDCLOUD_BRANCH), default branch main (assumed: set BUILDCLOUD_DEFAULT_BRANCH), ' +
        `pipeline local/${host}/${process.pid} (this process: set BUILDCLOUD_PIPELINE_ID so the jobs of one pipeline share a builder), job local`
    );
  });

  test('git refused the directory: the line says what git said', () => {
    const id = identityFromEnv({ PWD: '/builds/app' }, undefined, {}, { problem: 'fatal: detected dubious ownership in repository at /builds/app' });
    expect(describeIdentity(id)).toContain("project app (the directory's name (git: fatal: detected dubious ownership in repository at /builds/app)");
  });

  test('a real checkout end to end: facts read by git, then the identity', async () => {
    const { dir, sha } = repo('e2e', { branch: 'feature/z', origin: 'https://github.com/acme/shop.git', originHead: 'main' });
    const id = identityFromEnv({}, undefined, {}, await facts(dir));
    expect(id).toMatchObject({ project: 'acme/shop', branch: 'feature/z', defaultBranch: 'main', pipelineKey: `local/commit/${sha}` });
  });

  test('on a CI, git facts are ignored', () => {
    const env = {
      CIRCLECI: 'true',
      CIRCLE_PROJECT_USERNAME: 'acme',
      CIRCLE_PROJECT_REPONAME: 'app',
      CIRCLE_WORKFLOW_ID: 'wf',
      CIRCLE_WORKFLOW_JOB_ID: 'j',
      CIRCLE_BRANCH: 'ci-branch'
    };
    const id = identityFromEnv(env, undefined, {}, FACTS);
    expect(id).toMatchObject({ project: 'acme/app', branch: 'ci-branch', pipelineKey: 'wf' });
    expect(id.sources).toBeUndefined();
  });
});

test('gitFactsForLocalRun starts no git outside a checkout (nothing to read there)', async () => {
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-nogit-'));
  try {
    const calls: string[][] = [];
    const run = async (args: string[]) => {
      calls.push(args);
      return '';
    };
    expect(await gitFactsForLocalRun({ PATH: process.env.PATH }, { cwd: outside, run })).toBeNull();
    expect(calls).toEqual([]);
    // With GIT_DIR set, git is asked (it may point anywhere).
    await gitFactsForLocalRun({ PATH: process.env.PATH, GIT_DIR: '/elsewhere/.git' }, { cwd: outside, run });
    expect(calls.length).toBeGreaterThan(0);
  } finally {
    fs.rmSync(outside, { recursive: true, force: true });
  }
});
