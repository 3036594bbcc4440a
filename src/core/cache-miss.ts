// Why a step missed the org cache. At build time each step of the Dockerfile gets a fingerprint of what its cache key
// is made of (instruction text, the build arguments in scope, the content of the files a COPY/ADD names, the base
// image); the fingerprints travel with the exported cache image as a label. The next build that imports that image
// compares its own fingerprints with them and names the first executed step and what changed in it, or says that the
// cache was cold (no cache yet: the ref was missing) or held another image. Pure: fingerprints, the label's encoding and the comparison; the file
// hashing and the registry read are cache-miss-io.ts.
//
// Never a build-argument value: arguments are stored as a short digest of their value and named, not shown. And the
// label travels with the image wherever the user pushes it, so every string in it (step names, instructions, argument
// names and values, file names and contents, base images, the Dockerfile's path) is keyed with the project's
// fingerprint key (CacheRefs.fingerprint_key): HMAC-SHA256, 16 hex digits. Without the key the label says nothing;
// with it, a later build of the project compares its own keyed fingerprints and names what changed from its own
// (plain) ones. An image of an older version or another project is "another image".
import { sameExpanded } from './dockerfile-steps';
import { createHash, createHmac } from 'crypto';
import { deflateRawSync, inflateRawSync } from 'zlib';
import type { DockerfileStep } from './dockerfile-steps';
import type { CacheMiss } from './summary';

/** The label of the exported cache image that holds its steps' fingerprints (deflated JSON, base64url). */
export const FINGERPRINTS_LABEL = 'dev.buildcloud.cache.steps';
// Larger fingerprints drop their per-file digests (a changed file is then named by its COPY source only).
export const MAX_LABEL_BYTES = 32 * 1024;
const VERSION = 2; // 2: keyed (1: plain, read as another image)

export interface StepFingerprint {
  n: string; // the step's name as BuildKit shows it
  st: string; // stage
  i: string; // digest of the instruction text
  a: Record<string, string>; // build argument name -> digest of its value (only arguments that reach the step)
  s?: Record<string, string>; // COPY/ADD source as written -> digest of its content ('?' when not hashed: too big)
  f?: Record<string, string>; // file under the context -> digest of its content (for naming the changed file)
  ni?: string; // keyed form only: the name's instruction without its "[stage k/M]" (matches a renumbered step)
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

/** HMAC-SHA256 of `value` under `key`, 16 hex digits: what a label holds instead of any string. */
export function keyedDigest(key: Buffer, value: string): string {
  return createHmac('sha256', key).update(value).digest('hex').slice(0, 16);
}

const keyedRecord = (key: Buffer, r: Record<string, string> | undefined): Record<string, string> | undefined =>
  r && Object.fromEntries(Object.entries(r).map(([k, v]) => [keyedDigest(key, k), keyedDigest(key, v)]));

/** `fp` as its label holds it: every string keyed (keyedDigest), each step with `ni`. Step order is kept. */
export function keyFingerprints(fp: Fingerprints, key: Buffer): Fingerprints {
  const k = (v: string) => keyedDigest(key, v);
  return {
    v: VERSION,
    file: k(fp.file),
    target: k(fp.target),
    bases: Object.fromEntries(Object.entries(fp.bases).map(([st, b]) => [k(st), k(b)])),
    steps: fp.steps.map((st) => ({
      n: k(st.n),
      ni: k(instructionOf(st.n)),
      st: k(st.st),
      i: k(st.i),
      a: keyedRecord(key, st.a) ?? {},
      ...(st.s ? { s: keyedRecord(key, st.s) } : {}),
      ...(st.f ? { f: keyedRecord(key, st.f) } : {})
    }))
  };
}

/**
 * The label's value: `fp` keyed with `key` (keyFingerprints), deflated JSON in base64url, per-file digests dropped when
 * it would exceed MAX_LABEL_BYTES.
 */
export function encodeFingerprints(fp: Fingerprints, key: Buffer): string {
  const keyed = keyFingerprints(fp, key);
  const enc = (x: Fingerprints) => deflateRawSync(Buffer.from(JSON.stringify(x))).toString('base64url');
  const full = enc(keyed);
  if (full.length <= MAX_LABEL_BYTES) return full;
  return enc({ ...keyed, steps: keyed.steps.map(({ f: _files, ...rest }) => rest) });
}

/** The label read back (keyed, as encodeFingerprints wrote it); null when absent, of another version, or not ours. */
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

/** How a comparison names what it found: the plain name of a (possibly keyed) argument, source or file; null: unknown. */
type Namer = (key: string) => string | null;
const asIs: Namer = (k) => k;

function named(keys: string[], name: Namer, what: string): string[] {
  const known = keys.map(name).filter((n): n is string => n !== null);
  const unknown = keys.length - known.length;
  return [...known, ...(unknown ? [`${unknown} ${what}${unknown > 1 ? 's' : ''} of the cached build`] : [])];
}

/**
 * What differs between a step's fingerprint in the imported build (`was`) and now (`now`); null when nothing does.
 * `base`: whether the stage's base image differs, and the names to show (`was` unknown for a keyed label). `name` turns
 * a key of `a`, `s` or `f` into its plain name (null for one only the cached build had: counted, not named).
 */
export function stepChange(
  was: StepFingerprint,
  now: StepFingerprint,
  base: { changed: boolean; was?: string; now?: string },
  name: Namer = asIs
): string | null {
  if (base.changed)
    return base.was === undefined ? `base image changed (now ${base.now ?? 'none'})` : `base image changed (${base.was} → ${base.now ?? 'none'})`;
  if (was.i !== now.i) return 'instruction text changed';
  const args = changed(was.a, now.a);
  if (args.length) {
    const shown = named(args, name, 'argument');
    return `build argument${args.length > 1 ? 's' : ''} ${listed(shown)} changed`;
  }
  const sources = changed(was.s, now.s);
  if (sources.length) {
    const files = changed(was.f, now.f);
    const added = files.filter((f) => !was.f?.[f]);
    const removed = files.filter((f) => !now.f?.[f]);
    const edited = files.filter((f) => was.f?.[f] && now.f?.[f]);
    const parts = [
      ...(edited.length ? [`content of ${listed(named(edited, name, 'file'))} changed`] : []),
      ...(added.length ? [`${listed(named(added, name, 'file'))} added`] : []),
      ...(removed.length ? [`${listed(named(removed, name, 'file'))} removed`] : [])
    ];
    return parts.length ? parts.join('; ') : `content of ${listed(named(sources, name, 'source'))} changed`;
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
  cold: { label?: string; seeds?: boolean } = {},
  key?: Buffer
): CacheMiss | null {
  if (!imports.length || !executed.length) return null;
  // Executed steps as BuildKit named them (build arguments and ENV expanded) matched to the Dockerfile's steps, whose
  // names are what the explanation shows: an argument's value never appears in it.
  const order = current.steps.filter((s) => executed.some((e) => sameExpanded(s.n, e)));
  const first = order[0]?.n ?? executed[0].replace(/^(\[[^\]]*\]\s*\S+).*$/s, '$1 …');
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
  // Compared keyed when the label is (the real case), plain when both are (tests of the comparison itself).
  const cmp = key ? keyFingerprints(current, key) : current;
  if (previous.file !== cmp.file || previous.target !== cmp.target) {
    const which = key ? 'another Dockerfile or target' : `${previous.file}, target ${previous.target || '(last stage)'}`;
    return { step: first, reason: `the cache ref ${found[0].ref} held another image (${which})`, laterSteps };
  }
  const now = order[0];
  if (!now) return { step: first, reason: 'not a step of this Dockerfile as read here', laterSteps };
  const cmpOf = (s: StepFingerprint) => cmp.steps[current.steps.indexOf(s)];
  const wasOf = (s: StepFingerprint) => {
    const c = cmpOf(s);
    const ni = c.ni ?? instructionOf(c.n);
    return previous.steps.find((p) => p.n === c.n) ?? previous.steps.find((p) => p.st === c.st && (p.ni ?? instructionOf(p.n)) === ni) ?? null;
  };
  const changeOf = (s: StepFingerprint): string | null => {
    const was = wasOf(s);
    if (!was) return 'new step, or its instruction text changed (no such step in the cached build)';
    const c = cmpOf(s);
    // Plain names of this step's arguments, sources and files, by their keyed (or plain) key.
    const names = new Map<string, string>();
    for (const r of [s.a, s.s, s.f]) for (const k of Object.keys(r ?? {})) names.set(key ? keyedDigest(key, k) : k, k);
    const base = { changed: previous.bases[was.st] !== cmp.bases[c.st], now: current.bases[s.st], ...(key ? {} : { was: previous.bases[was.st] }) };
    return stepChange(was, c, base, key ? (k) => names.get(k) ?? null : asIs);
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
