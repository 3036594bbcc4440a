// What a credential may claim when it provisions: identity from verified OIDC claims, scoped org tokens, and who
// may write a protected branch's cache. Each CI's token shape is CI-REFERENCE.md §3's.
import {
  DEFAULT_PROTECTED_BRANCHES,
  ScopeError,
  decodeVerified,
  encodeVerified,
  matchesPatterns,
  parsePatterns,
  canonicalProject,
  providerOfRule,
  resolveLeaseIdentity,
  scopeCoversLease,
  scopeCoversProject,
  verifiedIdentityFromClaims,
  type PrincipalScope,
  type VerifiedIdentity
} from '../../src/server/scope';

const req = (over: Partial<{ project: string; branch: string; defaultBranch: string; fork: boolean }> = {}) => ({
  project: '',
  branch: '',
  defaultBranch: '',
  fork: false,
  ...over
});
const oidc = (v: Partial<VerifiedIdentity>): PrincipalScope => ({
  projects: null,
  branches: null,
  readOnly: false,
  verified: {
    provider: 'github',
    project: 'acme/app',
    branch: 'feature-x',
    changeRequest: false,
    refProtected: null,
    readOnly: false,
    readOnlyReason: '',
    ...v
  }
});
const token = (projects: string[] | null, branches: string[] | null, readOnly = false): PrincipalScope => ({ projects, branches, readOnly, verified: null });
const P = DEFAULT_PROTECTED_BRANCHES;

describe("verified identity from each CI's claims", () => {
  test('GitHub push: repository and refs/heads/<branch>; ref_protected read when present', () => {
    expect(verifiedIdentityFromClaims({ repository: 'acme/app', event_name: 'push', ref: 'refs/heads/release/1.2', ref_protected: 'true' })).toEqual({
      provider: 'github',
      project: 'acme/app',
      branch: 'release/1.2',
      changeRequest: false,
      refProtected: true,
      readOnly: false,
      readOnlyReason: ''
    });
  });
  test('GitHub tag: no branch (never writes)', () => {
    expect(verifiedIdentityFromClaims({ repository: 'acme/app', event_name: 'push', ref: 'refs/tags/v1' }).branch).toBe('');
  });
  test('GitHub pull_request: the head_ref is the branch, and it is a change request', () => {
    const v = verifiedIdentityFromClaims({
      repository: 'acme/app',
      event_name: 'pull_request',
      ref: 'refs/pull/7/merge',
      head_ref: 'feature-x',
      base_ref: 'main'
    });
    expect(v).toMatchObject({ branch: 'feature-x', changeRequest: true, readOnly: false });
  });
  test('GitHub pull_request_target: read-only, whatever the branch', () => {
    const v = verifiedIdentityFromClaims({ repository: 'acme/app', event_name: 'pull_request_target', ref: 'refs/heads/main', head_ref: 'main' });
    expect(v).toMatchObject({ branch: 'main', changeRequest: true, readOnly: true });
    expect(v.readOnlyReason).toMatch(/pull_request_target/);
  });
  test('GitLab: project_path; ref is the branch only when ref_type is branch; merge request pipelines flagged', () => {
    expect(
      verifiedIdentityFromClaims({ project_path: 'platform/tools/api', ref: 'main', ref_type: 'branch', ref_protected: 'true', pipeline_source: 'push' })
    ).toMatchObject({
      provider: 'gitlab',
      project: 'platform/tools/api',
      branch: 'main',
      changeRequest: false,
      refProtected: true
    });
    expect(verifiedIdentityFromClaims({ project_path: 'p/a', ref: 'v1.0', ref_type: 'tag' }).branch).toBe('');
    expect(
      verifiedIdentityFromClaims({ project_path: 'p/a', ref: 'main', ref_type: 'branch', ref_protected: 'false', pipeline_source: 'merge_request_event' })
    ).toMatchObject({
      changeRequest: true,
      refProtected: false
    });
  });
  test('CircleCI: the project from vcs-origin, the branch from vcs-ref; no vcs-origin (custom webhook) is refused', () => {
    const org = 'oidc.circleci.com/org-id';
    expect(
      verifiedIdentityFromClaims({ [org]: 'u', 'oidc.circleci.com/vcs-origin': 'github.com/acme/app', 'oidc.circleci.com/vcs-ref': 'refs/heads/main' })
    ).toMatchObject({ provider: 'circleci', project: 'acme/app', branch: 'main' });
    expect(() => verifiedIdentityFromClaims({ [org]: 'u' })).toThrow(/vcs-origin is absent/);
  });
  test('a token of no known CI shape names no project: refused', () => {
    expect(() => verifiedIdentityFromClaims({ repository_owner: 'acme' })).toThrow(ScopeError);
  });
  test('encode/decode round-trips; a forged or partial claim decodes to null', () => {
    const v = verifiedIdentityFromClaims({ repository: 'acme/app', event_name: 'pull_request_target', head_ref: 'x' });
    expect(decodeVerified(JSON.parse(JSON.stringify(encodeVerified(v))))).toEqual(v);
    expect(decodeVerified({ p: 'jenkins', prj: 'a', br: 'b' })).toBeNull();
    expect(decodeVerified({ p: 'github', prj: 'a' })).toBeNull();
    expect(decodeVerified(undefined)).toBeNull();
  });
});

describe('patterns', () => {
  test('globs, exclusions, case rules', () => {
    const p = parsePatterns('main, release/*, !release/old', '--branches');
    expect(p).toEqual(['main', 'release/*', '!release/old']);
    expect(matchesPatterns(p, 'main')).toBe(true);
    expect(matchesPatterns(p, 'release/1.2')).toBe(true);
    expect(matchesPatterns(p, 'release/old')).toBe(false);
    expect(matchesPatterns(p, 'Main')).toBe(false); // branches are case-sensitive
    expect(matchesPatterns(['*', '!main'], 'main')).toBe(false);
    expect(matchesPatterns(['!main'], 'feature')).toBe(true);
    expect(matchesPatterns(['acme/*'], 'ACME/App', true)).toBe(true);
    expect(matchesPatterns(['main.x'], 'mainyx')).toBe(false); // regex characters are literal
  });
  test('bad lists name the flag', () => {
    expect(() => parsePatterns(' , ', '--branches')).toThrow(/--branches/);
    expect(() => parsePatterns('ma in', '--branches')).toThrow(/--branches pattern 'ma in'/);
    expect(() => parsePatterns('!', '--project')).toThrow(/--project/);
  });
});

describe('resolveLeaseIdentity', () => {
  test('the org-admin token (no scope): the request as sent; a fork is read-only', () => {
    expect(resolveLeaseIdentity(undefined, req({ project: 'acme/x', branch: 'main' }), P)).toMatchObject({
      project: 'acme/x',
      branch: 'main',
      readOnly: false,
      verified: false
    });
    expect(resolveLeaseIdentity(undefined, req({ project: 'acme/x', branch: 'f', fork: true }), P)).toMatchObject({
      readOnly: true,
      readOnlyReason: 'a pull request from a fork'
    });
  });

  test('OIDC: project and branch come from the claims; an empty request is filled in', () => {
    expect(resolveLeaseIdentity(oidc({}), req(), P)).toMatchObject({ project: 'acme/app', branch: 'feature-x', readOnly: false, verified: true });
    expect(resolveLeaseIdentity(oidc({}), req({ project: 'ACME/App', branch: 'feature-x' }), P).project).toBe('acme/app');
  });
  test('OIDC: claiming another project or another branch is refused, naming both', () => {
    expect(() => resolveLeaseIdentity(oidc({}), req({ project: 'acme/other-project' }), P)).toThrow(
      /identity.project 'acme\/other-project' is not the project of this job's OIDC token \('acme\/app'\)/
    );
    expect(() => resolveLeaseIdentity(oidc({}), req({ branch: 'main' }), P)).toThrow(
      /identity.branch 'main' is not the branch of this job's OIDC token \('feature-x'\)/
    );
  });
  test('OIDC: a token naming no branch (a tag) with a job naming one: that branch, read-only', () => {
    expect(resolveLeaseIdentity(oidc({ branch: '' }), req({ branch: 'feature-y' }), P)).toMatchObject({
      branch: 'feature-y',
      readOnly: true,
      readOnlyReason: "this job's OIDC token names no branch, so 'feature-y' is not proven"
    });
    expect(resolveLeaseIdentity(oidc({ branch: '' }), req({ branch: '' }), P)).toMatchObject({ branch: '', readOnly: false });
  });
  test('OIDC: the request may narrow (a fork flag makes it read-only)', () => {
    expect(resolveLeaseIdentity(oidc({}), req({ fork: true }), P)).toMatchObject({ readOnly: true });
  });
  test('OIDC: main from a push writes; from a pull/merge request, or an unprotected ref, it is read-only', () => {
    expect(resolveLeaseIdentity(oidc({ branch: 'main' }), req(), P)).toMatchObject({ branch: 'main', readOnly: false });
    expect(resolveLeaseIdentity(oidc({ branch: 'main', refProtected: true }), req(), P).readOnly).toBe(false);
    const mr = resolveLeaseIdentity(oidc({ provider: 'gitlab', branch: 'main', changeRequest: true }), req(), P);
    expect(mr).toMatchObject({ readOnly: true });
    expect(mr.readOnlyReason).toMatch(/merge request pipeline/);
    expect(resolveLeaseIdentity(oidc({ branch: 'main', refProtected: false }), req(), P).readOnlyReason).toMatch(/ref_protected false/);
    // A feature branch's own pull request still writes its own branch's cache.
    expect(resolveLeaseIdentity(oidc({ branch: 'feature-x', changeRequest: true }), req(), P).readOnly).toBe(false);
  });
  test("the request's default branch counts as protected too (it can only add protection)", () => {
    expect(resolveLeaseIdentity(oidc({ branch: 'develop', changeRequest: true }), req({ defaultBranch: 'develop' }), P).readOnly).toBe(true);
    expect(resolveLeaseIdentity(oidc({ branch: 'develop', changeRequest: true }), req({ defaultBranch: 'main' }), P).readOnly).toBe(false);
    // The org's own list: release/* protected.
    expect(resolveLeaseIdentity(oidc({ branch: 'release/2', changeRequest: true }), req(), ['main', 'release/*']).readOnly).toBe(true);
  });
  test('OIDC pull_request_target: read-only', () => {
    expect(resolveLeaseIdentity(oidc({ branch: 'x', readOnly: true, readOnlyReason: 'r' }), req(), P)).toMatchObject({ readOnly: true, readOnlyReason: 'r' });
  });

  test('scoped token: projects and branches must match; errors name the patterns', () => {
    const t = token(['acme/app'], ['*', '!main']);
    expect(resolveLeaseIdentity(t, req({ project: 'acme/app', branch: 'feature-x' }), P)).toMatchObject({ readOnly: false });
    expect(() => resolveLeaseIdentity(t, req({ project: 'acme/other', branch: 'feature-x' }), P)).toThrow(/outside this token's projects \(acme\/app\)/);
    expect(() => resolveLeaseIdentity(t, req({ project: 'acme/app', branch: 'main' }), P)).toThrow(/outside this token's branches/);
  });
  test('scoped token: a protected branch is written only when --branches names it without a wildcard', () => {
    expect(resolveLeaseIdentity(token(null, ['*']), req({ project: 'a/b', branch: 'main' }), P)).toMatchObject({ readOnly: true });
    expect(resolveLeaseIdentity(token(null, ['main']), req({ project: 'a/b', branch: 'main' }), P)).toMatchObject({ readOnly: false });
    expect(resolveLeaseIdentity(token(['a/b'], null), req({ project: 'a/b', branch: 'main' }), P).readOnlyReason).toMatch(/no --branches naming it/);
    expect(resolveLeaseIdentity(token(['a/b'], null), req({ project: 'a/b', branch: 'feature' }), P).readOnly).toBe(false);
  });
  test('scoped token: --read-only', () => {
    expect(resolveLeaseIdentity(token(null, null, true), req({ project: 'a/b', branch: 'feature' }), P)).toMatchObject({
      readOnly: true,
      readOnlyReason: 'the credential is read-only'
    });
  });
  test('a tag build (no branch) passes branch patterns and writes nothing', () => {
    expect(resolveLeaseIdentity(token(null, ['main']), req({ project: 'a/b', branch: '' }), P)).toMatchObject({ branch: '', readOnly: false });
  });
});

test('scopeCoversProject', () => {
  expect(scopeCoversProject(undefined, 'any/thing')).toBe(true);
  expect(scopeCoversProject(oidc({}), 'ACME/app')).toBe(true);
  expect(scopeCoversProject(oidc({}), 'acme/other')).toBe(false);
  expect(scopeCoversProject(token(['acme/*'], null), 'acme/x')).toBe(true);
  expect(scopeCoversProject(token(['acme/a'], null), 'acme/x')).toBe(false);
});

describe('what a trust rule trusts bounds the claims (defence in depth: real CIs sign only their own shapes)', () => {
  test("the CI is the rule's, not the claims' shape", () => {
    expect(providerOfRule('repository_owner')).toBe('github');
    expect(providerOfRule('namespace_path')).toBe('gitlab');
    expect(providerOfRule('oidc.circleci.com/org-id')).toBe('circleci');
    expect(providerOfRule('custom')).toBeNull();
    // A GitLab rule's token with GitHub-shaped claims names no GitLab project: refused.
    expect(() =>
      verifiedIdentityFromClaims({ repository: 'acme/other', event_name: 'push', ref: 'refs/heads/main' }, { claim: 'namespace_path', value: 'acme' })
    ).toThrow(/names no project/);
  });
  test('a GitLab project outside the trusted namespace, a GitHub repository of another owner: refused', () => {
    expect(() =>
      verifiedIdentityFromClaims(
        { namespace_path: 'acme', project_path: 'other-ns/app', ref: 'main', ref_type: 'branch' },
        { claim: 'namespace_path', value: 'acme' }
      )
    ).toThrow(/not inside what its trust rule trusts/);
    expect(
      verifiedIdentityFromClaims(
        { namespace_path: 'acme', project_path: 'acme/sub/app', ref: 'main', ref_type: 'branch' },
        { claim: 'namespace_path', value: 'acme' }
      ).project
    ).toBe('acme/sub/app');
    expect(() =>
      verifiedIdentityFromClaims({ repository: 'evil/app', repository_owner: 'acme', event_name: 'push' }, { claim: 'repository_owner', value: 'acme' })
    ).toThrow(/not inside/);
    expect(() => verifiedIdentityFromClaims({ 'oidc.circleci.com/org-id': 'u', 'oidc.circleci.com/vcs-origin': 'github.com' })).toThrow(/no owner\/repo/);
    // Dot segments climb out of the trusted namespace in a path reader's eyes: refused at exchange.
    expect(() =>
      verifiedIdentityFromClaims(
        { namespace_path: 'acme', project_path: 'acme/../other-ns/app', ref: 'main', ref_type: 'branch' },
        { claim: 'namespace_path', value: 'acme' }
      )
    ).toThrow(/not inside/);
    expect(() => verifiedIdentityFromClaims({ repository: 'acme/..', repository_owner: 'acme', event_name: 'push' })).toThrow(/names no repository/);
  });
  test('GitHub: only events that build their own ref write; workflow_run, issue_comment and the like read', () => {
    const gh = (event_name: string) => verifiedIdentityFromClaims({ repository: 'acme/app', repository_owner: 'acme', event_name, ref: 'refs/heads/main' });
    for (const e of ['push', 'schedule', 'workflow_dispatch', 'merge_group']) expect(gh(e).readOnly).toBe(false);
    for (const e of ['workflow_run', 'issue_comment', 'check_suite', 'deployment']) {
      expect(gh(e)).toMatchObject({
        readOnly: true,
        readOnlyReason: expect.stringContaining(`a run for the '${e}' event may build code other than its ref's`)
      });
    }
  });
  test('GitLab: an external pull request pipeline is a change request', () => {
    expect(
      verifiedIdentityFromClaims({ project_path: 'a/b', ref: 'main', ref_type: 'branch', pipeline_source: 'external_pull_request_event' }).changeRequest
    ).toBe(true);
  });
});

describe('projects compare in one canonical form', () => {
  test("'acme/secret/' and '/acme/secret' are acme/secret: an exclusion holds", () => {
    expect(canonicalProject(' /acme/secret// ')).toBe('acme/secret');
    const t = token(['acme/*', '!acme/secret'], ['*']);
    for (const p of ['acme/secret', 'acme/secret/', 'acme/Secret/', 'acme/secret//', '/acme/secret']) {
      expect(() => resolveLeaseIdentity(t, req({ project: p, branch: 'f' }), P)).toThrow(/outside this token's projects/);
    }
    expect(resolveLeaseIdentity(t, req({ project: 'acme/app/', branch: 'f' }), P).project).toBe('acme/app');
  });
});

describe('scopeCoversLease: a credential acts only on leases it could have provisioned itself', () => {
  const lease = (o: Record<string, unknown>) => ({ project: 'acme/app', branch: 'main', readOnly: false, changeRequest: false, ...o });
  test('the org-admin token: every lease of its org', () => {
    expect(scopeCoversLease(undefined, lease({ project: 'x/y' }))).toBe(true);
  });
  test("a push's OIDC credential: its project and branch; not a pull request's lease", () => {
    const push = oidc({ branch: 'main' });
    expect(scopeCoversLease(push, lease({}))).toBe(true);
    expect(scopeCoversLease(push, lease({ branch: 'feature-x' }))).toBe(false);
    expect(scopeCoversLease(push, lease({ project: 'acme/billing' }))).toBe(false);
    expect(scopeCoversLease(push, lease({ readOnly: true, changeRequest: true }))).toBe(false);
  });
  test("a pull request's credential (even on main) never covers the push's lease of main", () => {
    const pr = oidc({ branch: 'main', changeRequest: true });
    expect(scopeCoversLease(pr, lease({}))).toBe(false);
    expect(scopeCoversLease(pr, lease({ readOnly: true, changeRequest: true }))).toBe(true);
  });
  test('a --read-only token covers only read-only leases; --branches bound the branch', () => {
    expect(scopeCoversLease(token(['acme/app'], ['feature-*'], true), lease({}))).toBe(false);
    expect(scopeCoversLease(token(['acme/app'], ['feature-*'], true), lease({ branch: 'feature-1', readOnly: true }))).toBe(true);
    expect(scopeCoversLease(token(['acme/app'], ['feature-*']), lease({ branch: 'main' }))).toBe(false);
  });
});
