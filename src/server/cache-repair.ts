// Repairs BuildKit 0.8 inline-cache metadata that lost its layer results (moby/buildkit#1981), on push, in the
// control plane: CacheRepairs decides when to repair a cache tag and reads and writes it through a transport the
// registry proxy supplies (registry-proxy.ts only hooks it into manifest pushes). What a repair does to the bytes,
// and when it is safe, is inline-cache.ts.
import type { Logger } from './log';
import {
  DIGEST,
  DOCKER_MANIFEST_V2,
  IMAGE_MANIFEST_TYPES,
  MAX_CONFIG_BYTES,
  manifestWithConfig,
  parseImageManifest,
  repairInlineCache,
  sha256Digest,
  type InlineCacheImage
} from './inline-cache';

// The registry side: when to repair, reading and writing the tag (the transport is the proxy's).

export interface UpstreamCallOptions {
  headers?: Record<string, string | number>;
  body?: Buffer;
  maxBytes?: number; // a longer response body fails the call; default 64 KiB
  timeoutMs?: number; // default 15 s
}
export interface UpstreamReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}
/** target: a path on the upstream registry (sent with its credentials), or an absolute URL (sent without). */
export type UpstreamCall = (method: string, target: string, o?: UpstreamCallOptions) => Promise<UpstreamReply>;

const MANIFEST_ACCEPT = IMAGE_MANIFEST_TYPES.join(', ');
const MAX_TAG_STATES = 1024;
const MAX_REMEMBERED = 16;
const READ_WAIT_MS = 5_000; // a pull waits at most this long for a repair of its tag
const CLOSE_WAIT_MS = 30_000;

// How long a repair job waits to read the tag it repairs (the upstream call's own default).
const SWEEP_READ_TIMEOUT_MS = 15_000;

interface Landed {
  at: number; // landing order within the tag
  previous: string | null; // what the tag held just before this push (read at its PUT)
}
interface Written {
  of: string; // the client push this manifest is the repaired form of (or a copy of)
  at: number; // the tag's landing count when it was written
}

// Per repository:tag. All pushes of a tag go through this proxy, so it knows which client pushes landed in what
// order, and which manifests it wrote itself.
interface TagState {
  inflight: number; // client pushes begun and not yet landed or failed
  queued: number; // repair jobs queued or running
  tail: Promise<void>; // the per-tag queue: jobs of one tag run one at a time
  sweepWanted: boolean; // a job stood down for a push in flight that may yet fail
  landings: number;
  newest: string; // the client push that landed last
  pushes: Map<string, Landed>; // client pushes that landed (bounded, by digest)
  ours: Map<string, Written>; // manifests the repair wrote (bounded, by digest)
  repairedOf: Map<string, string>; // client push → the repaired manifest written for it (bounded)
}

export class CacheRepairs {
  private readonly tags = new Map<string, TagState>();
  private readonly running = new Set<Promise<void>>();
  private closing = false;

  constructor(
    private readonly call: UpstreamCall,
    private readonly log?: Logger
  ) {}

  /**
   * A client's push of an image manifest to name:tag starts. Call landed() once the registry accepted it (2xx,
   * with the digest it computed and what the tag held before, read before forwarding the push); `res` closing
   * without landed() means the push failed.
   */
  begin(
    name: string,
    tag: string,
    res: { once(event: 'close', listener: () => void): unknown }
  ): { landed: (digest: string, previous: string | null) => void } {
    const state = this.state(`${name}:${tag}`);
    state.inflight++;
    let done = false;
    res.once('close', () => {
      if (done) return;
      done = true;
      state.inflight--;
      if (state.sweepWanted && state.inflight === 0 && !this.closing) this.enqueue(name, tag, state);
    });
    return {
      landed: (digest, previous) => {
        if (done) return;
        done = true;
        state.inflight--;
        const landedBefore = state.newest;
        state.newest = digest;
        const known = state.pushes.get(digest);
        // A re-push of the same image keeps what the tag held before its first push (not the image itself). When
        // the tag could not be read before the push (a busy registry: current() gives up after 2 s so as not to
        // hold the push up), the push that landed just before this one is what the tag held, as far as we know.
        const read = previous ?? (landedBefore && landedBefore !== digest ? landedBefore : null);
        const before = read !== digest ? read : (known?.previous ?? null);
        remember(state.pushes, digest, { at: ++state.landings, previous: known?.previous ?? before });
        if (!this.closing) this.enqueue(name, tag, state);
        // A sibling scope's push that lost records may be repairable from this one (siblingHeads).
        const parent = siblingParent(name);
        for (const [key, s] of parent && !this.closing ? this.tags : []) {
          const i = key.lastIndexOf(':');
          const repo = key.slice(0, i);
          if (repo !== name && key.slice(i + 1) === tag && siblingParent(repo) === parent && s.queued === 0 && s.inflight === 0 && s.newest)
            this.enqueue(repo, tag, s);
        }
      }
    };
  }

  /** The digest name:tag points at now, null when it does not exist or cannot be read (never throws). */
  async current(name: string, tag: string, timeoutMs = 2_000): Promise<string | null> {
    try {
      const r = await this.call('HEAD', `/v2/${name}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT }, timeoutMs });
      const d = r.headers['docker-content-digest'];
      return r.status === 200 && typeof d === 'string' && DIGEST.test(d) ? d : null;
    } catch (err) {
      this.log?.warn(
        { repository: name, tag, err: (err as Error).message },
        'registry proxy: could not read a cache tag (its inline cache will not be repaired)'
      );
      return null;
    }
  }

  /** Waits (at most READ_WAIT_MS) until no repair of name:tag is queued or running. */
  async settled(name: string, tag: string): Promise<void> {
    const state = this.tags.get(`${name}:${tag}`);
    if (!state || state.queued === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([state.tail, new Promise<void>((r) => (timer = setTimeout(r, READ_WAIT_MS)))]);
    clearTimeout(timer);
  }

  async idle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running]);
  }

  /** No new repairs; waits for the queued and running ones (at most CLOSE_WAIT_MS; each call has its own timeout). */
  async close(): Promise<void> {
    this.closing = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.idle(), new Promise<void>((r) => (timer = setTimeout(r, CLOSE_WAIT_MS)))]);
    clearTimeout(timer);
  }

  private state(key: string): TagState {
    let s = this.tags.get(key);
    if (s) {
      this.tags.delete(key); // re-insert: the map's order is least recently used first
    } else {
      s = {
        inflight: 0,
        queued: 0,
        tail: Promise.resolve(),
        sweepWanted: false,
        landings: 0,
        newest: '',
        pushes: new Map(),
        ours: new Map(),
        repairedOf: new Map()
      };
      for (const [k, old] of this.tags) {
        if (this.tags.size < MAX_TAG_STATES) break;
        if (old.queued === 0 && old.inflight === 0) this.tags.delete(k);
      }
    }
    this.tags.set(key, s);
    return s;
  }

  private enqueue(name: string, tag: string, state: TagState): void {
    state.queued++;
    const job = state.tail.then(async () => {
      try {
        await this.sweep(name, tag, state);
      } catch (err) {
        this.log?.warn({ repository: name, tag, err: (err as Error).message }, 'registry proxy: inline cache repair failed; the push stands as it was');
      }
    });
    state.tail = job.finally(() => state.queued--);
    const tracked = state.tail.finally(() => this.running.delete(tracked));
    this.running.add(tracked);
  }

  /**
   * The tag's earlier contents to take results from, nearest first: what it held before push `d`, as repaired if
   * its repair replaced it; where it was not repaired, also what the tag held before THAT push, and so on.
   */
  private previousChain(state: TagState, d: string): string[] {
    const chain: string[] = [];
    let p = state.pushes.get(d)?.previous ?? null;
    while (p && p !== d && chain.length < 4 && !chain.includes(p)) {
      const repaired = state.repairedOf.get(p);
      chain.push(repaired ?? p);
      if (repaired) break; // a repaired manifest already carries what its own previous ones could give
      p = state.pushes.get(p)?.previous ?? null;
    }
    return chain;
  }

  /**
   * One job per landed push, run one at a time per tag. Only the last queued job acts, once no push of the tag
   * is in flight: it brings the tag to the repaired form of the client push the registry kept last. The
   * registry has no compare-and-swap; a client push that lands while a repair is written is caught by its own
   * job, which finds the repair older than that push and writes the push (repaired) back.
   */
  private async sweep(name: string, tag: string, state: TagState): Promise<void> {
    if (state.queued > 1) return; // a later job will look at the tag after more pushes landed
    if (state.inflight > 0) {
      state.sweepWanted = true; // that push's landing queues the next job (or its failure, see begin())
      return;
    }
    state.sweepWanted = false;
    // In the background: no client waits on this read, so a busy registry gets the upstream timeout, not 2 s.
    const current = await this.current(name, tag, SWEEP_READ_TIMEOUT_MS);
    if (!current) return;
    let target: string;
    const written = state.ours.get(current);
    if (state.pushes.has(current)) {
      target = current; // a client push, as it landed: repair it if it lost layers
    } else if (written) {
      const newest = state.pushes.get(state.newest);
      if (!newest || newest.at <= written.at) return; // our repair of the newest push: nothing to do
      target = state.newest; // our repair landed after a newer client push: bring that push back
    } else {
      return this.log?.debug({ repository: name, tag, current }, 'registry proxy: cache tag holds a manifest not pushed through this proxy; left alone');
    }
    const repaired = state.repairedOf.get(target);
    if (repaired) {
      // Repaired before, and an older write of ours (or the push itself) landed on top: write the repair again.
      if (current !== repaired) await this.write(name, tag, state, target, await this.getVerified(name, 'manifests', repaired, { accept: MANIFEST_ACCEPT }));
      return;
    }

    const ctx = { repository: name, tag, digest: target };
    const manifestBytes = await this.getVerified(name, 'manifests', target, { accept: MANIFEST_ACCEPT });
    const manifest = parseImageManifest(manifestBytes);
    // The tag's own earlier images first, then what the sibling scopes of the project hold at the same tag.
    const previous: Array<{ repo: string; digest: string }> = [
      ...this.previousChain(state, target).map((digest) => ({ repo: name, digest })),
      ...this.siblingHeads(name, tag)
    ];
    let body: Buffer | null = null;
    let records = 0;
    if (previous.length && manifest.config.size <= MAX_CONFIG_BYTES) {
      const next: InlineCacheImage = { layers: manifest.layers, config: await this.getVerified(name, 'blobs', manifest.config.digest) };
      const prev: InlineCacheImage[] = [];
      for (const { repo, digest: d } of previous) {
        try {
          const m = parseImageManifest(await this.getVerified(repo, 'manifests', d, { accept: MANIFEST_ACCEPT }));
          if (m.config.size <= MAX_CONFIG_BYTES) prev.push({ layers: m.layers, config: await this.getVerified(repo, 'blobs', m.config.digest) });
        } catch (err) {
          if (repo === name) throw err;
          this.log?.debug({ ...ctx, sibling: repo, err: (err as Error).message }, 'registry proxy: a sibling scope could not be read for the repair');
        }
      }
      const outcome = repairInlineCache(next, prev);
      if (outcome.repaired) {
        const config = { digest: sha256Digest(outcome.config), size: outcome.config.length };
        await this.uploadBlob(name, config.digest, outcome.config);
        body = manifestWithConfig(manifestBytes, config);
        records = outcome.records.length;
      } else {
        this.log?.debug({ ...ctx, reason: outcome.reason }, 'registry proxy: inline cache left as pushed');
      }
    }
    if (body) {
      const d = await this.write(name, tag, state, target, body);
      remember(state.repairedOf, target, d);
      this.log?.info(
        { ...ctx, repaired: d, records, from: previous },
        'registry proxy: repaired inline cache records that lost their layers (moby/buildkit#1981)'
      );
    } else if (current !== target) {
      await this.write(name, tag, state, target, manifestBytes);
      this.log?.info({ ...ctx, replaced: current }, 'registry proxy: put the newest push of a cache tag back over an older repair');
    }
  }

  /**
   * Cache scopes of one project (`<org>/<project>/cache/<scope>`) share their base layers: when a scope's first push
   * lost records (moby/buildkit#1981; two jobs' concurrent builds on one builder merge their common steps, and the
   * export of the one that did not run them keeps no layers for them), its own tag has nothing earlier to repair
   * from, but a sibling scope pushed at the same tag may hold the very records with the same blobs. The newest
   * client push of each sibling seen by this proxy (its repaired form where there is one), at most MAX_SIBLINGS.
   * The same checks apply as for the tag's own images: the same cache key, the same blobs 0..k.
   */
  private siblingHeads(name: string, tag: string): Array<{ repo: string; digest: string }> {
    const parent = siblingParent(name);
    if (!parent) return [];
    const out: Array<{ repo: string; digest: string }> = [];
    for (const [key, s] of this.tags) {
      const i = key.lastIndexOf(':');
      const repo = key.slice(0, i);
      if (repo === name || key.slice(i + 1) !== tag || siblingParent(repo) !== parent || !s.newest) continue;
      out.push({ repo, digest: s.repairedOf.get(s.newest) ?? s.newest });
    }
    return out.slice(-MAX_SIBLINGS);
  }

  /** Writes the tag as the (repaired) form of client push `of`. */
  private async write(name: string, tag: string, state: TagState, of: string, body: Buffer): Promise<string> {
    // Counted BEFORE the write: a push landing while it is under way may have landed before it or after it, and
    // is then taken to be newer (its job finds this write and puts that push back, repaired).
    const at = state.landings;
    const d = await this.putManifest(name, tag, body, parseImageManifest(body).mediaType ?? DOCKER_MANIFEST_V2);
    if (d !== of) remember(state.ours, d, { of, at }); // the push's own bytes stay that push
    return d;
  }

  /** A manifest or blob of this repository, bounded and checked against its digest. */
  private async getVerified(name: string, kind: 'manifests' | 'blobs', digest: string, headers: Record<string, string> = {}): Promise<Buffer> {
    let r = await this.call('GET', `/v2/${name}/${kind}/${digest}`, { headers, maxBytes: MAX_CONFIG_BYTES });
    const loc = r.headers.location;
    if (kind === 'blobs' && r.status >= 300 && r.status < 400 && typeof loc === 'string') {
      // A blob storage redirect (S3 and the like): an absolute URL is fetched without the registry's credentials.
      const u = new URL(loc, 'http://upstream.invalid');
      r = await this.call('GET', u.host === 'upstream.invalid' ? `${u.pathname}${u.search}` : u.toString(), { maxBytes: MAX_CONFIG_BYTES });
    }
    if (r.status !== 200) throw new Error(`GET ${kind}/${digest}: HTTP ${r.status}`);
    if (sha256Digest(r.body) !== digest) throw new Error(`GET ${kind}/${digest}: content does not match its digest`);
    return r.body;
  }

  private async uploadBlob(name: string, digest: string, data: Buffer): Promise<void> {
    if ((await this.call('HEAD', `/v2/${name}/blobs/${digest}`)).status === 200) return;
    const start = await this.call('POST', `/v2/${name}/blobs/uploads/`, { headers: { 'content-length': 0 } });
    const loc = start.headers.location;
    if (start.status !== 202 || typeof loc !== 'string') throw new Error(`starting a blob upload: HTTP ${start.status}`);
    const u = new URL(loc, 'http://upstream.invalid');
    const put = await this.call('PUT', `${u.pathname}${u.search ? `${u.search}&` : '?'}digest=${encodeURIComponent(digest)}`, {
      headers: { 'content-type': 'application/octet-stream' },
      body: data
    });
    if (put.status !== 201) throw new Error(`uploading the repaired config: HTTP ${put.status}`);
  }

  private async putManifest(name: string, tag: string, body: Buffer, mediaType: string): Promise<string> {
    const r = await this.call('PUT', `/v2/${name}/manifests/${tag}`, { headers: { 'content-type': mediaType }, body });
    if (r.status !== 201) throw new Error(`PUT manifests/${tag}: HTTP ${r.status} ${r.body.toString('utf8').slice(0, 200)}`);
    return sha256Digest(body);
  }
}

const MAX_SIBLINGS = 8;

/** `<org>/<project>/cache` for a scope repository `<org>/<project>/cache/<scope>`, else ''. */
function siblingParent(name: string): string {
  const i = name.lastIndexOf('/');
  // Not `.../cache/cache`: that is a project named "<project>/cache"'s unscoped repository, not a scope.
  return i > 0 && name.slice(0, i).endsWith('/cache') && name.slice(i + 1) !== 'cache' ? name.slice(0, i) : '';
}

function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_REMEMBERED) map.delete(map.keys().next().value as string);
}
