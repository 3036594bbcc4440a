// Choosing the credential per CI and situation, and the one error that says what to add (CI-REFERENCE.md §3).
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { chooseCredential, githubIdTokenFetcher, AuthMissingError, type AuthSettings } from '../../src/core/auth';
import type { Env, Identity } from '../../src/core/identity';

const AUTO: AuthSettings = { oidc: 'auto', audience: 'buildcloud' };
const JWT = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln';
const GH_OIDC: Env = { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'req-token' };
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
    ['BUILDCLOUD_TOKEN wins over GitLab id_tokens', gl, AUTO, { BUILDCLOUD_TOKEN: 'org-token', BUILDCLOUD_ID_TOKEN: JWT }, { kind: 'token', token: 'org-token' }],
    ['the setting wins over BUILDCLOUD_TOKEN', cc, { ...AUTO, token: 'a' }, { BUILDCLOUD_TOKEN: 'b' }, { kind: 'token', token: 'a' }],
    ['an empty token input is no token', gl, { ...AUTO, token: '  ' }, { BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }],
    ['GitLab id_tokens under a custom name', gl, { ...AUTO, oidcTokenEnv: 'VAULT_ID_TOKEN' }, { VAULT_ID_TOKEN: JWT, BUILDCLOUD_ID_TOKEN: 'other' },
      { kind: 'oidc', source: { kind: 'env', name: 'VAULT_ID_TOKEN', value: JWT } }],
    ['CircleCI prefers the V2 token', cc, AUTO, { CIRCLE_OIDC_TOKEN: 'v1', CIRCLE_OIDC_TOKEN_V2: 'v2' },
      { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN_V2', value: 'v2' } }],
    ['CircleCI falls back to the V1 token', cc, AUTO, { CIRCLE_OIDC_TOKEN: 'v1' }, { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN', value: 'v1' } }],
    ['CircleCI: a custom-aud token in BUILDCLOUD_ID_TOKEN comes first', cc, AUTO, { CIRCLE_OIDC_TOKEN_V2: 'v2', BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }],
    ['CircleCI forked PR with "pass secrets" on gets its token', ccFork, AUTO, { CIRCLE_OIDC_TOKEN_V2: 'v2' },
      { kind: 'oidc', source: { kind: 'env', name: 'CIRCLE_OIDC_TOKEN_V2', value: 'v2' } }],
    ['local with a token', local, AUTO, { BUILDCLOUD_TOKEN: 'org-token' }, { kind: 'token', token: 'org-token' }],
    ['local with an OIDC token in the named variable', local, AUTO, { BUILDCLOUD_ID_TOKEN: JWT },
      { kind: 'oidc', source: { kind: 'env', name: 'BUILDCLOUD_ID_TOKEN', value: JWT } }]
  ])('%s', (_name, who, settings, env, expected) => {
    expect(chooseCredential(who, settings, env, wrapperFetch)).toEqual(expected);
  });

  test('GitHub with id-token: write uses the wrapper\'s fetcher (core.getIDToken)', async () => {
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
    ['GitHub without id-token: write', gh, AUTO, { GITHUB_EVENT_NAME: 'push' },
      [/ACTIONS_ID_TOKEN_REQUEST_URL is not set/, /permissions:\n {4}id-token: write\n {4}contents: read/, /token: \$\{\{ secrets\.BUILDCLOUD_TOKEN \}\}/],
      [/fork/]],
    ['GitHub with only the request URL', gh, AUTO, { ACTIONS_ID_TOKEN_REQUEST_URL: GH_OIDC.ACTIONS_ID_TOKEN_REQUEST_URL }, [/id-token: write/], []],
    ['GitHub fork pull_request', ghFork, AUTO, { GITHUB_EVENT_NAME: 'pull_request' },
      [/pull request from a fork/, /no OIDC token and no secrets/, /pull_request_target/, /head\.repo\.full_name == github\.repository/, /review/],
      [/permissions:\n/]],
    ['GitHub fork pull_request_target without permissions', ghFork, AUTO, { GITHUB_EVENT_NAME: 'pull_request_target' }, [/id-token: write/], [/GitHub gives such workflows/]],
    ['GitLab without id_tokens', gl, AUTO, {},
      [/no ID token in \$BUILDCLOUD_ID_TOKEN/, /id_tokens:\n {4}BUILDCLOUD_ID_TOKEN:\n {6}aud: buildcloud/, /masked\s+CI\/CD variable BUILDCLOUD_TOKEN/, /protected/],
      [/fork/]],
    ['GitLab with a custom variable and audience', gl, { ...AUTO, oidcTokenEnv: 'BC_JWT', audience: 'https://buildcloud.example.com' }, { BUILDCLOUD_ID_TOKEN: JWT },
      [/\$BC_JWT/, /BC_JWT:\n {6}aud: https:\/\/buildcloud\.example\.com/], []],
    ['GitLab MR from a fork', glFork, AUTO, {}, [/id_tokens:/, /comes from a fork/, /fork project/], []],
    ['CircleCI without tokens', cc, AUTO, { CIRCLE_OIDC_TOKEN: '', CIRCLE_OIDC_TOKEN_V2: '  ' },
      [/CIRCLE_OIDC_TOKEN_V2 and CIRCLE_OIDC_TOKEN are\s+not set/, /context: <name>/, /v4\.4/, /BUILDCLOUD_TOKEN .* in a context/], [/fork/]],
    ['CircleCI forked PR', ccFork, AUTO, {}, [/forked pull request/, /Pass secrets to builds from forked pull requests/, /vcs-origin/], []],
    ['local', local, AUTO, {}, [/--token or set BUILDCLOUD_TOKEN/, /buildcloud admin token create --org ORG/], []],
    ['OIDC off on GitHub, even with id-token', gh, { ...AUTO, oidc: 'off' }, GH_OIDC, [/OIDC is off and no token was given/, /secrets\.BUILDCLOUD_TOKEN/], []],
    ['OIDC off on GitLab, even with id_tokens', gl, { ...AUTO, oidc: 'off' }, { BUILDCLOUD_ID_TOKEN: JWT }, [/OIDC is off/, /masked CI\/CD variable BUILDCLOUD_TOKEN/], []],
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
    replies = [[503, '{}'], [200, JSON.stringify({ value: JWT })]];
    await expect(githubIdTokenFetcher(env(), 3, 1)('buildcloud')).resolves.toBe(JWT);
    expect(seen).toHaveLength(2);
  });

  test('does not retry a refusal', async () => {
    replies = [[403, '{"message":"no"}'], [200, JSON.stringify({ value: JWT })]];
    await expect(githubIdTokenFetcher(env(), 3, 1)('buildcloud')).rejects.toThrow(/audience 'buildcloud': HTTP 403/);
    expect(seen).toHaveLength(1);
  });

  test('a reply without a value fails after the attempts', async () => {
    replies = [[200, '{}'], [200, 'not json']];
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
