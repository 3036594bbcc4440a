// The Actions cache side of carrying unsent usage records between jobs (see spool-carry.ts, which loads this file
// only when it is needed: bundled on its own as dist/github/spool-cache.js). Cache trouble only warns.
import * as cache from '@actions/cache';
import * as core from './workflow-commands';

const PREFIX = 'buildcloud-metering-spool-';

/** Restores the newest carried spool into `base`; returns the cache key restored, or null (none, or unavailable). */
export async function restoreFromCache(base: string): Promise<string | null> {
  if (!cache.isFeatureAvailable()) {
    core.debug('Actions cache not available: no earlier usage records to restore');
    return null;
  }
  try {
    const key = `${PREFIX}${process.env.GITHUB_RUN_ID}-${process.env.GITHUB_JOB}-${process.env.GITHUB_RUN_ATTEMPT}`;
    return (await cache.restoreCache([base], key, [PREFIX])) ?? null;
  } catch (err) {
    core.warning(`Build Cloud metering: could not restore unsent usage records: ${(err as Error).message}`);
    return null;
  }
}

/** Saves `base` (holding `n` unsent records) under a key unique to this job and attempt. */
export async function saveToCache(base: string, n: number): Promise<void> {
  if (!cache.isFeatureAvailable()) {
    core.warning(
      `Build Cloud metering: ${n} usage record${n === 1 ? '' : 's'} ${n === 1 ? 'is' : 'are'} unsent and stay${n === 1 ? 's' : ''} in ${base}; the Actions cache is not available to carry them to a later job.`
    );
    return;
  }
  try {
    // Caches are immutable per key: a unique key per job and attempt, found later by prefix.
    const key = `${PREFIX}${process.env.GITHUB_RUN_ID}-${process.env.GITHUB_JOB}-${process.env.GITHUB_RUN_ATTEMPT}-${Date.now()}`;
    await cache.saveCache([base], key);
    core.info(`Build Cloud metering: ${n} unsent usage record${n === 1 ? '' : 's'} saved for a later job`);
  } catch (err) {
    core.warning(`Build Cloud metering: could not save ${n} unsent usage record${n === 1 ? '' : 's'}: ${(err as Error).message}`);
  }
}
