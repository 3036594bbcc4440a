// `buildcloud usage`: an org's minutes, builds and cache figures from the control plane's HTTP API; or one project's
// or pipeline's. Its JSON is one shape for the three views (docs/schemas/cli-usage.json): a `view` and the fields
// that view has, the builds' counts alike in all three.
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { orgUsagePath, pipelineUsagePath, type ErrorBody, type PipelineUsage, type UsageReport } from '../contract/http-api';
import { projectUsagePath, type ProjectUsage } from '../contract/project-usage';
import { NORTH_STAR_GOAL } from '../contract/rules';
import { defaultStateDir } from '../server/config';
import { parseEndpoint } from '../core/endpoint';
import { httpRequest, type HttpReply, type HttpRequester } from '../core/http-request';
import { CliError } from './errors';

/** The forms `usage --endpoint` takes: the control plane's HTTP port, with or without a scheme. */
export const USAGE_ENDPOINT_FORMS = 'the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644)';

/** The control plane's default HTTP port, which a bare `--endpoint HOST` gets. */
export const DEFAULT_HTTP_PORT = 7644;

const hideCredentials = (s: string) => s.replace(/\/\/[^/@]*@/, '//***@');

/**
 * The base URL of the control plane's HTTP API from `--endpoint`: an http(s):// URL as setup takes it, host:port
 * (read as http://host:port: usage speaks HTTP, so a bare address is its HTTP port), or a bare host (port 7644, as
 * the help says). A grpc:// or grpcs:// endpoint names the gRPC port, which does not serve the usage API: the error
 * says which port to give instead.
 */
export function usageBaseUrl(endpoint: string): string {
  let e = endpoint.trim();
  // A bare host name, IPv4 address or [IPv6] address: the default HTTP port.
  if (/^([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])$/i.test(e)) e = `${e}:${DEFAULT_HTTP_PORT}`;
  let a;
  try {
    a = parseEndpoint(e);
  } catch {
    throw new CliError(`Invalid --endpoint '${hideCredentials(endpoint)}': expected ${USAGE_ENDPOINT_FORMS}.`);
  }
  if (a.protocol === 'connect') return a.baseUrl;
  if (/^grpcs?:\/\//i.test(e)) {
    throw new CliError(
      `Invalid --endpoint '${endpoint}': usage reads the HTTP API, not gRPC. Pass ${USAGE_ENDPOINT_FORMS}, e.g. --endpoint http://${a.address.replace(/:\d+$/, '')}:7644.`
    );
  }
  return `http://${a.address}`;
}

interface Target {
  endpoint: string;
  token: string;
  // The CA file trusted for an https endpoint (--ca-file, BUILDCLOUD_CA_FILE, or the state dir's), if any.
  caFile?: string;
}

/** The endpoint, token and trusted CA of a usage call (tests inject the requester). */
export interface ResolveOptions {
  endpoint?: string;
  token?: string;
  caFile?: string;
  stateDir: string;
}

/**
 * The endpoint and token from flags or env; on the control plane's own host, from its state dir (server.json, the
 * admin token). An https endpoint trusts --ca-file or BUILDCLOUD_CA_FILE besides the system's CAs, as the runner
 * does (core/tls-trust.ts); with neither, an endpoint read from the state dir trusts the CA that state dir names for
 * serve's certificates (server.json's registryCaFile), when there is one.
 */
export function resolveTarget(o: ResolveOptions): Target {
  const dir = path.resolve(o.stateDir);
  let endpoint = o.endpoint || process.env.BUILDCLOUD_HTTP_ENDPOINT || '';
  let stateCa: string | undefined;
  if (!endpoint) {
    try {
      const info = JSON.parse(fs.readFileSync(path.join(dir, 'server.json'), 'utf8')) as { http?: string; registryCaFile?: string };
      endpoint = info.http ?? '';
      if (typeof info.registryCaFile === 'string' && fs.existsSync(info.registryCaFile)) stateCa = info.registryCaFile;
    } catch {
      // below: no endpoint
    }
    if (!endpoint) {
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
  const given =
    o.caFile !== undefined
      ? { file: o.caFile, name: '--ca-file' }
      : process.env.BUILDCLOUD_CA_FILE
        ? { file: process.env.BUILDCLOUD_CA_FILE, name: 'BUILDCLOUD_CA_FILE' }
        : undefined;
  if (given) {
    try {
      const text = fs.readFileSync(given.file, 'utf8');
      if (!text.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new CliError(`Cannot use ${given.name} '${given.file}' (${why}): pass the PEM file of the CA that signed the control plane's certificate.`);
    }
  }
  const caFile = given?.file ?? stateCa;
  return { endpoint: usageBaseUrl(endpoint), token, ...(caFile ? { caFile } : {}) };
}

/** Registers `buildcloud usage`. */
export function registerUsage(program: Command, requester: HttpRequester = httpRequest): void {
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
    .option('--ca-file <file>', "PEM file of the CA that signed an https:// control plane's certificate, trusted besides the system's (env BUILDCLOUD_CA_FILE)")
    .option('--state-dir <dir>', 'state directory of a local control plane', defaultStateDir())
    .option('--json', 'print the report as JSON (docs/schemas/cli-usage.json)', false)
    .action(async (o) => {
      const q = usageQuery(o);
      const t = resolveTarget(o);
      const body = await getJson(t, q.path, requester);
      const u = usageView(q.kind, body);
      process.stdout.write((o.json ? JSON.stringify(u) : renderUsageView(u)) + '\n');
    });
}

/** What `usage` asks for, from its flags; throws CliError naming the flag and what it expects. */
export function usageQuery(o: { org?: string; project?: string; pipeline?: string; month?: string }): {
  path: string;
  kind: UsageViewName;
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

const UNTRUSTED_CERT = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME/;

/** The answer of GET `apiPath`, or a CliError that says what is at the endpoint and what to change. */
async function getJson(t: Target, apiPath: string, requester: HttpRequester): Promise<unknown> {
  let res: HttpReply;
  const url = `${t.endpoint}${apiPath}`;
  const prevCa = process.env.BUILDCLOUD_CA_FILE;
  if (t.caFile) process.env.BUILDCLOUD_CA_FILE = t.caFile; // the trust core/tls-trust.ts reads
  try {
    res = await requester(url, { headers: { authorization: `Bearer ${t.token}`, accept: 'application/json' }, signal: AbortSignal.timeout(15_000) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const code = cause?.code ?? '';
    const why = code || cause?.message || (err as Error).message;
    if (t.endpoint.startsWith('https:') && (code === 'EPROTO' || /wrong version number|packet length too long/i.test(cause?.message ?? ''))) {
      throw new CliError(
        `${t.endpoint} answers plaintext HTTP, not TLS: pass --endpoint ${t.endpoint.replace(/^https:/, 'http:')} (a control plane serves https only with serve's --tls-cert and --tls-key).`
      );
    }
    if (t.endpoint.startsWith('https:') && UNTRUSTED_CERT.test(code)) {
      throw new CliError(
        `The certificate of ${t.endpoint} is not trusted here (${code}): pass --ca-file (or set BUILDCLOUD_CA_FILE to) the PEM file of the CA that signed it (for a self-signed certificate, serve's --tls-cert file itself).`
      );
    }
    if (t.endpoint.startsWith('http:') && (code === 'ECONNRESET' || /socket hang up/i.test(cause?.message ?? (err as Error).message))) {
      throw new CliError(
        `${t.endpoint} closed the connection without an answer (${why}): if the control plane serves TLS (serve --tls-cert), pass --endpoint ${t.endpoint.replace(/^http:/, 'https:')}.`
      );
    }
    throw new CliError(
      `Cannot reach the control plane at ${t.endpoint} (${why}): check --endpoint, ${USAGE_ENDPOINT_FORMS}; the gRPC port (default 7643) does not answer it.`
    );
  } finally {
    if (t.caFile) {
      if (prevCa === undefined) delete process.env.BUILDCLOUD_CA_FILE;
      else process.env.BUILDCLOUD_CA_FILE = prevCa;
    }
  }
  let body: unknown;
  try {
    body = JSON.parse(res.text);
  } catch {
    body = undefined;
  }
  const error = (body as Partial<ErrorBody> | undefined)?.error;
  const isObject = typeof body === 'object' && body !== null && !Array.isArray(body);
  if (!isObject || (res.status >= 400 && (typeof error?.code !== 'string' || typeof error?.message !== 'string'))) {
    const what = isObject || body !== undefined ? `HTTP ${res.status}, not a Build Cloud answer` : `HTTP ${res.status}, not JSON`;
    throw new CliError(
      `${t.endpoint} answers HTTP but is not a Build Cloud control plane (GET ${apiPath.split('?')[0]}: ${what}). Pass --endpoint the HTTP address \`buildcloud serve\` prints (default port 7644).`
    );
  }
  if (res.status >= 400) {
    const org = /^\/v1\/orgs\/([^/]+)\//.exec(apiPath)?.[1];
    if (res.status === 404 && error?.code === 'not_found' && org !== undefined && t.token.startsWith('bca_')) {
      const name = decodeURIComponent(org);
      throw new CliError(`Org '${name}' not found: create it with \`buildcloud admin org create ${name} --minutes N\`.`);
    }
    throw new CliError(`Usage request failed (HTTP ${res.status}): ${error?.message ?? 'no details'}`);
  }
  return body;
}

/** Which usage `usage` shows: an org's month, a project's month, or one pipeline. */
export type UsageViewName = 'org' | 'project' | 'pipeline';

/** The build counts every view has, alike (a push failure is of a build that succeeded). */
export interface UsageBuilds {
  count: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  pushFailed: number; // succeeded, and the push failed
  pushRefused: number; // succeeded, and the push was refused (the tag is taken)
  totalSteps: number;
  cachedSteps: number;
  deduplicatedSteps: number; // run by another job's build at the same time: not cache hits
  avgCacheRatio: number; // 0..1
  withCachedStepShare: number; // 0..1
}

/**
 * `usage --json`: one shape for the three views (docs/schemas/cli-usage.json). Every view has `view`, `org`,
 * `leases` and `builds` (UsageBuilds); the org view adds the org report's fields (minutes, seconds, jobs, users...),
 * the project view `month`, `project`, `billedSeconds`, `pipelines`; the pipeline view `pipelineKey`, `billedSeconds`,
 * `cacheMisses`.
 */
export type UsageView =
  | (Omit<UsageReport, 'builds' | 'leases'> & { view: 'org'; leases: UsageReport['leases']; builds: UsageReport['builds'] & UsageBuilds })
  | {
      view: 'project';
      org: string;
      project: string;
      month: string;
      leases: { count: number; active: number };
      billedSeconds: number;
      pipelines: number;
      builds: UsageBuilds;
    }
  | {
      view: 'pipeline';
      org: string;
      pipelineKey: string;
      leases: { count: number; active: number };
      billedSeconds: number;
      builds: UsageBuilds;
      cacheMisses: Array<{ leaseId: string; reason: string }>;
    };

const n = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/**
 * The control plane's answer for `kind` as the view `usage` prints. Reads defensively (a missing field is zero): the
 * answer may come from an older or newer control plane than this CLI.
 */
export function usageView(kind: UsageViewName, body: unknown): UsageView {
  const b = (body ?? {}) as Record<string, unknown>;
  if (kind === 'pipeline') {
    const p = b as Partial<PipelineUsage> & { succeeded?: number; cancelled?: number; pushFailed?: number; pushRefused?: number };
    const count = n(p.builds);
    const failed = n(p.failed);
    const cancelled = n(p.cancelled);
    return {
      view: 'pipeline',
      org: String(p.org ?? ''),
      pipelineKey: String(p.pipelineKey ?? ''),
      leases: { count: n(p.leases), active: n(p.activeLeases) },
      billedSeconds: n(p.billedSeconds),
      builds: {
        count,
        succeeded: typeof p.succeeded === 'number' ? p.succeeded : Math.max(0, count - failed - cancelled),
        failed,
        cancelled,
        pushFailed: n(p.pushFailed),
        pushRefused: n(p.pushRefused),
        totalSteps: n(p.totalSteps),
        cachedSteps: n(p.cachedSteps),
        deduplicatedSteps: n(p.deduplicatedSteps),
        avgCacheRatio: n(p.avgCacheRatio),
        withCachedStepShare: count ? Math.round((n(p.buildsWithCache) / count) * 10000) / 10000 : 0
      },
      cacheMisses: Array.isArray(p.cacheMisses) ? p.cacheMisses : []
    };
  }
  const builds = (b.builds ?? {}) as Partial<UsageBuilds> & Record<string, unknown>;
  const common: UsageBuilds = {
    count: n(builds.count),
    succeeded: n(builds.succeeded),
    failed: n(builds.failed),
    cancelled: n(builds.cancelled),
    pushFailed: n(builds.pushFailed),
    pushRefused: n(builds.pushRefused),
    totalSteps: n(builds.totalSteps),
    cachedSteps: n(builds.cachedSteps),
    deduplicatedSteps: n(builds.deduplicatedSteps),
    avgCacheRatio: n(builds.avgCacheRatio),
    withCachedStepShare: n(builds.withCachedStepShare)
  };
  if (kind === 'project') {
    const p = b as Partial<ProjectUsage>;
    return {
      view: 'project',
      org: String(p.org ?? ''),
      project: String(p.project ?? ''),
      month: String(p.month ?? ''),
      leases: { count: n(p.leases?.count), active: n(p.leases?.active) },
      billedSeconds: n(p.billedSeconds),
      pipelines: n(p.pipelines),
      builds: common
    };
  }
  const leases = (b.leases ?? {}) as Partial<UsageReport['leases']>;
  return {
    ...(b as unknown as UsageReport),
    view: 'org',
    leases: { count: n(leases.count), ended: n(leases.ended), active: n(leases.active) },
    builds: { ...(builds as unknown as UsageReport['builds']), ...common }
  };
}

/** `count word(s)` with the plural right: "1 build minute", "2.5 build minutes". */
export function plural(count: number, word: string, many = `${word}s`): string {
  return `${count} ${count === 1 ? word : many}`;
}

const pct = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : `${(x * 100).toFixed(1)}%`);

/** The builds line every view prints alike: "4 (3 succeeded, 1 failed); 1 push failed". */
export function buildsLine(b: UsageBuilds): string {
  const outcomes = [`${b.succeeded} succeeded`, `${b.failed} failed`, ...(b.cancelled ? [`${b.cancelled} cancelled`] : [])];
  const pushes = [...(b.pushFailed ? [`${b.pushFailed} push failed`] : []), ...(b.pushRefused ? [`${b.pushRefused} push refused (tag taken)`] : [])];
  return `  builds    ${b.count} (${outcomes.join(', ')})${pushes.length ? `; of those succeeded, ${pushes.join(', ')}` : ''}`;
}

const stepsLine = (b: UsageBuilds) =>
  `  steps     ${b.totalSteps}: ${b.cachedSteps} cached, ${b.deduplicatedSteps} deduplicated (run by another job's build at the same time)`;

/** The view as a few lines of text. */
export function renderUsageView(u: UsageView): string {
  if (u.view === 'project') return renderProjectUsage(u);
  if (u.view === 'pipeline') return renderPipelineUsage(u);
  return renderUsage(u);
}

type ViewOf<K extends UsageViewName> = Extract<UsageView, { view: K }>;

// A view, or the control plane's answer for it (older callers pass that).
function asView<K extends UsageViewName>(kind: K, u: ViewOf<K> | DeepPartial<Record<string, unknown>> | object): ViewOf<K> {
  return ((u as { view?: string }).view === kind ? u : usageView(kind, u)) as ViewOf<K>;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

/** One project's usage in a month as a few lines of text (from its view or the control plane's ProjectUsage). */
export function renderProjectUsage(view: ViewOf<'project'> | DeepPartial<ProjectUsage>): string {
  const u = asView('project', view);
  const b = u.builds;
  if (!u.leases.count && !b.count) {
    return `Project '${u.project}' of org '${u.org}', ${u.month}: no leases. Check the name (as setup prints it: "identity: project ..."), or see the whole org with \`buildcloud usage --org ${u.org}\`.`;
  }
  const minutes = +(u.billedSeconds / 60).toFixed(2);
  return [
    `Project '${u.project}' of org '${u.org}', ${u.month}`,
    `  leases    ${u.leases.count} (${u.leases.active} active) in ${plural(u.pipelines, 'pipeline')}, ${plural(minutes, 'build minute')} billed`,
    buildsLine(b),
    stepsLine(b),
    `  cache     average ratio ${pct(b.avgCacheRatio)}; builds with a cached step ${pct(b.withCachedStepShare)}`
  ].join('\n');
}

/** One pipeline's usage as a few lines of text (from its view or the control plane's PipelineUsage). */
export function renderPipelineUsage(view: ViewOf<'pipeline'> | Partial<PipelineUsage>): string {
  const u = asView('pipeline', view);
  if (!u.leases.count) {
    return `Pipeline '${u.pipelineKey}' of org '${u.org}': no leases. Check the key (the setup step prints it), or see the whole org with \`buildcloud usage --org ${u.org}\`.`;
  }
  const b = u.builds;
  const minutes = +(u.billedSeconds / 60).toFixed(2);
  const lines = [
    `Pipeline '${u.pipelineKey}' of org '${u.org}'`,
    `  leases    ${u.leases.count} (${u.leases.active} active), ${plural(minutes, 'build minute')} billed`,
    buildsLine(b),
    stepsLine(b),
    `  cache     average ratio ${pct(b.avgCacheRatio)}; builds with a cached step ${pct(b.withCachedStepShare)}`
  ];
  for (const m of u.cacheMisses) lines.push(`  miss      ${m.reason} (lease ${m.leaseId})`);
  return lines.join('\n');
}

/**
 * The org's usage report as a few lines of text (from its view or the control plane's UsageReport). Reads
 * defensively (a missing section prints as zero or n/a): the report may come from an older or newer control plane.
 */
export function renderUsage(view: ViewOf<'org'> | DeepPartial<UsageReport>): string {
  const u = asView('org', view);
  const m = u.minutes ?? ({} as Partial<UsageReport['minutes']>);
  const b = u.builds;
  return [
    `Org '${u.org}', ${u.month}`,
    `  minutes   ${fmt(m.usedInMonth)} used this month; ${fmt(m.used)} used, ${fmt(m.left)} left of ${fmt(m.bought)} bought${m.overdraft ? ` (overdraft ${fmt(m.overdraft)})` : ''}`,
    `  leases    ${u.leases.count} (${u.leases.active} active)`,
    buildsLine(b),
    // Deduplicated steps (another job's build at the same time ran them) are shown apart: they are no cache hits.
    stepsLine(b),
    `  cache     average ratio ${pct(b.avgCacheRatio)}; builds with a cached step ${pct(b.withCachedStepShare)} (goal ${pct(b.northStarGoal ?? NORTH_STAR_GOAL)})`,
    `  users     ${u.users?.distinct ?? 0} distinct this month`
  ].join('\n');
}

function fmt(v: unknown): string {
  return typeof v === 'number' ? String(+v.toFixed(2)) : '0';
}
