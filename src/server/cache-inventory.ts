// What the embedded registry (distribution 2.8, filesystem storage) holds, read from its storage directory, and the
// deletions cache-gc.ts makes there. Distribution's layout (docs/operations.md, "Org cache storage"):
//   <root>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data               every blob (layers, configs, manifests)
//   <root>/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link   blobs linked into a repository
//   <root>/docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//   <root>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link    what the tag points at
//   <root>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link  its history
// The registry runs without its blob descriptor cache (registry.ts), so it reads these files on every request and
// never answers from memory for something removed here.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Inventory, ManifestRefs, RepoInfo, TagInfo } from './cache-retention';

const HEX = /^[0-9a-f]{64}$/;
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** The v2 directory of a registry storage root (the embedded registry's `<state>/registry/data`). */
export function v2Dir(dataDir: string): string {
  return path.join(dataDir, 'docker', 'registry', 'v2');
}

function entries(dir: string): fs.Dirent[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

function mtime(p: string): number | null {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return null;
  }
}

/** sha256:<hex> → its blob directory. */
export function blobDir(v2: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(v2, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

// Digests under <dir>/sha256/<hex>/link, with the link's mtime.
function links(dir: string): { digest: string; at: number }[] {
  const out: { digest: string; at: number }[] = [];
  for (const e of entries(path.join(dir, 'sha256'))) {
    if (!e.isDirectory() || !HEX.test(e.name)) continue;
    const at = mtime(path.join(dir, 'sha256', e.name, 'link'));
    if (at !== null) out.push({ digest: `sha256:${e.name}`, at });
  }
  return out;
}

function readTag(dir: string, tag: string): TagInfo | null {
  const current = (() => {
    try {
      return fs.readFileSync(path.join(dir, 'current', 'link'), 'utf8').trim();
    } catch {
      return '';
    }
  })();
  if (!current) return null;
  const history = links(path.join(dir, 'index')).sort((a, b) => b.at - a.at);
  // The tag points at `current`: it comes first whatever the mtimes say.
  const cur = history.find((h) => h.digest === current) ?? { digest: current, at: mtime(path.join(dir, 'current', 'link')) ?? 0 };
  return { tag, history: [cur, ...history.filter((h) => h.digest !== current)] };
}

function manifestRefs(v2: string, digest: string): ManifestRefs | null {
  try {
    const p = path.join(blobDir(v2, digest), 'data');
    if (fs.statSync(p).size > MAX_MANIFEST_BYTES) return null;
    const m = JSON.parse(fs.readFileSync(p, 'utf8')) as { config?: { digest?: string }; layers?: { digest?: string }[]; manifests?: { digest?: string }[] };
    const ok = (d: unknown): d is string => typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d);
    return {
      blobs: [m.config?.digest, ...(m.layers ?? []).map((l) => l.digest)].filter(ok),
      children: (m.manifests ?? []).map((c) => c.digest).filter(ok)
    };
  } catch {
    return null; // gone, or not a manifest we read: it references nothing we know of
  }
}

/** Every repository under `v2` (a directory holding _manifests), with its tags and revisions. */
function readRepos(v2: string): RepoInfo[] {
  const repos: RepoInfo[] = [];
  const walk = (dir: string, name: string, depth: number): void => {
    if (depth > 12) return;
    const list = entries(dir);
    if (list.some((e) => e.name === '_manifests')) {
      const tagsDir = path.join(dir, '_manifests', 'tags');
      const tags = entries(tagsDir)
        .filter((e) => e.isDirectory())
        .map((e) => readTag(path.join(tagsDir, e.name), e.name))
        .filter((t): t is TagInfo => t !== null);
      repos.push({ name, tags, revisions: links(path.join(dir, '_manifests', 'revisions')) });
    }
    for (const e of list) if (e.isDirectory() && !e.name.startsWith('_')) walk(path.join(dir, e.name), name ? `${name}/${e.name}` : e.name, depth + 1);
  };
  walk(path.join(v2, 'repositories'), '', 0);
  return repos;
}

/** The inventory of a registry storage root: repositories, manifests' references, blob sizes (bytes). */
export function readInventory(dataDir: string): Inventory {
  const v2 = v2Dir(dataDir);
  const repos = readRepos(v2);
  const manifests = new Map<string, ManifestRefs>();
  for (const r of repos) {
    for (const v of r.revisions) {
      if (manifests.has(v.digest)) continue;
      const refs = manifestRefs(v2, v.digest);
      if (refs) manifests.set(v.digest, refs);
    }
  }
  const blobSizes = new Map<string, number>();
  for (const b of listBlobs(v2)) blobSizes.set(b.digest, b.bytes);
  return { repos, manifests, blobSizes };
}

/** Every blob in the store: digest, size in bytes, and its data's mtime (ms). */
export function listBlobs(v2: string): { digest: string; bytes: number; at: number }[] {
  const out: { digest: string; bytes: number; at: number }[] = [];
  const root = path.join(v2, 'blobs', 'sha256');
  for (const prefix of entries(root)) {
    if (!prefix.isDirectory()) continue;
    for (const e of entries(path.join(root, prefix.name))) {
      if (!HEX.test(e.name)) continue;
      try {
        const st = fs.statSync(path.join(root, prefix.name, e.name, 'data'));
        out.push({ digest: `sha256:${e.name}`, bytes: st.size, at: st.mtimeMs });
      } catch {
        // a blob directory without data (an upload being committed): not ours to judge
      }
    }
  }
  return out;
}

/** Removes a tag (as distribution's own Untag does: the whole tag directory). */
export function removeTag(dataDir: string, repo: string, tag: string): void {
  fs.rmSync(path.join(v2Dir(dataDir), 'repositories', repo, '_manifests', 'tags', tag), { recursive: true, force: true });
}

/** Removes a manifest revision from a repository, and from every tag's history there. */
export function removeRevision(dataDir: string, repo: string, digest: string): void {
  const hex = digest.slice('sha256:'.length);
  const m = path.join(v2Dir(dataDir), 'repositories', repo, '_manifests');
  fs.rmSync(path.join(m, 'revisions', 'sha256', hex), { recursive: true, force: true });
  for (const t of entries(path.join(m, 'tags'))) fs.rmSync(path.join(m, 'tags', t.name, 'index', 'sha256', hex), { recursive: true, force: true });
}

/** Layer links of a repository whose blob is gone (after a sweep): removed, so the repository lists only what exists. */
export function removeDanglingLayerLinks(dataDir: string, repos: string[]): number {
  const v2 = v2Dir(dataDir);
  let n = 0;
  for (const repo of repos) {
    const dir = path.join(v2, 'repositories', repo, '_layers', 'sha256');
    for (const e of entries(dir)) {
      if (HEX.test(e.name) && !fs.existsSync(path.join(blobDir(v2, `sha256:${e.name}`), 'data'))) {
        fs.rmSync(path.join(dir, e.name), { recursive: true, force: true });
        n++;
      }
    }
  }
  return n;
}
