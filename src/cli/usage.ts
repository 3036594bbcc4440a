// `buildcloud usage`: an org's minutes, builds and cache figures from the control plane's HTTP API.
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { orgUsagePath, type ErrorBody, type UsageReport } from '../contract/http-api';
import { NORTH_STAR_GOAL } from '../contract/rules';
import { defaultStateDir } from '../server/config';
import { CliError } from './errors';

interface Target {
  endpoint: string;
  token: string;
}

// The endpoint and token come from flags or env; on the control plane's own host, from its state dir.
export function resolveTarget(o: { endpoint?: string; token?: string; stateDir: string }): Target {
  const dir = path.resolve(o.stateDir);
  let endpoint = o.endpoint || process.env.BUILDCLOUD_HTTP_ENDPOINT || '';
  if (!endpoint) {
    try {
      endpoint = JSON.parse(fs.readFileSync(path.join(dir, 'server.json'), 'utf8')).http;
    } catch {
      throw new CliError(
        `No endpoint: pass --endpoint http://HOST:PORT (or BUILDCLOUD_HTTP_ENDPOINT), or run where 'buildcloud serve' runs with --state-dir ${dir}.`
      );
    }
  }
  let token = o.token || process.env.BUILDCLOUD_TOKEN || '';
  if (!token) {
    try {
      token = fs.readFileSync(path.join(dir, 'admin-token'), 'utf8').trim();
    } catch {
      throw new CliError('No token: pass --token or set BUILDCLOUD_TOKEN to an org token (buildcloud admin token create --org ORG).');
    }
  }
  return { endpoint: endpoint.replace(/\/+$/, ''), token };
}

export function registerUsage(program: Command): void {
  program
    .command('usage')
    .description("Show an org's build minutes used and left, builds, cache ratio, the share of builds with a cached step, and users.")
    .requiredOption('--org <name>', 'the org')
    .option('--month <YYYY-MM>', 'the month (default: this month, UTC)')
    .option('--endpoint <url>', 'HTTP endpoint of the control plane (env BUILDCLOUD_HTTP_ENDPOINT; default: from --state-dir)')
    .option('--token <token>', 'org or admin token (env BUILDCLOUD_TOKEN; default: the admin token in --state-dir)')
    .option('--state-dir <dir>', 'state directory of a local control plane', defaultStateDir())
    .option('--json', 'print the JSON report', false)
    .action(async (o) => {
      const t = resolveTarget(o);
      const month = o.month || new Date().toISOString().slice(0, 7);
      const url = `${t.endpoint}${orgUsagePath(o.org, month)}`;
      let res: Response;
      try {
        res = await fetch(url, { headers: { authorization: `Bearer ${t.token}` }, signal: AbortSignal.timeout(15_000) });
      } catch (err) {
        throw new CliError(`Cannot reach the control plane at ${t.endpoint}: ${(err as Error).message}`);
      }
      const body = (await res.json().catch(() => ({}))) as unknown;
      if (!res.ok) throw new CliError(`Usage request failed (HTTP ${res.status}): ${(body as Partial<ErrorBody>)?.error?.message ?? 'no details'}`);
      process.stdout.write(o.json ? JSON.stringify(body) + '\n' : renderUsage(body as UsageReport) + '\n');
    });
}

/**
 * The usage report as a few lines of text. Reads defensively (a missing section prints as zero or n/a): the report
 * may come from an older or newer control plane than this CLI.
 */
export function renderUsage(u: DeepPartial<UsageReport>): string {
  const pct = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : `${(x * 100).toFixed(1)}%`);
  const m = u.minutes ?? {};
  const b = u.builds ?? {};
  return [
    `Org ${u.org}, ${u.month}`,
    `  minutes   ${fmt(m.usedInMonth)} used this month; ${fmt(m.used)} used, ${fmt(m.left)} left of ${fmt(m.bought)} bought${m.overdraft ? ` (overdraft ${fmt(m.overdraft)})` : ''}`,
    `  leases    ${u.leases?.count ?? 0} (${u.leases?.active ?? 0} active)`,
    `  builds    ${b.count ?? 0} (${b.succeeded ?? 0} succeeded, ${b.failed ?? 0} failed)`,
    // Deduplicated steps (another job's build at the same time ran them) are shown apart: they are no cache hits.
    `  steps     ${b.totalSteps ?? 0}: ${b.cachedSteps ?? 0} cached, ${b.deduplicatedSteps ?? 0} deduplicated (run by another job's build at the same time)`,
    `  cache     average ratio ${pct(b.avgCacheRatio)}; builds with a cached step ${pct(b.withCachedStepShare)} (goal ${pct(b.northStarGoal ?? NORTH_STAR_GOAL)})`,
    `  users     ${u.users?.distinct ?? 0} distinct this month`
  ].join('\n');
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

function fmt(n: unknown): string {
  return typeof n === 'number' ? String(+n.toFixed(2)) : '0';
}
