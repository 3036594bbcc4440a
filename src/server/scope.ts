// What a credential may act for inside its org, and the identity a lease gets from it.
//
// Three kinds of org credential exist (docs/security.md, "What each credential can do"):
// - an unscoped org token: the org-admin credential. The Provision request's identity is taken as sent.
// - a scoped org token (`admin token create --project P --branches 'main,release/*' --read-only`): the request's
//   project and branch must fall inside its patterns; --read-only leases never write the cache.
// - an access token from an OIDC exchange: project, branch, pull-request-ness and protection come from the CI's
//   verified token claims, not from the request; the request may only narrow them (ask for read-only, name the
//   same project and branch).
// Whatever the credential, a protected branch's cache (the org's --protected-branches, default main and master,
// plus the branch the request names as default) is written only by a lease that may: an OIDC lease whose
// verified ref is that branch, not a pull/merge request, and not reported unprotected by the CI; a scoped token
// whose --branches name it; or the org-admin token. Everything here is pure, so the rules are table-tested.
import type { JWTPayload } from 'jose';

/** The CI whose OIDC token a verified identity came from. */
export type OidcProvider = 'github' | 'gitlab' | 'circleci';

/**
 * Identity proven by a verified OIDC token's claims (CI-REFERENCE.md §3 lists the claims of each CI):
 * - GitHub: `repository`, `event_name`, `ref` (`refs/heads/B`, `refs/tags/T`, `refs/pull/N/merge`), `head_ref`
 *   (pull request events), `ref_protected` when present.
 * - GitLab: `project_path`, `ref`, `ref_type` (`branch` | `tag`), `ref_protected`, `pipeline_source`.
 * - CircleCI: `oidc.circleci.com/vcs-origin` (`github.com/org/repo`), `oidc.circleci.com/vcs-ref` (`refs/heads/B`).
 */
export interface VerifiedIdentity {
  provider: OidcProvider;
  project: string; // owner/repo or the GitLab project path, as the CI spells it
  branch: string; // the verified branch; '' for a tag build or a ref that is not a branch (never writes)
  changeRequest: boolean; // a pull request (GitHub) or merge request pipeline (GitLab)
  refProtected: boolean | null; // the CI's word on branch protection; null when its token does not say
  readOnly: boolean; // the token proves too little to write any cache (see readOnlyReason)
  readOnlyReason: string;
}

/** A credential's limits inside its org. `null` patterns: no limit of that kind. */
export interface PrincipalScope {
  projects: string[] | null; // project path patterns ("acme/app", "acme/*"), case-insensitive
  branches: string[] | null; // branch patterns ("main", "release/*", "!main"), case-sensitive
  readOnly: boolean; // leases never write the org cache
  verified: VerifiedIdentity | null; // OIDC access tokens: identity from claims
}

/** The identity a lease is provisioned with, once the credential's scope is applied. */
export interface LeaseIdentity {
  project: string;
  branch: string;
  defaultBranch: string;
  fork: boolean;
  readOnly: boolean; // no export ref: a fork, a read-only credential, or a branch it may not write
  readOnlyReason: string; // '' when it writes; otherwise for the job's log
  verified: boolean; // project and branch came from verified OIDC claims
  changeRequest: boolean; // verified: a pull/merge request's job (scopeCoversLease keeps it off a push's leases)
}

/** Why a Provision's identity was refused: the message is for the job's log (no secret, no other org). */
export class ScopeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScopeError';
  }
}

/** Default --protected-branches of an org that never set them. */
export const DEFAULT_PROTECTED_BRANCHES = ['main', 'master'];

const PATTERN_MAX = 32; // patterns per list
const PATTERN_LEN = 255;

/**
 * Parses a comma-separated pattern list ("main, release/*, !release/old"). `*` matches any run of characters
 * (slashes too); a leading `!` excludes. Throws with the flag's name when the list is empty or a pattern is bad.
 */
export function parsePatterns(raw: string, flag: string): string[] {
  const list = raw
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  if (list.length === 0) throw new ScopeError(`Invalid ${flag} '${raw}': expected a comma-separated list such as 'main,release/*'.`);
  if (list.length > PATTERN_MAX) throw new ScopeError(`Invalid ${flag}: ${list.length} patterns, at most ${PATTERN_MAX}.`);
  for (const p of list) {
    const body = p.startsWith('!') ? p.slice(1) : p;
    // eslint-disable-next-line no-control-regex -- control characters are what this looks for
    if (body === '' || body.length > PATTERN_LEN || /[\s\x00-\x1f]/.test(body) || body.includes('!')) {
      throw new ScopeError(`Invalid ${flag} pattern '${p.slice(0, 80)}': expected a name, '*' wildcards and an optional leading '!', no spaces.`);
    }
  }
  return list;
}

function globMatch(pattern: string, value: string, ignoreCase: boolean): boolean {
  const esc = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${esc}$`, ignoreCase ? 'is' : 's').test(value);
}

/**
 * Does `value` fall inside a pattern list? It must match a positive pattern (a list of only exclusions means
 * "everything but") and no `!` pattern.
 */
export function matchesPatterns(patterns: string[], value: string, ignoreCase = false): boolean {
  const pos = patterns.filter((p) => !p.startsWith('!'));
  const neg = patterns.filter((p) => p.startsWith('!')).map((p) => p.slice(1));
  if (neg.some((p) => globMatch(p, value, ignoreCase))) return false;
  return pos.length === 0 || pos.some((p) => globMatch(p, value, ignoreCase));
}

const claimStr = (c: JWTPayload, k: string): string => {
  const v = (c as Record<string, unknown>)[k];
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '';
};
const claimBool = (c: JWTPayload, k: string): boolean | null => {
  const v = (c as Record<string, unknown>)[k];
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  return null;
};

// GitHub events whose ref is refs/pull/N/merge and whose branch is the pull request's head_ref.
const GITHUB_PR_EVENTS = new Set(['pull_request', 'pull_request_review', 'pull_request_review_comment']);
// GitHub events whose job builds the code of its ref (a push, a schedule or a manual run of that ref, a release of
// it, the merge queue's own ref). Any other event that runs on a branch (workflow_run, issue_comment,
// pull_request_target, check_suite, deployment, ...) runs the branch's workflow but may check out other code
// (a fork's pull request, an artifact of another run): such a job reads the cache and writes nothing.
const GITHUB_WRITE_EVENTS = new Set(['push', 'schedule', 'workflow_dispatch', 'repository_dispatch', 'release', 'merge_group', 'create']);
// GitLab pipeline sources of a change request: merge request pipelines and external (GitHub) pull requests.
const GITLAB_CHANGE_REQUEST_SOURCES = new Set(['merge_request_event', 'external_pull_request_event']);

/** Which CI a trust rule's claim belongs to (the presets of `admin trust add`); null for a custom rule. */
export function providerOfRule(claim: string): OidcProvider | null {
  if (claim === 'repository_owner' || claim === 'repository_owner_id' || claim === 'repository' || claim === 'repository_id') return 'github';
  if (claim === 'namespace_path' || claim === 'namespace_id' || claim === 'project_path' || claim === 'project_id') return 'gitlab';
  if (claim.startsWith('oidc.circleci.com/')) return 'circleci';
  return null;
}

/**
 * A verified OIDC token's claims → the identity they prove. The CI is the one of the trust rule that accepted the
 * token (`rule`: its claim and value), and the project must lie inside what the rule trusts: a GitHub repository
 * of the trusted owner, a GitLab project inside the trusted namespace. Throws ScopeError when the token names no
 * project (a CircleCI custom-webhook trigger has no vcs-origin; a custom rule of none of the three CIs) or one
 * outside its rule, since no cache scope can then be chosen safely.
 */
export function verifiedIdentityFromClaims(c: JWTPayload, rule?: { claim: string; value: string }): VerifiedIdentity {
  const base = { changeRequest: false, refProtected: null as boolean | null, readOnly: false, readOnlyReason: '' };
  const branchOf = (ref: string): string => (ref.startsWith('refs/heads/') ? ref.slice('refs/heads/'.length) : '');
  const provider =
    (rule && providerOfRule(rule.claim)) ??
    (claimStr(c, 'repository') && claimStr(c, 'event_name')
      ? 'github'
      : claimStr(c, 'project_path')
        ? 'gitlab'
        : claimStr(c, 'oidc.circleci.com/org-id')
          ? 'circleci'
          : null);
  const outside = (what: string) => new ScopeError(`This OIDC token's ${what} is not inside what its trust rule trusts: no cache scope can be chosen for it.`);
  // Paths with empty, '.' or '..' segments are not paths any CI gives a project: refused before any prefix check.
  const oddPath = (p: string) => p.split('/').some((seg) => seg === '' || seg === '.' || seg === '..');
  if (provider === 'github') {
    const project = claimStr(c, 'repository');
    const owner = claimStr(c, 'repository_owner');
    if (!/^[^/]+\/[^/]+$/.test(project) || oddPath(project))
      throw new ScopeError('This GitHub OIDC token names no repository (claim repository): no cache scope can be chosen for it.');
    if (owner && project.split('/')[0].toLowerCase() !== owner.toLowerCase()) throw outside('repository');
    if (rule?.claim === 'repository_owner' && project.split('/')[0].toLowerCase() !== rule.value.toLowerCase()) throw outside('repository');
    const event = claimStr(c, 'event_name');
    const id: VerifiedIdentity = { ...base, provider: 'github', project, branch: branchOf(claimStr(c, 'ref')), refProtected: claimBool(c, 'ref_protected') };
    if (GITHUB_PR_EVENTS.has(event)) {
      id.changeRequest = true;
      id.branch = claimStr(c, 'head_ref');
    } else if (event === 'pull_request_target') {
      // The base repository's workflow, run for a pull request whose code may come from a fork: the token cannot
      // tell which, so such a job reads the cache and never writes it.
      id.changeRequest = true;
      id.branch = claimStr(c, 'head_ref');
      id.readOnly = true;
      id.readOnlyReason = 'a pull_request_target run may build code from a fork, and its OIDC token cannot tell';
    } else if (!GITHUB_WRITE_EVENTS.has(event)) {
      id.readOnly = true;
      id.readOnlyReason = `a run for the ${event ? `'${event}' event` : 'event it does not name'} may build code other than its ref's (a pull request's, another run's artifacts)`;
    }
    return id;
  }
  if (provider === 'gitlab') {
    const project = claimStr(c, 'project_path');
    if (!project || !project.includes('/'))
      throw new ScopeError('This GitLab OIDC token names no project (claim project_path): no cache scope can be chosen for it.');
    if (oddPath(project)) throw outside('project_path');
    const ns = rule?.claim === 'namespace_path' ? rule.value : claimStr(c, 'namespace_path');
    if (ns && !project.toLowerCase().startsWith(`${ns.toLowerCase()}/`)) throw outside('project_path');
    return {
      ...base,
      provider: 'gitlab',
      project,
      branch: claimStr(c, 'ref_type') === 'branch' ? claimStr(c, 'ref') : '',
      changeRequest: GITLAB_CHANGE_REQUEST_SOURCES.has(claimStr(c, 'pipeline_source')),
      refProtected: claimBool(c, 'ref_protected')
    };
  }
  if (provider === 'circleci') {
    const origin = claimStr(c, 'oidc.circleci.com/vcs-origin');
    const project = origin.split('/').slice(1).join('/'); // github.com/org/repo → org/repo
    if (!origin || !/^[^/]+\/[^/]+/.test(project) || oddPath(project)) {
      throw new ScopeError(
        'This CircleCI OIDC token names no repository (oidc.circleci.com/vcs-origin is absent, as for custom webhook triggers, or has no owner/repo): use an org token scoped with `buildcloud admin token create --org ORG --project P`.'
      );
    }
    return { ...base, provider: 'circleci', project, branch: branchOf(claimStr(c, 'oidc.circleci.com/vcs-ref')) };
  }
  throw new ScopeError(
    'This OIDC token names no repository or project (claims repository, project_path or oidc.circleci.com/vcs-origin): no cache scope can be chosen for it.'
  );
}

/** The verified identity as it rides inside an access token (compact, only what scope needs). */
export function encodeVerified(v: VerifiedIdentity): Record<string, unknown> {
  return { p: v.provider, prj: v.project, br: v.branch, cr: v.changeRequest, prot: v.refProtected, ro: v.readOnly, ror: v.readOnlyReason };
}

/** Inverse of encodeVerified; null when the claim is missing or malformed (the caller refuses the token). */
export function decodeVerified(x: unknown): VerifiedIdentity | null {
  if (!x || typeof x !== 'object') return null;
  const o = x as Record<string, unknown>;
  if (!['github', 'gitlab', 'circleci'].includes(o.p as string) || typeof o.prj !== 'string' || typeof o.br !== 'string') return null;
  return {
    provider: o.p as OidcProvider,
    project: o.prj,
    branch: o.br,
    changeRequest: o.cr === true,
    refProtected: o.prot === true ? true : o.prot === false ? false : null,
    readOnly: o.ro === true,
    readOnlyReason: typeof o.ror === 'string' ? o.ror : ''
  };
}

export interface RequestedIdentity {
  project: string;
  branch: string;
  defaultBranch: string;
  fork: boolean;
}

/**
 * Applies a credential's scope to a Provision's requested identity. `scope` undefined: the org-admin credential,
 * the request is taken as sent. Throws ScopeError (→ PERMISSION_DENIED) when the request asks for a project or
 * branch outside the scope; narrows to read-only (with a reason) when the lease may not write its branch's cache.
 * `protectedBranches`: the org's patterns (DEFAULT_PROTECTED_BRANCHES when never set).
 */
/**
 * A project path as scopes compare it: trimmed, no leading or trailing "/" (the cache repository ignores them, so
 * "acme/secret/" must not slip past a pattern excluding "acme/secret"). Case is kept; comparisons ignore it.
 */
export function canonicalProject(project: string): string {
  return project.trim().replace(/^\/+|\/+$/g, '');
}

export function resolveLeaseIdentity(scope: PrincipalScope | undefined, req: RequestedIdentity, protectedBranches: string[]): LeaseIdentity {
  req = { ...req, project: canonicalProject(req.project) };
  const out: LeaseIdentity = {
    project: req.project,
    branch: req.branch,
    defaultBranch: req.defaultBranch,
    fork: req.fork,
    readOnly: req.fork,
    readOnlyReason: req.fork ? 'a pull request from a fork' : '',
    verified: false,
    changeRequest: false
  };
  if (!scope) return out;
  const narrow = (why: string) => {
    if (!out.readOnly) {
      out.readOnly = true;
      out.readOnlyReason = why;
    }
  };
  const v = scope.verified;
  if (v) {
    if (req.project && req.project.toLowerCase() !== v.project.toLowerCase()) {
      throw new ScopeError(
        `identity.project '${req.project}' is not the project of this job's OIDC token ('${v.project}'): a job provisions only for its own project.`
      );
    }
    if (req.branch && v.branch && req.branch !== v.branch) {
      throw new ScopeError(
        `identity.branch '${req.branch}' is not the branch of this job's OIDC token ('${v.branch}'): a job provisions only for its own branch.`
      );
    }
    out.project = v.project;
    out.verified = true;
    out.changeRequest = v.changeRequest;
    if (v.readOnly) narrow(v.readOnlyReason);
    if (v.branch) out.branch = v.branch;
    // The token names no branch (a tag, or a ref GitLab does not call a branch) but the job does: it may read that
    // branch's cache, as any job of the project may, and write nothing.
    else if (req.branch) narrow(`this job's OIDC token names no branch, so '${req.branch}' is not proven`);
  }
  if (scope.projects && !matchesPatterns(scope.projects, out.project, true)) {
    throw new ScopeError(`identity.project '${out.project}' is outside this token's projects (${scope.projects.join(', ')}).`);
  }
  if (scope.branches && out.branch !== '' && !matchesPatterns(scope.branches, out.branch)) {
    throw new ScopeError(`identity.branch '${out.branch}' is outside this token's branches (${scope.branches.join(', ')}).`);
  }
  if (scope.readOnly) narrow('the credential is read-only');
  if (out.branch === '' || out.readOnly) return out;

  // A protected branch's cache is trusted by release builds: written only by a lease that proves it is that branch.
  const isProtected = matchesPatterns(protectedBranches, out.branch) || (out.defaultBranch !== '' && out.branch === out.defaultBranch);
  if (!isProtected) return out;
  if (v) {
    if (v.changeRequest)
      narrow(
        `'${out.branch}' is a protected branch and this is a ${v.provider === 'gitlab' ? 'merge' : 'pull'} request pipeline (its code is not the branch's)`
      );
    else if (v.refProtected === false) narrow(`'${out.branch}' is a protected branch here but the CI reports the ref as unprotected (ref_protected false)`);
  } else if (scope.branches) {
    // A scoped token writes a protected branch only when one of its patterns names the branch without a wildcard.
    const named = scope.branches.some((p) => !p.startsWith('!') && !p.includes('*') && p === out.branch);
    if (!named) narrow(`'${out.branch}' is a protected branch and this token's --branches do not name it`);
  } else {
    narrow(`'${out.branch}' is a protected branch and this token has no --branches naming it`);
  }
  return out;
}

/** May a credential with this scope act on (read usage of, post records for) a lease of `project`? */
export function scopeCoversProject(scope: PrincipalScope | undefined, project: string): boolean {
  if (!scope) return true;
  const p = canonicalProject(project);
  if (scope.verified && scope.verified.project.toLowerCase() !== p.toLowerCase()) return false;
  return !scope.projects || matchesPatterns(scope.projects, p, true);
}

/**
 * May a credential act on (release, read, post records for) this lease? Only on one it could have provisioned
 * itself, at its own trust level: the same project; with a verified identity the same branch; inside a scoped
 * token's branches; and a read-only credential only on read-only leases. So a pull request's job cannot end, or
 * add builds to, the main branch's lease of its own project, although lease ids are printed in CI logs.
 * `lease`: the stored identity (project, branch, readOnly, fork).
 */
export function scopeCoversLease(scope: PrincipalScope | undefined, lease: Record<string, unknown>): boolean {
  if (!scope) return true;
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');
  if (!scopeCoversProject(scope, str(lease.project))) return false;
  const branch = str(lease.branch);
  const leaseReadOnly = lease.readOnly === true || lease.fork === true;
  const v = scope.verified;
  if (v && v.branch !== '' && branch !== v.branch) return false;
  if (scope.branches && branch !== '' && !matchesPatterns(scope.branches, branch)) return false;
  if ((scope.readOnly || v?.readOnly) && !leaseReadOnly) return false;
  // A pull/merge request's job acts only on pull/merge request leases, and a push's only on a push's.
  if (v && v.changeRequest !== (lease.changeRequest === true)) return false;
  return true;
}
