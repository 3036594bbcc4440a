import { createHash } from 'crypto';
import { cacheRefs, orgRepoPrefix, registryScope, repoComponent, tagFor, CacheRefInput } from '../../src/server/cache-refs';

// The suffix a project path segment gets when it is not a valid repository component as it is (lower-cased).
const h = (segment: string): string => createHash('sha256').update(segment.toLowerCase()).digest('hex').slice(0, 12);

const HOST = '127.0.0.1:5000';
const base: CacheRefInput = { registryHost: HOST, org: 'acme', project: 'widget', branch: 'main', defaultBranch: 'main', fork: false };
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const REPO_RE = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/;

describe('cacheRefs', () => {
  test.each<[string, Partial<CacheRefInput>, string[], string]>([
    // GitHub: GITHUB_REPOSITORY_OWNER / repo name / GITHUB_REF_NAME / default_branch
    ['GitHub push to the default branch', {}, [`${HOST}/acme/widget/cache:main`], `${HOST}/acme/widget/cache:main`],
    [
      'GitHub feature branch',
      { branch: 'feature/login' },
      [`${HOST}/acme/widget/cache:feature-login-df7c7aeb3560`, `${HOST}/acme/widget/cache:main`],
      `${HOST}/acme/widget/cache:feature-login-df7c7aeb3560`
    ],
    [
      'GitHub uppercase owner and repo',
      { org: 'Acme', project: 'Widget.API', branch: 'Release/2.0' },
      [`${HOST}/acme/widget.api/cache:Release-2.0-5f7627c6da5f`, `${HOST}/acme/widget.api/cache:main`],
      `${HOST}/acme/widget.api/cache:Release-2.0-5f7627c6da5f`
    ],
    [
      'GitHub pull request from a fork imports only',
      { branch: 'patch-1', fork: true },
      [`${HOST}/acme/widget/cache:patch-1`, `${HOST}/acme/widget/cache:main`],
      ''
    ],
    ['GitHub fork PR whose branch is also "main"', { branch: 'main', fork: true }, [`${HOST}/acme/widget/cache:main`], ''],
    ['GitHub tag build (no branch) imports the default branch only', { branch: '' }, [`${HOST}/acme/widget/cache:main`], ''],
    // GitLab: CI_PROJECT_ROOT_NAMESPACE / the rest of CI_PROJECT_PATH / CI_COMMIT_REF_NAME / CI_DEFAULT_BRANCH
    [
      'GitLab nested namespace',
      { org: 'acme', project: 'platform/tools/widget-api', branch: 'develop', defaultBranch: 'master' },
      [`${HOST}/acme/platform/tools/widget-api/cache:develop`, `${HOST}/acme/platform/tools/widget-api/cache:master`],
      `${HOST}/acme/platform/tools/widget-api/cache:develop`
    ],
    // Not merged into platform/tools/widget-api: odd segments keep a hash of themselves.
    [
      'GitLab nested namespace with odd characters',
      { org: 'ACME', project: 'Platform/Tools_/widget--api', branch: 'main' },
      [`${HOST}/acme/platform/tools-${h('Tools_')}/widget-api-${h('widget--api')}/cache:main`],
      `${HOST}/acme/platform/tools-${h('Tools_')}/widget-api-${h('widget--api')}/cache:main`
    ],
    [
      'GitLab merge request branch with slashes',
      { project: 'grp/sub/app', branch: 'user/jane/fix#12' },
      [`${HOST}/acme/grp/sub/app/cache:user-jane-fix-12-24c80fc614c9`, `${HOST}/acme/grp/sub/app/cache:main`],
      `${HOST}/acme/grp/sub/app/cache:user-jane-fix-12-24c80fc614c9`
    ],
    // CircleCI: CIRCLE_PROJECT_USERNAME / CIRCLE_PROJECT_REPONAME / CIRCLE_BRANCH; no default branch variable
    [
      'CircleCI without a default branch',
      { registryHost: 'registry.example.com', org: 'acme-corp', project: 'api_server', branch: 'feature/x', defaultBranch: '' },
      [`registry.example.com/acme-corp/api_server/cache:feature-x-217d2bf51f16`],
      `registry.example.com/acme-corp/api_server/cache:feature-x-217d2bf51f16`
    ],
    // Registry hosts
    ['IPv6 loopback host', { registryHost: '[::1]:5000' }, ['[::1]:5000/acme/widget/cache:main'], '[::1]:5000/acme/widget/cache:main']
  ])('%s', (_name, over, importRefs, exportRef) => {
    expect(cacheRefs({ ...base, ...over })).toMatchObject({ importRefs, exportRef });
  });

  test('every ref starts with the org prefix right after the host', () => {
    const r = cacheRefs({ ...base, org: 'Globex', project: 'a/b/c', branch: 'x' });
    for (const ref of [...r.importRefs, r.exportRef]) expect(ref.startsWith(`${HOST}/${orgRepoPrefix('Globex')}`)).toBe(true);
  });

  test.each<[string, Partial<CacheRefInput>, RegExp]>([
    ['empty org', { org: '' }, /^org is empty: expected/],
    ['org with a space', { org: 'Acme Corp' }, /^org "Acme Corp" is not a valid registry namespace: expected .*"acme-corp"/],
    ['org with a slash (would nest inside another org)', { org: 'acme/evil' }, /^org "acme\/evil" .*no "\/"/],
    ['org of symbols only', { org: '---' }, /^org "---"/],
    ['empty project', { project: '  ' }, /^project is empty: expected a repository path/],
    ['project with an empty segment', { project: 'a//b' }, /^project "a\/\/b" has a path segment "" without a letter or digit/],
    ['project with a dot-dot segment', { project: 'a/../b' }, /^project "a\/..\/b" has a path segment ".."/],
    ['registry host with a scheme', { registryHost: 'http://reg:5000' }, /^registryHost "http:\/\/reg:5000" is invalid: expected host\[:port\]/],
    ['registry host with a path', { registryHost: 'reg:5000/x' }, /^registryHost .* is invalid/],
    ['empty registry host', { registryHost: '' }, /^registryHost "" is invalid/],
    ['no branch at all', { branch: '', defaultBranch: '' }, /^branch and defaultBranch are both empty/],
    ['project too long for a repository name', { project: 'p'.repeat(250) }, /^project "p+" is too long/]
  ])('rejects %s', (_name, over, message) => {
    expect(() => cacheRefs({ ...base, ...over })).toThrow(message);
  });
});

describe('registryScope', () => {
  test.each<[string, Partial<CacheRefInput>, string[], { repository: string; tag: string; ref: string } | null]>([
    ['default branch', {}, ['acme/widget/cache'], { repository: 'acme/widget/cache', tag: 'main', ref: `${HOST}/acme/widget/cache:main` }],
    [
      'feature branch: writes its tag only, reads its project',
      { branch: 'feature-x' },
      ['acme/widget/cache'],
      { repository: 'acme/widget/cache', tag: 'feature-x', ref: `${HOST}/acme/widget/cache:feature-x` }
    ],
    ['fork: reads, writes nothing', { branch: 'patch-1', fork: true }, ['acme/widget/cache'], null],
    ['tag build: reads the default branch, writes nothing', { branch: '' }, ['acme/widget/cache'], null],
    [
      'IPv6 host with a port',
      { registryHost: '[::1]:5000', project: 'a/b' },
      ['acme/a/b/cache'],
      { repository: 'acme/a/b/cache', tag: 'main', ref: '[::1]:5000/acme/a/b/cache:main' }
    ]
  ])('%s', (_n, over, pull, push) => {
    const input = { ...base, ...over };
    expect(registryScope(cacheRefs(input), input.registryHost)).toMatchObject({ pull, push });
  });
});

describe('tagFor', () => {
  test.each<[string, string]>([
    ['main', 'main'],
    ['feature/login', 'feature-login-df7c7aeb3560'], // sanitised, so hashed: a branch named "feature-login" keeps its own tag
    ['Feature/Login', 'Feature-Login-1ce27709f2ad'], // tags are case-sensitive: keep case
    ['release-1.2.3', 'release-1.2.3'],
    ['_private', '_private'],
    ['.hidden', 'hidden-1692419006a8'],
    ['-dash', 'dash-b693fbbf1c05'],
    ['a//b\\c', 'a-b-c-cd2cb6d6f538'],
    ['fix: "quotes" & spaces', 'fix-quotes-spaces-bc3f8b72611c'],
    ['dependabot/npm_and_yarn/lodash-4.17.21', 'dependabot-npm_and_yarn-lodash-4.17.21-b7180b7c4ed0'],
    ['trailing.', 'trailing.'], // a valid tag as it is
    ['  padded  ', 'padded-3d4a55719d2e'],
    ['main!', 'main-516dbe907e26'],
    ['main@', 'main-cef55ccefe34'],
    ['main+', 'main-972c576fb7b3'],
    ['main-0123456789ab', 'main-0123456789ab-49f5241a73fd'], // looks hashed: hashed again, so no branch can claim a hashed tag
    ['main-123', 'main-123']
  ])('%j → %j', (branch, tag) => {
    expect(tagFor(branch)).toBe(tag);
    expect(tag).toMatch(TAG_RE);
  });

  test.each<[string]>([['日本語'], ['ünï/çødé'], ['@@@'], ['...']])('a name with nothing usable (%j) still gets a valid, stable tag', (branch) => {
    const tag = tagFor(branch);
    expect(tag).toMatch(TAG_RE);
    expect(tagFor(branch)).toBe(tag);
  });

  test('long names are truncated to 128 with a hash of the whole name, so they never collide', () => {
    const a = 'feature/' + 'x'.repeat(200) + '/one';
    const b = 'feature/' + 'x'.repeat(200) + '/two';
    const ta = tagFor(a);
    const tb = tagFor(b);
    expect(ta).toHaveLength(128);
    expect(ta).toMatch(TAG_RE);
    expect(tb).toMatch(TAG_RE);
    expect(ta).not.toBe(tb);
    expect(ta.startsWith('feature-xxx')).toBe(true);
    expect(tagFor(a)).toBe(ta); // stable
  });

  test('injective: branches that sanitise alike get different tags, and none of them gets the plain one', () => {
    const names = ['main', 'main!', 'main@', 'main+', 'main/', ' main', 'Main', 'main-', 'main.', '.main', 'main-516dbe907e26'];
    const tags = names.map(tagFor);
    expect(new Set(tags).size).toBe(names.length);
    expect(tags.filter((t) => t === 'main')).toEqual(['main']);
    for (const t of tags) expect(t).toMatch(TAG_RE);
  });

  test('a hashed tag that does not fit is cut before the suffix, which stays whole', () => {
    const b = 'x/'.repeat(100);
    const t = tagFor(b);
    expect(t).toHaveLength(128);
    expect(t).toMatch(/^x-x-.*-[0-9a-f]{12}$/);
    expect(t).toMatch(TAG_RE);
  });

  test('a name of exactly 128 characters is kept', () => {
    const n = 'b'.repeat(128);
    expect(tagFor(n)).toBe(n);
  });

  test('empty branch is an error naming the field', () => {
    expect(() => tagFor('')).toThrow(/^branch is empty/);
  });
});

describe('repoComponent', () => {
  test.each<[string, string]>([
    ['acme', 'acme'],
    ['ACME', 'acme'],
    ['platform/tools/widget-api', 'platform/tools/widget-api'],
    ['/leading/and/trailing/', 'leading/and/trailing'],
    ['Platform/Widget-API', 'platform/widget-api'], // case folds: GitHub and GitLab paths are case-insensitive
    ['My Project', `my-project-${h('My Project')}`],
    ['a__b--c..d', `a_b-c.d-${h('a__b--c..d')}`],
    ['-x-', `x-${h('-x-')}`],
    // A valid segment that ends like a hashed one is hashed too, so no name can take another's hashed path.
    [`app-${h('_app')}`, `app-${h('_app')}-${h(`app-${h('_app')}`)}`]
  ])('%j → %j', (input, out) => {
    expect(repoComponent(input, 'project')).toBe(out);
    expect(out).toMatch(REPO_RE);
  });

  test('different project paths never share a repository (case aside)', () => {
    const paths = ['app', '_app', 'app_', '.app', 'my-app', 'my--app', 'my-_app', 'my_app', 'my.app', 'grp/app', 'grp/_app'];
    const repos = paths.map((p) => {
      try {
        return repoComponent(p, 'project');
      } catch {
        return `error:${p}`;
      }
    });
    expect(new Set(repos).size).toBe(paths.length);
    expect(repoComponent('Acme-App', 'project')).toBe(repoComponent('acme-app', 'project'));
  });

  test('errors name the field', () => {
    expect(() => repoComponent('', 'project')).toThrow(/^project is empty/);
    expect(() => repoComponent('ok/@@', 'namespace')).toThrow(/^namespace "ok\/@@" has a path segment "@@"/);
  });
});

describe('orgRepoPrefix', () => {
  test.each<[string, string]>([
    ['acme', 'acme/'],
    ['Acme', 'acme/'],
    ['acme-corp', 'acme-corp/'],
    ['a.b_c', 'a.b_c/']
  ])('%j → %j', (org, prefix) => {
    expect(orgRepoPrefix(org)).toBe(prefix);
  });

  test('is strict: no repairs that could merge two orgs', () => {
    expect(() => orgRepoPrefix('acme corp')).toThrow(/org "acme corp"/);
    expect(() => orgRepoPrefix('acme--corp')).toThrow(/org "acme--corp"/);
    expect(() => orgRepoPrefix('acme/x')).toThrow(/no "\/"/);
  });
});
