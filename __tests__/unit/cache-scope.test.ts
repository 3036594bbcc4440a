// Cache scopes (issue 11, case 1): one repository per image of a project, injective names, and a lease that
// writes its own project's scopes at its own branch's tag only (and its own upload tags, which the proxy promotes).
import { cacheScopeComponent, defaultCacheScope, SCOPE_MAX, stageScopeComponent } from '../../src/contract/cache-scope';
import { cacheRefs, isUploadTag, registryScope, scopeRepository, type CacheRefInput } from '../../src/server/cache-refs';
import { leaseDenial } from '../../src/server/registry-proxy';
import { buildCacheRefs, buildCacheScope, ciWorkspace, mergeStageProgress } from '../../src/core/build-cache';
import { cacheStages } from '../../src/core/dockerfile-steps';
import type { BuildStep } from '../../src/core/build-progress';

const HOST = '127.0.0.1:5000';
const base: CacheRefInput = {
  registryHost: HOST,
  org: 'acme',
  project: 'widget',
  branch: 'feature-x',
  defaultBranch: 'main',
  fork: false,
  leaseId: 'l0123456789ab'
};
const COMPONENT = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;

describe('cacheScopeComponent', () => {
  test.each([
    ['api', 'api'],
    ['web.v2', 'web.v2'],
    ['a-b_c', 'a-b_c']
  ])('%s is kept as it is', (scope, want) => expect(cacheScopeComponent(scope)).toBe(want));

  test.each(['docker/api.Dockerfile#runtime', 'API', 'a--b', 'cache', 'x-0123456789ab', '_x', 'a'.repeat(SCOPE_MAX + 1), '..', 'ünï'])(
    '%s becomes a valid, hashed component of at most SCOPE_MAX characters',
    (scope) => {
      const c = cacheScopeComponent(scope);
      expect(c).toMatch(COMPONENT);
      expect(c).toMatch(/-[0-9a-f]{12}$/);
      expect(c.length).toBeLessThanOrEqual(SCOPE_MAX);
      expect(c).not.toBe('cache');
    }
  );

  test('injective on values that clean up alike', () => {
    const values = ['a/b', 'a-b', 'A-B', 'a_b/', 'a--b', 'a.b', 'cache', 'cache-x', 'docker/api.Dockerfile', 'docker/api.dockerfile'];
    expect(new Set(values.map(cacheScopeComponent)).size).toBe(values.length);
  });

  test('default scope: the Dockerfile path and the target; stage components never meet scope components', () => {
    expect(defaultCacheScope('docker/api.Dockerfile', 'runtime')).toBe('docker/api.Dockerfile#runtime');
    expect(defaultCacheScope('./a/Dockerfile')).toBe('a/Dockerfile');
    expect(stageScopeComponent('api', 'deps')).toBe('api__deps');
    expect(stageScopeComponent('api', 'Cache')).toMatch(/^api__cache-[0-9a-f]{12}$/);
  });

  test('buildCacheScope: the input, else the Dockerfile relative to the workspace (and the target)', () => {
    expect(buildCacheScope({ cacheScope: 'api', context: '/w/a' }, '/w')).toBe('api');
    expect(buildCacheScope({ context: '/w/a' }, '/w')).toBe('a/Dockerfile');
    expect(buildCacheScope({ context: '/w', file: '/w/docker/api.Dockerfile', target: 'runtime' }, '/w')).toBe('docker/api.Dockerfile#runtime');
    expect(buildCacheScope({ context: 'https://github.com/acme/app.git' }, '/w')).toBe('https://github.com/acme/app.git#Dockerfile');
    // Relative paths are resolved from the working directory, as docker resolves them, and named from the checkout.
    expect(buildCacheScope({ context: '.' }, '/w', '/w/services/api')).toBe('services/api/Dockerfile');
    expect(buildCacheScope({ context: 'a', file: 'a/prod.Dockerfile', target: 'x' }, '/w', '/w')).toBe('a/prod.Dockerfile#x');
  });

  test('buildCacheScope: a Dockerfile outside the checkout is named from its context, never by a path that changes per job', () => {
    const one = buildCacheScope({ context: '/tmp/job-1/src/app' }, '/home/runner/work/app');
    const two = buildCacheScope({ context: '/tmp/job-2/src/app' }, '/home/runner/work/app');
    expect([one, two]).toEqual(['app/Dockerfile', 'app/Dockerfile']);
    // two contexts apart stay apart (issue 11 case 1)
    expect(buildCacheScope({ context: '/tmp/j/a' }, '/w')).not.toBe(buildCacheScope({ context: '/tmp/j/b' }, '/w'));
    expect(buildCacheScope({ context: '/tmp/j/ctx', file: '/tmp/j/ctx/docker/api.Dockerfile', target: 'run' }, '/w')).toBe('ctx/docker/api.Dockerfile#run');
    expect(buildCacheScope({ context: '/tmp/j/ctx', file: '/elsewhere/api.Dockerfile' }, '/w')).toBe('ctx/api.Dockerfile');
  });

  test('ciWorkspace: the CI checkout, else the working directory', () => {
    expect(ciWorkspace({ GITHUB_WORKSPACE: '/home/runner/work/app/app' }, '/x')).toBe('/home/runner/work/app/app');
    expect(ciWorkspace({ CI_PROJECT_DIR: '/builds/acme/app' }, '/x')).toBe('/builds/acme/app');
    expect(ciWorkspace({ CIRCLE_WORKING_DIRECTORY: '~/project', HOME: '/home/circleci' }, '/x')).toBe('/home/circleci/project');
    expect(ciWorkspace({ GITHUB_WORKSPACE: 'relative' }, '/x')).toBe('/x');
    expect(ciWorkspace({}, '/x')).toBe('/x');
  });
});

describe('cacheRefs and the lease scope', () => {
  test('the lease gets its cache repository, its tags and an upload prefix; older fields stay filled', () => {
    const r = cacheRefs(base);
    expect(r).toEqual({
      importRefs: [`${HOST}/acme/widget/cache:feature-x`, `${HOST}/acme/widget/cache:main`],
      exportRef: `${HOST}/acme/widget/cache:feature-x`,
      repository: `${HOST}/acme/widget/cache`,
      importTags: ['feature-x', 'main'],
      exportTag: 'feature-x',
      uploadPrefix: 'bcup-l0123456789ab-'
    });
    expect(registryScope(r, HOST)).toEqual({
      pull: ['acme/widget/cache'],
      push: { repository: 'acme/widget/cache', tag: 'feature-x', ref: `${HOST}/acme/widget/cache:feature-x` },
      scopes: 'acme/widget/cache',
      uploadPrefix: 'bcup-l0123456789ab-'
    });
  });

  test('a fork has no export tag and no upload prefix', () => {
    const r = cacheRefs({ ...base, fork: true });
    expect(r.exportTag).toBe('');
    expect(r.uploadPrefix).toBe('');
    expect(registryScope(r, HOST).uploadPrefix).toBeUndefined();
  });

  test('scopeRepository: one component under the lease\'s own project, never "cache", never deeper', () => {
    const scopes = 'acme/a/cache';
    expect(scopeRepository('acme/a/cache/api', scopes)).toBe('api');
    expect(scopeRepository('acme/a/cache/api__deps', scopes)).toBe('api__deps');
    for (const other of [
      'acme/a/cache',
      'acme/a/cache/cache',
      'acme/a/cache/api/x',
      'acme/a/cache/cache/api',
      'acme/ab/cache/api',
      'acme/a/cachex/api',
      'acme/a/cache/a__b__c'
    ])
      expect(scopeRepository(other, scopes)).toBeNull();
  });
});

describe('leaseDenial with cache scopes (the registry proxy)', () => {
  const scope = registryScope(cacheRefs(base), HOST);
  const readOnly = registryScope(cacheRefs({ ...base, fork: true }), HOST);
  const put = (name: string, tag: string, s = scope) => leaseDenial(s, 'PUT', name, `manifests/${tag}`, HOST);

  test('writes: its own project, any scope, its own branch tag or its own upload tags', () => {
    expect(put('acme/widget/cache/api', 'feature-x')).toBeNull();
    expect(put('acme/widget/cache/web__deps', 'feature-x')).toBeNull();
    expect(put('acme/widget/cache/api', 'bcup-l0123456789ab-00ff00ff00ff')).toBeNull();
    expect(leaseDenial(scope, 'POST', 'acme/widget/cache/api', 'blobs/uploads/', HOST)).toBeNull();
    expect(isUploadTag(scope, 'bcup-l0123456789ab-00ff00ff00ff')).toBe(true);
  });

  test.each([
    ["another branch's tag", 'acme/widget/cache/api', 'main'],
    ["another lease's upload tag", 'acme/widget/cache/api', 'bcup-lffffffffffff-00ff00ff00ff'],
    ['an upload tag of its own with a made-up nonce', 'acme/widget/cache/api', 'bcup-l0123456789ab-main'],
    ['an upload tag in the unscoped repository', 'acme/widget/cache', 'bcup-l0123456789ab-00ff00ff00ff'],
    ["another project's scope", 'acme/other/cache/api', 'feature-x'],
    ['a nested project\'s unscoped cache (scope "cache")', 'acme/widget/cache/cache', 'feature-x'],
    ["a nested project's scope", 'acme/widget/cache/cache/api', 'feature-x'],
    ["another org's scope", 'globex/widget/cache/api', 'feature-x']
  ])('denied: %s', (_what, name, tag) => {
    expect(put(name, tag)).toMatch(/is denied: this lease may write only .* \(its cache scopes\)/);
  });

  test("reads: its own project's scopes; a fork reads them and writes nothing", () => {
    expect(leaseDenial(scope, 'GET', 'acme/widget/cache/api', 'manifests/main', HOST)).toBeNull();
    expect(leaseDenial(scope, 'GET', 'acme/other/cache/api', 'manifests/main', HOST)).toMatch(/read access/);
    expect(leaseDenial(readOnly, 'GET', 'acme/widget/cache/api', 'manifests/main', HOST)).toBeNull();
    expect(put('acme/widget/cache/api', 'feature-x', readOnly)).toMatch(/may not write the org cache/);
  });
});

describe('buildCacheRefs (the runner)', () => {
  const lease = { ...cacheRefs(base), registry: null };
  test('imports per scope and tag; exports under an upload tag promoted to the scope tag', () => {
    const r = buildCacheRefs(lease, 'a/Dockerfile', '00ff00ff00ff');
    const repo = `${HOST}/acme/widget/cache/${cacheScopeComponent('a/Dockerfile')}`;
    expect(r).toMatchObject({
      // The scope's own, then the project's newest (the control plane copies each scope's cache there).
      importRefs: [`${repo}:feature-x`, `${repo}:main`, `${HOST}/acme/widget/cache:feature-x`, `${HOST}/acme/widget/cache:main`],
      exportRef: `${repo}:bcup-l0123456789ab-00ff00ff00ff`,
      promotedRef: `${repo}:feature-x`,
      repository: repo
    });
  });
  test('stage caches: <scope>__<stage>', () => {
    expect(buildCacheRefs(lease, 'api', 'aaaaaaaaaaaa', 'deps').importRefs[0]).toBe(`${HOST}/acme/widget/cache/api__deps:feature-x`);
  });
  test('an older control plane (no repository): the unscoped refs', () => {
    const r = buildCacheRefs({ importRefs: ['r:main'], exportRef: 'r:main', registry: null }, 'api', 'aaaaaaaaaaaa');
    expect(r).toMatchObject({ importRefs: ['r:main'], exportRef: 'r:main', promotedRef: 'r:main', scope: '' });
  });
  test('without an upload prefix: the export tag directly; read-only: nothing', () => {
    expect(buildCacheRefs({ ...lease, uploadPrefix: '' }, 'api', 'aaaaaaaaaaaa').exportRef).toBe(`${HOST}/acme/widget/cache/api:feature-x`);
    expect(buildCacheRefs({ ...lease, exportTag: '', uploadPrefix: '' }, 'api', 'aaaaaaaaaaaa').exportRef).toBe('');
  });
  test('a repository name over 255 characters falls back to the unscoped refs, with a warning', () => {
    const long = { ...lease, repository: `${HOST}/acme/${'p'.repeat(200)}/cache` };
    const r = buildCacheRefs(long, 'x'.repeat(60), 'aaaaaaaaaaaa');
    expect(r.exportRef).toBe(lease.exportRef);
    expect(r.warnings[0]).toMatch(/does not fit/);
  });
});

describe('stage caches (case 2): which stages get a cache image of their own, and honest counts', () => {
  const BUILDER = [
    'FROM scratch AS base',
    'ADD rootfs.tar /',
    'FROM base AS deps',
    'COPY lock.txt /lock.txt',
    'RUN cat /lock.txt > /deps',
    'FROM base AS build',
    'COPY --from=deps /deps /deps',
    'COPY src.txt /src.txt',
    'RUN cat /deps /src.txt > /app',
    'FROM base',
    'COPY --from=build /app /app'
  ].join('\n');

  test.each<[string, string, string | undefined, string[] | null]>([
    ['builder pattern: the stages copied from, not the final chain', BUILDER, undefined, ['deps', 'build']],
    ['target build: deps only (base is in its chain)', BUILDER, 'build', ['deps']],
    ['a chain of FROMs: nothing (the final image carries it)', 'FROM scratch AS a\nADD x /\nFROM a AS b\nRUN x\nFROM b\nRUN y', undefined, []],
    [
      'a copied stage built on another: only the one copied from',
      'FROM scratch AS a\nADD x /\nFROM a AS b\nRUN x\nFROM scratch\nCOPY --from=b / /',
      undefined,
      ['b']
    ],
    ['by index', 'FROM scratch AS a\nADD x /\nFROM scratch\nCOPY --from=0 / /', undefined, ['a']],
    ['unnamed stages cannot be targets', 'FROM scratch\nADD x /\nFROM scratch\nCOPY --from=0 / /', undefined, []],
    ['one stage', 'FROM scratch\nADD x /', undefined, []],
    ['no FROM', 'RUN x', undefined, null],
    ['unknown target', BUILDER, 'nope', null]
  ])('%s', (_n, text, target, want) => expect(cacheStages(text, { target })).toEqual(want));

  const step = (name: string, cached: boolean): BuildStep => ({ id: 1, name, cached, status: cached ? 'cached' : 'done' });
  const progress = (steps: BuildStep[]) => ({ totalSteps: steps.length, cachedSteps: steps.filter((s) => s.cached).length, deduplicatedSteps: 0, steps });

  test('each step counted once, as the build that first ran it reported it', () => {
    const deps = progress([step('[base 1/1] ADD rootfs.tar /', true), step('[deps 1/2] COPY lock.txt /lock.txt', true), step('[deps 2/2] RUN x', true)]);
    const build = progress([
      step('[base 1/1] ADD rootfs.tar /', true),
      step('[build 1/3] COPY --from=deps /deps /deps', true),
      step('[build 2/3] COPY src.txt /src.txt', false),
      step('[build 3/3] RUN y', false)
    ]);
    const final = progress([
      step('[base 1/1] ADD rootfs.tar /', true),
      step('[deps 1/2] COPY lock.txt /lock.txt', true),
      step('[deps 2/2] RUN x', true),
      step('[build 1/3] COPY --from=deps /deps /deps', true),
      step('[build 2/3] COPY src.txt /src.txt', true), // cached only because the stage build just ran it
      step('[build 3/3] RUN y', true),
      step('[stage-3 1/1] COPY --from=build /app /app', false)
    ]);
    const m = mergeStageProgress([deps, build, final]);
    expect({ total: m.totalSteps, cached: m.cachedSteps }).toEqual({ total: 7, cached: 4 });
    expect(m.steps.map((s) => s.cached)).toEqual([true, true, true, true, false, false, false]);
    expect(mergeStageProgress([final])).toBe(final);
  });
});
