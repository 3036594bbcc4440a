// Usage records that could not be sent survive to a later job through the Actions cache: restored before setup
// (setup sends them), saved after post when some are still pending. Cache trouble only warns.
// @actions/cache (with the Azure SDK, about 2 MB bundled and 450 ms to load) lives in its own bundle,
// dist/github/spool-cache.js, required only when the cache service is there to ask and, when saving, only when
// records are pending.
import * as fs from 'fs';
import * as path from 'path';
import * as core from './workflow-commands';

/** Usage records (*.json) under `base`, at any depth; 0 when `base` does not exist. */
export function pendingFiles(base: string): number {
  let n = 0;
  const walk = (d: string) => {
    for (const e of fs.existsSync(d) ? fs.readdirSync(d, { withFileTypes: true }) : []) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.name.endsWith('.json')) n++;
    }
  };
  walk(base);
  return n;
}

/**
 * Whether the runner offers the Actions cache service: the variables @actions/cache's own isFeatureAvailable reads
 * (ACTIONS_CACHE_URL for v1, ACTIONS_RESULTS_URL for v2). Neither set: not worth loading the cache client to ask.
 */
export function cacheServiceOffered(env: NodeJS.ProcessEnv = process.env): boolean {
  return !!(env.ACTIONS_CACHE_URL || env.ACTIONS_RESULTS_URL);
}

function cacheClient(): typeof import('./spool-cache') {
  return require('./spool-cache') as typeof import('./spool-cache');
}

/** Restores records an earlier job of this run left unsent into `base`. Never throws. */
export async function restoreSpool(base: string): Promise<void> {
  if (!cacheServiceOffered()) return core.debug('Actions cache not available: no earlier usage records to restore');
  const hit = await cacheClient().restoreFromCache(base);
  if (hit) core.info(`Build Cloud: restored ${pendingFiles(base)} unsent usage record(s) from an earlier job (${hit})`);
}

/** Saves the records still in `base` for a later job; loads the cache client only when there are some. Never throws. */
export async function saveSpool(base: string): Promise<void> {
  const n = pendingFiles(base);
  if (n === 0) return;
  if (!cacheServiceOffered()) {
    core.warning(`Build Cloud metering: ${n} usage record(s) are unsent and stay in ${base}; the Actions cache is not available to carry them to a later job.`);
    return;
  }
  await cacheClient().saveToCache(base, n);
}
