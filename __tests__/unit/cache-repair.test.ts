// The inline-cache repair (moby/buildkit#1981) on REAL configs and manifests of three successive pipelines
// (__tests__/fixtures/inline-cache/README.md), then the per-tag orchestration against an in-memory registry.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { CacheRepairs, type UpstreamCall, type UpstreamCallOptions } from '../../src/server/cache-repair';
import {
  INLINE_CACHE_KEY,
  MAX_CONFIG_BYTES,
  decodeInlineCache,
  manifestWithConfig,
  parseImageManifest,
  repairInlineCache,
  sha256Digest,
  type CacheRecord,
  type InlineCacheImage
} from '../../src/server/inline-cache';

const FIXTURES = path.join(__dirname, '../fixtures/inline-cache');
const read = (name: string): Buffer => fs.readFileSync(path.join(FIXTURES, name));

interface Pipeline {
  manifest: Buffer;
  config: Buffer;
  layers: string[];
}
function pipeline(name: string): Pipeline {
  const manifest = read(`${name}.manifest.json`);
  const config = read(`${name}.config.json`);
  return { manifest, config, layers: parseImageManifest(manifest).layers };
}
const P1 = pipeline('pipeline1-cold');
const P2 = pipeline('pipeline2-imported');
const P3 = pipeline('pipeline3-missed');
const image = (p: { config: Buffer; layers: string[] }): InlineCacheImage => ({ config: p.config, layers: p.layers });

// Cache keys by record digest (short), from the decoded fixtures.
const RUN_MKDIR = 'sha256:b0211dc4846f7cd52027f21dc0de4bcaff2874d8aca4ecc775ed2e9312ea7f78'; // layer 1
const COPY_DEPS = 'sha256:831bb8f8c106ecd72a2b6bdcb644e52f87a4c3ff9171d2aa46931f5a6f8daa6a'; // layer 2
const RUN_DEPS = 'sha256:4bfdbe6800eb3fc714de424d8a4b4707a1b993f40de244b623c7f485d83ba86f'; // layer 3
const RUN_LOCK = 'sha256:b2d63181bfd1330d4d56b3b8d6d2a9f397c7bb6f0f5a0cf05447973eefad764e'; // layer 4
const COPY_SRC = 'sha256:69b52d4bb0c3849d5eada8209f18a500deeabe578a58ab7cead0a6b5506495d1'; // layer 5, input: the context
const UNTOUCHED = [RUN_MKDIR, COPY_DEPS, RUN_DEPS, RUN_LOCK];

const records = (config: Buffer): CacheRecord[] => decodeInlineCache(config) ?? [];
const record = (config: Buffer, digest: string): CacheRecord => {
  const r = records(config).find((x) => x.digest === digest);
  if (!r) throw new Error(`no record ${digest}`);
  return r;
};
const layerOf = (config: Buffer, digest: string): number[] | undefined => record(config, digest).layers?.map((l) => l.layer);

/** The config with its cache records changed by fn (the rest of the bytes untouched). */
function editRecords(config: Buffer, fn: (rs: CacheRecord[]) => unknown): Buffer {
  const json = JSON.parse(config.toString('utf8'));
  const old = json[INLINE_CACHE_KEY] as string;
  const rs = records(config);
  const replaced = fn(rs) ?? rs;
  const text = config.toString('utf8').replace(`"${old}"`, `"${Buffer.from(JSON.stringify(replaced)).toString('base64')}"`);
  return Buffer.from(text, 'utf8');
}
const withoutValue = (config: Buffer): string => {
  const old = JSON.parse(config.toString('utf8'))[INLINE_CACHE_KEY] as string;
  return config.toString('utf8').replace(old, '');
};

describe('the fixtures are what the bug report says', () => {
  test('byte-exact: each manifest names its config by the sha256 of the config file', () => {
    for (const p of [P1, P2, P3]) expect(parseImageManifest(p.manifest).config.digest).toBe(sha256Digest(p.config));
  });

  test('pipeline 1 has layers for the untouched steps; pipeline 2 (imported them) lost them; blobs 0..4 are shared', () => {
    expect(UNTOUCHED.map((d) => layerOf(P1.config, d))).toEqual([[1], [2], [3], [4]]);
    expect(UNTOUCHED.map((d) => layerOf(P2.config, d))).toEqual([undefined, undefined, undefined, undefined]);
    expect(P2.layers.slice(0, 5)).toEqual(P1.layers.slice(0, 5));
    expect(P2.layers[5]).not.toBe(P1.layers[5]);
  });
});

describe('repairInlineCache on real configs', () => {
  test("pipeline 2 gets pipeline 1's results back for exactly the four untouched steps", () => {
    const out = repairInlineCache(image(P2), image(P1));
    if (!out.repaired) throw new Error(out.reason);
    expect(out.records.sort()).toEqual([...UNTOUCHED].sort());
    expect(UNTOUCHED.map((d) => layerOf(out.config, d))).toEqual([[1], [2], [3], [4]]);
    // createdAt comes with the result; nothing else about the records changes.
    expect(record(out.config, RUN_DEPS).layers).toEqual(record(P1.config, RUN_DEPS).layers);
    const before = records(P2.config);
    const after = records(out.config);
    expect(after.map((r) => ({ ...r, layers: undefined }))).toEqual(before.map((r) => ({ ...r, layers: undefined })));
    for (const [i, r] of before.entries()) if (r.layers) expect(after[i].layers).toEqual(r.layers);
    // The rest of the config is byte for byte the same (history, rootfs, created...).
    expect(withoutValue(out.config)).toBe(withoutValue(P2.config));
    expect(out.config.length).toBeLessThan(P2.config.length + 1024);
  });

  test('the repaired config is what pipeline 1 had for those steps: the importer finds the same blobs at those indexes', () => {
    const out = repairInlineCache(image(P2), image(P1));
    if (!out.repaired) throw new Error(out.reason);
    for (const d of UNTOUCHED) {
      const k = layerOf(out.config, d)![0];
      expect(P2.layers.slice(0, k + 1)).toEqual(P1.layers.slice(0, k + 1));
    }
  });

  test('idempotent: repairing again, or repairing the repaired config, changes nothing more', () => {
    const a = repairInlineCache(image(P2), image(P1));
    const b = repairInlineCache(image(P2), image(P1));
    if (!a.repaired || !b.repaired) throw new Error('not repaired');
    expect(b.config.equals(a.config)).toBe(true);
    const again = repairInlineCache({ config: a.config, layers: P2.layers }, image(P1));
    expect(again).toEqual({ repaired: false, reason: expect.stringMatching(/no record without layers has a twin/) });
  });

  test('transitively: the repaired pipeline 2 repairs the next push that lost the same results', () => {
    const p2r = repairInlineCache(image(P2), image(P1));
    if (!p2r.repaired) throw new Error(p2r.reason);
    const out = repairInlineCache(image(P2), { config: p2r.config, layers: P2.layers });
    if (!out.repaired) throw new Error(out.reason);
    expect(UNTOUCHED.map((d) => layerOf(out.config, d))).toEqual([[1], [2], [3], [4]]);
    // With an unrepaired nearest previous image, the older one further down the list still serves.
    const chain = repairInlineCache(image(P2), [image(P2), image(P1)]);
    if (!chain.repaired) throw new Error(chain.reason);
    expect(chain.records.sort()).toEqual([...UNTOUCHED].sort());
  });

  test.each<[string, () => InlineCacheImage, () => InlineCacheImage | InlineCacheImage[] | null, RegExp]>([
    ['no previous cache', () => image(P2), () => null, /no previous cache/],
    ['an empty list of previous images', () => image(P2), () => [], /no previous cache/],
    // Pipeline 3 rebuilt everything: its blobs from layer 1 on are not pipeline 1's, so no chain matches.
    ["other blobs at the twin's layers", () => ({ config: P2.config, layers: P3.layers }), () => image(P1), /no record without layers has a twin/],
    ['the previous image is the one that lost them too', () => image(P2), () => image(P2), /no record without layers has a twin/],
    ['a cold build (nothing lost but source records, which never have layers)', () => image(P1), () => image(P2), /no record without layers has a twin/],
    [
      'manifest and config disagree on the number of layers',
      () => ({ config: P2.config, layers: P2.layers.slice(0, 7) }),
      () => image(P1),
      /diff_ids disagree/
    ],
    [
      'a previous image whose manifest and config disagree',
      () => image(P2),
      () => ({ config: P1.config, layers: P1.layers.slice(0, 7) }),
      /previous image 0: .*diff_ids disagree/
    ],
    [
      'a config without an inline cache',
      () => ({ config: Buffer.from('{"architecture":"amd64","rootfs":{"diff_ids":[]}}'), layers: [] }),
      () => image(P1),
      /no inline cache/
    ],
    ['a cache value that is not base64', () => ({ config: Buffer.from(`{"${INLINE_CACHE_KEY}":"not base64!"}`), layers: [] }), () => image(P1), /not base64/],
    ['a config that is not JSON', () => ({ config: Buffer.from('{"architecture":'), layers: [] }), () => image(P1), /new config/],
    // The {"layers","records"} object is the registry-cache format, not what BuildKit puts in an image config.
    [
      'the CacheConfig object format',
      () => ({ config: editRecords(P2.config, (rs) => ({ layers: [], records: rs })), layers: P2.layers }),
      () => image(P1),
      /not an array of cache records/
    ],
    [
      'a link out of range',
      () => ({
        config: editRecords(P2.config, (rs) => {
          rs[1].inputs = [[{ link: 99 }]];
        }),
        layers: P2.layers
      }),
      () => image(P1),
      /not an array of cache records/
    ],
    [
      'records that link in a cycle',
      () => ({
        config: editRecords(P2.config, (rs) => {
          rs[0].inputs = [[{ link: 1 }]];
          rs[1].inputs = [[{ link: 0 }]];
        }),
        layers: P2.layers
      }),
      () => image(P1),
      /cycle/
    ],
    [
      'a config over the size limit',
      () => ({ config: Buffer.concat([P2.config, Buffer.alloc(MAX_CONFIG_BYTES, 32)]), layers: P2.layers }),
      () => image(P1),
      /larger than/
    ]
  ])('nothing changes: %s', (_name, next, previous, reason) => {
    expect(repairInlineCache(next(), previous())).toEqual({ repaired: false, reason: expect.stringMatching(reason) });
  });

  test('only the results whose whole chain is shared: blobs 0..2 shared repairs layers 1 and 2, not 3 and 4', () => {
    const layers = [...P1.layers.slice(0, 3), ...P3.layers.slice(3)];
    const out = repairInlineCache({ config: P2.config, layers }, image(P1));
    if (!out.repaired) throw new Error(out.reason);
    expect(out.records.sort()).toEqual([RUN_MKDIR, COPY_DEPS].sort());
    expect(UNTOUCHED.map((d) => layerOf(out.config, d))).toEqual([[1], [2], undefined, undefined]);
  });

  test('a digest alone is not a cache key: "COPY src/" after a change of src/ never gets the old result', () => {
    // Same digest in both pipelines, but its context input is another record (the changed files). Even with all
    // of pipeline 1's blobs in place, giving it pipeline 1's layer 5 would serve the old src/.
    expect(record(P2.config, COPY_SRC).inputs).toEqual(record(P1.config, COPY_SRC).inputs); // same link indexes...
    const ctx = (c: Buffer): string => records(c)[record(c, COPY_SRC).inputs![1][0].link].digest;
    expect(ctx(P2.config)).not.toBe(ctx(P1.config)); // ...to different context records
    const lost = editRecords(P2.config, (rs) => {
      delete rs.find((r) => r.digest === COPY_SRC)!.layers;
    });
    const out = repairInlineCache({ config: lost, layers: P1.layers }, image(P1));
    if (!out.repaired) throw new Error(out.reason);
    expect(out.records).not.toContain(COPY_SRC);
    expect(layerOf(out.config, COPY_SRC)).toBeUndefined();
    expect(out.records.sort()).toEqual([...UNTOUCHED].sort());
  });

  test('records with results keep them, even where the previous image has others', () => {
    const out = repairInlineCache(image(P3), image(P1));
    expect(out.repaired).toBe(false); // pipeline 3 has every layer of its own
  });
});

describe('manifests', () => {
  test('manifestWithConfig changes only the config digest and size', () => {
    const m = manifestWithConfig(P2.manifest, { digest: sha256Digest(Buffer.from('x')), size: 1 });
    const a = JSON.parse(P2.manifest.toString('utf8'));
    const b = JSON.parse(m.toString('utf8'));
    expect(b.config).toEqual({ ...a.config, digest: sha256Digest(Buffer.from('x')), size: 1 });
    expect({ ...b, config: null }).toEqual({ ...a, config: null });
    expect(m.toString('utf8')).toBe(
      P2.manifest
        .toString('utf8')
        .replace(a.config.digest, sha256Digest(Buffer.from('x')))
        .replace(`"size": ${a.config.size}`, '"size": 1')
    );
  });

  test.each<[string, object]>([
    ['a manifest list', { schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json', manifests: [] }],
    ['schema 1', { schemaVersion: 1, fsLayers: [] }],
    ['no config', { schemaVersion: 2, layers: [] }],
    ['a bad layer digest', { schemaVersion: 2, config: { digest: `sha256:${'a'.repeat(64)}`, size: 1 }, layers: [{ digest: 'nope' }] }]
  ])('parseImageManifest refuses %s', (_n, m) => {
    expect(() => parseImageManifest(Buffer.from(JSON.stringify(m)))).toThrow();
  });
});

// ---- CacheRepairs against an in-memory registry ----

type Gate = { wait: Promise<void>; open: () => void; arrived: Promise<void>; arrive: () => void };
function gate(): Gate {
  let open = (): void => undefined;
  let arrive = (): void => undefined;
  const wait = new Promise<void>((r) => (open = r));
  const arrived = new Promise<void>((r) => (arrive = r));
  return { wait, open, arrived, arrive };
}

class MemRegistry {
  blobs = new Map<string, Buffer>();
  manifests = new Map<string, Buffer>();
  tags = new Map<string, string>();
  uploads = new Map<string, Buffer | null>();
  log: string[] = [];
  failBlobGets = false;
  /** Holds the repair's next manifest PUT until the returned gate opens. */
  holdNextManifestPut: Gate | null = null;

  readonly call: UpstreamCall = async (method: string, target: string, o: UpstreamCallOptions = {}) => {
    const u = new URL(target, 'http://registry.invalid');
    this.log.push(`${method} ${u.pathname}`);
    const reply = (status: number, body: Buffer = Buffer.alloc(0), headers: Record<string, string> = {}) => ({
      status,
      headers,
      body: method === 'HEAD' ? Buffer.alloc(0) : body
    });
    let m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(u.pathname);
    if (m) {
      const [, name, ref] = m;
      if (method === 'PUT') {
        const hold = this.holdNextManifestPut;
        this.holdNextManifestPut = null;
        if (hold) {
          hold.arrive();
          await hold.wait;
        }
        const d = this.putManifest(name, ref, o.body as Buffer);
        return reply(201, Buffer.alloc(0), { 'docker-content-digest': d });
      }
      const d = ref.startsWith('sha256:') ? ref : this.tags.get(`${name}:${ref}`);
      const body = d ? this.manifests.get(d) : undefined;
      return body ? reply(200, body, { 'docker-content-digest': d as string }) : reply(404);
    }
    m = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(u.pathname);
    if (m) {
      if (this.failBlobGets && method === 'GET') return reply(500);
      const b = this.blobs.get(m[2]);
      return b ? reply(200, b) : reply(404);
    }
    m = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/.exec(u.pathname);
    if (m && method === 'POST') {
      const id = `u${this.uploads.size + 1}`;
      this.uploads.set(id, null);
      return reply(202, Buffer.alloc(0), { location: `http://registry.invalid/v2/${m[1]}/blobs/uploads/${id}?_state=s` });
    }
    if (m && method === 'PUT') {
      const digest = u.searchParams.get('digest') as string;
      if (!this.uploads.has(m[2]) || sha256Digest(o.body as Buffer) !== digest) return reply(400);
      this.blobs.set(digest, o.body as Buffer);
      return reply(201);
    }
    return reply(404);
  };

  putManifest(name: string, tag: string, body: Buffer): string {
    const d = sha256Digest(body);
    this.manifests.set(d, body);
    this.tags.set(`${name}:${tag}`, d);
    return d;
  }

  /** The config records of what name:tag points at. */
  tagConfig(name: string, tag: string): Buffer {
    const m = parseImageManifest(this.manifests.get(this.tags.get(`${name}:${tag}`) as string) as Buffer);
    return this.blobs.get(m.config.digest) as Buffer;
  }
}

const REPO = 'acme/app/cache';
let reg: MemRegistry;
let repairs: CacheRepairs;
let logs: string[];

/** A client's push as the proxy sees it: begin, read the previous, the registry takes it, landed. */
async function clientPush(
  p: { manifest: Buffer; config: Buffer },
  commit = true
): Promise<{ digest: string; commit: () => void; landed: () => void; failed: () => void }> {
  reg.blobs.set(sha256Digest(p.config), p.config);
  const res = new EventEmitter();
  const push = repairs.begin(REPO, 'main', res as never);
  const previous = await repairs.current(REPO, 'main');
  const digest = sha256Digest(p.manifest);
  const doCommit = (): void => void reg.putManifest(REPO, 'main', p.manifest);
  if (commit) doCommit();
  return {
    digest,
    commit: doCommit,
    landed: () => {
      push.landed(digest, previous);
      res.emit('close');
    },
    failed: () => res.emit('close')
  };
}
const pushNow = async (p: { manifest: Buffer; config: Buffer }): Promise<string> => {
  const r = await clientPush(p);
  r.landed();
  return r.digest;
};
/** Pipeline 2's config under a slightly different manifest (another job's image: its last layer differs). */
function variant(p: Pipeline, n: number): Pipeline {
  const m = JSON.parse(p.manifest.toString('utf8'));
  m.layers[m.layers.length - 1].digest = `sha256:${String(n).repeat(64).slice(0, 64)}`;
  return { ...p, manifest: Buffer.from(JSON.stringify(m, null, 3)), layers: m.layers.map((l: { digest: string }) => l.digest) };
}
const lostLayers = (config: Buffer): number => UNTOUCHED.filter((d) => !layerOf(config, d)).length;

beforeEach(() => {
  reg = new MemRegistry();
  logs = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(c, _e, cb) {
        logs.push(String(c));
        cb();
      }
    })
  );
  repairs = new CacheRepairs(reg.call, log);
});

describe('CacheRepairs: one tag, pushes through the proxy', () => {
  test('cold push: left alone; imported push: the tag moves to a repaired manifest, the pushed one stays readable', async () => {
    const d1 = await pushNow(P1);
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).toBe(d1);
    expect(reg.log.filter((l) => l.startsWith('PUT'))).toEqual([]);

    const d2 = await pushNow(P2);
    await repairs.idle();
    const now = reg.tags.get(`${REPO}:main`) as string;
    expect(now).not.toBe(d2);
    expect(reg.manifests.has(d2)).toBe(true);
    const m = parseImageManifest(reg.manifests.get(now) as Buffer);
    expect(m.layers).toEqual(P2.layers);
    expect(m.mediaType).toBe(parseImageManifest(P2.manifest).mediaType);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
    expect(logs.join('')).toMatch(/repaired inline cache records/);
  });

  test('a push whose read of the tag failed (a busy registry) is repaired from the push that landed before it', async () => {
    await pushNow(P1);
    await repairs.idle();
    // The proxy read nothing before this push (current() gave up): previous is null.
    const res = new EventEmitter();
    const push = repairs.begin(REPO, 'main', res as never);
    reg.blobs.set(sha256Digest(P2.config), P2.config);
    reg.putManifest(REPO, 'main', P2.manifest);
    push.landed(sha256Digest(P2.manifest), null);
    res.emit('close');
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).not.toBe(sha256Digest(P2.manifest));
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
  });

  test('the next push that loses them again is repaired from the repaired one (the chain holds)', async () => {
    await pushNow(P1);
    await pushNow(P2);
    await repairs.idle();
    const d3 = await pushNow(variant(P2, 3));
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).not.toBe(d3);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
    expect(parseImageManifest(reg.manifests.get(reg.tags.get(`${REPO}:main`) as string) as Buffer).layers).toEqual(variant(P2, 3).layers);
  });

  test('two pushes land before the first repair runs: only the newer is written, repaired from what came before both', async () => {
    await pushNow(P1);
    await repairs.idle();
    const x = await clientPush(variant(P2, 1));
    const y = await clientPush(variant(P2, 2));
    x.landed();
    y.landed();
    await repairs.idle();
    const now = parseImageManifest(reg.manifests.get(reg.tags.get(`${REPO}:main`) as string) as Buffer);
    expect(now.layers).toEqual(variant(P2, 2).layers);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
    expect(reg.log.filter((l) => l === `PUT /v2/${REPO}/manifests/main`)).toHaveLength(1);
  });

  test.each([
    ['first', 'second'],
    ['second', 'first']
  ])('the registry keeps the push it took last, whatever order the proxy saw them land in (%s landed first)', async (first) => {
    await pushNow(P1);
    await repairs.idle();
    const a = await clientPush(variant(P2, 1), false);
    const b = await clientPush(variant(P2, 2), false);
    a.commit();
    b.commit(); // the registry took b last...
    const order = first === 'first' ? [a, b] : [b, a];
    for (const p of order) p.landed(); // ...and the proxy saw their 2xx in either order
    await repairs.idle();
    const now = parseImageManifest(reg.manifests.get(reg.tags.get(`${REPO}:main`) as string) as Buffer);
    expect(now.layers).toEqual(variant(P2, 2).layers);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
  });

  test('a job stands down while a push of the tag is in flight, and runs after all when that push fails', async () => {
    await pushNow(P1);
    await repairs.idle();
    const x = await clientPush(P2);
    const y = await clientPush(variant(P2, 2), false); // begun, never accepted
    x.landed();
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).toBe(x.digest); // not yet: y might still land
    y.failed();
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).not.toBe(x.digest);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
  });

  test("a repair that lands after a newer push is undone by the newer push's own repair", async () => {
    await pushNow(P1);
    await repairs.idle();
    const hold = gate();
    reg.holdNextManifestPut = hold;
    await pushNow(variant(P2, 1));
    await hold.arrived; // its repair now waits inside the manifest PUT
    const y = await pushNow(variant(P2, 2)); // lands while that repair is in flight
    hold.open(); // the stale repair lands on top of y
    await repairs.idle();
    const now = reg.tags.get(`${REPO}:main`) as string;
    expect(now).not.toBe(y);
    expect(parseImageManifest(reg.manifests.get(now) as Buffer).layers).toEqual(variant(P2, 2).layers);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
  });

  test('two jobs pushing the same image (one shared builder, one tag): repaired once the second lands', async () => {
    await pushNow(P1);
    await repairs.idle();
    const a = await clientPush(P2);
    a.landed();
    const b = await clientPush(P2); // its previous is a's push itself
    b.landed();
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).not.toBe(a.digest);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
  });

  test('a push nobody can repair is left as it was; a failing registry read gives up with a warning', async () => {
    const d = await pushNow(P2); // no previous cache
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).toBe(d);

    await pushNow(P1);
    await repairs.idle();
    reg.failBlobGets = true;
    const d2 = await pushNow(P2);
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).toBe(d2);
    expect(logs.join('')).toMatch(/inline cache repair failed; the push stands as it was/);
  });

  test('configs over the size limit are not even read', async () => {
    await pushNow(P1);
    await repairs.idle();
    const m = JSON.parse(P2.manifest.toString('utf8'));
    m.config.size = MAX_CONFIG_BYTES + 1;
    const d = await pushNow({ manifest: Buffer.from(JSON.stringify(m)), config: P2.config });
    await repairs.idle();
    expect(reg.tags.get(`${REPO}:main`)).toBe(d);
    expect(reg.log.filter((l) => l.startsWith(`GET /v2/${REPO}/blobs/`))).toEqual([]);
  });

  test('a reader of the tag waits for the repair in flight; close() waits for the running and the queued ones', async () => {
    await pushNow(P1);
    await repairs.idle();
    const hold = gate();
    reg.holdNextManifestPut = hold;
    await pushNow(P2);
    await hold.arrived;
    let read = false;
    const reader = repairs.settled(REPO, 'main').then(() => (read = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(read).toBe(false);
    await pushNow(variant(P2, 4)); // queued behind the held repair
    let closed = false;
    const closing = repairs.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(closed).toBe(false);
    hold.open();
    await Promise.all([reader, closing]);
    const now = parseImageManifest(reg.manifests.get(reg.tags.get(`${REPO}:main`) as string) as Buffer);
    expect(now.layers).toEqual(variant(P2, 4).layers);
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(0);
    // After close nothing new is queued.
    await pushNow(variant(P2, 5));
    await repairs.idle();
    expect(lostLayers(reg.tagConfig(REPO, 'main'))).toBe(4);
  });
});

describe('CacheRepairs: sibling cache scopes of one project (issue 11)', () => {
  async function pushTo(repo: string, p: { manifest: Buffer; config: Buffer }): Promise<string> {
    reg.blobs.set(sha256Digest(p.config), p.config);
    const res = new EventEmitter();
    const push = repairs.begin(repo, 'main', res as never);
    const previous = await repairs.current(repo, 'main');
    const digest = reg.putManifest(repo, 'main', p.manifest);
    push.landed(digest, previous);
    res.emit('close');
    return digest;
  }

  test("a scope's first push that lost records is repaired from a sibling scope at the same tag, even one that lands after it", async () => {
    const lost = await pushTo('acme/app/cache/web', P2);
    await repairs.idle();
    expect(reg.tags.get('acme/app/cache/web:main')).toBe(lost); // nothing earlier, no sibling yet: left alone
    // Another project's scope, and project "acme/app/cache"'s unscoped repository: never siblings of acme/app's scopes.
    await pushTo('acme/other/cache/web', P2);
    await pushTo('acme/app/cache/cache', P2);
    await pushTo('acme/app/cache/api', P1); // a sibling with the records, the same blobs 0..4
    await repairs.idle();
    expect(lostLayers(reg.tagConfig('acme/app/cache/web', 'main'))).toBe(0);
    expect(lostLayers(reg.tagConfig('acme/other/cache/web', 'main'))).toBe(4);
    expect(lostLayers(reg.tagConfig('acme/app/cache/cache', 'main'))).toBe(4);
    expect(reg.tags.get('acme/app/cache/api:main')).toBe(sha256Digest(P1.manifest)); // nothing to repair there
  });

  test('a sibling at another tag (another branch) is not used', async () => {
    await pushTo('acme/app/cache/web', P2);
    reg.blobs.set(sha256Digest(P1.config), P1.config);
    const res = new EventEmitter();
    const push = repairs.begin('acme/app/cache/api', 'feature-x', res as never);
    push.landed(reg.putManifest('acme/app/cache/api', 'feature-x', P1.manifest), null);
    res.emit('close');
    await repairs.idle();
    expect(lostLayers(reg.tagConfig('acme/app/cache/web', 'main'))).toBe(4);
  });
});
