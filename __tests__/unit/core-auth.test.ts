// Choosing the credential per CI and situation, and the one error that says what to add (CI-REFERENCE.md §3).
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { chooseCredential, githubIdTokenFetcher, AuthMissingError, type AuthSettings } from '../../src/core/auth';
import { identityFromEnv, type Env, type Identity } from '../../src/core/identity';

const AUTO: AuthSettings = { oidc: 'auto', audience: 'buildcloud' };
const JWT = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln';
const GH_OIDC: Env = {
  ACTIONS_ID_TOKEN_REQUEST_URL: 'https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0',
  ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'req-token'
};
type Who = Pick<Identity, 'provider' | 'fork'>;
const gh: Who = { provider: 'github', fork: false };
const ghFork: Who = { provider: 'github', fork: true };
const gl: Who = { provider: 'gitlab', fork: false };
const glFork: Who = { provider: 'gitlab', fork: true };
const cc: Who = { provider: 'circleci', fork: false };
const ccFork: Who = { provider: 'circleci', fork: true };
const local: Who = { provider: 'local', fork: false };

describe('chooseCredential: what is chosen', () => {
  const wrapperFetch = async (aud: string) => `token-for-${aud}`;
  test.each<[string, Who, AuthSettings, Env, unknown]>([
    ['explicit token wins over GitHub OIDC', gh, { ...AUTO, token: ' org-token ' }, GH_OIDC, { kind: 'token', token: 'org-token' }],
    [
      'BUILDCLOUD_TOKEN wins over GitLab id_tokens',
      gl,
      AUTO,
      { BUILDCLOUD_TOKEN: 'org-token', BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'token', token: 'org-token' }
    ],
    ['the setting wins over BUILDCLOUD_TOKEN', cc, { ...AUTO, token: 'a' }, { BUILDCLOUD_TOKEN: 'b' }, { kind: 'token', token: 'a' }],
    [
      'an empty token input is no token',
      gl,
      { ...AUTO, token: '  ' },
      { BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }
    ],
    [
      'GitLab id_tokens under a custom name',
      gl,
      { ...AUTO, oidcTokenEnv: 'VAULT_ID_TOKEN' },
      { VAULT_ID_TOKEN: JWT, BUILDCLOUD_ID_TOKEN: 'other' },
      { kind: 'oidc', source: { kind: 'env', name: 'VAULT_ID_TOKEN', value: JWT } }
    ],
    [
      'CircleCI prefers the V2 token',
      cc,
      AUTO,
      { CIRCLE_OIDC_TOKEN: 'v1', CIRCLE_OIDC_TOKEN_V2: 'v2' },
      { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN_V2', value: 'v2' } }
    ],
    [
      'CircleCI falls back to the V1 token',
      cc,
      AUTO,
      { CIRCLE_OIDC_TOKEN: 'v1' },
      { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN', value: 'v1' } }
    ],
    [
      'CircleCI: a custom-aud token in BUILDCLOUD_ID_TOKEN comes first',
      cc,
      AUTO,
      { CIRCLE_OIDC_TOKEN_V2: 'v2', BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }
    ],
    [
      'CircleCI forked PR with "pass secrets" on gets its token',
      ccFork,
      AUTO,
      { CIRCLE_OIDC_TOKEN_V2: 'v2' },
      { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN_V2', value: 'v2' } }
    ],
    ['local with a token', local, AUTO, { BUILDCLOUD_TOKEN: 'org-token' }, { kind: 'token', token: 'org-token' }],
    [
      'local with an OIDC token in the named variable',
      local,
      AUTO,
      { BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }
    ]
  ])('%s', (_name, who, settings, env, expected) => {
    expect(chooseCredential(who, settings, env, wrapperFetch)).toEqual(expected);
  });

  test("GitHub with id-token: write uses the wrapper's fetcher (core.getIDToken)", async () => {
    const cred = chooseCredential(gh, AUTO, GH_OIDC, wrapperFetch);
    expect(cred.kind).toBe('oidc');
    if (cred.kind !== 'oidc' || cred.source.kind !== 'github') throw new Error('expected a GitHub OIDC source');
    expect(cred.source.fetch).toBe(wrapperFetch);
    await expect(cred.source.fetch('buildcloud')).resolves.toBe('token-for-buildcloud');
  });

  test('GitHub pull_request_target from a fork has OIDC and uses it', () => {
    const cred = chooseCredential(ghFork, AUTO, { ...GH_OIDC, GITHUB_EVENT_NAME: 'pull_request_target' }, wrapperFetch);
    expect(cred).toMatchObject({ kind: 'oidc', source: { kind: 'github' } });
  });

  test('GitHub without a wrapper fetcher gets the built-in one', () => {
    const cred = chooseCredential(gh, AUTO, GH_OIDC);
    expect(cred).toMatchObject({ kind: 'oidc', source: { kind: 'github', fetch: expect.any(Function) } });
  });
});

describe('chooseCredential: the one error says what to add here', () => {
  test.each<[string, Who, AuthSettings, Env, RegExp[], RegExp[]]>([
    [
      'GitHub without id-token: write',
      gh,
      AUTO,
      { GITHUB_EVENT_NAME: 'push' },
      [/ACTIONS_ID_TOKEN_REQUEST_URL is not set/, /permissions:\n {4}id-token: write\n {4}contents: read/, /token: \$\{\{ secrets\.BUILDCLOUD_TOKEN \}\}/],
      [/fork/]
    ],
    ['GitHub with only the request URL', gh, AUTO, { ACTIONS_ID_TOKEN_REQUEST_URL: GH_OIDC.ACTIONS_ID_TOKEN_REQUEST_URL }, [/id-token: write/], []],
    [
      'GitHub fork pull_request',
      ghFork,
      AUTO,
      { GITHUB_EVENT_NAME: 'pull_request' },
      [/pull request from a fork/, /no OIDC token and no secrets/, /pull_request_target/, /head\.repo\.full_name == github\.repository/, /review/],
      [/permissions:\n/]
    ],
    [
      'GitHub fork pull_request_target without permissions',
      ghFork,
      AUTO,
      { GITHUB_EVENT_NAME: 'pull_request_target' },
      [/id-token: write/],
      [/GitHub gives such workflows/]
    ],
    [
      'GitLab without id_tokens',
      gl,
      AUTO,
      {},
      [
        /no ID token in \$BUILDCLOUD_ID_TOKEN/,
        /id_tokens:\n {4}BUILDCLOUD_ID_TOKEN:\n {6}aud: buildcloud/,
        /masked\s+CI\/CD variable BUILDCLOUD_TOKEN/,
        /protected/
      ],
      [/fork/]
    ],
    [
      'GitLab with a custom variable and audience',
      gl,
      { ...AUTO, oidcTokenEnv: 'BC_JWT', audience: 'https://buildcloud.example.com' },
      { BUILDCLOUD_ID_TOKEN: JWT },
      [/\$BC_JWT/, /BC_JWT:\n {6}aud: https:\/\/buildcloud\.example\.com/],
      []
    ],
    ['GitLab MR from a fork', glFork, AUTO, {}, [/id_tokens:/, /comes from a fork/, /fork project/], []],
    [
      'CircleCI without tokens',
      cc,
      AUTO,
      { CIRCLE_OIDC_TOKEN: '', CIRCLE_OIDC_TOKEN_V2: '  ' },
      [/CIRCLE_OIDC_TOKEN_V2 and CIRCLE_OIDC_TOKEN are\s+not set/, /context: <name>/, /v4\.4/, /BUILDCLOUD_TOKEN .* in a context/],
      [/fork/]
    ],
    ['CircleCI forked PR', ccFork, AUTO, {}, [/forked pull request/, /Pass secrets to builds from forked pull requests/, /vcs-origin/], []],
    ['local', local, AUTO, {}, [/--token or set BUILDCLOUD_TOKEN/, /buildcloud admin token create --org ORG/], []],
    ['OIDC off on GitHub, even with id-token', gh, { ...AUTO, oidc: 'off' }, GH_OIDC, [/OIDC is off and no token was given/, /secrets\.BUILDCLOUD_TOKEN/], []],
    [
      'OIDC off on GitLab, even with id_tokens',
      gl,
      { ...AUTO, oidc: 'off' },
      { BUILDCLOUD_ID_TOKEN: JWT },
      [/OIDC is off/, /masked CI\/CD variable BUILDCLOUD_TOKEN/],
      []
    ],
    ['OIDC off on CircleCI', cc, { ...AUTO, oidc: 'off' }, { CIRCLE_OIDC_TOKEN_V2: 'v2' }, [/OIDC is off/, /in a context/], []],
    ['OIDC off locally', local, { ...AUTO, oidc: 'off' }, {}, [/OIDC is off/, /--token/], []],
    ['a bad variable name', gl, { ...AUTO, oidcTokenEnv: 'MY-TOKEN' }, {}, [/Invalid OIDC token variable name 'MY-TOKEN'/], []]
  ])('%s', (_name, who, settings, env, must, mustNot) => {
    let err: unknown;
    try {
      chooseCredential(who, settings, env);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AuthMissingError);
    const msg = (err as Error).message;
    for (const re of must) expect(msg).toMatch(re);
    for (const re of mustNot) expect(msg).not.toMatch(re);
  });
});

describe('githubIdTokenFetcher', () => {
  let server: http.Server;
  let base = '';
  let replies: Array<[number, string]> = [];
  let seen: Array<{ url: string; auth: string | undefined }> = [];

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      seen.push({ url: req.url ?? '', auth: req.headers.authorization });
      const [status, body] = replies.shift() ?? [500, 'no reply queued'];
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  beforeEach(() => {
    replies = [];
    seen = [];
  });
  const env = (): Env => ({ ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/idtoken?api-version=2.0`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'req-token' });

  test('asks with the audience and the bearer request token', async () => {
    replies = [[200, JSON.stringify({ value: JWT })]];
    await expect(githubIdTokenFetcher(env(), 3, 1)('build cloud/x')).resolves.toBe(JWT);
    expect(seen).toEqual([{ url: '/idtoken?api-version=2.0&audience=build%20cloud%2Fx', auth: 'Bearer req-token' }]);
  });

  test('retries server errors, then succeeds', async () => {
    replies = [
      [503, '{}'],
      [200, JSON.stringify({ value: JWT })]
    ];
    await expect(githubIdTokenFetcher(env(), 3, 1)('buildcloud')).resolves.toBe(JWT);
    expect(seen).toHaveLength(2);
  });

  test('does not retry a refusal', async () => {
    replies = [
      [403, '{"message":"no"}'],
      [200, JSON.stringify({ value: JWT })]
    ];
    await expect(githubIdTokenFetcher(env(), 3, 1)('buildcloud')).rejects.toThrow(/audience 'buildcloud': HTTP 403/);
    expect(seen).toHaveLength(1);
  });

  test('a reply without a value fails after the attempts', async () => {
    replies = [
      [200, '{}'],
      [200, 'not json']
    ];
    await expect(githubIdTokenFetcher(env(), 2, 1)('buildcloud')).rejects.toThrow(/Could not get GitHub's OIDC token/);
    expect(seen).toHaveLength(2);
  });

  test('without the request variables it names the permission', async () => {
    await expect(githubIdTokenFetcher({})('buildcloud')).rejects.toThrow(AuthMissingError);
    await expect(githubIdTokenFetcher({})('buildcloud')).rejects.toThrow(/id-token: write/);
  });

  test('a request URL without a query gets ?audience=', async () => {
    replies = [[200, JSON.stringify({ value: JWT })]];
    await githubIdTokenFetcher({ ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/t`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'r' }, 1, 1)('aud');
    expect(seen[0].url).toBe('/t?audience=aud');
  });
});

// Each CI's full variable set (CI-REFERENCE.md §2.2) through identityFromEnv, as setup sees a job: the message must
// name this situation's cause and what works here, and not advise what cannot help.
describe("the no-credential message names the real reason, from each CI's real variables", () => {
  const GH_BASE: Env = {
    CI: 'true',
    GITHUB_ACTIONS: 'true',
    GITHUB_REPOSITORY: 'acme-corp/widget-api',
    GITHUB_REPOSITORY_ID: '712345678',
    GITHUB_REPOSITORY_OWNER: 'acme-corp',
    GITHUB_REPOSITORY_OWNER_ID: '98765432',
    GITHUB_RUN_ID: '9876543210',
    GITHUB_RUN_NUMBER: '412',
    GITHUB_RUN_ATTEMPT: '1',
    GITHUB_JOB: 'build',
    GITHUB_WORKFLOW: 'CI',
    GITHUB_EVENT_PATH: '/home/runner/work/_temp/_github_workflow/event.json',
    GITHUB_SHA: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
    GITHUB_SERVER_URL: 'https://github.com',
    RUNNER_OS: 'Linux',
    RUNNER_ARCH: 'X64',
    RUNNER_ENVIRONMENT: 'github-hosted',
    RUNNER_NAME: 'GitHub Actions 12'
  };
  const prEnv = (n: number, head: string, actor: string, extra: Env = {}): Env => ({
    ...GH_BASE,
    GITHUB_EVENT_NAME: 'pull_request',
    GITHUB_REF: `refs/pull/${n}/merge`,
    GITHUB_REF_NAME: `${n}/merge`,
    GITHUB_REF_TYPE: 'branch',
    GITHUB_HEAD_REF: head,
    GITHUB_BASE_REF: 'main',
    GITHUB_WORKFLOW_REF: `acme-corp/widget-api/.github/workflows/ci.yml@refs/pull/${n}/merge`,
    GITHUB_ACTOR: actor,
    GITHUB_TRIGGERING_ACTOR: actor,
    ...extra
  });
  const prPayload = (n: number, head: string, headRepoId: number, user: string) => ({
    action: 'opened',
    number: n,
    pull_request: { number: n, user: { login: user }, head: { ref: head, repo: { id: headRepoId } }, base: { ref: 'main', repo: { id: 712345678 } } },
    repository: { id: 712345678, full_name: 'acme-corp/widget-api', default_branch: 'main', fork: false },
    sender: { login: user }
  });
  const DEPENDABOT_HEAD = 'dependabot/npm_and_yarn/lodash-4.17.21';
  const dependabotPr = prEnv(58, DEPENDABOT_HEAD, 'dependabot[bot]', { GITHUB_ACTOR_ID: '49699333' });
  const dependabotPayload = prPayload(58, DEPENDABOT_HEAD, 712345678, 'dependabot[bot]');
  const forkPr = prEnv(57, 'feature/login', 'contributor42', { GITHUB_ACTOR_ID: '7654321' });
  const forkPayload = prPayload(57, 'feature/login', 555000111, 'contributor42');
  const pushEnv = (actor: string): Env => ({
    ...GH_BASE,
    GITHUB_EVENT_NAME: 'push',
    GITHUB_REF: 'refs/heads/main',
    GITHUB_REF_NAME: 'main',
    GITHUB_REF_TYPE: 'branch',
    GITHUB_ACTOR: actor,
    GITHUB_TRIGGERING_ACTOR: actor
  });
  const pushPayload = { ref: 'refs/heads/main', repository: { id: 712345678, default_branch: 'main' }, sender: { login: 'jdoe' } };

  const GL_BASE: Env = {
    CI: 'true',
    GITLAB_CI: 'true',
    CI_SERVER_URL: 'https://gitlab.example.com',
    CI_PROJECT_ID: '4821',
    CI_PROJECT_PATH: 'platform/tools/widget-api',
    CI_PROJECT_NAMESPACE: 'platform/tools',
    CI_PROJECT_ROOT_NAMESPACE: 'platform',
    CI_PROJECT_NAME: 'widget-api',
    CI_PIPELINE_ID: '1093344',
    CI_PIPELINE_IID: '388',
    CI_JOB_ID: '55012931',
    CI_JOB_NAME: 'build',
    CI_COMMIT_SHA: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
    CI_DEFAULT_BRANCH: 'main',
    GITLAB_USER_LOGIN: 'jdoe'
  };
  const glPush: Env = { ...GL_BASE, CI_PIPELINE_SOURCE: 'push', CI_COMMIT_REF_NAME: 'main', CI_COMMIT_BRANCH: 'main', CI_COMMIT_REF_PROTECTED: 'true' };
  // A fork's MR run in the fork project (GitLab's default): CI_PROJECT_* are the fork's, the target is the parent.
  const glForkMr: Env = {
    ...GL_BASE,
    CI_PROJECT_ID: '9911',
    CI_PROJECT_PATH: 'contributor42/widget-api',
    CI_PROJECT_NAMESPACE: 'contributor42',
    CI_PROJECT_ROOT_NAMESPACE: 'contributor42',
    CI_PIPELINE_SOURCE: 'merge_request_event',
    CI_COMMIT_REF_NAME: 'feature/login',
    CI_MERGE_REQUEST_IID: '57',
    CI_MERGE_REQUEST_PROJECT_ID: '4821',
    CI_MERGE_REQUEST_SOURCE_PROJECT_ID: '9911',
    CI_MERGE_REQUEST_SOURCE_BRANCH_NAME: 'feature/login',
    CI_MERGE_REQUEST_TARGET_BRANCH_NAME: 'main'
  };

  const CC_BASE: Env = {
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
    CIRCLE_SHA1: 'ed0bda2d7456f4a2cd60870072e1fe79864a49a1',
    CIRCLE_USERNAME: 'jdoe'
  };
  const ccForkPr: Env = {
    ...CC_BASE,
    CIRCLE_BRANCH: 'pull/57',
    CIRCLE_PULL_REQUEST: 'https://github.com/acme-corp/widget-api/pull/57',
    CIRCLE_PR_NUMBER: '57',
    CIRCLE_PR_REPONAME: 'widget-api',
    CIRCLE_PR_USERNAME: 'contributor42'
  };
  const ccBranch: Env = { ...CC_BASE, CIRCLE_BRANCH: 'main' };

  const missing = (env: Env, payload: unknown = null): string => {
    const identity = identityFromEnv(env, () => payload);
    let err: unknown;
    try {
      chooseCredential(identity, AUTO, env);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AuthMissingError);
    return (err as Error).message;
  };

  test.each<[string, Env, unknown, RegExp[], RegExp[]]>([
    [
      "GitHub: Dependabot's pull request",
      dependabotPr,
      dependabotPayload,
      [
        /^No Build Cloud credential: Dependabot started this run \(github\.actor is dependabot\[bot\]\)/,
        /no OIDC token \(ACTIONS_ID_TOKEN_REQUEST_URL is not set\)/,
        /no GitHub Actions secrets, only\s+Dependabot secrets/,
        /gh secret set BUILDCLOUD_TOKEN --app dependabot/,
        /buildcloud admin token create --org ORG --project OWNER\/REPO --read-only/,
        /if: github\.actor != 'dependabot\[bot\]'/,
        /fallback: local/
      ],
      [/permissions:/, /id-token: write/, /from a fork/]
    ],
    [
      "GitHub: Dependabot's run re-run by a maintainer (github.actor stays dependabot[bot])",
      { ...dependabotPr, GITHUB_TRIGGERING_ACTOR: 'jdoe', GITHUB_RUN_ATTEMPT: '2' },
      dependabotPayload,
      [/Dependabot started this run/],
      [/id-token: write/]
    ],
    [
      "GitHub: Dependabot's push to its branch",
      { ...pushEnv('dependabot[bot]'), GITHUB_REF: `refs/heads/${DEPENDABOT_HEAD}`, GITHUB_REF_NAME: DEPENDABOT_HEAD },
      pushPayload,
      [/Dependabot started this run/, /Dependabot secret/],
      [/id-token: write/]
    ],
    [
      "GitHub: a fork's pull request",
      forkPr,
      forkPayload,
      [/pull request from a fork/, /no OIDC token\s+and no secrets/, /head\.repo\.full_name == github\.repository/, /pull_request_target/, /fallback: local/],
      [/Dependabot/, /permissions:\n/]
    ],
    [
      'GitHub: a same-repository pull request without the permission',
      prEnv(59, 'feature/login', 'jdoe'),
      prPayload(59, 'feature/login', 712345678, 'jdoe'),
      [/ACTIONS_ID_TOKEN_REQUEST_URL is not set/, /permissions:\n {4}id-token: write/, /secrets\.BUILDCLOUD_TOKEN/],
      [/Dependabot/, /fork/]
    ],
    ['GitHub: a push by a user whose login merely contains dependabot', pushEnv('dependabot'), pushPayload, [/id-token: write/], [/Dependabot started/]],
    [
      'GitLab: a push pipeline without id_tokens',
      glPush,
      null,
      [
        /the job has no ID token in \$BUILDCLOUD_ID_TOKEN/,
        /id_tokens:\n {4}BUILDCLOUD_ID_TOKEN:\n {6}aud: buildcloud/,
        /default:id_tokens/,
        /BUILDCLOUD_TOKEN/
      ],
      [/fork/, /fallback/]
    ],
    [
      "GitLab: a fork's merge request run in the fork project",
      glForkMr,
      null,
      [/id_tokens:/, /comes from a fork/, /runs in the fork project/, /parent project/, /fallback: local/],
      []
    ],
    [
      'CircleCI: a forked pull request without "pass secrets"',
      ccForkPr,
      null,
      [/build of a forked pull request/, /Pass secrets to builds from forked pull requests/, /vcs-origin/, /fallback: local/],
      [/context: <name>/]
    ],
    ['CircleCI: a branch build without OIDC tokens', ccBranch, null, [/CIRCLE_OIDC_TOKEN_V2 and CIRCLE_OIDC_TOKEN are\s+not set/, /context: <name>/], [/fork/]]
  ])('%s', (_name, env, payload, must, mustNot) => {
    const msg = missing(env, payload);
    for (const re of must) expect(msg).toMatch(re);
    for (const re of mustNot) expect(msg).not.toMatch(re);
  });

  test('controls: the same Dependabot run with a Dependabot secret uses it; with an ID token request URL uses OIDC', () => {
    const who = identityFromEnv(dependabotPr, () => dependabotPayload);
    expect(who).toMatchObject({ actor: 'dependabot[bot]', fork: false, branch: DEPENDABOT_HEAD });
    expect(chooseCredential(who, AUTO, { ...dependabotPr, BUILDCLOUD_TOKEN: 'dependabot-secret' })).toEqual({ kind: 'token', token: 'dependabot-secret' });
    expect(chooseCredential(who, AUTO, { ...dependabotPr, ...GH_OIDC })).toMatchObject({ kind: 'oidc', source: { kind: 'github' } });
    // And the fork is a fork by the payload's test, not by its variables.
    expect(identityFromEnv(forkPr, () => forkPayload).fork).toBe(true);
    expect(identityFromEnv(glForkMr).fork).toBe(true);
    expect(identityFromEnv(ccForkPr).fork).toBe(true);
  });

  test('the built-in GitHub fetcher names Dependabot too when it has no request URL', async () => {
    await expect(githubIdTokenFetcher({ GITHUB_ACTOR: 'dependabot[bot]' })('buildcloud')).rejects.toThrow(/Dependabot started this run/);
  });
});
