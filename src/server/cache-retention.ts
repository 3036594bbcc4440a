// Retention of the org cache (issue 14): which cache images to drop, given what the registry holds. Pure: the
// inventory comes from cache-inventory.ts and the plan is carried out by cache-gc.ts, so the rules are table-tested
// without a registry (__tests__/unit/cache-retention.test.ts).
//
// Rules, in order, per org:
// 1. A branch tag not pushed for `expireMs` is dropped (every repository of the org: its scopes and its project).
// 2. Each remaining tag keeps its newest `keepPerTag` images (the one it points at and the ones it pointed at before).
// 3. Over its quota, the org's tags keep only the image they point at; still over, whole tags go, the least recently
//    pushed first, but never the most recently pushed tag of a repository (what the next build imports). What is
//    left may still be over: the registry proxy then refuses new layers for the org (CacheWriteGate).

/** One tag of a repository: its history as the registry recorded it, newest first (`at`: ms since the epoch). */
export interface TagInfo {
  tag: string;
  history: { digest: string; at: number }[]; // [0] is what the tag points at now
}

/** One repository (`<org>/<project>/cache[/<scope>]`): its tags and every manifest revision it holds. */
export interface RepoInfo {
  name: string;
  tags: TagInfo[];
  revisions: { digest: string; at: number }[];
}

/** What a manifest references: blob digests (config and layers) and child manifests (an index's). */
export interface ManifestRefs {
  blobs: string[];
  children: string[];
}

/** What the registry holds: repositories, the manifests' references, and the size of every blob (bytes). */
export interface Inventory {
  repos: RepoInfo[];
  manifests: Map<string, ManifestRefs>;
  blobSizes: Map<string, number>;
}

/** The policy: counts, and durations in ms. quotaFor(org) is bytes, 0 for no quota. */
export interface RetentionPolicy {
  keepPerTag: number; // at least 1
  expireMs: number; // 0: tags never expire
  graceMs: number; // a manifest in no tag (pushed by digest) younger than this is kept: its push may be under way
  quotaFor: (org: string) => number;
  now: number;
}

/** An org's storage after the plan: bytes stored (unique blobs its manifests reference), its quota (0 = none). */
export interface OrgStorage {
  usedBytes: number;
  quotaBytes: number;
  overBytes: number; // usedBytes - quotaBytes when over the quota, else 0
  evictedTags: number; // tags dropped for the quota
}

/** What to delete: whole tags, and manifest revisions (per repository). */
export interface RetentionPlan {
  deleteTags: { repo: string; tag: string; reason: 'expired' | 'quota' }[];
  deleteManifests: { repo: string; digest: string }[];
  orgs: Map<string, OrgStorage>;
}

/**
 * Whether retention applies to a repository: the org cache's (`<org>/<project>/cache` and its scopes
 * `.../cache/<scope>`). Anything else an org credential pushed (a base image) is counted in the org's usage but never
 * trimmed, expired or evicted.
 */
export function isCacheRepository(repo: string): boolean {
  return /^[^/]+\/.+\/cache(?:\/[^/]+)?$/.test(repo);
}

/** The org of a cache repository: its first path component. */
export function orgOf(repo: string): string {
  return repo.split('/')[0];
}

// Tag → the digests it keeps, per repository.
type Keep = Map<string, Map<string, string[]>>;

function closure(inv: Inventory, roots: Iterable<string>, into: Set<string> = new Set()): Set<string> {
  const stack = [...roots];
  while (stack.length) {
    const d = stack.pop() as string;
    if (into.has(d)) continue;
    into.add(d);
    const m = inv.manifests.get(d);
    if (!m) continue;
    for (const b of m.blobs) into.add(b);
    stack.push(...m.children);
  }
  return into;
}

function usedBytes(inv: Inventory, keep: Keep, repos: RepoInfo[], pending: (repo: string) => string[]): number {
  const roots: string[] = [];
  for (const r of repos) {
    for (const digests of keep.get(r.name)?.values() ?? []) roots.push(...digests);
    roots.push(...pending(r.name));
  }
  let n = 0;
  for (const d of closure(inv, roots)) n += inv.blobSizes.get(d) ?? 0;
  return n;
}

/**
 * The retention plan for `inv` under `policy`. Never drops the image a tag points at unless the whole tag goes, and
 * never a manifest in no tag that is younger than the grace (a multi-platform push writes its children first).
 */
export function planRetention(inv: Inventory, policy: RetentionPolicy): RetentionPlan {
  if (!Number.isInteger(policy.keepPerTag) || policy.keepPerTag < 1) throw new Error(`keepPerTag ${policy.keepPerTag}: expected a whole number of at least 1`);
  const deleteTags: RetentionPlan['deleteTags'] = [];
  const keep: Keep = new Map();
  const lastPush = (t: TagInfo): number => t.history[0]?.at ?? 0;
  for (const r of inv.repos) {
    const tags = new Map<string, string[]>();
    for (const t of r.tags) {
      if (t.history.length === 0) continue;
      if (!isCacheRepository(r.name))
        tags.set(
          t.tag,
          t.history.map((h) => h.digest)
        );
      else if (policy.expireMs > 0 && policy.now - lastPush(t) > policy.expireMs) deleteTags.push({ repo: r.name, tag: t.tag, reason: 'expired' });
      else
        tags.set(
          t.tag,
          t.history.slice(0, policy.keepPerTag).map((h) => h.digest)
        );
    }
    keep.set(r.name, tags);
  }
  // Manifests in no tag, young enough to be part of a push under way: kept, and counted.
  const inTags = new Map(inv.repos.map((r) => [r.name, new Set(r.tags.flatMap((t) => t.history.map((h) => h.digest)))]));
  const pending = (repo: string): string[] => {
    const r = inv.repos.find((x) => x.name === repo);
    return (r?.revisions ?? []).filter((v) => !inTags.get(repo)?.has(v.digest) && policy.now - v.at < policy.graceMs).map((v) => v.digest);
  };

  const orgs = new Map<string, OrgStorage>();
  const byOrg = new Map<string, RepoInfo[]>();
  for (const r of inv.repos) byOrg.set(orgOf(r.name), [...(byOrg.get(orgOf(r.name)) ?? []), r]);
  for (const [org, repos] of byOrg) {
    const quota = policy.quotaFor(org);
    let used = usedBytes(inv, keep, repos, pending);
    let evicted = 0;
    if (quota > 0 && used > quota) {
      for (const r of repos.filter((x) => isCacheRepository(x.name)))
        for (const [tag, ds] of keep.get(r.name) ?? []) keep.get(r.name)?.set(tag, ds.slice(0, 1));
      used = usedBytes(inv, keep, repos, pending);
      // Candidates: every kept tag but the newest of its repository, least recently pushed first.
      const candidates: { repo: string; tag: string; at: number }[] = [];
      for (const r of repos.filter((x) => isCacheRepository(x.name))) {
        const live = r.tags.filter((t) => keep.get(r.name)?.has(t.tag)).sort((a, b) => lastPush(b) - lastPush(a));
        for (const t of live.slice(1)) candidates.push({ repo: r.name, tag: t.tag, at: lastPush(t) });
      }
      candidates.sort((a, b) => a.at - b.at || a.repo.localeCompare(b.repo) || a.tag.localeCompare(b.tag));
      for (const c of candidates) {
        if (used <= quota) break;
        keep.get(c.repo)?.delete(c.tag);
        deleteTags.push({ repo: c.repo, tag: c.tag, reason: 'quota' });
        evicted++;
        used = usedBytes(inv, keep, repos, pending);
      }
    }
    orgs.set(org, { usedBytes: used, quotaBytes: quota, overBytes: quota > 0 && used > quota ? used - quota : 0, evictedTags: evicted });
  }

  // A revision goes when no kept tag (or kept index) needs it, unless it is in no tag and still young.
  const deleteManifests: RetentionPlan['deleteManifests'] = [];
  for (const r of inv.repos.filter((x) => isCacheRepository(x.name))) {
    const needed = closure(inv, [...(keep.get(r.name)?.values() ?? [])].flat());
    for (const d of pending(r.name)) closure(inv, [d], needed);
    for (const v of r.revisions) if (!needed.has(v.digest)) deleteManifests.push({ repo: r.name, digest: v.digest });
  }
  return { deleteTags, deleteManifests, orgs };
}

const UNITS: [string, number][] = [
  ['GiB', 1024 ** 3],
  ['MiB', 1024 ** 2],
  ['KiB', 1024]
];

/** Bytes for people: "12.3 MiB". */
export function formatBytes(n: number): string {
  for (const [u, f] of UNITS) if (n >= f) return `${(n / f).toFixed(1)} ${u}`;
  return `${n} B`;
}

/** "200MiB", "1.5GiB", "10GB" (decimal), "0" → bytes. Throws naming `what` and the forms expected. */
export function parseSize(value: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?$/i.exec(String(value).trim());
  if (!m) throw new Error(`Invalid ${what} '${value}'. Expected a size such as 500MiB, 20GiB or 0 (no quota).`);
  const unit = (m[2] ?? 'B').toLowerCase();
  const f: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };
  const n = Math.round(Number(m[1]) * f[unit]);
  if (!Number.isSafeInteger(n)) throw new Error(`Invalid ${what} '${value}': too large.`);
  return n;
}

/**
 * The message a build's cache push gets when its org is over its quota after eviction: what is over, by how much,
 * and the command that raises it.
 */
export function quotaMessage(org: string, s: Pick<OrgStorage, 'usedBytes' | 'quotaBytes'>): string {
  const over = s.usedBytes - s.quotaBytes;
  const raise = formatBytes(Math.max(s.quotaBytes * 2, s.usedBytes + s.quotaBytes))
    .replace(/\.0 /, '')
    .replace(' ', '');
  return (
    `org '${org}' is over its org-cache storage quota: ${formatBytes(s.usedBytes)} stored, quota ${formatBytes(s.quotaBytes)}, ` +
    `${formatBytes(over)} over after evicting its least recently built branches; new cache layers are not stored ` +
    `(builds still run and read the cache). Raise it on the control plane's host: buildcloud admin cache quota --org ${org} --max ${raise}`
  );
}
