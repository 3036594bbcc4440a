// Who is building, and where: the CI's own variables → one CI-neutral identity. Pure apart from the default
// event-payload reader (and, for local runs only, the host name, pid and cwd), so every CI's real variable sets
// are table-tested. CI-REFERENCE.md §2 lists the variables; DESIGN.md "Contracts" the pipeline key.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KEY_PATTERN } from '../contract/rules';
import type { GitFacts } from './identity-git';

export type Provider = 'github' | 'gitlab' | 'circleci' | 'local';
export type Env = Record<string, string | undefined>;

export interface Identity {
  provider: Provider;
  org: string; // GitHub owner, GitLab root namespace, CircleCI VCS owner; local: '' (the token's org)
  project: string; // owner/repo or the GitLab project path
  pipelineKey: string; // the same for every job of one pipeline run (and attempt, on GitHub)
  jobId: string; // unique per job, matrix and parallel legs included
  jobName: string; // for humans
  branch: string; // '' for tag builds: they import the cache but have no branch to export to
  defaultBranch: string;
  // True when the CI named no default branch and `main` was assumed (CircleCI without BUILDCLOUD_DEFAULT_BRANCH).
  defaultBranchAssumed?: boolean;
  fork: boolean; // a pull request from a fork: read the org cache, never write it
  actor: string;
  runUrl: string;
  pullRequest: number | null;
  sha: string;
  // Local runs only (no CI describes them): where each field came from, for the setup log.
  sources?: IdentitySources;
}

/** Where a local run's identity fields came from: a BUILDCLOUD_* variable, git, or a default (and how to set it). */
export interface IdentitySources {
  project: string;
  branch: string;
  defaultBranch: string;
  pipeline: string;
}

export class IdentityError extends Error {
  constructor(
    message: string,
    readonly variable?: string
  ) {
    super(message);
    this.name = 'IdentityError';
  }
}

const CI_NAME: Record<Provider, string> = { github: 'GitHub Actions', gitlab: 'GitLab CI', circleci: 'CircleCI', local: 'a local run' };

export function detectProvider(env: Env): Provider {
  if (env.GITHUB_ACTIONS === 'true') return 'github';
  if (env.GITLAB_CI === 'true') return 'gitlab';
  if (env.CIRCLECI === 'true') return 'circleci';
  return 'local';
}

export function readJsonFile(file: string): unknown {
  return JSON.parse(readFileSync(file, 'utf8'));
}

// Reads variables of one CI: trimmed, empty means unset. CircleCI writes an empty pipeline value copied into
// `environment:` as the literal "<nil>" (CI-REFERENCE §2.1 notes), which is unset too.
function reader(env: Env, provider: Provider) {
  const opt = (name: string): string => {
    const v = (env[name] ?? '').trim();
    return provider === 'circleci' && v === '<nil>' ? '' : v;
  };
  const req = (name: string): string => {
    const v = opt(name);
    if (!v) throw new IdentityError(`${name} is not set: is this running in ${CI_NAME[provider]}?`, name);
    return v;
  };
  return { opt, req };
}

type Base = Omit<Identity, 'provider'>;

/**
 * The job's identity from its CI's variables. `overrides` are the wrapper's settings (an empty string is "not
 * given"); `git` is what the checkout says (identity-git.ts readGitFacts), read only for a local run: there it fills
 * the fields no BUILDCLOUD_* variable sets.
 */
export function identityFromEnv(
  env: Env,
  readEvent: (file: string) => unknown = readJsonFile,
  overrides: Partial<Identity> = {},
  git: GitFacts | null = null
): Identity {
  const provider = overrides.provider ?? detectProvider(env);
  const base = provider === 'github' ? github(env, readEvent) : provider === 'gitlab' ? gitlab(env) : provider === 'circleci' ? circleci(env) : local(env, git);
  const id: Identity = { provider, ...base };
  // Wrappers pass every input, and a CI passes a missing input as '': empty strings are "not given".
  for (const [k, v] of Object.entries(overrides) as [keyof Identity, unknown][]) {
    if (v !== undefined && v !== '') (id as unknown as Record<string, unknown>)[k] = v;
  }
  id.pipelineKey = toKey(id.pipelineKey);
  id.jobId = toKey(id.jobId);
  if (id.sources) {
    if (overrides.project) id.sources.project = 'setting';
    if (overrides.branch !== undefined && overrides.branch !== '') id.sources.branch = 'setting';
    if (overrides.defaultBranch) id.sources.defaultBranch = 'setting';
    if (overrides.pipelineKey) id.sources.pipeline = 'setting';
  }
  return id;
}

/**
 * The setup log's line about who is building. A local run says where each field came from ("project acme/app (git
 * remote origin), branch feature/x (git HEAD), ..."), since no CI vouches for it and a wrong branch writes another
 * branch's cache.
 */
export function describeIdentity(id: Identity): string {
  const head = `Build Cloud: ${id.provider} job ${id.jobName || id.jobId} of pipeline ${id.pipelineKey}`;
  if (!id.sources) return `${head} (${id.project}, branch ${id.branch || '(none)'}${id.fork ? ', fork' : ''})`;
  const s = id.sources;
  return (
    `Build Cloud: no CI detected, identity: project ${id.project} (${s.project}), ` +
    `branch ${id.branch || '(none: the org cache is read-only)'} (${s.branch}), default branch ${id.defaultBranch} (${s.defaultBranch}), ` +
    `pipeline ${id.pipelineKey} (${s.pipeline}), job ${id.jobId}`
  );
}

// Keys travel to the control plane, which accepts up to 256 printable ASCII characters without spaces
// (src/contract/rules.ts). Whitespace (RUNNER_NAME "GitHub Actions 12") becomes '-'; anything else that does not
// fit keeps a readable prefix plus a hash of the whole value, so two distinct inputs never map to one key.
const KEY_MAX = 200;
export function toKey(raw: string): string {
  const s = raw.trim().replace(/\s+/g, '-');
  if (s.length <= KEY_MAX && KEY_PATTERN.test(s)) return s;
  const prefix = s.replace(/[^\x21-\x7e]+/g, '_').slice(0, 100);
  return `${prefix}~${sha256(raw).slice(0, 16)}`;
}

// ---- GitHub Actions ----------------------------------------------------------------------------------------

interface GithubPayload {
  repository?: { id?: unknown; default_branch?: unknown };
  pull_request?: { number?: unknown; head?: { ref?: unknown; repo?: { id?: unknown } | null } };
}

function readPayload(env: Env, readEvent: (file: string) => unknown): GithubPayload {
  const file = reader(env, 'github').req('GITHUB_EVENT_PATH');
  let payload: unknown;
  try {
    payload = readEvent(file);
  } catch (err) {
    throw new IdentityError(`Cannot read the event payload ${file} (GITHUB_EVENT_PATH): ${(err as Error).message}`, 'GITHUB_EVENT_PATH');
  }
  if (!payload || typeof payload !== 'object') {
    throw new IdentityError(`The event payload ${file} (GITHUB_EVENT_PATH) is not a JSON object`, 'GITHUB_EVENT_PATH');
  }
  return payload as GithubPayload;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');
const int = (v: unknown): number | null => {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  return Number.isSafeInteger(n) && n > 0 ? n : null;
};

function github(env: Env, readEvent: (file: string) => unknown): Base {
  const { opt, req } = reader(env, 'github');
  const repository = req('GITHUB_REPOSITORY');
  const runId = req('GITHUB_RUN_ID');
  const attempt = req('GITHUB_RUN_ATTEMPT');
  const job = req('GITHUB_JOB');
  const payload = readPayload(env, readEvent);
  // GITHUB_REPOSITORY_ID is missing on old GHES runners; the payload's repository.id is the same number.
  const repoId = opt('GITHUB_REPOSITORY_ID') || str(payload.repository?.id);
  if (!repoId) throw new IdentityError('GITHUB_REPOSITORY_ID is not set: is this running in GitHub Actions?', 'GITHUB_REPOSITORY_ID');

  const pr = payload.pull_request;
  // The test actions/checkout uses: the head repository differs from the base one. A deleted fork has
  // head.repo = null; when we cannot prove the head is this repository, it counts as a fork (read-only cache).
  const fork = pr ? str(pr.head?.repo?.id) !== repoId : false;

  // GITHUB_HEAD_REF exists on pull_request(_target) only; other PR events (pull_request_review) carry head.ref.
  // Tags give '' so a release build imports the cache but never writes a branch scope.
  const refType = opt('GITHUB_REF_TYPE');
  const ref = opt('GITHUB_REF');
  let branch = opt('GITHUB_HEAD_REF') || str(pr?.head?.ref);
  if (!branch && refType === 'branch') branch = opt('GITHUB_REF_NAME');
  if (!branch && !refType && ref.startsWith('refs/heads/')) branch = ref.slice('refs/heads/'.length);

  const server = (opt('GITHUB_SERVER_URL') || 'https://github.com').replace(/\/+$/, '');
  return {
    org: opt('GITHUB_REPOSITORY_OWNER') || repository.split('/')[0],
    project: repository,
    pipelineKey: `${repoId}/${runId}/${attempt}`,
    // GITHUB_JOB is the same for every matrix leg; the action's job-id input normally overrides this. Without it,
    // legs still differ by runner, since one runner runs one job at a time.
    jobId: opt('RUNNER_NAME') ? `${job}@${opt('RUNNER_NAME')}` : job,
    jobName: job,
    branch,
    // Not in any variable; '' (unknown) lets the control plane fall back to the branch itself.
    defaultBranch: str(payload.repository?.default_branch),
    fork,
    actor: opt('GITHUB_ACTOR'),
    runUrl: `${server}/${repository}/actions/runs/${runId}`,
    pullRequest: int(pr?.number),
    sha: opt('GITHUB_SHA')
  };
}

// ---- GitLab CI ---------------------------------------------------------------------------------------------

function gitlab(env: Env): Base {
  const { opt, req } = reader(env, 'gitlab');
  const projectPath = req('CI_PROJECT_PATH');
  const projectId = req('CI_PROJECT_ID');
  const pipelineId = req('CI_PIPELINE_ID');
  const jobId = req('CI_JOB_ID');
  const org = opt('CI_PROJECT_ROOT_NAMESPACE') || opt('CI_PROJECT_NAMESPACE').split('/')[0];
  if (!org) throw new IdentityError('CI_PROJECT_ROOT_NAMESPACE is not set: is this running in GitLab CI?', 'CI_PROJECT_ROOT_NAMESPACE');

  // A fork's MR runs in the fork project by default (CI_PROJECT_* are the fork's), or in the parent when a member
  // of the parent starts it. Either way the source project differs from one of the two: the target project
  // (CI_MERGE_REQUEST_PROJECT_ID) or the project running the pipeline (CI_PROJECT_ID).
  const source = opt('CI_MERGE_REQUEST_SOURCE_PROJECT_ID');
  const target = opt('CI_MERGE_REQUEST_PROJECT_ID');
  const fork = source !== '' && (source !== projectId || (target !== '' && source !== target));

  // CI_COMMIT_BRANCH is unset in MR and tag pipelines; an MR pipeline's CI_COMMIT_REF_NAME is its source branch.
  const mr = opt('CI_MERGE_REQUEST_IID');
  let branch = opt('CI_COMMIT_BRANCH') || opt('CI_MERGE_REQUEST_SOURCE_BRANCH_NAME');
  if (!branch && mr && !opt('CI_COMMIT_TAG')) branch = opt('CI_COMMIT_REF_NAME');

  const server = opt('CI_SERVER_URL').replace(/\/+$/, '');
  return {
    org,
    project: projectPath,
    pipelineKey: `${projectId}/${pipelineId}`,
    jobId, // unique on the instance, so parallel: and parallel:matrix legs differ already
    jobName: opt('CI_JOB_NAME') || jobId,
    branch,
    defaultBranch: opt('CI_DEFAULT_BRANCH'),
    fork,
    actor: opt('GITLAB_USER_LOGIN'),
    runUrl: opt('CI_PIPELINE_URL') || opt('CI_JOB_URL') || (server ? `${server}/${projectPath}/-/pipelines/${pipelineId}` : ''),
    pullRequest: int(mr),
    sha: opt('CI_COMMIT_SHA')
  };
}

// ---- CircleCI ----------------------------------------------------------------------------------------------

function circleci(env: Env): Base {
  const { opt, req } = reader(env, 'circleci');
  const owner = req('CIRCLE_PROJECT_USERNAME');
  const repo = req('CIRCLE_PROJECT_REPONAME');
  const pipelineKey = opt('CIRCLE_WORKFLOW_ID') || opt('CIRCLE_PIPELINE_ID');
  if (!pipelineKey) throw new IdentityError('CIRCLE_WORKFLOW_ID is not set: is this running in CircleCI?', 'CIRCLE_WORKFLOW_ID');
  let jobId = opt('CIRCLE_WORKFLOW_JOB_ID') || opt('CIRCLE_BUILD_NUM');
  if (!jobId) throw new IdentityError('CIRCLE_WORKFLOW_JOB_ID is not set: is this running in CircleCI?', 'CIRCLE_WORKFLOW_JOB_ID');
  let jobName = opt('CIRCLE_JOB') || jobId;
  // parallelism: N runs N copies of the job under the same job id; only CIRCLE_NODE_INDEX tells them apart.
  const total = Number(opt('CIRCLE_NODE_TOTAL') || '1');
  if (total > 1) {
    const index = req('CIRCLE_NODE_INDEX');
    if (!/^\d+$/.test(index)) throw new IdentityError(`CIRCLE_NODE_INDEX '${index}' is not a number: is this running in CircleCI?`, 'CIRCLE_NODE_INDEX');
    jobId = `${jobId}/${index}`;
    jobName = `${jobName} (${Number(index) + 1}/${total})`;
  }
  const prUrl = /\/(\d+)\/?$/.exec(opt('CIRCLE_PULL_REQUEST'));
  return {
    org: owner,
    project: `${owner}/${repo}`,
    pipelineKey,
    jobId,
    jobName,
    branch: opt('CIRCLE_BRANCH'),
    // No variable holds it: `pipeline.git.branch.is_default` is only a boolean, it cannot name the branch. So an
    // explicit setting (an override), or BUILDCLOUD_DEFAULT_BRANCH (e.g. from a context), else the common default.
    defaultBranch: opt('BUILDCLOUD_DEFAULT_BRANCH') || 'main',
    ...(opt('BUILDCLOUD_DEFAULT_BRANCH') ? {} : { defaultBranchAssumed: true }),
    // Set only on forked PRs (GitHub OAuth and Bitbucket Cloud).
    fork: Boolean(opt('CIRCLE_PR_NUMBER') || opt('CIRCLE_PR_REPONAME')),
    actor: opt('CIRCLE_USERNAME'),
    runUrl: opt('CIRCLE_BUILD_URL'),
    pullRequest: int(opt('CIRCLE_PR_NUMBER')) ?? (prUrl ? int(prUrl[1]) : null),
    sha: opt('CIRCLE_SHA1')
  };
}

// ---- local -------------------------------------------------------------------------------------------------

// Outside the three CIs the job is described by BUILDCLOUD_* variables first, then by the git checkout it runs in,
// then by defaults. The pipeline key is what lets the jobs of one pipeline share a builder without any variable:
// BUILDCLOUD_PIPELINE_ID when set (the CI's run id: jobs on any machine share), else the commit checked out (every
// job building that commit of the project shares: a re-run of the same commit too, which only reuses a builder),
// else this process alone (host and pid: no sharing, as before git was read).
function local(env: Env, git: GitFacts | null): Base {
  const { opt } = reader(env, 'local');
  const host =
    os
      .hostname()
      .toLowerCase()
      .replace(/[^a-z0-9.-]+/g, '-') || 'host';
  const jobId = opt('BUILDCLOUD_JOB_ID') || 'local';
  const sha = git?.sha ?? '';
  const short = sha.slice(0, 12);
  const noGit = git?.problem ? `git: ${git.problem}` : 'no git checkout here';

  let project = opt('BUILDCLOUD_PROJECT');
  let projectFrom = 'BUILDCLOUD_PROJECT';
  if (!project && git?.project) [project, projectFrom] = [git.project, 'git remote origin'];
  if (!project) {
    project = path.basename(opt('PWD') || process.cwd()) || 'local';
    projectFrom = `the directory's name (${git && !git.problem ? 'no origin remote' : noGit}): set BUILDCLOUD_PROJECT`;
  }

  let defaultBranch = opt('BUILDCLOUD_DEFAULT_BRANCH');
  let defaultFrom = 'BUILDCLOUD_DEFAULT_BRANCH';
  if (!defaultBranch && git?.defaultBranch) [defaultBranch, defaultFrom] = [git.defaultBranch, 'git origin/HEAD'];
  if (!defaultBranch) [defaultBranch, defaultFrom] = ['main', 'assumed: set BUILDCLOUD_DEFAULT_BRANCH'];

  let branch = opt('BUILDCLOUD_BRANCH');
  let branchFrom = 'BUILDCLOUD_BRANCH';
  if (!branch && git && git.branch !== undefined) {
    // A detached HEAD (a commit or a tag checked out, as many CIs do) names no branch: import only, never export.
    [branch, branchFrom] = git.branch ? [git.branch, 'git HEAD'] : ['', 'detached HEAD: set BUILDCLOUD_BRANCH to write the cache'];
  } else if (!branch) {
    // No CI and no git to ask: the default branch's cache, as before git was read; the log says how to name it.
    [branch, branchFrom] = [defaultBranch, `${noGit}: the default branch; set BUILDCLOUD_BRANCH`];
  }

  const run = opt('BUILDCLOUD_PIPELINE_ID');
  const [pipelineKey, pipelineFrom] = run
    ? [`local/${run}`, 'BUILDCLOUD_PIPELINE_ID']
    : sha
      ? [`local/commit/${sha}`, `commit ${short}: jobs building it share a builder; set BUILDCLOUD_PIPELINE_ID to keep runs apart`]
      : [`local/${host}/${process.pid}`, 'this process: set BUILDCLOUD_PIPELINE_ID so the jobs of one pipeline share a builder'];
  return {
    org: '', // the token's own org
    project,
    pipelineKey,
    jobId,
    jobName: jobId,
    branch,
    defaultBranch,
    fork: false,
    actor: opt('USER') || opt('USERNAME'),
    runUrl: '',
    pullRequest: null,
    sha,
    sources: { project: projectFrom, branch: branchFrom, defaultBranch: defaultFrom, pipeline: pipelineFrom }
  };
}

// ---- names on the runner -----------------------------------------------------------------------------------

const sha256 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

/**
 * A name for the docker context, buildx builder or temp dir of THIS job. Matrix legs on one self-hosted machine
 * share a Docker config and a temp root, so the name hashes provider, pipeline and job; it is also a valid DNS
 * label (docker context and buildx builder names are used as such): [a-z0-9-], at most 63 characters.
 */
export function localName(identity: Pick<Identity, 'provider' | 'pipelineKey' | 'jobId'>, suffix = ''): string {
  const hash = sha256(`${identity.provider}\0${identity.pipelineKey}\0${identity.jobId}`).slice(0, 12);
  const base = `buildcloud-${hash}`;
  const room = 63 - base.length - 1;
  const tail = suffix
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, room)
    .replace(/-+$/, '');
  return tail ? `${base}-${tail}` : base;
}
