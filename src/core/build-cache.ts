// Which org-cache refs one build imports and exports: its cache scope (one repository per image of the project, so
// images of one project never overwrite each other's cache), and a tag unique to the build for its export (the
// control plane promotes it to the scope's tag), so parallel jobs on one pipeline builder never share a local
// name. Pure; build.ts runs the build with these refs.
import { randomBytes } from 'crypto';
import * as path from 'path';
import { cacheScopeComponent, defaultCacheScope, stageScopeComponent } from '../contract/cache-scope';
import type { LeaseMsg } from '../contract/grpc';
import type { BuildStep, Progress } from './build-progress';
import type { BuildOptions, CacheRefs } from './docker-cli';

// distribution's limit on a repository name, host included.
const NAME_MAX = 255;

export interface BuildCacheRefs extends CacheRefs {
  scope: string; // the scope as the user gave it or as derived; '' when the control plane has no scopes
  repository: string; // <host>/<org>/<project>/cache/<scope component>; '' without scopes
  // What the export lands on once promoted (the scope's branch tag); exportRef is the build's own upload tag.
  promotedRef: string;
  warnings: string[];
}

const isRemoteContext = (context: string): boolean => context === '-' || /^[a-z][a-z0-9+.-]*:\/\//i.test(context) || /^git@/.test(context);

/**
 * The scope of a build: the `cache-scope` input when set, else its Dockerfile's path (resolved from `cwd`, as docker
 * resolves it) relative to `workspace` (the job's checkout: ciWorkspace) and its target ("docker/api.Dockerfile#runtime"); a Dockerfile outside the workspace
 * (e.g. an absolute path into a temporary directory, which would change from job to job) is named relative to its
 * context instead; for a Git or URL context without a `file`, the context and "Dockerfile".
 */
export function buildCacheScope(opts: Pick<BuildOptions, 'cacheScope' | 'file' | 'context' | 'target'>, workspace: string, cwd = workspace): string {
  if (opts.cacheScope) return opts.cacheScope;
  if (!opts.file && isRemoteContext(opts.context)) return defaultCacheScope(`${opts.context}#Dockerfile`, opts.target ?? '');
  // Paths as docker resolves them (from the working directory), named relative to the checkout.
  const context = path.resolve(cwd, opts.context);
  const file = opts.file ? path.resolve(cwd, opts.file) : path.join(context, 'Dockerfile');
  const inside = (base: string) => {
    const r = path.relative(base, file);
    return r && !r.startsWith('..') && !path.isAbsolute(r) ? r : null;
  };
  // Outside the checkout, the context's own name leads: stable from job to job, and two contexts apart stay apart.
  const outside = () => path.join(path.basename(context), inside(context) ?? path.basename(file));
  return defaultCacheScope(inside(path.resolve(workspace)) ?? outside(), opts.target ?? '');
}

/**
 * The job's checkout, which default cache scopes are relative to: GITHUB_WORKSPACE (GitHub runs actions there),
 * CI_PROJECT_DIR (GitLab), CIRCLE_WORKING_DIRECTORY (CircleCI; a leading `~` is the job's HOME), else `cwd`.
 */
export function ciWorkspace(env: NodeJS.ProcessEnv, cwd: string): string {
  const circle = env.CIRCLE_WORKING_DIRECTORY?.replace(/^~(?=$|\/)/, env.HOME ?? '~');
  const dir = env.GITHUB_WORKSPACE || env.CI_PROJECT_DIR || circle || '';
  return dir && path.isAbsolute(dir) ? dir : cwd;
}

/** 12 hex digits: the part of an upload tag after the lease's upload prefix (the registry proxy admits exactly these). */
export function uploadNonce(): string {
  return randomBytes(6).toString('hex');
}

/**
 * The refs of one build of scope `scope` from the lease's cache field. With a control plane that has scopes
 * (lease.cache.repository set): imports `<repository>/<scope>:<tag>` for each import tag, exports to
 * `<repository>/<scope>:<upload prefix><nonce>` (promoted by the control plane to `...:<export tag>`), or straight
 * to the export tag when the control plane gives no upload prefix. Without scopes, or when the scoped name would
 * exceed 255 characters, the lease's unscoped refs, with a warning for the latter.
 */
export function buildCacheRefs(cache: LeaseMsg['cache'], scope: string, nonce: string, stage = ''): BuildCacheRefs {
  const unscoped = { importRefs: cache?.importRefs ?? [], exportRef: cache?.exportRef ?? '' };
  if (!cache?.repository) return { ...unscoped, scope: '', repository: '', promotedRef: unscoped.exportRef, warnings: [] };
  const component = stage ? stageScopeComponent(cacheScopeComponent(scope), stage) : cacheScopeComponent(scope);
  const repository = `${cache.repository}/${component}`;
  if (repository.length > NAME_MAX) {
    const warning = `cache scope "${scope}" does not fit in a repository name of ${NAME_MAX} characters under this project's cache; using the project's unscoped cache`;
    return { ...unscoped, scope: '', repository: '', promotedRef: unscoped.exportRef, warnings: stage ? [] : [warning] };
  }
  const exportTag = cache.exportTag ?? '';
  const promotedRef = exportTag ? `${repository}:${exportTag}` : '';
  const exportRef = !exportTag ? '' : cache.uploadPrefix ? `${repository}:${cache.uploadPrefix}${nonce}` : promotedRef;
  // After the scope's own cache, the project's newest (the control plane copies each image scope's cache there):
  // a new scope starts from the project's shared layers. A stage's cache has no such fallback.
  const importRefs = [...(cache.importTags ?? []).map((t) => `${repository}:${t}`), ...(stage ? [] : unscoped.importRefs)];
  return { importRefs, exportRef, scope, repository, promotedRef, warnings: [] };
}

/** One stage's own cache image (case 2 of issue 11): built as `--target stage` before the build, with these refs. */
export interface StageCache {
  stage: string;
  refs: BuildCacheRefs;
}

/**
 * The stages of a build that get a cache image of their own: with the inline cache (Docker Engine builders; a
 * BuildKit builder exports mode=max instead) only the final image's layers are exported, so each stage the build
 * copies from or builds on apart from the final chain (dockerfile-steps.ts cacheStages) is built as its own target
 * first, on the same builder (its steps then are the final build's local cache), and exported to
 * `<scope>__<stage>`; the final build imports them all. [] without scopes, with no-cache, or for a Dockerfile
 * whose stages cannot be read.
 */
export function stageCaches(stages: string[] | null, cache: LeaseMsg['cache'], scoped: BuildCacheRefs, nonce: (stage: string) => string): StageCache[] {
  if (!stages?.length || !scoped.repository) return [];
  return stages.map((stage) => ({ stage, refs: buildCacheRefs(cache, scoped.scope, nonce(stage), stage) })).filter((s) => s.refs.repository !== '');
}

/**
 * The steps of the stage builds and the final build, each counted once, as BuildKit reported it in the build
 * that first showed it (in order): a step the final build shows CACHED only because a stage build just ran it
 * on the same builder is that stage build's step (done, or cached from the import). The totals are what one
 * build of the final target reports: the same steps, each with the status it had where it ran.
 */
export function mergeStageProgress(builds: Progress[]): Progress {
  const seen = new Set<string>();
  const steps: BuildStep[] = [];
  for (const p of builds) {
    for (const s of p.steps) {
      if (seen.has(s.name)) continue;
      seen.add(s.name);
      steps.push(s);
    }
  }
  if (builds.length === 1) return builds[0];
  return {
    totalSteps: steps.length,
    cachedSteps: steps.filter((s) => s.cached).length,
    deduplicatedSteps: steps.filter((s) => s.status === 'deduplicated').length,
    steps
  };
}
