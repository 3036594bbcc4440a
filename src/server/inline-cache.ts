// BuildKit 0.8 inline-cache metadata and its repair, pure: decode, merge and encode image configs and manifests
// (repairInlineCache and helpers: bytes in, bytes out). The fix for moby/buildkit#1981 ("cache-from with
// BUILDKIT_INLINE_CACHE does not work every second time"); cache-repair.ts decides when to apply it to a pushed
// cache tag and moves the bytes.
//
// The inline cache is `moby.buildkit.cache.v0` in the image config: base64 of a JSON ARRAY of cache records
// (BuildKit's inline exporter marshals CacheConfig.Records only; the importer rebuilds the layers list from the
// image manifest, layer i having parent i-1). So a record's result {"layer": k} means "the chain of the
// manifest's layers 0..k". When a build's steps were hits from an IMPORTED cache, BuildKit 0.8 exports those
// records without "layers", and the next fresh builder importing the image misses every step.
//
// The repair gives such a record the result its twin had in the previous cache of the same tag, when:
//  - the twin is the SAME cache key: same digest and, recursively, the same inputs (selectors and linked
//    records). A digest alone is not a key: "COPY src/ ." has the same digest whatever src/ holds; what differs
//    is the linked context record. Matching digests only would hand a step a result built from other inputs.
//  - the twin's layer chain (previous manifest's layers 0..k) is exactly the new manifest's layers 0..k, so the
//    importer finds the same blobs at the same index (it reads layers from this manifest only).
// Everything else in the config is kept byte for byte: only the base64 value is replaced.
import { createHash } from 'node:crypto';

export const INLINE_CACHE_KEY = 'moby.buildkit.cache.v0';
/** Configs (and manifests) larger than this are not read, let alone rewritten. */
export const MAX_CONFIG_BYTES = 4 << 20;
export const DOCKER_MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
export const OCI_MANIFEST_V1 = 'application/vnd.oci.image.manifest.v1+json';
/** Single-image manifests: the only kinds whose config can carry an inline cache we know how to repair. */
export const IMAGE_MANIFEST_TYPES: readonly string[] = [DOCKER_MANIFEST_V2, OCI_MANIFEST_V1];

/** A content digest as registries name blobs and manifests (`sha256:<hex>`). */
export const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-f0-9]{32,}$/;

export interface CacheResult {
  layer: number;
  createdAt?: string;
}
export interface CacheInput {
  selector?: string;
  link: number;
}
export interface CacheRecord {
  layers?: CacheResult[];
  chains?: unknown[]; // ChainedResults (newer BuildKit): a result too; never touched
  digest: string;
  inputs?: CacheInput[][];
  [k: string]: unknown;
}

export interface ImageManifest {
  mediaType?: string;
  config: { mediaType?: string; digest: string; size: number };
  layers: string[]; // blob digests, bottom first
}

/** One pushed image of a cache tag: its manifest's layer digests and its config's exact bytes. */
export interface InlineCacheImage {
  layers: string[];
  config: Buffer;
}

export type RepairOutcome =
  | { repaired: true; config: Buffer; records: string[] } // records: digests that got their layers back
  | { repaired: false; reason: string };

export function sha256Digest(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const isIndex = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0;

/** A single-image manifest (Docker schema 2 or OCI); throws on anything else (lists, indexes, schema 1). */
export function parseImageManifest(bytes: Buffer): ImageManifest {
  if (bytes.length > MAX_CONFIG_BYTES) throw new Error(`manifest is larger than ${MAX_CONFIG_BYTES} bytes`);
  const m: unknown = JSON.parse(bytes.toString('utf8'));
  if (!isObject(m) || m.schemaVersion !== 2) throw new Error('not a schema 2 manifest');
  if (m.mediaType !== undefined && !IMAGE_MANIFEST_TYPES.includes(m.mediaType as string)) throw new Error(`not an image manifest (${String(m.mediaType)})`);
  const c = m.config;
  if (!isObject(c) || typeof c.digest !== 'string' || !DIGEST.test(c.digest) || !isIndex(c.size)) throw new Error('manifest has no valid config descriptor');
  if (!Array.isArray(m.layers)) throw new Error('manifest has no layers');
  const layers = m.layers.map((l) => {
    if (!isObject(l) || typeof l.digest !== 'string' || !DIGEST.test(l.digest)) throw new Error('manifest has an invalid layer descriptor');
    return l.digest;
  });
  return {
    mediaType: m.mediaType as string | undefined,
    config: { mediaType: c.mediaType as string | undefined, digest: c.digest, size: c.size },
    layers
  };
}

/** The manifest with another config descriptor (digest, size); mediaType, layers and the rest unchanged. */
export function manifestWithConfig(bytes: Buffer, config: { digest: string; size: number }): Buffer {
  const m = JSON.parse(bytes.toString('utf8')) as { config: { digest: string; size: number } };
  m.config = { ...m.config, digest: config.digest, size: config.size };
  return Buffer.from(JSON.stringify(m, null, 3), 'utf8'); // Docker's own indentation
}

function validRecords(v: unknown): v is CacheRecord[] {
  if (!Array.isArray(v)) return false;
  for (const r of v) {
    if (!isObject(r) || typeof r.digest !== 'string' || !DIGEST.test(r.digest)) return false;
    if (r.layers !== undefined && !(Array.isArray(r.layers) && r.layers.every((x) => isObject(x) && isIndex(x.layer)))) return false;
    if (r.inputs !== undefined) {
      if (!Array.isArray(r.inputs)) return false;
      for (const slot of r.inputs) {
        if (!Array.isArray(slot)) return false;
        for (const i of slot) {
          if (!isObject(i) || !isIndex(i.link) || i.link >= v.length) return false;
          if (i.selector !== undefined && typeof i.selector !== 'string') return false;
        }
      }
    }
  }
  return true;
}

interface Decoded {
  json: Record<string, unknown>;
  raw: string; // the base64 value as it appears in the config
  records: CacheRecord[];
  diffIds: number;
}

/** The inline cache records of an image config; null when the config has none. Throws when malformed. */
export function decodeInlineCache(config: Buffer): CacheRecord[] | null {
  return decode(config)?.records ?? null;
}

function decode(config: Buffer): Decoded | null {
  if (config.length > MAX_CONFIG_BYTES) throw new Error(`image config is larger than ${MAX_CONFIG_BYTES} bytes`);
  const json: unknown = JSON.parse(config.toString('utf8'));
  if (!isObject(json)) throw new Error('image config is not a JSON object');
  const raw = json[INLINE_CACHE_KEY];
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(raw)) throw new Error(`${INLINE_CACHE_KEY} is not base64`);
  const records: unknown = JSON.parse(Buffer.from(raw, 'base64').toString('utf8'));
  // BuildKit's inline format is an array of records. The {"layers","records"} CacheConfig object is the format of
  // registry-type cache manifests, never of an image config: refuse rather than guess.
  if (!validRecords(records)) throw new Error(`${INLINE_CACHE_KEY} is not an array of cache records`);
  const rootfs = json.rootfs;
  const diffIds = isObject(rootfs) && Array.isArray(rootfs.diff_ids) ? rootfs.diff_ids.length : -1;
  return { json, raw, records, diffIds };
}

/**
 * A structural key per record: digest plus, per input slot, the sorted set of (selector, key of linked record).
 * Two records with equal keys are the same cache key to BuildKit, whichever image they came from. Throws on a
 * cycle (BuildKit never writes one).
 */
function recordKeys(records: CacheRecord[]): string[] {
  const keys: Array<string | undefined> = new Array(records.length);
  const visiting = new Set<number>();
  const keyOf = (i: number): string => {
    const done = keys[i];
    if (done !== undefined) return done;
    if (visiting.has(i)) throw new Error('cache records link in a cycle');
    visiting.add(i);
    const r = records[i];
    const slots = (r.inputs ?? []).map((slot) => [...new Set(slot.map((inp) => `${inp.selector ?? ''}\u0000${keyOf(inp.link)}`))].sort());
    visiting.delete(i);
    const k = createHash('sha256')
      .update(JSON.stringify([r.digest, slots]))
      .digest('hex');
    keys[i] = k;
    return k;
  };
  return records.map((_, i) => keyOf(i));
}

const hasResult = (r: CacheRecord): boolean => (r.layers?.length ?? 0) > 0 || (Array.isArray(r.chains) && r.chains.length > 0);

/**
 * Gives records of `next` that lost their layer results the results of the same cache key in a previous image
 * of the tag, where the same blobs sit at the same place in `next`'s manifest. `previous` is nearest first (the
 * tag's content before this push, then the one before that, ...); the first image with a usable twin wins.
 * Returns the new config bytes, or why nothing changed.
 */
export function repairInlineCache(next: InlineCacheImage, previous: InlineCacheImage | readonly InlineCacheImage[] | null): RepairOutcome {
  let n: Decoded | null;
  try {
    n = decode(next.config);
  } catch (err) {
    return { repaired: false, reason: `new config: ${(err as Error).message}` };
  }
  if (!n) return { repaired: false, reason: 'no inline cache in the image config' };
  const missing = n.records.map((r, i) => (hasResult(r) ? -1 : i)).filter((i) => i >= 0);
  if (missing.length === 0) return { repaired: false, reason: 'every cache record has its layers' };
  if (n.diffIds !== next.layers.length) return { repaired: false, reason: 'new image: manifest layers and config diff_ids disagree' };
  const previousList = previous === null ? [] : Array.isArray(previous) ? previous : [previous as InlineCacheImage];
  if (previousList.length === 0) return { repaired: false, reason: 'no previous cache for this tag' };
  let nKeys: string[];
  try {
    nKeys = recordKeys(n.records);
  } catch (err) {
    return { repaired: false, reason: `new config: ${(err as Error).message}` };
  }

  // Per cache key, the results found in the previous images whose layer chain is also the new image's.
  const usable = new Map<string, CacheResult[]>();
  const problems: string[] = [];
  for (const [at, prev] of previousList.entries()) {
    let p: Decoded | null;
    let pKeys: string[];
    try {
      p = decode(prev.config);
      if (!p) throw new Error('no inline cache');
      if (p.diffIds !== prev.layers.length) throw new Error('manifest layers and config diff_ids disagree');
      pKeys = recordKeys(p.records);
    } catch (err) {
      problems.push(`previous image ${at}: ${(err as Error).message}`);
      continue;
    }
    const found = new Map<string, CacheResult[]>();
    p.records.forEach((r, i) => {
      for (const res of r.layers ?? []) {
        const k = res.layer;
        // Same blobs 0..k in both manifests: the importer finds the twin's result at index k of the new image.
        if (k >= prev.layers.length || k >= next.layers.length) continue;
        let same = true;
        for (let j = 0; j <= k && same; j++) same = prev.layers[j] === next.layers[j];
        const list = found.get(pKeys[i]) ?? [];
        if (same && !list.some((x) => x.layer === k)) list.push(res.createdAt === undefined ? { layer: k } : { layer: k, createdAt: res.createdAt });
        if (list.length) found.set(pKeys[i], list);
      }
    });
    for (const [key, list] of found) if (!usable.has(key)) usable.set(key, list); // nearest image first
  }

  const repaired: string[] = [];
  const records = n.records.map((r) => ({ ...r }));
  for (const i of missing) {
    const results = usable.get(nKeys[i]);
    if (!results) continue;
    // BuildKit's own field order: layers first.
    const { layers: _drop, ...rest } = records[i];
    records[i] = { layers: results.map((x) => ({ ...x })), ...rest };
    repaired.push(records[i].digest);
  }
  if (repaired.length === 0) {
    const why = problems.length === previousList.length ? problems.join('; ') : 'no record without layers has a twin with the same blobs in a previous cache';
    return { repaired: false, reason: why };
  }

  const encoded = Buffer.from(JSON.stringify(records), 'utf8').toString('base64');
  const text = next.config.toString('utf8');
  const needle = `"${n.raw}"`;
  const at = text.indexOf(needle);
  if (at < 0 || text.indexOf(needle, at + 1) >= 0) return { repaired: false, reason: `${INLINE_CACHE_KEY} value is not found exactly once in the raw config` };
  const config = Buffer.from(text.slice(0, at) + `"${encoded}"` + text.slice(at + needle.length), 'utf8');
  if (config.length > MAX_CONFIG_BYTES) return { repaired: false, reason: `the repaired config would exceed ${MAX_CONFIG_BYTES} bytes` };
  return { repaired: true, config, records: repaired };
}
