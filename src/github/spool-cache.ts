// Usage records that could not be sent survive to a later job through the Actions cache: restored before setup
// (setup sends them), saved after post when some are still pending. Cache trouble only warns.
import * as cache from '@actions/cache';
import * as core from '@actions/core';
import * as fs from 'fs';
import * as path from 'path';

const PREFIX = 'buildcloud-metering-spool-';

function pendingFiles(base: string): number {
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

export async function restoreSpool(base: string): Promise<void> {
  if (!cache.isFeatureAvailable()) return core.debug('Actions cache not available: no earlier usage records to restore');
  try {
    const key = `${PREFIX}${process.env.GITHUB_RUN_ID}-${process.env.GITHUB_JOB}-${process.env.GITHUB_RUN_ATTEMPT}`;
    const hit = await cache.restoreCache([base], key, [PREFIX]);
    if (hit) core.info(`Build Cloud: restored ${pendingFiles(base)} unsent usage record(s) from an earlier job (${hit})`);
  } catch (err) {
    core.warning(`Build Cloud metering: could not restore unsent usage records: ${(err as Error).message}`);
  }
}

export async function saveSpool(base: string): Promise<void> {
  const n = pendingFiles(base);
  if (n === 0) return;
  if (!cache.isFeatureAvailable()) {
    core.warning(`Build Cloud metering: ${n} usage record(s) are unsent and stay in ${base}; the Actions cache is not available to carry them to a later job.`);
    return;
  }
  try {
    // Caches are immutable per key: a unique key per job and attempt, found later by prefix.
    const key = `${PREFIX}${process.env.GITHUB_RUN_ID}-${process.env.GITHUB_JOB}-${process.env.GITHUB_RUN_ATTEMPT}-${Date.now()}`;
    await cache.saveCache([base], key);
    core.info(`Build Cloud metering: ${n} unsent usage record(s) saved for a later job`);
  } catch (err) {
    core.warning(`Build Cloud metering: could not save ${n} unsent usage record(s): ${(err as Error).message}`);
  }
}
