// What became of a build's push, apart from the build itself (issue 12): a build that succeeded and whose push then
// failed (registry unreachable) or was refused (another job took the tag) is a successful build with a failed push,
// in the message, the outputs and the usage record; the job still fails, since the user asked for the push. Also the
// one line said when the org cache has nothing yet for this build (a cold cache is normal, BuildKit shows it as an
// ERROR). Pure: table-tested in __tests__/unit/push-outcome.test.ts.
import type { PushStatus } from '../contract/metering-events';
import type { BuildStep } from './build-progress';

/** The push of a build's tags: its status (PUSH_STATUSES), the tags that went out, and why it did not when it did not. */
export interface PushOutcome {
  status: PushStatus;
  pushed: string[]; // the user's tags that went out (never the cache export)
  failed: string[]; // 'failed': the tag whose push failed; 'refused': the tags Build Cloud would not push
  reason?: string; // 'failed' | 'refused': one line, as the registry or the builder gave it
}

/** The outcome of a build that pushed every tag it was asked to, or was asked none ('skipped'). */
export function pushDone(push: boolean, tags: string[], pushed: string[]): PushOutcome {
  return push && tags.length ? { status: 'pushed', pushed, failed: [] } : { status: 'skipped', pushed: [], failed: [] };
}

const MAX_REASON = 300;

/**
 * Why `docker push` failed, from its output: its last line that says something (docker prints the registry's error
 * last, e.g. `Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused`), cut to one line.
 */
export function pushFailureReason(output: string, exitCode: number | null): string {
  const lines = output
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const last = lines[lines.length - 1] ?? '';
  const line = last.replace(/^(error( response from daemon)?:\s*)/i, '') || `docker push exited ${exitCode}`;
  return line.length > MAX_REASON ? `${line.slice(0, MAX_REASON - 1)}…` : line;
}

/**
 * A build with buildx pushing itself (--push) whose only error is the push: BuildKit ran every step and then could
 * not export the image to the registry. Null when a step failed (a failed build) or nothing says it was the push.
 */
export function pushFailedInBuild(vertices: BuildStep[], tags: string[]): PushOutcome | null {
  const errors = vertices.filter((v) => v.status === 'error');
  if (errors.length !== 1) return null;
  const v = errors[0];
  const isPush = /^(exporting to image|pushing\b)/.test(v.name) || /failed to push\b/.test(v.error ?? '');
  if (!isPush) return null;
  const err = v.error ?? '';
  const tag = /failed to push (\S+?):? /.exec(err)?.[1];
  const reason = err.replace(/^failed to push \S+?:? /, '') || 'the registry refused the push';
  return {
    status: 'failed',
    pushed: [],
    failed: tag ? [tag] : tags.slice(),
    reason: reason.length > MAX_REASON ? `${reason.slice(0, MAX_REASON - 1)}…` : reason
  };
}

/** Why a tag another job took is not pushed (or not kept) by this build: one line, with what to do about it. */
export const TAG_TAKEN_REASON =
  'another job of this pipeline built the same tag on the shared builder at the same time; give parallel jobs tags of their own (e.g. with the job name), or set scope: job';

/** The outcome of a build whose tags another job took (tagsTakenOver). */
export function pushRefused(tags: string[], pushed: string[]): PushOutcome {
  return { status: 'refused', pushed, failed: tags, reason: TAG_TAKEN_REASON };
}

const quoted = (tags: string[]) => tags.map((t) => `'${t}'`).join(', ');

/**
 * The job's error for a build that succeeded but whose push did not go out; null when the push went out or none was
 * asked for. E.g. "build succeeded; push of 'reg:5000/app:1' failed: dial tcp …: connection refused".
 */
export function pushErrorMessage(p: PushOutcome, asked: boolean): string | null {
  if (p.status === 'failed') return `build succeeded; push of ${quoted(p.failed)} failed: ${p.reason}`;
  if (p.status === 'refused') return `build succeeded; ${asked ? 'push of' : 'tag'} ${quoted(p.failed)} refused: ${p.reason}`;
  return null;
}

/** The cache a build reads and seeds, as said to a user: "cache scope 'Dockerfile', branch 'main'". */
export function cacheLabel(scope: string, ref: string): string {
  const tag = /:([\w][\w.-]{0,127})$/.exec(ref.replace(/^[^/]*\//, ''))?.[1] ?? '';
  const parts = [scope ? `cache scope '${scope}'` : "the project's cache", ...(tag ? [`branch '${tag}'`] : [])];
  return parts.join(', ');
}

/**
 * The one line said when the org cache holds nothing yet for a build's own ref: a normal cold cache, not an error.
 * `fallbacks`: the build also imports other refs (the default branch's, the project's shared one), which may well
 * hold what it needs: said so, so the line never reads as "nothing will be reused".
 */
export function coldCacheLine(label: string, seeds: boolean, fallbacks = false): string {
  const seed = seeds ? 'this build will seed it' : 'this build does not write the org cache (a fork, or cache export off), so it will not seed it';
  return `Build Cloud: no cache yet for ${label}; ${seed}${fallbacks ? " (it also imports the default branch's and the project's shared cache, where found)" : ''}`;
}

/**
 * Watches a build's stream for an import of `ownRef` (the build's own cache ref) that BuildKit reports `not found`,
 * and says `line` once, right after docker's ERROR line: the cache is cold, the build goes on and seeds it.
 */
export function coldCacheWatcher(ownRef: string, line: string, emit: (l: string) => void): (l: string) => void {
  const imports = new Map<string, string>(); // vertex number -> ref
  let said = false;
  return (l: string) => {
    if (said || !ownRef) return;
    const imp = /^#(\d+) importing cache manifest from (\S+)$/.exec(l);
    if (imp) {
      imports.set(imp[1], imp[2]);
      return;
    }
    const err = /^#(\d+) ERROR: (.*)$/.exec(l);
    if (err && imports.get(err[1]) === ownRef && /not found/.test(err[2])) {
      said = true;
      emit(line);
    }
  };
}
