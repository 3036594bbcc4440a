// `buildcloud admin cache`: the org cache's storage on the control plane's host (issue 14): each org's usage and
// quota, read from the embedded registry's storage directory, and per-org quota overrides (cache-quotas.json in the
// state dir, read by `serve` at each push that starts a blob upload, so a change applies at once).
import type { Command } from 'commander';
import * as path from 'path';
import { quotasFile, readQuotas, writeQuota } from '../server/cache-gc';
import { readInventory } from '../server/cache-inventory';
import { DEFAULT_CACHE_STORAGE } from '../server/config';
import { formatBytes, parseSize, planRetention } from '../server/cache-retention';
import { validateOrgName } from '../server/validate';
import { CliError } from './errors';

function orgArg(v: unknown): string {
  if (typeof v !== 'string' || !v) throw new CliError('Missing --org: pass --org ORG, the org to act on (`buildcloud admin org list` lists the orgs).');
  try {
    return validateOrgName(v, 'org name');
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/** Throws CliError (the admin CLI's "not found" message) unless `org` exists in the store under `stateDir`. */
async function requireExistingOrg(stateDir: string, org: string): Promise<void> {
  const { openSqliteStore } = await import('../server/store/sqlite');
  const { storeFile } = await import('../server/server');
  const store = openSqliteStore(storeFile(stateDir));
  try {
    if (!(await store.getOrg(org))) {
      const { orgNotFound } = await import('./admin');
      throw new CliError(orgNotFound(org));
    }
  } finally {
    await store.close();
  }
}

/** Registers `admin cache quota` and `admin cache usage` under `admin`. */
export function registerAdminCache(admin: Command, stateOpt: readonly [string, string, string]): void {
  const cache = admin.command('cache').description("The org cache's storage: usage per org and per-org quotas.");
  cache
    .command('quota')
    .description("Set an org's org-cache storage quota (overrides serve's --cache-quota for that org).")
    .option('--org <org>', 'the org')
    .option('--max <size>', "the quota, e.g. 50GiB or 500MiB; 0 = no quota; 'default' = serve's --cache-quota")
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const org = orgArg(o.org);
      // A quota for a name that is no org would be recorded and never apply: a typo must not pass as done.
      await requireExistingOrg(path.resolve(o.stateDir), org);
      if (typeof o.max !== 'string') throw new CliError("Missing --max: pass --max SIZE (e.g. 50GiB), 0 for no quota, or 'default'.");
      let bytes: number | null;
      try {
        bytes = o.max.trim() === 'default' ? null : parseSize(o.max, '--max');
      } catch (err) {
        throw new CliError((err as Error).message);
      }
      const file = quotasFile(path.resolve(o.stateDir));
      try {
        writeQuota(file, org, bytes);
      } catch (err) {
        throw new CliError(`Could not write ${file}: ${(err as Error).message}`);
      }
      const text =
        bytes === null
          ? `Org '${org}' uses serve's --cache-quota again.`
          : `Org '${org}' org-cache quota: ${bytes === 0 ? 'none' : formatBytes(bytes)} (applies to the next push).`;
      process.stdout.write((o.json ? JSON.stringify({ org, quotaBytes: bytes }) : text) + '\n');
    });
  cache
    .command('usage')
    .description('Org-cache storage per org: bytes its cache images hold, its quota, and its branch tags.')
    .option('--org <org>', 'only this org')
    .option('--cache-quota <size>', "serve's --cache-quota, for orgs without a quota of their own", '20GiB')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action((o) => {
      const only = o.org === undefined ? null : orgArg(o.org);
      const stateDir = path.resolve(o.stateDir);
      let dflt: number;
      let quotas: Record<string, number>;
      try {
        dflt = parseSize(o.cacheQuota, '--cache-quota');
        quotas = readQuotas(quotasFile(stateDir));
      } catch (err) {
        throw new CliError((err as Error).message);
      }
      const inv = readInventory(path.join(stateDir, 'registry', 'data'));
      // No retention applied: keep everything, only to measure each org's usage and quota.
      const plan = planRetention(inv, { keepPerTag: 1000, expireMs: 0, graceMs: DEFAULT_CACHE_STORAGE.graceMs, quotaFor: () => 0, now: Date.now() });
      const rows = [...plan.orgs]
        .filter(([org]) => only === null || org === only)
        .map(([org, s]) => {
          const quotaBytes = org in quotas ? quotas[org] : dflt;
          const tags = inv.repos.filter((r) => r.name.split('/')[0] === org).flatMap((r) => r.tags.map((t) => `${r.name}:${t.tag}`));
          return { org, usedBytes: s.usedBytes, quotaBytes, overBytes: quotaBytes > 0 && s.usedBytes > quotaBytes ? s.usedBytes - quotaBytes : 0, tags };
        });
      if (o.json) return void process.stdout.write(JSON.stringify(rows) + '\n');
      if (!rows.length) return void process.stdout.write(only ? `Org '${only}' has nothing in the org cache.\n` : 'The org cache is empty.\n');
      for (const r of rows) {
        const over = r.overBytes ? `, ${formatBytes(r.overBytes)} OVER` : '';
        process.stdout.write(
          `${r.org}: ${formatBytes(r.usedBytes)} of ${r.quotaBytes ? formatBytes(r.quotaBytes) : 'no quota'}${over}, ${r.tags.length} tags\n`
        );
      }
    });
}
