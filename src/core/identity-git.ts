// What a git checkout says about a job that no CI describes (a shell, Jenkins, Buildkite, a laptop): the branch,
// the commit, the project (from the `origin` remote) and the default branch (origin/HEAD). identity.ts uses these
// facts for the fields no BUILDCLOUD_* variable sets. git runs as a plain process (execFile with argv: nothing
// goes through a shell), with a short timeout; no git, no checkout or a git that refuses the directory all mean
// "no facts", and identity falls back as it would without git.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KEY_PATTERN } from '../contract/rules';
import { detectProvider } from './identity';

/** What git said about the checkout in the job's working directory. Absent fields: git could not tell. */
export interface GitFacts {
  /** The checked-out branch; '' for a detached HEAD (a commit or tag checked out: the cache is read-only then). */
  branch?: string;
  /** The commit HEAD points at (40 or 64 hex characters). */
  sha?: string;
  /** The project path read from the `origin` remote's URL (e.g. acme/app); never the URL, which may hold a token. */
  project?: string;
  /** The remote's default branch as the clone recorded it (refs/remotes/origin/HEAD), e.g. main. */
  defaultBranch?: string;
  /** Why git gave no facts when it exists but refused (e.g. "detected dubious ownership"), for the setup log. */
  problem?: string;
}

/** Runs one git command: its stdout, or an error carrying its stderr. */
export type GitRunner = (args: string[], opts: { cwd: string; timeoutMs: number }) => Promise<string>;

export interface GitFactOptions {
  cwd: string;
  timeoutMs?: number; // per command; the commands run side by side
  run?: GitRunner;
  env?: NodeJS.ProcessEnv;
}

/** git, not through a shell: a job's git should answer in milliseconds, and a hung one never holds setup. */
export function gitRunner(env: NodeJS.ProcessEnv = process.env, file = 'git'): GitRunner {
  // No prompt for credentials, no pager, messages in English (problem lines are shown as git wrote them).
  const gitEnv = { ...env, GIT_TERMINAL_PROMPT: '0', GIT_PAGER: 'cat', LC_ALL: 'C' };
  return (args, opts) =>
    new Promise((resolve, reject) => {
      execFile(file, args, { cwd: opts.cwd, timeout: opts.timeoutMs, env: gitEnv, maxBuffer: 64 * 1024, windowsHide: true }, (err, stdout, stderr) => {
        if (err) {
          const e = err as NodeJS.ErrnoException & { stderr?: string };
          e.stderr = String(stderr ?? '');
          reject(e);
        } else resolve(String(stdout).trim());
      });
    });
}

const DEFAULT_TIMEOUT_MS = 2000;

/**
 * The facts of the checkout in `cwd`, or null when there is none (no git on PATH, not a checkout, git timed out).
 * Four read-only commands run side by side: `symbolic-ref --short HEAD` (the branch, as `rev-parse --abbrev-ref HEAD`
 * gives it, but it also names an unborn branch and tells a detached HEAD by its exit status), `rev-parse HEAD`,
 * `remote get-url origin` and `symbolic-ref refs/remotes/origin/HEAD`; each that fails leaves its field out.
 */
export async function readGitFacts(o: GitFactOptions): Promise<GitFacts | null> {
  const run = o.run ?? gitRunner(o.env);
  const opts = { cwd: o.cwd, timeoutMs: o.timeoutMs ?? DEFAULT_TIMEOUT_MS };
  type Failure = Error & { stderr?: string; code?: unknown };
  const settle = (args: string[]) =>
    run(args, opts).then(
      (out) => ({ out, err: null as Failure | null }),
      (err: Failure) => ({ out: '', err })
    );
  const [head, sha, url, originHead] = await Promise.all([
    settle(['symbolic-ref', '--quiet', '--short', 'HEAD']),
    settle(['rev-parse', '--verify', '--quiet', 'HEAD']),
    settle(['remote', 'get-url', 'origin']),
    settle(['symbolic-ref', '--quiet', '--short', 'refs/remotes/origin/HEAD'])
  ]);
  const stderr = (head.err?.stderr ?? '').trim();
  // Exit 1 without a word: HEAD is no symbolic ref, i.e. detached. Anything else that fails: no git at all or no
  // checkout here (nothing to say), or a git that refuses the directory (dubious ownership, a broken repository),
  // worth one line in the log since the user expected git to be read.
  const detached = head.err !== null && head.err.code === 1 && !stderr;
  if (head.err && !detached) {
    // git itself does not run (not on PATH): the checkout's own files still say where HEAD is.
    if (head.err.code === 'ENOENT' || head.err.code === 'EACCES') return readGitFiles(o.cwd);
    if (/not a git repository/i.test(stderr) || !stderr) return null;
    return { problem: stderr.split('\n')[0] };
  }
  const facts: GitFacts = {};
  facts.branch = detached ? '' : head.out;
  if (/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(sha.out)) facts.sha = sha.out;
  const project = url.err ? '' : projectFromRemoteUrl(url.out);
  if (project) facts.project = project;
  const remoteHead = originHead.err ? '' : originHead.out;
  if (remoteHead.startsWith('origin/') && remoteHead.length > 'origin/'.length) facts.defaultBranch = remoteHead.slice('origin/'.length);
  return facts;
}

/** The .git directory of the checkout holding `cwd` (a `.git` file's `gitdir:` followed), or null outside one. */
function findGitDir(cwd: string): string | null {
  for (let dir = path.resolve(cwd); ; dir = path.dirname(dir)) {
    const dotGit = path.join(dir, '.git');
    try {
      const st = fs.statSync(dotGit);
      if (st.isDirectory()) return dotGit;
      const m = /^gitdir:\s*(.+?)\s*$/m.exec(fs.readFileSync(dotGit, 'utf8')); // a worktree or submodule
      if (m) return path.resolve(dir, m[1]);
    } catch {
      // no .git here: look in the parent
    }
    if (path.dirname(dir) === dir) return null;
  }
}

const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;
const read = (file: string): string | null => {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
};

/** The commit a ref names: its loose file, else its line in packed-refs (of the common dir for a worktree). */
function refSha(gitDir: string, commonDir: string, ref: string): string | undefined {
  for (const dir of [gitDir, commonDir]) {
    const loose = read(path.join(dir, ref))?.trim();
    if (loose && SHA.test(loose)) return loose;
  }
  for (const line of (read(path.join(commonDir, 'packed-refs')) ?? '').split('\n')) {
    const [sha, name] = line.trim().split(/\s+/);
    if (name === ref && SHA.test(sha)) return sha;
  }
  return undefined;
}

/** The `url` of `[remote "origin"]` in a git config file's text, or ''. */
export function originUrlFromConfig(text: string): string {
  let inOrigin = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const section = /^\[\s*([^\]]*?)\s*\]/.exec(line);
    if (section) inOrigin = /^remote\s+"origin"$/.test(section[1]);
    else if (inOrigin) {
      const m = /^url\s*=\s*(.*)$/i.exec(line);
      if (m) return m[1].replace(/^"(.*)"$/, '$1').trim();
    }
  }
  return '';
}

/**
 * The facts a checkout's files give without git (git not on PATH): the branch from .git/HEAD (`ref: refs/heads/X`;
 * a commit's sha there is a detached HEAD, branch ''), the commit it points at, the project from `[remote "origin"]`
 * in .git/config and the default branch from refs/remotes/origin/HEAD. null outside a checkout.
 */
export function readGitFiles(cwd: string): GitFacts | null {
  const gitDir = findGitDir(cwd);
  if (!gitDir) return null;
  const head = read(path.join(gitDir, 'HEAD'))?.trim();
  if (!head) return null;
  const common = read(path.join(gitDir, 'commondir'))?.trim();
  const commonDir = common ? path.resolve(gitDir, common) : gitDir;
  const facts: GitFacts = {};
  const ref = /^ref:\s*(\S+)$/.exec(head);
  if (ref) {
    facts.branch = ref[1].replace(/^refs\/heads\//, '');
    const sha = refSha(gitDir, commonDir, ref[1]);
    if (sha) facts.sha = sha;
  } else if (SHA.test(head)) {
    facts.branch = '';
    facts.sha = head;
  } else return null;
  const project = projectFromRemoteUrl(originUrlFromConfig(read(path.join(commonDir, 'config')) ?? ''));
  if (project) facts.project = project;
  const originHead = /^ref:\s*refs\/remotes\/origin\/(\S+)$/.exec(read(path.join(commonDir, 'refs/remotes/origin/HEAD'))?.trim() ?? '');
  if (originHead) facts.defaultBranch = originHead[1];
  return facts;
}

/**
 * The project path in a remote URL, as its host names it: `https://github.com/acme/app.git`, `git@github.com:acme/app`,
 * `ssh://git@host:2222/acme/app.git` → `acme/app`; a GitLab subgroup keeps its whole path (`group/sub/app`); a
 * local path or file:// URL gives its last two parts. User names and passwords in the URL are dropped, never kept.
 * '' when nothing usable remains (the control plane takes printable ASCII without spaces, up to 256 characters).
 */
export function projectFromRemoteUrl(raw: string): string {
  const url = raw.trim();
  let p = '';
  let local = false;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(url);
  if (scheme) {
    const rest = scheme[2];
    if (scheme[1].toLowerCase() === 'file') {
      p = rest.replace(/^[^/]*/, ''); // file://host/path: the host part (usually empty) is not the project's
      local = true;
    } else {
      const slash = rest.indexOf('/');
      p = slash < 0 ? '' : rest.slice(slash + 1); // host (with any user:password@ and :port) dropped
    }
  } else {
    // scp-like syntax: [user@]host:path, as git reads it when there is no slash before the first colon.
    const scp = /^(?:[^@/]+@)?([^:/]+):(.*)$/.exec(url);
    if (scp && !/^[a-z]$/i.test(scp[1])) p = scp[2];
    else {
      p = url;
      local = true;
    }
  }
  p = p.split(/[?#]/)[0];
  let parts = p.split('/').filter((s) => s && s !== '.' && s !== '..');
  if (parts.length) parts[parts.length - 1] = parts[parts.length - 1].replace(/\.git$/i, '');
  parts = parts.filter(Boolean);
  if (local) parts = parts.slice(-2);
  let project = parts.join('/');
  try {
    project = decodeURIComponent(project);
  } catch {
    // keep it as written
  }
  return project.length <= 256 && KEY_PATTERN.test(project) ? project : '';
}

const LOCAL_FIELDS = ['BUILDCLOUD_PROJECT', 'BUILDCLOUD_BRANCH', 'BUILDCLOUD_DEFAULT_BRANCH', 'BUILDCLOUD_PIPELINE_ID'];

/**
 * The checkout's facts for a job outside GitHub Actions, GitLab CI and CircleCI (whose identity comes from their own
 * variables), read in the working directory; null without a checkout, on a CI, or when BUILDCLOUD_* set every field.
 */
export async function gitFactsForLocalRun(env: NodeJS.ProcessEnv, o: Partial<GitFactOptions> = {}): Promise<GitFacts | null> {
  if (detectProvider(env) !== 'local') return null;
  if (LOCAL_FIELDS.every((name) => (env[name] ?? '').trim())) return null;
  const cwd = o.cwd ?? process.cwd();
  // Outside any checkout (no .git here or above, no GIT_DIR) there is nothing git could say: no process is started,
  // which keeps a job's start-up from paying for four git spawns (issue 10's first-request budget).
  if (!findGitDir(cwd) && !env.GIT_DIR) return null;
  return readGitFacts({ cwd, env, ...o });
}
