// The real GitLab CI interpreter for the demo and the e2e tests: gitlab-ci-local (npm) with the shell executor, run on Node 24 (it needs
// Node >= 22) in a throwaway git repository. What it does differently from GitLab, and how the tests deal with it:
// - GITLAB_CI is "false" there (so scripts can tell a local run); the tests set it to "true" as GitLab does.
// - It does not hand out id_tokens; the tests pass BUILDCLOUD_TOKEN like a masked project variable.
// - --shell-isolation gives each job its own copy of the tracked files, like a runner's checkout; without it,
//   parallel jobs would share one directory. In that mode it re-copies the files before after_script, which
//   deletes files the script made in the project directory: the component writes its reports in after_script.
// - --no-artifacts-to-source keeps the reports out of the source directory, so a second pipeline starts clean.
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { NODE24, ROOT } from './github-runner';

export { NODE24 };
export const GITLAB_CI_LOCAL = path.join(ROOT, '.tools/gitlab-ci-local/node_modules/gitlab-ci-local/dist/index.js');

// Pinned: the tests rely on its shell-isolation copying, its options and its output format (seen with 4.75.1).
export const GITLAB_CI_LOCAL_VERSION = '4.75.1';
export const INSTALL_LINES = [
  'npm install --no-save --no-audit --no-fund --prefix .tools/node24 node@24',
  `npm install --no-save --no-audit --no-fund --prefix .tools/gitlab-ci-local gitlab-ci-local@${GITLAB_CI_LOCAL_VERSION}`,
  'apt-get install -y rsync git'
];

/** Fails loudly (never skips) when the interpreter or what it needs is missing, naming the install command. */
export function requireGitlabCiLocal(): void {
  const missing: string[] = [];
  if (!fs.existsSync(NODE24)) missing.push(`${NODE24} (${INSTALL_LINES[0]})`);
  if (!fs.existsSync(GITLAB_CI_LOCAL)) missing.push(`${GITLAB_CI_LOCAL} (${INSTALL_LINES[1]})`);
  for (const [bin, pkg] of [
    ['rsync', 'rsync'],
    ['git', 'git']
  ]) {
    if (spawnSync('sh', ['-c', `command -v ${bin}`]).status !== 0) missing.push(`${bin} (apt-get install -y ${pkg})`);
  }
  if (missing.length) {
    throw new Error(
      `The GitLab e2e test needs gitlab-ci-local on Node 24 with rsync; missing: ${missing.join(', ')}. scripts/setup.sh should run:\n  ${INSTALL_LINES.join('\n  ')}`
    );
  }
}

/**
 * Makes `dir` a git repository with every file committed (ignored ones too: gitlab-ci-local copies tracked files
 * only) and an origin on gitlab.example.com, from which it derives CI_PROJECT_PATH acme/widgets and the namespace.
 */
export function initRepo(dir: string, remote = 'https://gitlab.example.com/acme/widgets.git'): void {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: dir, stdio: 'pipe' });
  git('init', '-q', '-b', 'main');
  git('remote', 'add', 'origin', remote);
  git('add', '-A', '-f');
  git('-c', 'user.email=ci@example.com', '-c', 'user.name=CI', 'commit', '-q', '-m', 'pipeline under test');
  // origin/HEAD -> main: gitlab-ci-local reads the default branch (CI_DEFAULT_BRANCH) from it.
  git('update-ref', 'refs/remotes/origin/main', 'HEAD');
  git('symbolic-ref', 'refs/remotes/origin/HEAD', 'refs/remotes/origin/main');
}

export type JobResult = 'PASS' | 'FAIL' | 'WARN';

export interface PipelineRun {
  status: number | null;
  output: string; // stdout and stderr, in order of arrival
  results: Record<string, JobResult>;
  durationMs: number;
  /** The job's lines, without the job-name column: "$ cmd" for commands, "> text" for their output. */
  log(job: string): string[];
}

export interface RunOptions {
  variables?: Record<string, string>; // --variable: like project CI/CD variables, they beat the jobs' own
  inputs?: Record<string, string>; // --input: applied to every include with inputs
  predefined?: string[]; // predefined variables the test overrides on purpose (suppresses the warning)
  timeoutMs?: number;
}

export function runGitlabCiLocal(repo: string, opts: RunOptions = {}): Promise<PipelineRun> {
  const args = [GITLAB_CI_LOCAL, '--shell-isolation', '--no-artifacts-to-source', '--no-color'];
  const predefined = ['GITLAB_CI', ...(opts.predefined ?? [])];
  args.push('--ignore-predefined-vars', predefined.join(','));
  for (const [k, v] of Object.entries({ GITLAB_CI: 'true', ...opts.variables })) args.push('--variable', `${k}=${v}`);
  for (const [k, v] of Object.entries(opts.inputs ?? {})) args.push('--input', `${k}=${v}`);
  const started = Date.now();
  return new Promise((resolve, reject) => {
    // Its own process group, so a timeout ends the jobs' shells and CLIs too.
    const proc = spawn(NODE24, args, { cwd: repo, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout!.on('data', (d) => (output += d.toString()));
    proc.stderr!.on('data', (d) => (output += d.toString()));
    const timer = setTimeout(() => {
      try {
        process.kill(-proc.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(new Error(`gitlab-ci-local did not finish within ${opts.timeoutMs ?? 300_000} ms:\n${output.slice(-4000)}`));
    }, opts.timeoutMs ?? 300_000);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.once('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, output, results: parseResults(output), durationMs: Date.now() - started, log: (job) => jobLog(output, job) });
    });
  });
}

// The summary at the end: " PASS  build-api", " FAIL  broken", " WARN  job  pre_script" (allowed to fail).
export function parseResults(output: string): Record<string, JobResult> {
  const results: Record<string, JobResult> = {};
  for (const line of output.split('\n')) {
    const m = /^\s*(PASS|FAIL|WARN)\s+(\S+)\s*(?:\S+)?\s*$/.exec(line);
    if (m && !line.includes('Avoid overriding')) results[m[2]] = m[1] as JobResult;
  }
  return results;
}

export function jobLog(output: string, job: string): string[] {
  const prefix = new RegExp(`^${job.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+(.*)$`);
  return output.split('\n').flatMap((l) => {
    const m = prefix.exec(l);
    return m ? [m[1]] : [];
  });
}

function artifactsDir(repo: string, job: string): string {
  return path.join(repo, '.gitlab-ci-local', 'artifacts', job);
}

/** A file the job kept under artifacts:paths. */
export function artifact(repo: string, job: string, file: string): string {
  return fs.readFileSync(path.join(artifactsDir(repo, job), file), 'utf8');
}

/** The job's artifacts:reports:dotenv, parsed the way GitLab reads it (KEY=VALUE, the last repeated key wins). */
export function dotenvReport(repo: string, job: string, file = 'buildcloud.env'): Record<string, string> {
  const text = fs.readFileSync(path.join(artifactsDir(repo, job), '.gitlab-ci-reports', 'dotenv', file), 'utf8');
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** OpenMetrics text (`name value` lines) as numbers. */
export function parseMetrics(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\S+)$/.exec(line.trim());
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}
