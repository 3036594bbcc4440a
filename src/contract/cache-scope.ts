// Cache scopes: one org-cache repository per image of a project, so two images of one project (contexts a/ and b/,
// or api.Dockerfile and web.Dockerfile) never overwrite each other's cache. Both sides apply these rules: the
// runner names the repository of each build (`<cache repository>/<scope>`), the registry proxy admits exactly
// the names these rules can produce under the lease's own project. Pure.
//
// Layout: <host>/<org>/<project>/cache/<scope>:<branch tag>. The scope is ONE path component, so a scope never
// reaches another project's repositories: project "a" with scope s is `<org>/a/cache/s`, and a project "a/cache"
// has `<org>/a/cache/cache/<scope>` (one component deeper). The one name a scope could share with an older
// layout is `<org>/a/cache/cache` (project "a/cache"'s unscoped `cache` repository), so the scope "cache" is
// never produced as it is. Stage caches of a scope (every stage a later stage builds on or copies from) are
// `<scope>__<stage>`: "__" never appears in a scope or a stage component produced here, so the pair is read back
// unambiguously.
import { createHash } from 'crypto';

/** One scope component as produced by cacheScopeComponent: lowercase alphanumerics, single `.`, `_` or `-` between. */
export const SCOPE_COMPONENT = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
/** A scope repository's last component: a scope, optionally `__` and a stage component. */
export const SCOPE_REPOSITORY_COMPONENT = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:__[a-z0-9]+(?:[._-][a-z0-9]+)*)?$/;
/** Longest scope component, hash included, in characters (a stage component is bounded alike). */
export const SCOPE_MAX = 64;
/** What a scope component may not be: the last component of the unscoped layout (see the header). */
export const RESERVED_SCOPES: readonly string[] = ['cache'];

const HASH_HEX = 12;
const HASHED = /-[0-9a-f]{12}$/;

const hash = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex').slice(0, HASH_HEX);

/**
 * A scope (a `cache-scope` input, or the default below) → one valid repository path component, injectively: a
 * value that already is a valid component of at most SCOPE_MAX characters, is not reserved and does not end the
 * way hashed ones do, is kept; any other is cleaned (lowercase, runs of other characters become "-"), cut, and gets
 * "-" and 12 hex digits of the SHA-256 of the whole value. Throws on an empty value.
 */
export function cacheScopeComponent(scope: string): string {
  if (scope === '') throw new Error('cache scope is empty');
  if (SCOPE_COMPONENT.test(scope) && scope.length <= SCOPE_MAX && !HASHED.test(scope) && !RESERVED_SCOPES.includes(scope)) return scope;
  const suffix = `-${hash(scope)}`;
  const base = scope
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, SCOPE_MAX - suffix.length)
    .replace(/-+$/, '');
  return `${base || 'scope'}${suffix}`;
}

/**
 * The default scope of a build: its Dockerfile's path relative to the workspace (forward slashes), and the target
 * stage when one is given, e.g. `docker/api.Dockerfile` + `runtime` → "docker/api.Dockerfile#runtime" (then
 * made a component by cacheScopeComponent: "docker-api-dockerfile-runtime-<hash>").
 */
export function defaultCacheScope(dockerfileFromWorkspace: string, target = ''): string {
  const file = dockerfileFromWorkspace.replace(/\\/g, '/').replace(/^\.\//, '');
  return target ? `${file}#${target}` : file;
}

/** The repository component of a stage's own cache within a scope: `<scope>__<stage>`. */
export function stageScopeComponent(scopeComponent: string, stage: string): string {
  return `${scopeComponent}__${cacheScopeComponent(stage.toLowerCase())}`;
}
