// A build's cache pushed under its own upload tag (cache-refs.ts uploadPrefix), written to where it belongs: the
// scope's branch tag, and for an image scope the project's unscoped tag too. registry-proxy.ts authorises the push
// and hands the manifest here; this moves the bytes through the proxy's upstream transport, with the inline-cache
// repair (cache-repair.ts) hooked in as for a client's own push.
import { EventEmitter } from 'node:events';
import type { Logger } from './log';
import type { CacheRepairs, UpstreamCall } from './cache-repair';
import { DIGEST, IMAGE_MANIFEST_TYPES, parseImageManifest } from './inline-cache';

export interface PromotionDeps {
  call: UpstreamCall;
  repairs: CacheRepairs;
  log?: Logger;
}

/** What to answer the client's manifest PUT with. */
export type PromotionReply =
  | { status: 201; digest: string } // as if its own tag had been written
  | { status: number; contentType: string; body: Buffer } // the registry's own refusal (4xx), passed on
  | { status: 502; error: string }; // the registry failed (5xx, or unreachable): its details stay in the log

/**
 * Writes a manifest pushed to upload tag `upload` of scope repository `name` to `name:tag` (the lease's branch tag)
 * instead: no upload tag is ever stored (the registry cannot delete a tag alone: a DELETE by digest would take the
 * scope's tag too), and parallel builds, each pushing under a name of its own, never push another's image to the
 * scope's tag. An image scope's cache (not a stage's, `<scope>__<stage>`) is then copied to `project:tag`, the
 * project's unscoped repository, as the project's newest: every build imports it after its own scope's, so a new
 * scope starts from the project's shared layers, and parallel builds of sibling scopes on one fresh builder share
 * one import (the demo's four targets: without it one of them missed every step in the next pipeline, 3 runs of 3).
 */
export async function promoteUpload(
  d: PromotionDeps,
  o: { name: string; upload: string; tag: string; project: string; body: Buffer; type: string }
): Promise<PromotionReply> {
  const { name, upload, tag, body, type } = o;
  const done = new EventEmitter();
  const repair = IMAGE_MANIFEST_TYPES.includes(type) ? d.repairs.begin(name, tag, done) : null;
  try {
    const previous = repair ? await d.repairs.current(name, tag) : null;
    const up = await d.call('PUT', `/v2/${name}/manifests/${tag}`, { headers: { 'content-type': type }, body });
    const digest = up.headers['docker-content-digest'];
    if (up.status !== 201 || typeof digest !== 'string' || !DIGEST.test(digest)) {
      if (up.status >= 500) return { status: 502, error: `the cache registry failed (HTTP ${up.status}); the control plane's log has the request` };
      return { status: up.status, contentType: String(up.headers['content-type'] ?? 'application/json'), body: up.body };
    }
    repair?.landed(digest, previous);
    if (repair && !name.slice(name.lastIndexOf('/') + 1).includes('__')) await copyToProject(d, name, body, type, o.project, tag);
    d.log?.debug({ repository: name, upload, tag, digest }, 'registry proxy: build cache pushed under its upload tag, written to its scope tag');
    return { status: 201, digest };
  } catch (err) {
    d.log?.warn({ repository: name, upload, tag, err: (err as Error).message }, 'registry proxy: upstream error');
    return { status: 502, error: 'the cache registry is unavailable' };
  } finally {
    done.emit('close');
  }
}

/**
 * Puts an image manifest of repository `from` on `project:tag` too: its blobs mounted across (the registry's own
 * cross-repository mount), then the manifest, repair hooked in. Never throws: the project's copy is a fallback,
 * so a failure is logged and the scope's cache stands.
 */
async function copyToProject(d: PromotionDeps, from: string, body: Buffer, type: string, project: string, tag: string): Promise<void> {
  const done = new EventEmitter();
  const repair = d.repairs.begin(project, tag, done);
  try {
    const m = parseImageManifest(body);
    for (const blob of [m.config.digest, ...m.layers]) {
      const r = await d.call('POST', `/v2/${project}/blobs/uploads/?mount=${encodeURIComponent(blob)}&from=${encodeURIComponent(from)}`, {
        headers: { 'content-length': 0 }
      });
      if (r.status !== 201) throw new Error(`mounting ${blob} from ${from}: HTTP ${r.status}`);
    }
    const previous = await d.repairs.current(project, tag);
    const up = await d.call('PUT', `/v2/${project}/manifests/${tag}`, { headers: { 'content-type': type }, body });
    const digest = up.headers['docker-content-digest'];
    if (up.status !== 201 || typeof digest !== 'string' || !DIGEST.test(digest)) throw new Error(`PUT manifests/${tag}: HTTP ${up.status}`);
    repair.landed(digest, previous);
  } catch (err) {
    d.log?.warn({ repository: project, tag, from, err: (err as Error).message }, "registry proxy: could not copy a scope's cache to the project's");
  } finally {
    done.emit('close');
  }
}
