// `buildcloud usage`: an org's minutes, builds and cache figures from the control plane's HTTP API.
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { orgUsagePath, pipelineUsagePath, type ErrorBody, type PipelineUsage, type UsageReport } from '../contract/http-api';
import { projectUsagePath, type ProjectUsage } from '../contract/project-usage';
import { NORTH_STAR_GOAL } from '../contract/rules';
import { defaultStateDir } from '../server/config';
import { parseEndpoint } from '../core/endpoint';
import { CliError } from './errors';

/** The forms `usage --endpoint` takes: the control plane's HTTP port, with or without a scheme. */
export const USAGE_ENDPOINT_FORMS = 'the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644)';

/**
 * The base URL of the control plane's HTTP API from `--endpoint`: an http(s):// URL as setup takes it, or host:port
 * (read as http://host:port: usage speaks HTTP, so a bare address is its HTTP port). A grpc:// or grpcs:// endpoint
 * names the gRPC port, which does not serve the usage API: the error says which port to give instead.
 */
export function usageBaseUrl(endpoint: string): string {
  let a;
  try {
    a = parseEndpoint(endpoint);
  } catch {
    throw new CliError(`Invalid --endpoint '${endpoint.replace(/\/\/[^/@]*@/, '//***@')}': expected ${USAGE_ENDPOINT_FORMS}.`);
  }
  if (a.protocol === 'connect') return a.baseUrl;
  if (/^grpcs?:\/\//i.test(endpoint.trim())) {
    throw new CliError(
      `Invalid --endpoint '${endpoint}': usage reads the HTTP API, not gRPC. Pass ${USAGE_ENDPOINT_FORMS}, e.g. --endpoint http://${a.address.replace(/:\d+$/, '')}:7644.`
    );
  }
  return `http://${a.address}`;
}

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
        `No endpoint: pass --endpoint http://HOST:PORT (or BUILDCLOUD_HTTP_ENDPOINT), or run where \`buildcloud serve\` runs with --state-dir ${dir}.`
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
  return { endpoint: usageBaseUrl(endpoint), token };
}

export function registerUsage(program: Command): void {
  program
    .command('usage')
    .description(
      "Show an org's build minutes used and left, builds, cache ratio, the share of builds with a cached step, and users; or one project's (--project) or pipeline's (--pipeline)."
    )
    .option('--org <name>', 'the org')
    .option('--project <path>', "one project's leases, minutes and builds in the month, e.g. acme/app")
    .option('--pipeline <key>', "one pipeline's leases, minutes and builds, by its pipeline key (e.g. GitHub's repository_id/run_id/run_attempt)")
    .option('--month <YYYY-MM>', 'the month (default: this month, UTC)')
    .option('--endpoint <address>', `${USAGE_ENDPOINT_FORMS} (env BUILDCLOUD_HTTP_ENDPOINT; default: from --state-dir)`)
    .option('--token <token>', 'org or admin token (env BUILDCLOUD_TOKEN; default: the admin token in --state-dir)')
    .option('--state-dir <dir>', 'state directory of a local control plane', defaultStateDir())
    .option('--json', 'print the JSON report', false)
    .action(async (o) => {
      const q = usageQuery(o);
      const t = resolveTarget(o);
      const body = await getJson(t, q.path);
      if (o.json) process.stdout.write(JSON.stringify(body) + '\n');
      else {
        const text =
          q.kind === 'pipeline'
            ? renderPipelineUsage(body as PipelineUsage)
            : q.kind === 'project'
              ? renderProjectUsage(body as ProjectUsage)
              : renderUsage(body as UsageReport);
        process.stdout.write(text + '\n');
      }
    });
}

/** What `usage` asks for, from its flags; throws CliError naming the flag and what it expects. */
export function usageQuery(o: { org?: string; project?: string; pipeline?: string; month?: string }): {
  path: string;
  kind: 'org' | 'project' | 'pipeline';
} {
  if (!o.org) throw new CliError('Missing --org: pass --org ORG, the org whose usage to show (`buildcloud admin org list` lists the orgs).');
  if (o.pipeline !== undefined && o.project !== undefined)
    throw new CliError('--project and --pipeline both given: pass one of them (a pipeline is of one project).');
  if (o.pipeline !== undefined) {
    if (o.month !== undefined) throw new CliError('--month does not apply to --pipeline (a pipeline is one run): pass one of them.');
    if (!o.pipeline || o.pipeline.length > 256) throw new CliError(`Invalid --pipeline: expected a pipeline key of 1-256 characters, e.g. 123456/789/1.`);
    return { path: pipelineUsagePath(o.org, o.pipeline), kind: 'pipeline' };
  }
  const month = o.month ?? new Date().toISOString().slice(0, 7);
  if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(month)) throw new CliError(`Invalid --month '${month}': expected YYYY-MM, e.g. 2026-11.`);
  if (o.project !== undefined) {
    if (!/^[\x21-\x7e]{1,256}$/.test(o.project))
      throw new CliError('Invalid --project: expected the project path, 1-256 printable characters without spaces, e.g. acme/app.');
    return { path: projectUsagePath(o.org, o.project, month), kind: 'project' };
  }
  return { path: orgUsagePath(o.org, month), kind: 'org' };
}

async function getJson(t: Target, path: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${t.endpoint}${path}`, { headers: { authorization: `Bearer ${t.token}` }, signal: AbortSignal.timeout(15_000) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message ?? (err as Error).message;
    throw new CliError(
      `Cannot reach the control plane at ${t.endpoint} (${why}): check --endpoint, ${USAGE_ENDPOINT_FORMS}; the gRPC port (default 7643) does not answer it.`
    );
  }
  const body = (await res.json().catch(() => ({}))) as unknown;
  if (!res.ok) throw new CliError(`Usage request failed (HTTP ${res.status}): ${(body as Partial<ErrorBody>)?.error?.message ?? 'no details'}`);
  return body;
}

/** One project's usage in a month as a few lines of text. */
export function renderProjectUsage(u: Partial<ProjectUsage>): string {
  const b: Partial<ProjectUsage['builds']> = u.builds ?? {};
  if (!u.leases?.count && !b.count) {
    return `Project ${u.project} of org ${u.org}, ${u.month}: no leases. Check the name (as setup prints it: "identity: project ..."), or see the whole org with \`buildcloud usage --org ${u.org}\`.`;
  }
  const minutes = +((u.billedSeconds ?? 0) / 60).toFixed(2);
  const pct = (x: number | undefined) => `${((x ?? 0) * 100).toFixed(1)}%`;
  return [
    `Project ${u.project} of org ${u.org}, ${u.month}`,
    `  leases    ${u.leases?.count ?? 0} (${u.leases?.active ?? 0} active) in ${u.pipelines ?? 0} pipeline${u.pipelines === 1 ? '' : 's'}, ${minutes} build minute${minutes === 1 ? '' : 's'} billed`,
    `  builds    ${b.count ?? 0} (${b.succeeded ?? 0} succeeded, ${b.failed ?? 0} failed)`,
    `  steps     ${b.totalSteps ?? 0}: ${b.cachedSteps ?? 0} cached, ${b.deduplicatedSteps ?? 0} deduplicated (run by another job's build at the same time)`,
    `  cache     average ratio ${pct(b.avgCacheRatio)}; builds with a cached step ${pct(b.withCachedStepShare)}`
  ].join('\n');
}

/** One pipeline's usage as a few lines of text. */
export function renderPipelineUsage(u: Partial<PipelineUsage>): string {
  if (!u.leases) {
    return `Pipeline ${u.pipelineKey} of org ${u.org}: no leases. Check the key (the setup step prints it), or see the whole org with \`buildcloud usage --org ${u.org}\`.`;
  }
  const minutes = (u.billedSeconds ?? 0) / 60;
  const lines = [
    `Pipeline ${u.pipelineKey} of org ${u.org}`,
    `  leases    ${u.leases ?? 0} (${u.activeLeases ?? 0} active), ${+minutes.toFixed(2)} build minute${+minutes.toFixed(2) === 1 ? '' : 's'} billed`,
    `  builds    ${u.builds ?? 0} (${u.failed ?? 0} failed), ${u.buildsWithCache ?? 0} with a cached step`,
    `  steps     ${u.totalSteps ?? 0}: ${u.cachedSteps ?? 0} cached, ${u.deduplicatedSteps ?? 0} deduplicated (run by another job's build at the same time)`,
    `  cache     average ratio ${((u.avgCacheRatio ?? 0) * 100).toFixed(1)}%`
  ];
  for (const m of u.cacheMisses ?? []) lines.push(`  miss      ${m.reason} (lease ${m.leaseId})`);
  return lines.join('\n');
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
