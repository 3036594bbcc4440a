// Usage records that could not be sent survive to a later job through the Actions cache: the post step restores
// them before its report (which sends the whole spool) and saves what is still pending after it. Cache trouble only
// warns. @actions/cache (with the Azure SDK: 1.5 MB bundled, 0.2-0.6 s to load on these 2-vCPU machines under load)
// lives in its own bundle, dist/github/spool-cache.js, required only when the cache service is there to ask and,
// when saving, only when records are pending; never by the main step, which runs before the job's builds.
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
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  return require('./spool-cache') as typeof import('./spool-cache');
}

/** Restores into `base` the records an earlier job left unsent (the newest carried spool, found by key prefix). Never throws. */
export async function restoreSpool(base: string): Promise<void> {
  if (!cacheServiceOffered()) return core.debug('Actions cache not available: no earlier usage records to restore');
  let hit: string | null = null;
  try {
    hit = await cacheClient().restoreFromCache(base);
  } catch (err) {
    core.warning(`Build Cloud metering: could not restore unsent usage records: ${(err as Error).message}`);
  }
  if (hit) {
    const n = pendingFiles(base);
    core.info(`Build Cloud: restored ${n} unsent usage record${n === 1 ? '' : 's'} from an earlier job (${hit})`);
  }
}

/** Saves the records still in `base` for a later job; loads the cache client only when there are some. Never throws. */
export async function saveSpool(base: string): Promise<void> {
  const n = pendingFiles(base);
  if (n === 0) return;
  if (!cacheServiceOffered()) {
    core.warning(
      `Build Cloud metering: ${n} usage record${n === 1 ? '' : 's'} ${n === 1 ? 'is' : 'are'} unsent and stay${n === 1 ? 's' : ''} in ${base}; the Actions cache is not available to carry them to a later job.`
    );
    return;
  }
  try {
    await cacheClient().saveToCache(base, n);
  } catch (err) {
    core.warning(`Build Cloud metering: could not save ${n} unsent usage record${n === 1 ? '' : 's'}: ${(err as Error).message}`);
  }
}
