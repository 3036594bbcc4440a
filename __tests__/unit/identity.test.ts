// Identity from the real variable sets of each CI (CI-REFERENCE.md §2.2 samples), payload files included.
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { detectProvider, identityFromEnv, localName, toKey, IdentityError, type Env, type Identity } from '../../src/core/identity';

const EVENT_PATH = '/home/runner/work/_temp/_github_workflow/event.json';

// GitHub: the §2.2 pull_request sample, turned into the other events by the cases below.
const GH: Env = {
  CI: 'true',
  GITHUB_ACTIONS: 'true',
  GITHUB_SERVER_URL: 'https://github.com',
  GITHUB_REPOSITORY: 'acme-corp/widget-api',
  GITHUB_REPOSITORY_ID: '712345678',
  GITHUB_REPOSITORY_OWNER: 'acme-corp',
  GITHUB_REPOSITORY_OWNER_ID: '98765432',
  GITHUB_RUN_ID: '9876543210',
  GITHUB_RUN_NUMBER: '412',
  GITHUB_RUN_ATTEMPT: '2',
  GITHUB_JOB: 'build',
  GITHUB_WORKFLOW: 'CI',
  GITHUB_SHA: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
  GITHUB_ACTOR: 'jdoe',
  GITHUB_ACTOR_ID: '1234567',
  GITHUB_EVENT_PATH: EVENT_PATH,
  RUNNER_OS: 'Linux',
  RUNNER_ARCH: 'X64',
  RUNNER_ENVIRONMENT: 'github-hosted',
  RUNNER_NAME: 'GitHub Actions 12'
};
const GH_PUSH: Env = {
  ...GH,
  GITHUB_EVENT_NAME: 'push',
  GITHUB_REF: 'refs/heads/main',
  GITHUB_REF_NAME: 'main',
  GITHUB_REF_TYPE: 'branch',
  GITHUB_RUN_ATTEMPT: '1'
};
const GH_PR: Env = {
  ...GH,
  GITHUB_EVENT_NAME: 'pull_request',
  GITHUB_REF: 'refs/pull/57/merge',
  GITHUB_REF_NAME: '57/merge',
  GITHUB_REF_TYPE: 'branch',
  GITHUB_HEAD_REF: 'feature/login',
  GITHUB_BASE_REF: 'main'
};
const GH_TAG: Env = { ...GH_PUSH, GITHUB_REF: 'refs/tags/v1.4.0', GITHUB_REF_NAME: 'v1.4.0', GITHUB_REF_TYPE: 'tag' };

const repoPayload = { id: 712345678, full_name: 'acme-corp/widget-api', default_branch: 'main', fork: false };
const pushPayload = { ref: 'refs/heads/main', repository: repoPayload };
const prPayload = (headRepoId: number | null, number = 57) => ({
  action: 'synchronize',
  number,
  pull_request: {
    number,
    head: {
      ref: 'feature/login',
      repo: headRepoId === null ? null : { id: headRepoId, full_name: headRepoId === 712345678 ? 'acme-corp/widget-api' : 'contributor42/widget-api' }
    },
    base: { ref: 'main', repo: repoPayload }
  },
  repository: repoPayload
});
const events = (payload: unknown) => (file: string) => {
  expect(file).toBe(EVENT_PATH);
  return payload;
};

// GitLab: the §2.2 MR sample; branch pipelines and forks derived from it.
const GL: Env = {
  CI: 'true',
  GITLAB_CI: 'true',
  CI_SERVER_URL: 'https://gitlab.example.com',
  CI_PROJECT_ID: '4821',
  CI_PROJECT_PATH: 'platform/tools/widget-api',
  CI_PROJECT_NAMESPACE: 'platform/tools',
  CI_PROJECT_ROOT_NAMESPACE: 'platform',
  CI_PIPELINE_ID: '1093344',
  CI_PIPELINE_IID: '388',
  CI_PIPELINE_URL: 'https://gitlab.example.com/platform/tools/widget-api/-/pipelines/1093344',
  CI_JOB_ID: '55012931',
  CI_JOB_NAME: 'scan',
  CI_COMMIT_SHA: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
  CI_DEFAULT_BRANCH: 'main',
  GITLAB_USER_LOGIN: 'jdoe'
};
const GL_MR: Env = {
  ...GL,
  CI_PIPELINE_SOURCE: 'merge_request_event',
  CI_COMMIT_REF_NAME: 'feature/login',
  CI_MERGE_REQUEST_IID: '57',
  CI_MERGE_REQUEST_PROJECT_ID: '4821',
  CI_MERGE_REQUEST_SOURCE_PROJECT_ID: '4821',
  CI_MERGE_REQUEST_TARGET_BRANCH_NAME: 'main'
};
const GL_BRANCH: Env = { ...GL, CI_PIPELINE_SOURCE: 'push', CI_COMMIT_REF_NAME: 'develop', CI_COMMIT_BRANCH: 'develop' };

// CircleCI: the §2.2 forked-PR sample; the branch build drops the CIRCLE_PR_* variables.
const CC_FORK: Env = {
  CI: 'true',
  CIRCLECI: 'true',
  CIRCLE_ORGANIZATION_ID: '8f3b2c1d-4e5a-4b6c-9d7e-0a1b2c3d4e5f',
  CIRCLE_PROJECT_ID: '2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5',
  CIRCLE_PROJECT_USERNAME: 'acme-corp',
  CIRCLE_PROJECT_REPONAME: 'widget-api',
  CIRCLE_PIPELINE_ID: '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d',
  CIRCLE_WORKFLOW_ID: '4f7238f8-bbeb-4428-912f-da28c816002f',
  CIRCLE_WORKFLOW_JOB_ID: '0793c975-7b9f-489f-909b-5c6d7e8f9a0b',
  CIRCLE_JOB: 'test',
  CIRCLE_BUILD_NUM: '76545',
  CIRCLE_BUILD_URL: 'https://circleci.com/gh/acme-corp/widget-api/76545',
  CIRCLE_BRANCH: 'pull/57',
  CIRCLE_SHA1: 'ed0bda2d7456f4a2cd60870072e1fe79864a49a1',
  CIRCLE_USERNAME: 'jdoe',
  CIRCLE_PULL_REQUEST: 'https://github.com/acme-corp/widget-api/pull/57',
  CIRCLE_PR_NUMBER: '57',
  CIRCLE_PR_REPONAME: 'widget-api',
  CIRCLE_PR_USERNAME: 'contributor42'
};
const { CIRCLE_PR_NUMBER, CIRCLE_PR_REPONAME, CIRCLE_PR_USERNAME, CIRCLE_PULL_REQUEST, ...CC_NOPR } = CC_FORK;
const CC_BRANCH: Env = { ...CC_NOPR, CIRCLE_BRANCH: 'feature/login' };

const noEvent = () => {
  throw new Error('no payload expected');
};

describe('detectProvider', () => {
  test.each<[string, Env, string]>([
    ['GitHub Actions', GH_PUSH, 'github'],
    ['GitLab CI', GL_BRANCH, 'gitlab'],
    ['CircleCI', CC_BRANCH, 'circleci'],
    ['a laptop', { HOME: '/home/jdoe', CI: 'true' }, 'local'],
    ['GITHUB_ACTIONS other than "true"', { GITHUB_ACTIONS: '1' }, 'local'],
    ['GitLab Runner variable set to false', { GITLAB_CI: 'false' }, 'local']
  ])('%s → %s', (_name, env, provider) => {
    expect(detectProvider(env)).toBe(provider);
  });
});

describe('identityFromEnv: each CI', () => {
  test.each<[string, Env, (file: string) => unknown, Partial<Identity>, Partial<Identity>]>([
    [
      'GitHub push to the default branch',
      GH_PUSH,
      events(pushPayload),
      {},
      {
        provider: 'github',
        org: 'acme-corp',
        project: 'acme-corp/widget-api',
        pipelineKey: '712345678/9876543210/1',
        jobId: 'build@GitHub-Actions-12',
        jobName: 'build',
        branch: 'main',
        defaultBranch: 'main',
        fork: false,
        actor: 'jdoe',
        runUrl: 'https://github.com/acme-corp/widget-api/actions/runs/9876543210',
        pullRequest: null,
        sha: GH.GITHUB_SHA
      }
    ],
    [
      'GitHub pull_request from a fork',
      GH_PR,
      events(prPayload(11122233)),
      {},
      { pipelineKey: '712345678/9876543210/2', branch: 'feature/login', defaultBranch: 'main', fork: true, pullRequest: 57 }
    ],
    [
      'GitHub pull_request from a branch of the same repository',
      GH_PR,
      events(prPayload(712345678)),
      {},
      { branch: 'feature/login', fork: false, pullRequest: 57 }
    ],
    ['GitHub pull_request whose fork was deleted (head.repo null)', GH_PR, events(prPayload(null)), {}, { fork: true }],
    [
      'GitHub pull_request_target from a fork (base ref, head branch)',
      { ...GH_PR, GITHUB_EVENT_NAME: 'pull_request_target', GITHUB_REF: 'refs/heads/main', GITHUB_REF_NAME: 'main' },
      events(prPayload(11122233)),
      {},
      { branch: 'feature/login', fork: true, pullRequest: 57 }
    ],
    [
      'GitHub pull_request_review (no GITHUB_HEAD_REF): head.ref from the payload',
      { ...GH_PR, GITHUB_EVENT_NAME: 'pull_request_review', GITHUB_HEAD_REF: '' },
      events(prPayload(11122233)),
      {},
      { branch: 'feature/login', fork: true }
    ],
    [
      'GitHub tag push: no branch, so import only',
      GH_TAG,
      events({ ref: 'refs/tags/v1.4.0', repository: repoPayload }),
      {},
      { branch: '', defaultBranch: 'main', fork: false }
    ],
    [
      'GitHub without GITHUB_REF_TYPE (old runner): branch from GITHUB_REF',
      { ...GH_PUSH, GITHUB_REF_TYPE: undefined, GITHUB_REF: 'refs/heads/release/2.0', GITHUB_REF_NAME: 'release/2.0' },
      events(pushPayload),
      {},
      { branch: 'release/2.0' }
    ],
    [
      'GitHub Enterprise Server without GITHUB_REPOSITORY_ID: id from the payload',
      { ...GH_PUSH, GITHUB_REPOSITORY_ID: undefined, GITHUB_SERVER_URL: 'https://ghe.example.com/' },
      events(pushPayload),
      {},
      { pipelineKey: '712345678/9876543210/1', runUrl: 'https://ghe.example.com/acme-corp/widget-api/actions/runs/9876543210' }
    ],
    [
      'GitHub schedule event without default_branch: unknown',
      GH_PUSH,
      events({ schedule: '0 0 * * *', repository: { id: 712345678 } }),
      {},
      { defaultBranch: '' }
    ],
    ["GitHub with the action's job-id override (matrix leg 3)", GH_PUSH, events(pushPayload), { jobId: 'build-3' }, { jobId: 'build-3', jobName: 'build' }],
    ['GitHub without RUNNER_NAME', { ...GH_PUSH, RUNNER_NAME: undefined }, events(pushPayload), {}, { jobId: 'build' }],
    [
      'GitLab branch pipeline',
      GL_BRANCH,
      noEvent,
      {},
      {
        provider: 'gitlab',
        org: 'platform',
        project: 'platform/tools/widget-api',
        pipelineKey: '4821/1093344',
        jobId: '55012931',
        jobName: 'scan',
        branch: 'develop',
        defaultBranch: 'main',
        fork: false,
        actor: 'jdoe',
        runUrl: GL.CI_PIPELINE_URL,
        pullRequest: null,
        sha: GL.CI_COMMIT_SHA
      }
    ],
    ['GitLab MR pipeline (sample): branch from CI_COMMIT_REF_NAME', GL_MR, noEvent, {}, { branch: 'feature/login', fork: false, pullRequest: 57 }],
    [
      'GitLab MR pipeline with the source branch variable',
      { ...GL_MR, CI_COMMIT_REF_NAME: 'x', CI_MERGE_REQUEST_SOURCE_BRANCH_NAME: 'feature/login' },
      noEvent,
      {},
      { branch: 'feature/login' }
    ],
    [
      'GitLab MR from a fork, run in the parent project',
      { ...GL_MR, CI_MERGE_REQUEST_SOURCE_PROJECT_ID: '9911' },
      noEvent,
      {},
      { project: 'platform/tools/widget-api', fork: true, pullRequest: 57 }
    ],
    [
      'GitLab MR from a fork, run in the fork project (the default)',
      {
        ...GL_MR,
        CI_PROJECT_ID: '9911',
        CI_PROJECT_PATH: 'contributor42/widget-api',
        CI_PROJECT_NAMESPACE: 'contributor42',
        CI_PROJECT_ROOT_NAMESPACE: 'contributor42',
        CI_MERGE_REQUEST_SOURCE_PROJECT_ID: '9911'
      },
      noEvent,
      {},
      { org: 'contributor42', pipelineKey: '9911/1093344', fork: true }
    ],
    [
      'GitLab nested namespace without CI_PROJECT_ROOT_NAMESPACE (old GitLab)',
      { ...GL_BRANCH, CI_PROJECT_ROOT_NAMESPACE: undefined, CI_PROJECT_NAMESPACE: 'acme/platform/tools', CI_PROJECT_PATH: 'acme/platform/tools/api' },
      noEvent,
      {},
      { org: 'acme', project: 'acme/platform/tools/api' }
    ],
    ['GitLab tag pipeline', { ...GL, CI_COMMIT_TAG: 'v1.4.0', CI_COMMIT_REF_NAME: 'v1.4.0' }, noEvent, {}, { branch: '' }],
    [
      'GitLab without CI_PIPELINE_URL: the job URL',
      { ...GL_BRANCH, CI_PIPELINE_URL: undefined, CI_JOB_URL: 'https://gitlab.example.com/j/1' },
      noEvent,
      {},
      { runUrl: 'https://gitlab.example.com/j/1' }
    ],
    [
      'GitLab without any URL: built from the server URL',
      { ...GL_BRANCH, CI_PIPELINE_URL: undefined },
      noEvent,
      {},
      { runUrl: 'https://gitlab.example.com/platform/tools/widget-api/-/pipelines/1093344' }
    ],
    [
      'CircleCI branch build',
      CC_BRANCH,
      noEvent,
      {},
      {
        provider: 'circleci',
        org: 'acme-corp',
        project: 'acme-corp/widget-api',
        pipelineKey: '4f7238f8-bbeb-4428-912f-da28c816002f',
        jobId: '0793c975-7b9f-489f-909b-5c6d7e8f9a0b',
        jobName: 'test',
        branch: 'feature/login',
        defaultBranch: 'main',
        fork: false,
        actor: 'jdoe',
        runUrl: CC_FORK.CIRCLE_BUILD_URL,
        pullRequest: null,
        sha: CC_FORK.CIRCLE_SHA1
      }
    ],
    ['CircleCI forked PR (sample)', CC_FORK, noEvent, {}, { branch: 'pull/57', fork: true, pullRequest: 57 }],
    [
      'CircleCI PR from the same repository: number from the URL',
      { ...CC_BRANCH, CIRCLE_PULL_REQUEST: 'https://github.com/acme-corp/widget-api/pull/58' },
      noEvent,
      {},
      { fork: false, pullRequest: 58 }
    ],
    [
      'CircleCI parallelism leg 3 of 4',
      { ...CC_BRANCH, CIRCLE_NODE_TOTAL: '4', CIRCLE_NODE_INDEX: '2' },
      noEvent,
      {},
      { jobId: '0793c975-7b9f-489f-909b-5c6d7e8f9a0b/2', jobName: 'test (3/4)' }
    ],
    [
      'CircleCI parallelism 1: no node suffix',
      { ...CC_BRANCH, CIRCLE_NODE_TOTAL: '1', CIRCLE_NODE_INDEX: '0' },
      noEvent,
      {},
      { jobId: '0793c975-7b9f-489f-909b-5c6d7e8f9a0b' }
    ],
    [
      'CircleCI without workflow job id / workflow id: build number and pipeline id',
      { ...CC_BRANCH, CIRCLE_WORKFLOW_JOB_ID: undefined, CIRCLE_WORKFLOW_ID: undefined },
      noEvent,
      {},
      { pipelineKey: '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d', jobId: '76545' }
    ],
    ['CircleCI default branch from BUILDCLOUD_DEFAULT_BRANCH', { ...CC_BRANCH, BUILDCLOUD_DEFAULT_BRANCH: 'master' }, noEvent, {}, { defaultBranch: 'master' }],
    [
      'CircleCI default branch from a setting',
      { ...CC_BRANCH, BUILDCLOUD_DEFAULT_BRANCH: 'master' },
      noEvent,
      { defaultBranch: 'trunk' },
      { defaultBranch: 'trunk' }
    ],
    ['CircleCI tag build, "<nil>" pipeline values are unset', { ...CC_BRANCH, CIRCLE_BRANCH: '<nil>', CIRCLE_TAG: 'v1.4.0' }, noEvent, {}, { branch: '' }],
    [
      'local with settings',
      { HOME: '/home/jdoe', USER: 'jdoe', BUILDCLOUD_PIPELINE_ID: 'run-7' },
      noEvent,
      { org: 'acme', project: 'acme/widget', branch: 'dev' },
      { provider: 'local', org: 'acme', project: 'acme/widget', jobId: 'local', branch: 'dev', fork: false, actor: 'jdoe', pullRequest: null }
    ],
    [
      'overrides: empty strings are "not given"',
      GL_BRANCH,
      noEvent,
      { jobId: '', org: '', branch: '' },
      { jobId: '55012931', org: 'platform', branch: 'develop' }
    ]
  ])('%s', (_name, env, readEvent, overrides, expected) => {
    expect(identityFromEnv(env, readEvent, overrides)).toMatchObject(expected);
  });

  test('every key is filled on every CI', () => {
    const ids = [identityFromEnv(GH_PR, events(prPayload(1))), identityFromEnv(GL_MR), identityFromEnv(CC_FORK), identityFromEnv({})];
    for (const id of ids) {
      // defaultBranchAssumed: only where a CI names no default branch and 'main' was taken (CircleCI); sources: only
      // for a local run, which no CI describes.
      expect(
        Object.keys(id)
          .filter((k) => k !== 'defaultBranchAssumed' && k !== 'sources')
          .sort()
      ).toEqual(
        ['actor', 'branch', 'defaultBranch', 'fork', 'jobId', 'jobName', 'org', 'pipelineKey', 'project', 'provider', 'pullRequest', 'runUrl', 'sha'].sort()
      );
      expect(id.pipelineKey).toMatch(/^[\x21-\x7e]{1,256}$/);
      expect(id.jobId).toMatch(/^[\x21-\x7e]{1,256}$/);
    }
  });

  test("CircleCI: 'main' is marked as assumed unless BUILDCLOUD_DEFAULT_BRANCH names the default branch", () => {
    expect(identityFromEnv(CC_BRANCH).defaultBranchAssumed).toBe(true);
    expect(identityFromEnv({ ...CC_BRANCH, BUILDCLOUD_DEFAULT_BRANCH: 'master' }).defaultBranchAssumed).toBeUndefined();
    expect(identityFromEnv(GL_MR).defaultBranchAssumed).toBeUndefined();
  });

  test('local defaults: host, pid, cwd', () => {
    const id = identityFromEnv({ PWD: '/home/jdoe/src/widget-api' });
    expect(id.pipelineKey).toBe(
      `local/${os
        .hostname()
        .toLowerCase()
        .replace(/[^a-z0-9.-]+/g, '-')}/${process.pid}`
    );
    expect(id).toMatchObject({
      provider: 'local',
      org: '',
      project: 'widget-api',
      jobId: 'local',
      branch: 'main',
      defaultBranch: 'main',
      fork: false,
      runUrl: ''
    });
    expect(identityFromEnv({}).project).toBe(path.basename(process.cwd()));
  });

  test('the default payload reader reads GITHUB_EVENT_PATH', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'identity-'));
    try {
      const file = path.join(dir, 'event.json');
      fs.writeFileSync(file, JSON.stringify(prPayload(11122233)));
      expect(identityFromEnv({ ...GH_PR, GITHUB_EVENT_PATH: file })).toMatchObject({ fork: true, pullRequest: 57, defaultBranch: 'main' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('identityFromEnv: errors name the variable and the CI', () => {
  const unset = (env: Env, ...names: string[]): Env => Object.fromEntries(Object.entries(env).filter(([k]) => !names.includes(k)));
  test.each<[string, Env, (file: string) => unknown, string, RegExp]>([
    ['GitHub run id', unset(GH_PUSH, 'GITHUB_RUN_ID'), events(pushPayload), 'GITHUB_RUN_ID', /^GITHUB_RUN_ID is not set: is this running in GitHub Actions\?$/],
    ['GitHub repository', unset(GH_PUSH, 'GITHUB_REPOSITORY'), events(pushPayload), 'GITHUB_REPOSITORY', /GITHUB_REPOSITORY is not set/],
    ['GitHub attempt', unset(GH_PUSH, 'GITHUB_RUN_ATTEMPT'), events(pushPayload), 'GITHUB_RUN_ATTEMPT', /GITHUB_RUN_ATTEMPT is not set/],
    ['GitHub job', { ...GH_PUSH, GITHUB_JOB: '  ' }, events(pushPayload), 'GITHUB_JOB', /GITHUB_JOB is not set/],
    ['GitHub event path', unset(GH_PUSH, 'GITHUB_EVENT_PATH'), events(pushPayload), 'GITHUB_EVENT_PATH', /GITHUB_EVENT_PATH is not set/],
    [
      'GitHub unreadable payload',
      GH_PUSH,
      () => {
        throw new Error('ENOENT: no such file');
      },
      'GITHUB_EVENT_PATH',
      /Cannot read the event payload .*event\.json \(GITHUB_EVENT_PATH\): ENOENT/
    ],
    ['GitHub payload not an object', GH_PUSH, () => 'oops', 'GITHUB_EVENT_PATH', /is not a JSON object/],
    [
      'GitHub repository id nowhere',
      unset(GH_PUSH, 'GITHUB_REPOSITORY_ID'),
      events({}),
      'GITHUB_REPOSITORY_ID',
      /GITHUB_REPOSITORY_ID is not set: is this running in GitHub Actions\?/
    ],
    ['GitLab project path', unset(GL_BRANCH, 'CI_PROJECT_PATH'), noEvent, 'CI_PROJECT_PATH', /^CI_PROJECT_PATH is not set: is this running in GitLab CI\?$/],
    ['GitLab project id', unset(GL_BRANCH, 'CI_PROJECT_ID'), noEvent, 'CI_PROJECT_ID', /CI_PROJECT_ID is not set/],
    ['GitLab pipeline id', unset(GL_BRANCH, 'CI_PIPELINE_ID'), noEvent, 'CI_PIPELINE_ID', /CI_PIPELINE_ID is not set/],
    ['GitLab job id', unset(GL_BRANCH, 'CI_JOB_ID'), noEvent, 'CI_JOB_ID', /CI_JOB_ID is not set/],
    [
      'GitLab namespace',
      unset(GL_BRANCH, 'CI_PROJECT_ROOT_NAMESPACE', 'CI_PROJECT_NAMESPACE'),
      noEvent,
      'CI_PROJECT_ROOT_NAMESPACE',
      /CI_PROJECT_ROOT_NAMESPACE is not set/
    ],
    [
      'CircleCI owner',
      unset(CC_BRANCH, 'CIRCLE_PROJECT_USERNAME'),
      noEvent,
      'CIRCLE_PROJECT_USERNAME',
      /^CIRCLE_PROJECT_USERNAME is not set: is this running in CircleCI\?$/
    ],
    ['CircleCI repo', unset(CC_BRANCH, 'CIRCLE_PROJECT_REPONAME'), noEvent, 'CIRCLE_PROJECT_REPONAME', /CIRCLE_PROJECT_REPONAME is not set/],
    ['CircleCI workflow', unset(CC_BRANCH, 'CIRCLE_WORKFLOW_ID', 'CIRCLE_PIPELINE_ID'), noEvent, 'CIRCLE_WORKFLOW_ID', /CIRCLE_WORKFLOW_ID is not set/],
    [
      'CircleCI workflow "<nil>"',
      { ...unset(CC_BRANCH, 'CIRCLE_PIPELINE_ID'), CIRCLE_WORKFLOW_ID: '<nil>' },
      noEvent,
      'CIRCLE_WORKFLOW_ID',
      /CIRCLE_WORKFLOW_ID is not set/
    ],
    ['CircleCI job', unset(CC_BRANCH, 'CIRCLE_WORKFLOW_JOB_ID', 'CIRCLE_BUILD_NUM'), noEvent, 'CIRCLE_WORKFLOW_JOB_ID', /CIRCLE_WORKFLOW_JOB_ID is not set/],
    ['CircleCI node index', { ...CC_BRANCH, CIRCLE_NODE_TOTAL: '4' }, noEvent, 'CIRCLE_NODE_INDEX', /CIRCLE_NODE_INDEX is not set/],
    [
      'CircleCI node index garbage',
      { ...CC_BRANCH, CIRCLE_NODE_TOTAL: '4', CIRCLE_NODE_INDEX: 'x' },
      noEvent,
      'CIRCLE_NODE_INDEX',
      /CIRCLE_NODE_INDEX 'x' is not a number/
    ]
  ])('%s', (_name, env, readEvent, variable, message) => {
    let err: unknown;
    try {
      identityFromEnv(env, readEvent);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(IdentityError);
    expect((err as IdentityError).variable).toBe(variable);
    expect((err as Error).message).toMatch(message);
  });
});

describe('toKey', () => {
  test.each<[string, string | RegExp]>([
    ['build-3', 'build-3'],
    ['build@GitHub Actions 12', 'build@GitHub-Actions-12'],
    ['  padded\tvalue ', 'padded-value'],
    ['build/ünïcode', /^build\/_n_code~[0-9a-f]{16}$/],
    ['x'.repeat(300), /^x{100}~[0-9a-f]{16}$/]
  ])('%j', (raw, expected) => {
    const key = toKey(raw);
    if (typeof expected === 'string') expect(key).toBe(expected);
    else expect(key).toMatch(expected);
    expect(key).toMatch(/^[\x21-\x7e]{1,256}$/);
  });

  test('values that do not fit never collide', () => {
    expect(toKey('é'.repeat(10))).not.toBe(toKey('è'.repeat(10)));
    expect(toKey('a'.repeat(250))).not.toBe(toKey('a'.repeat(251)));
  });
});

describe('localName', () => {
  const NAME = /^[a-z0-9-]{1,63}$/;
  const gh = (env: Env, o: Partial<Identity> = {}) => identityFromEnv(env, events(pushPayload), o);

  test('matrix legs on one self-hosted machine get distinct names', () => {
    // Same job key, same runner (sequential legs) or different runners: the job-id override or RUNNER_NAME decides.
    const legs = [
      gh(GH_PUSH, { jobId: 'build-0' }),
      gh(GH_PUSH, { jobId: 'build-1' }),
      gh(GH_PUSH, { jobId: 'build-2' }),
      gh({ ...GH_PUSH, RUNNER_NAME: 'self-hosted-a' }),
      gh({ ...GH_PUSH, RUNNER_NAME: 'self-hosted-b' })
    ];
    const names = legs.map((id) => localName(id, 'context'));
    expect(new Set(names).size).toBe(legs.length);
    for (const n of names) expect(n).toMatch(NAME);
  });

  test('CircleCI parallel nodes and GitLab parallel jobs get distinct names', () => {
    const nodes = [0, 1, 2, 3].map((i) => identityFromEnv({ ...CC_BRANCH, CIRCLE_NODE_TOTAL: '4', CIRCLE_NODE_INDEX: String(i) }));
    const jobs = ['1', '2'].map((j) => identityFromEnv({ ...GL_BRANCH, CI_JOB_ID: j }));
    const names = [...nodes, ...jobs].map((id) => localName(id));
    expect(new Set(names).size).toBe(names.length);
  });

  test('the same job always gets the same name (main and post agree), another run another name', () => {
    expect(localName(gh(GH_PUSH), 'certs')).toBe(localName(gh(GH_PUSH), 'certs'));
    expect(localName(gh(GH_PUSH))).not.toBe(localName(gh({ ...GH_PUSH, GITHUB_RUN_ATTEMPT: '2' })));
    // The provider is part of the hash: equal keys on two CIs never share a name.
    const id = gh(GH_PUSH);
    expect(localName(id)).not.toBe(localName({ ...id, provider: 'local' }));
  });

  test.each<[string, RegExp]>([
    ['', /^buildcloud-[0-9a-f]{12}$/],
    ['context', /^buildcloud-[0-9a-f]{12}-context$/],
    ['Linux/AMD64 Builder!', /^buildcloud-[0-9a-f]{12}-linux-amd64-builder$/],
    ['--__--', /^buildcloud-[0-9a-f]{12}$/],
    ['a'.repeat(100), /^buildcloud-[0-9a-f]{12}-a{39}$/],
    [`${'a'.repeat(38)}-b`, /^buildcloud-[0-9a-f]{12}-a{38}$/]
  ])('suffix %j', (suffix, expected) => {
    const name = localName(gh(GH_PUSH), suffix);
    expect(name).toMatch(expected);
    expect(name).toMatch(NAME);
    expect(name.length).toBeLessThanOrEqual(63);
    expect(name).not.toMatch(/-$/);
  });
});
