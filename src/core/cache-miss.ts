// Why a step missed the org cache. At build time each step of the Dockerfile gets a fingerprint of what its cache key
// is made of (instruction text, the build arguments in scope, the content of the files a COPY/ADD names, the base
// image); the fingerprints travel with the exported cache image as a label. The next build that imports that image
// compares its own fingerprints with them and names the first executed step and what changed in it, or says that the
// cache was cold (no cache yet: the ref was missing) or held another image. Pure: fingerprints, the label's encoding and the comparison; the file
// hashing and the registry read are cache-miss-io.ts.
//
// Never a build-argument value: arguments are stored as a short digest of their value and named, not shown.
import { createHash } from 'crypto';
import { deflateRawSync, inflateRawSync } from 'zlib';
import type { DockerfileStep } from './dockerfile-steps';
import type { CacheMiss } from './summary';

/** The label of the exported cache image that holds its steps' fingerprints (deflated JSON, base64url). */
export const FINGERPRINTS_LABEL = 'dev.buildcloud.cache.steps';
// Larger fingerprints drop their per-file digests (a changed file is then named by its COPY source only).
export const MAX_LABEL_BYTES = 32 * 1024;
const VERSION = 1;

export interface StepFingerprint {
  n: string; // the step's name as BuildKit shows it
  st: string; // stage
  i: string; // digest of the instruction text
  a: Record<string, string>; // build argument name -> digest of its value (only arguments that reach the step)
  s?: Record<string, string>; // COPY/ADD source as written -> digest of its content ('?' when not hashed: too big)
  f?: Record<string, string>; // file under the context -> digest of its content (for naming the changed file)
}

export interface Fingerprints {
  v: number;
  file: string; // the Dockerfile, relative to the context
  target: string;
  bases: Record<string, string>; // stage -> base image ref (and @digest when known), for stages FROM an image
  steps: StepFingerprint[];
}

/** Source digests of one build's COPY/ADD steps, by step name: what cache-miss-io.ts hashSources reads. */
export interface SourceDigests {
  sources: Record<string, Record<string, string>>; // step name -> source as written -> digest ('?': not hashed)
  files: Record<string, Record<string, string>>; // step name -> file -> digest
}

export const shortDigest = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 16);

// BuildKit gives a RUN every ARG in scope (as its environment); other steps see an argument only through `$NAME`.
function argsOf(step: DockerfileStep): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(step.args)) {
    const used = step.keyword === 'RUN' || new RegExp(`\\$(\\{${name}[}:]|${name}(?![A-Za-z0-9_]))`).test(step.rest);
    if (used) out[name] = shortDigest(`${name}=${value}`);
  }
  return out;
}

/** The fingerprints of a build's steps (dockerfileSteps of its Dockerfile and target) and of its bases. */
export function fingerprintsOf(
  steps: DockerfileStep[],
  digests: SourceDigests,
  meta: { file: string; target: string; baseDigests?: Record<string, string> }
): Fingerprints {
  const bases: Record<string, string> = {};
  for (const s of steps) {
    if (s.base && s.base.toLowerCase() !== 'scratch') bases[s.stage] = meta.baseDigests?.[s.base] ? `${s.base}@${meta.baseDigests[s.base]}` : s.base;
  }
  return {
    v: VERSION,
    file: meta.file,
    target: meta.target,
    bases,
    steps: steps.map((s) => ({
      n: s.name,
      st: s.stage,
      i: shortDigest(`${s.keyword} ${s.rest}`),
      a: argsOf(s),
      ...(digests.sources[s.name] ? { s: digests.sources[s.name] } : {}),
      ...(digests.files[s.name] ? { f: digests.files[s.name] } : {})
    }))
  };
}

/** The label's value: deflated JSON in base64url, per-file digests dropped when it would exceed MAX_LABEL_BYTES. */
export function encodeFingerprints(fp: Fingerprints): string {
  const enc = (x: Fingerprints) => deflateRawSync(Buffer.from(JSON.stringify(x))).toString('base64url');
  const full = enc(fp);
  if (full.length <= MAX_LABEL_BYTES) return full;
  return enc({ ...fp, steps: fp.steps.map(({ f: _files, ...rest }) => rest) });
}

/** The label read back; null when absent, of another version, or not ours. */
export function decodeFingerprints(label: string | undefined): Fingerprints | null {
  if (!label || label.length > 4 * MAX_LABEL_BYTES) return null;
  try {
    const fp = JSON.parse(inflateRawSync(Buffer.from(label, 'base64url'), { maxOutputLength: 16 * MAX_LABEL_BYTES }).toString('utf8')) as Fingerprints;
    return fp && fp.v === VERSION && Array.isArray(fp.steps) ? fp : null;
  } catch {
    return null;
  }
}

/** One cache import of a build, as BuildKit's stream showed it ("importing cache manifest from REF"). */
export interface CacheImport {
  ref: string;
  found: boolean; // false: the import failed (e.g. `not found`)
  error?: string;
}

// The instruction of a step name, without its "[stage k/M] " prefix: how a step is matched across builds when an
// inserted step renumbered it.
const instructionOf = (name: string) => name.replace(/^\[[^\]]*\]\s*/, '');
const listed = (xs: string[], max = 3) => (xs.length <= max ? xs.join(', ') : `${xs.slice(0, max).join(', ')} and ${xs.length - max} more`);

function changed(a: Record<string, string> = {}, b: Record<string, string> = {}): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => a[k] !== b[k]).sort();
}

/** What differs between a step's fingerprint in the imported build (`was`) and now (`now`); null when nothing does. */
export function stepChange(was: StepFingerprint, now: StepFingerprint, bases: { was?: string; now?: string }): string | null {
  if (bases.was !== bases.now) return `base image changed (${bases.was ?? 'none'} → ${bases.now ?? 'none'})`;
  if (was.i !== now.i) return 'instruction text changed';
  const args = changed(was.a, now.a);
  if (args.length) return `build argument${args.length > 1 ? 's' : ''} ${listed(args)} changed`;
  const sources = changed(was.s, now.s);
  if (sources.length) {
    const files = changed(was.f, now.f);
    const added = files.filter((f) => !was.f?.[f]);
    const removed = files.filter((f) => !now.f?.[f]);
    const edited = files.filter((f) => was.f?.[f] && now.f?.[f]);
    const parts = [
      ...(edited.length ? [`content of ${listed(edited)} changed`] : []),
      ...(added.length ? [`${listed(added)} added`] : []),
      ...(removed.length ? [`${listed(removed)} removed`] : [])
    ];
    return parts.length ? parts.join('; ') : `content of ${listed(sources)} changed`;
  }
  return null;
}

/**
 * Why a build that imported the org cache executed steps: the first executed step (in Dockerfile order) and what
 * changed in it since the imported build, with the count of executed steps after it. Null when the build imported
 * nothing or executed nothing.
 * @param executed names of the steps BuildKit executed (not CACHED, not deduplicated)
 * @param previous the fingerprints read from the imported image (null: it had none)
 * @param cold how to name the build's cache when no import found anything (push-outcome.ts cacheLabel), and whether
 *   this build writes it: a cold cache is said plainly ("no cache yet for …; this build will seed it")
 */
export function explainMiss(
  imports: CacheImport[],
  current: Fingerprints,
  previous: Fingerprints | null,
  executed: string[],
  cold: { label?: string; seeds?: boolean } = {}
): CacheMiss | null {
  if (!imports.length || !executed.length) return null;
  const ran = new Set(executed);
  const order = current.steps.filter((s) => ran.has(s.n));
  const first = order[0]?.n ?? executed[0];
  const laterSteps = executed.length - 1;
  const found = imports.filter((i) => i.found);
  if (!found.length) {
    // Every import `not found`: a cold cache, normal for a new branch or scope, said plainly. Another error (a
    // refused read, say) is no cold cache: named as it is.
    if (imports.every((i) => !i.error || /not found/i.test(i.error))) {
      const seeds = cold.seeds === false ? 'this build does not write the org cache, so it will not seed it' : 'this build will seed it';
      const refs = listed(
        imports.map((i) => i.ref),
        1
      );
      return { step: first, reason: `no cache yet${cold.label ? ` for ${cold.label}` : ''}; ${seeds} (not found: ${refs})`, laterSteps };
    }
    const why = imports.map((i) => `${i.ref}${i.error ? ` (${i.error.replace(`${i.ref}: `, '')})` : ''}`);
    return { step: first, reason: `the org cache could not be read: ${listed(why, 2)}`, laterSteps };
  }
  if (!previous) return { step: first, reason: `the cache ref ${found[0].ref} held another image (no Build Cloud step fingerprints)`, laterSteps };
  if (previous.file !== current.file || previous.target !== current.target) {
    return {
      step: first,
      reason: `the cache ref ${found[0].ref} held another image (${previous.file}, target ${previous.target || '(last stage)'})`,
      laterSteps
    };
  }
  const now = order[0];
  if (!now) return { step: first, reason: 'not a step of this Dockerfile as read here', laterSteps };
  const wasOf = (s: StepFingerprint) =>
    previous.steps.find((p) => p.n === s.n) ?? previous.steps.find((p) => p.st === s.st && instructionOf(p.n) === instructionOf(s.n)) ?? null;
  const changeOf = (s: StepFingerprint): string | null => {
    const was = wasOf(s);
    if (!was) return 'new step, or its instruction text changed (no such step in the cached build)';
    return stepChange(was, s, { was: previous.bases[was.st], now: current.bases[s.st] });
  };
  const why = changeOf(now);
  if (why) return { step: first, reason: why, laterSteps };
  // Its own inputs are as before: an earlier step it builds on changed, and came to this build from elsewhere (this
  // builder's cache of another job's build, or a stage cache). Name that step and its change.
  for (const earlier of current.steps.slice(0, current.steps.indexOf(now))) {
    const change = changeOf(earlier);
    const name = earlier.n.length > 80 ? `${earlier.n.slice(0, 79)}…` : earlier.n;
    if (change) return { step: first, reason: `an earlier step changed: ${name}: ${change}`, laterSteps };
  }
  return { step: first, reason: 'its inputs are unchanged: the imported cache did not hold this step', laterSteps };
}
