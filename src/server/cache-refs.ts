// Org cache refs: where a build imports its layer cache from and exports it to.
//
// Layout: <registryHost>/<org>/<project>/cache/<scope>:<branch-tag>, one repository per cache scope (an image of
// the project: src/contract/cache-scope.ts), and for older clients <registryHost>/<org>/<project>/cache:<branch-tag>
// (one per project, which two images of a project overwrite). The org is the first path component on purpose:
// the registry proxy authorises by repository prefix ("acme/"), so every ref of an org must start with it and no
// other org's ref may. Everything here is pure, so the rules are table-tested without a registry.
import { createHash } from 'node:crypto';
import { RESERVED_SCOPES, SCOPE_MAX, SCOPE_REPOSITORY_COMPONENT } from '../contract/cache-scope';

export interface CacheRefInput {
  registryHost: string;
  org: string;
  project: string; // may be nested (GitLab: "platform/tools/widget-api")
  branch: string; // empty for tag builds and detached pipelines
  defaultBranch: string; // empty when the CI does not tell (CircleCI)
  fork: boolean; // a pull request from a fork: it may read the org cache but never write it
  leaseId?: string; // names the lease's upload tags (uploadPrefix); without it there are none
}

export interface CacheRefsResult {
  importRefs: string[]; // most specific first: the branch's cache, then the default branch's
  exportRef: string; // '' when this build must not write the cache
  // Scoped layout (src/contract/cache-scope.ts): <repository>/<scope>:<tag>. Older clients use the two above.
  repository: string; // <host>/<org>/<project>/cache: each scope's repository is this plus "/<scope>"
  importTags: string[]; // per scope, most specific first (as importRefs)
  exportTag: string; // per scope; '' when this build must not write the cache
  // Tags this lease may push a build's cache under, one per build: uploadPrefix + 12 hex digits. The registry
  // proxy writes what is pushed there to the scope's exportTag instead, so parallel builds never share a local name.
  uploadPrefix: string; // '' when it writes nothing (or the lease id is unknown)
}

// The OCI distribution grammar as the brief pins it: components of lowercase alphanumerics with single
// separators. (distribution itself also allows "__" and "--"; we never produce those, which keeps the mapping
// predictable and the org check below strict.)
const COMPONENT = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const TAG_MAX = 128;
// The suffix a sanitised branch name gets; a name that is already a valid tag but ends like this is hashed too.
const BRANCH_HASH_HEX = 12;
const HASHED_SUFFIX = /-[0-9a-f]{12}$/;
// distribution rejects names (host + path) longer than this with NAME_INVALID.
const NAME_TOTAL_MAX = 255;
// host[:port], a DNS name or IPv4 address, or a bracketed IPv6 literal. No scheme, no path.
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;

const COMPONENT_HELP = 'lowercase letters and digits, optionally separated by single ".", "_" or "-"';

function shortHash(s: string, hexChars: number): string {
  return createHash('sha256').update(s, 'utf8').digest('hex').slice(0, hexChars);
}

// One path segment → one valid component: lowercase, every run of other characters becomes one separator,
// separators collapse and are trimmed from the ends. Returns '' when nothing alphanumeric is left.
function normalizeSegment(seg: string): string {
  return seg
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/[._-]{2,}/g, (run) => run[0])
    .replace(/^[._-]+|[._-]+$/g, '');
}

/**
 * A CI value (org, project path) → a valid repository path: components joined by "/", injectively up to case
 * (project paths are case-insensitive on GitHub and GitLab). A segment that is a valid component once lower-cased
 * is kept; any other is cleaned up (invalid characters become "-", separators collapse) and gets "-" and 12 hex
 * digits of the SHA-256 of the lower-cased segment, so "my--app", "_app" or "app_" never share "my-app"'s or "app"'s
 * cache repository (a valid segment that already ends like a hashed one is hashed too). Empty segments ("a//b") and
 * segments with no letter or digit ("..") are errors.
 */
export function repoComponent(s: string, field: string): string {
  const trimmed = s.trim().replace(/^\/+|\/+$/g, '');
  if (trimmed === '') {
    throw new Error(`${field} is empty: expected a repository path of ${COMPONENT_HELP} (e.g. "acme" or "platform/widget-api")`);
  }
  const out = trimmed.split('/').map((seg) => {
    const lowered = seg.toLowerCase();
    if (COMPONENT.test(lowered) && !HASHED_SUFFIX.test(lowered)) return lowered;
    const c = normalizeSegment(seg);
    if (c === '' || !COMPONENT.test(c)) {
      throw new Error(`${field} "${s}" has a path segment "${seg}" without a letter or digit: expected ${COMPONENT_HELP}, segments separated by "/"`);
    }
    return `${c}-${shortHash(lowered, BRANCH_HASH_HEX)}`;
  });
  return out.join('/');
}

/**
 * The repository prefix every ref of the org starts with, e.g. "acme/". This is an authorisation boundary, so
 * unlike projects the org is not "repaired": apart from case folding (org names are case-insensitive on GitHub,
 * GitLab and Bitbucket) it must already be one valid component. Otherwise "Acme Corp" and "acme-corp" would share
 * a cache, and an org "acme/x" would fall inside org "acme".
 */
export function orgRepoPrefix(org: string): string {
  const lowered = org.trim().toLowerCase();
  if (lowered === '') throw new Error(`org is empty: expected one name of ${COMPONENT_HELP} (e.g. "acme-corp")`);
  if (!COMPONENT.test(lowered)) {
    throw new Error(`org "${org}" is not a valid registry namespace: expected one name of ${COMPONENT_HELP}, no "/" (e.g. "acme-corp")`);
  }
  return `${lowered}/`;
}

/**
 * A branch name → a valid tag, injectively: two different branch names never share a tag, because a shared tag is
 * a shared cache and the default branch's cache is trusted by release builds (a branch "main!" must not write
 * "main"). A name that is already a valid tag is kept as it is (case too: tags are case-sensitive), unless it ends
 * the way hashed tags end. Any other name is sanitised (runs of other characters become "-", "feature/login" →
 * "feature-login"), cut to fit 128 characters, and gets "-" + a hash of the WHOLE original name; a name with
 * nothing usable left becomes "branch-<hash>". Kept names never end in "-<12 hex>" and hashed ones always do, so
 * the two sets cannot meet; two hashed ones meet only on a 48-bit hash collision. 48 bits, not the 32 of an
 * 8-digit suffix: the attacker chooses the branch name, and a 32-bit second preimage takes a laptop minutes.
 */
export function tagFor(branch: string): string {
  if (branch.trim() === '') throw new Error('branch is empty: expected a branch name such as "main" or "feature/login"');
  if (TAG.test(branch) && !HASHED_SUFFIX.test(branch)) return branch;
  const suffix = `-${shortHash(branch, BRANCH_HASH_HEX)}`;
  const base = branch
    .replace(/[^A-Za-z0-9_.-]+/g, '-')
    .replace(/^[.-]+/, '')
    .slice(0, TAG_MAX - suffix.length)
    .replace(/[.-]+$/, '');
  const tag = base === '' ? `branch${suffix}` : `${base}${suffix}`;
  if (!TAG.test(tag)) throw new Error(`branch "${branch}" could not be turned into a valid tag (got "${tag}")`); // defensive: unreachable
  return tag;
}

function validHost(host: string): string {
  const h = host.trim();
  if (!HOST.test(h)) {
    throw new Error(`registryHost "${host}" is invalid: expected host[:port] without scheme or path (e.g. "127.0.0.1:5000" or "registry.example.com")`);
  }
  return h;
}

export function cacheRefs(input: CacheRefInput): CacheRefsResult {
  const host = validHost(input.registryHost);
  const repo = `${host}/${orgRepoPrefix(input.org)}${repoComponent(input.project, 'project')}/cache`;
  if (repo.length > NAME_TOTAL_MAX) {
    throw new Error(`project "${input.project}" is too long: the cache repository "${repo}" exceeds ${NAME_TOTAL_MAX} characters`);
  }
  const branchTag = input.branch.trim() === '' ? '' : tagFor(input.branch);
  const defaultTag = input.defaultBranch.trim() === '' ? '' : tagFor(input.defaultBranch);
  if (branchTag === '' && defaultTag === '') {
    throw new Error('branch and defaultBranch are both empty: expected at least one branch name to scope the cache');
  }
  const importRefs: string[] = [];
  for (const tag of [branchTag, defaultTag]) {
    const ref = tag === '' ? '' : `${repo}:${tag}`;
    if (ref !== '' && !importRefs.includes(ref)) importRefs.push(ref);
  }
  // Forks only read: their code is untrusted, and the org's cache is trusted by every other build.
  // Without a branch (tag builds) there is no branch cache to write; the default branch's is left to its own builds.
  const exportTag = input.fork || branchTag === '' ? '' : branchTag;
  const exportRef = exportTag === '' ? '' : `${repo}:${exportTag}`;
  const importTags = [...new Set([branchTag, defaultTag].filter(Boolean))];
  const uploadPrefix = exportTag !== '' && input.leaseId && /^[a-z0-9]{1,40}$/.test(input.leaseId) ? `${UPLOAD_TAG_START}${input.leaseId}-` : '';
  return { importRefs, exportRef, repository: repo, importTags, exportTag, uploadPrefix };
}

const UPLOAD_TAG_START = 'bcup-';
/** An upload tag's own part after the lease's prefix: 12 hex digits, so upload tags end the way hashed branch tags do. */
export const UPLOAD_NONCE = /^[0-9a-f]{12}$/;
// A scope component, or a scope and a stage (src/contract/cache-scope.ts), at most.
const SCOPE_REPOSITORY_MAX = 2 * SCOPE_MAX + 2;

/** What one lease may do in the org cache, as the registry proxy checks it (repositories without the host). */
export interface RegistryScope {
  pull: string[]; // repositories it may read: its import refs' and its export ref's
  push: { repository: string; tag: string; ref?: string } | null; // the one tag it may write (ref: as the lease was told it); null: it writes nothing
  // Scoped layout: every repository `<scopes>/<scope>` (scopeRepository) is readable; with push set, each is
  // writable at push.tag and at the lease's upload tags (uploadPrefix + 12 hex digits, promoted to push.tag).
  scopes?: string; // <org>/<project>/cache (no host); absent: scoped repositories are not the lease's
  uploadPrefix?: string;
}

/**
 * The scope component when `name` is one of the scoped repositories under `scopes` (`<scopes>/<component>`, one
 * component, as cacheScopeComponent or stageScopeComponent make it; never a reserved one), else null.
 */
export function scopeRepository(name: string, scopes: string | undefined): string | null {
  if (!scopes || !name.startsWith(`${scopes}/`)) return null;
  const c = name.slice(scopes.length + 1);
  return SCOPE_REPOSITORY_COMPONENT.test(c) && c.length <= SCOPE_REPOSITORY_MAX && !RESERVED_SCOPES.includes(c) ? c : null;
}

/** Whether `tag` is one of the lease's upload tags (uploadPrefix + 12 hex digits). */
export function isUploadTag(scope: RegistryScope, tag: string): boolean {
  const p = scope.uploadPrefix;
  return Boolean(p) && tag.startsWith(p!) && UPLOAD_NONCE.test(tag.slice(p!.length));
}

/** A lease's refs → its registry scope. Refs not on `registryHost` are ignored (they cannot reach the proxy). */
export function registryScope(refs: CacheRefsResult, registryHost: string): RegistryScope {
  const split = (ref: string): { repository: string; tag: string } | null => {
    const host = `${registryHost}/`;
    const i = ref.lastIndexOf(':');
    if (!ref.startsWith(host) || i <= host.length) return null;
    return { repository: ref.slice(host.length, i), tag: ref.slice(i + 1) };
  };
  const parsed = refs.exportRef ? split(refs.exportRef) : null;
  const push = parsed ? { ...parsed, ref: refs.exportRef } : null;
  const pull: string[] = [];
  for (const r of [...refs.importRefs.map(split), push]) {
    if (r && !pull.includes(r.repository)) pull.push(r.repository);
  }
  const host = `${registryHost}/`;
  if (!refs.repository?.startsWith(host)) return { pull, push };
  return { pull, push, scopes: refs.repository.slice(host.length), ...(push && refs.uploadPrefix ? { uploadPrefix: refs.uploadPrefix } : {}) };
}
