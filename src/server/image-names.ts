// Image names on a shared pipeline builder: who set each one, and whether a lease's read of a name would silently
// get another job's image.
//
// Jobs of one pipeline share one builder, as processes share one Docker host: `app:test` is one name for all of
// them. Two parallel jobs that both build `app:test` leave it naming the image of whichever finished last, and the
// other job's later `docker push|save|image inspect|tag|history app:test` would act on that image without a word.
// The builder's front (tls-proxy.ts) records, after each build and tag, which lease last changed what each name
// points to (compared by image Id, never by parsing the build stream), and asks `ImageNameLedger` before each read
// of a name. Pure: no I/O; the front does the engine calls.
import { stripVersion } from './engine-api-policy';

/**
 * A reference as a request names an image: an image Id (`sha256:…`, or 64 hex digits), a digest reference
 * (`name@sha256:…`), or a name with its tag when one was given (`tag: null` means none was: docker reads `latest`,
 * except that a push without a tag pushes every tag of the repository).
 */
export type ImageRef = { kind: 'id' } | { kind: 'digest' } | { kind: 'name'; repository: string; tag: string | null };

const TAG = /^[\w][\w.-]{0,127}$/;
// A path component as the docker reference grammar allows it (lower case; separators inside).
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOCKER_HUB = new Set(['docker.io', 'index.docker.io']);

/**
 * Parses a reference as docker normalises it (distribution/reference ParseNormalizedNamed): no registry host means
 * Docker Hub (`docker.io`), a Hub name without a namespace is in `library/`, and a registry host (with a dot or a
 * port, or `localhost`) is kept as written, so `localhost:5000/app` stays apart from `app`. Returns null for text
 * that is no valid reference (the engine refuses those itself).
 */
export function parseImageRef(raw: string): ImageRef | null {
  if (!raw || raw.length > 512) return null;
  if (/^sha256:/i.test(raw) || /^[0-9a-f]{64}$/.test(raw)) return { kind: 'id' };
  if (raw.includes('@')) return { kind: 'digest' };
  const slash = raw.lastIndexOf('/');
  const colon = raw.lastIndexOf(':');
  const tag = colon > slash ? raw.slice(colon + 1) : null;
  const name = tag === null ? raw : raw.slice(0, colon);
  if (tag !== null && !TAG.test(tag)) return null;
  const parts = name.split('/');
  let domain = 'docker.io';
  if (parts.length > 1 && (/[.:]/.test(parts[0]) || parts[0] === 'localhost' || parts[0] !== parts[0].toLowerCase())) {
    domain = parts.shift()!;
    if (DOCKER_HUB.has(domain)) domain = 'docker.io';
  }
  if (!parts.every((p) => COMPONENT.test(p))) return null;
  if (domain === 'docker.io' && parts.length === 1) parts.unshift('library');
  return { kind: 'name', repository: `${domain}/${parts.join('/')}`, tag };
}

/** The canonical name (`docker.io/library/app:test`) of a name reference, `latest` when untagged; null otherwise. */
export function normaliseImageName(raw: string): string | null {
  const ref = parseImageRef(raw);
  return ref?.kind === 'name' ? `${ref.repository}:${ref.tag ?? 'latest'}` : null;
}

/** A canonical name the way docker prints it: `docker.io/library/app:test` → `app:test`. */
export function familiarImageName(name: string): string {
  if (name.startsWith('docker.io/library/') && !name.slice(18).includes('/')) return name.slice(18);
  return name.startsWith('docker.io/') ? name.slice(10) : name;
}

/**
 * What one Docker Engine API request does with image names (all canonical): `reads` names whose image it reads
 * (inspect, history, save, push, the source of a tag), `readsAllTagsOf` a repository whose every tag it pushes
 * (a push without a tag), `sets` names it may point at an image (a build's `t=`, a tag's target). Reads by Id or
 * digest are not listed: they name one image whatever happened to a name.
 */
export interface ImageAccess {
  reads: string[];
  readsAllTagsOf: string | null;
  sets: string[];
}

const NAMED_ROUTE = /^\/images\/(.+)\/(json|history|get|push|tag)$/;

/** Reads a request target (path and query, not decoded) as `ImageAccess`; nothing for any other route. */
export function imageAccess(method: string, url: string): ImageAccess {
  const out: ImageAccess = { reads: [], readsAllTagsOf: null, sets: [] };
  const q = url.indexOf('?');
  const path = stripVersion(q < 0 ? url : url.slice(0, q));
  const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
  const m = method.toUpperCase();
  const add = (list: string[], raw: string): void => {
    const n = normaliseImageName(raw);
    if (n && !list.includes(n)) list.push(n);
  };
  if (m === 'POST' && path === '/build') {
    for (const t of query.getAll('t')) add(out.sets, t);
    return out;
  }
  if (m === 'GET' && path === '/images/get') {
    for (const n of query.getAll('names')) add(out.reads, n);
    return out;
  }
  const named = NAMED_ROUTE.exec(path);
  if (!named) return out;
  const raw = decode(named[1]);
  const route = named[2];
  if (raw === null || (route === 'push' || route === 'tag' ? m !== 'POST' : m !== 'GET')) return out;
  if (route !== 'push') add(out.reads, raw);
  if (route === 'push') {
    const ref = parseImageRef(raw);
    if (ref?.kind !== 'name') return out;
    const tag = query.get('tag') || ref.tag;
    if (tag) add(out.reads, `${ref.repository}:${tag}`);
    else out.readsAllTagsOf = ref.repository;
  }
  if (route === 'tag') {
    const target = parseImageRef(query.get('repo') ?? '');
    const tag = query.get('tag');
    if (target?.kind === 'name') add(out.sets, `${target.repository}:${tag || target.tag || 'latest'}`);
  }
  return out;
}

function decode(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

/**
 * Per builder: which lease (client cert fingerprint) last made each name point at a new image, and which names each
 * lease set, with the image Id it left there. Leases are told apart by fingerprint only; ids of leases and orgs are
 * never known here, so no message can carry them.
 */
export class ImageNameLedger {
  private readonly names = new Map<string, { imageId: string; setter: string }>();
  private readonly byLease = new Map<string, Map<string, string>>();

  /**
   * After `fingerprint`'s build or tag: `imageId` is what `name` points to now. When that differs from what was last
   * recorded for the name (or nothing was), this lease is the name's setter now; returns whether it became so. The
   * same Id (a failed build, an identical image) changes nothing.
   */
  recordSet(fingerprint: string, name: string, imageId: string): boolean {
    if (this.names.get(name)?.imageId === imageId) return false;
    this.names.set(name, { imageId, setter: fingerprint });
    let own = this.byLease.get(fingerprint);
    if (!own) this.byLease.set(fingerprint, (own = new Map()));
    own.set(name, imageId);
    return true;
  }

  /**
   * The names of `access` that must be checked against the engine before `fingerprint` may read them: names this
   * lease once set whose recorded setter is now another lease. Empty (no engine call needed) for everything else: a
   * lease that never set a name may read it, as a later job pushing what an earlier job built does.
   */
  toVerify(fingerprint: string, access: Pick<ImageAccess, 'reads' | 'readsAllTagsOf'>): string[] {
    const own = this.byLease.get(fingerprint);
    if (!own) return [];
    const names = [...access.reads];
    if (access.readsAllTagsOf) for (const n of own.keys()) if (n.startsWith(`${access.readsAllTagsOf}:`) && !names.includes(n)) names.push(n);
    return names.filter((n) => own.has(n) && this.names.get(n)?.setter !== fingerprint);
  }

  /**
   * The decision for names `toVerify` returned, given what each points to on the engine now (`null`: the name does
   * not exist; the engine will say so). Returns the names to refuse the read for: those pointing at an image other
   * than the one this lease last left there.
   */
  refused(fingerprint: string, names: string[], current: ReadonlyMap<string, string | null>): string[] {
    const own = this.byLease.get(fingerprint);
    return names.filter((n) => {
      const now = current.get(n) ?? null;
      return now !== null && now !== own?.get(n);
    });
  }

  /** A revoked lease's names are forgotten; who set each name stays recorded, for the leases still here. */
  forget(fingerprint: string): void {
    this.byLease.delete(fingerprint);
  }
}

/** The 409 message for a refused read, printed by the docker CLI as "Error response from daemon: <message>". */
export function takenNameMessage(names: string[]): string {
  const shown = names.slice(0, 3).map((n) => `'${familiarImageName(n)}'`);
  if (names.length > 3) shown.push(`${names.length - 3} more`);
  return (
    `Build Cloud: ${shown.join(', ')} on the pipeline's shared builder now ${names.length > 1 ? 'name' : 'names'} another job's image ` +
    `(built after this job's). Give parallel jobs tags of their own (for example with the job name), or set scope: job ` +
    `for a builder of the job's own.`
  );
}
