// What a job tells humans about its builds: one renderer for every wrapper (the GitHub step summary and PR
// comment in markdown, GitLab and CircleCI job logs in plain text). Pure: data in, string out.
//
// Image tags and branch names come from users; they are escaped so that none can break a table, open a code
// span, inject HTML or mention someone, and everything is bounded to stay under GitHub's 1 MiB step summary.
import type { BuildStatus } from '../contract/metering-events';
import { MAX_RECORD_STRING, NORTH_STAR_GOAL } from '../contract/rules';

export interface BuildResult {
  buildId: string;
  image?: string; // image reference or bake target; the build id is shown when absent
  platform: string;
  status: BuildStatus;
  durationMs: number;
  totalSteps: number;
  cachedSteps: number; // reported CACHED by BuildKit in this build's own stream
  deduplicatedSteps?: number; // run for this build by another job's build at the same time; never counted as cached
  digest?: string;
  builderId?: string;
  cacheMiss?: CacheMiss; // why the first executed step was not served from the imported cache, when known
  loaded?: boolean; // load: true was asked for: whether the image reached the runner's own Docker engine
  pushStatus?: 'failed' | 'refused'; // the build succeeded but its push did not go out (push-outcome.ts)
}

/**
 * Why a build that imported the org cache still executed steps: the first executed step and what changed in it (or
 * that the cache ref was missing or held another image), and how many executed steps came after it. Built by
 * cache-miss.ts; `reason` names files and build-argument names, never a build-argument value.
 */
export interface CacheMiss {
  step?: string; // e.g. "[build 1/2] COPY src/ /opt/app/src/"; absent when the whole import missed
  reason: string; // e.g. "content of src/app.txt changed"
  laterSteps: number; // executed steps after the first one (they rebuild because it did)
}

export interface JobSummary {
  title?: string; // default "Build Cloud"
  builds: BuildResult[];
  leaseId?: string;
  builderShared?: boolean; // the pipeline's builder, shared with its other jobs
  builderWarm?: boolean; // taken from the warm pool instead of cold-started
  jobWallMs?: number; // the job's time holding the lease
  billedSeconds?: number; // this job's lease, from the control plane's records: what is billed
  pipeline?: { totalSteps: number; cachedSteps: number; deduplicatedSteps?: number }; // pipeline-wide steps, when known
  runUrl?: string;
  usageUrl?: string; // usage report or dashboard
  warnings?: string[];
}

export interface PipelineSummary {
  builds: number;
  failed?: number;
  buildsWithCache?: number; // builds with at least one cached step (the north-star metric)
  totalSteps: number;
  cachedSteps: number;
  deduplicatedSteps?: number; // run by another job's build at the same time; not cache hits
  billedSeconds?: number; // the pipeline's leases
  branch?: string;
  runUrl?: string;
  usageUrl?: string;
}

export interface BuildTotals {
  builds: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  durationMs: number;
  totalSteps: number;
  cachedSteps: number;
  deduplicatedSteps: number;
  withCache: number; // builds with at least one cached step (deduplicated steps are no cache hits)
}

/** The marker the wrappers look for to update their own PR comment instead of posting a new one. */
export const PR_COMMENT_MARKER = '<!-- buildcloud:pr-comment -->';
export const MAX_TABLE_ROWS = 1000;
// GitHub refuses a step summary over 1 MiB. Rows stop at 900 KiB; the rest is bounded too: at most 20 warnings
// of 500 characters, each at most ~6 bytes once escaped (~60 KB), plus a few fixed lines.
export const MAX_TABLE_BYTES = 900 * 1024;
const MAX_FIELD = MAX_RECORD_STRING; // the endpoint's own limit on strings; longer ones are cut
const MAX_WARNINGS = 20;
const MAX_WARNING_CHARS = 500;
const MAX_MISSES = 20; // cache-miss lines shown, at most MAX_WARNING_CHARS each
const MAX_MISS_STEP = 80; // characters of a step's name in a cache-miss line
const NORTH_STAR = NORTH_STAR_GOAL;

const num = (n: number | undefined) => (typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : 0);

export function totalsOf(builds: BuildResult[]): BuildTotals {
  const t: BuildTotals = {
    builds: builds.length,
    succeeded: 0,
    failed: 0,
    cancelled: 0,
    durationMs: 0,
    totalSteps: 0,
    cachedSteps: 0,
    deduplicatedSteps: 0,
    withCache: 0
  };
  for (const b of builds) {
    if (b.status === 'success') t.succeeded++;
    else if (b.status === 'failure') t.failed++;
    else t.cancelled++;
    t.durationMs += num(b.durationMs);
    t.totalSteps += num(b.totalSteps);
    t.cachedSteps += Math.min(num(b.cachedSteps), num(b.totalSteps));
    t.deduplicatedSteps += Math.min(num(b.deduplicatedSteps), num(b.totalSteps) - Math.min(num(b.cachedSteps), num(b.totalSteps)));
    if (num(b.cachedSteps) > 0) t.withCache++;
  }
  return t;
}

// eslint-disable-next-line no-control-regex -- control characters are what this looks for
const ANSI_ESCAPE = /\x1b\[[0-9;?]*[A-Za-z]/g;
// eslint-disable-next-line no-control-regex -- control characters are what this looks for
const CONTROL = /[\x00-\x1f\x7f\u2028\u2029]/g;

/** Newlines, ANSI escapes and other control characters out, length bounded: the same for every output. */
function clean(s: string | undefined, max = MAX_FIELD): string {
  const flat = (s ?? '').replace(ANSI_ESCAPE, '').replace(CONTROL, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

const MD_ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '|': '&#124;',
  '`': '&#96;',
  '\\': '&#92;',
  '*': '&#42;',
  _: '&#95;',
  '[': '&#91;',
  ']': '&#93;',
  '~': '&#126;'
};

/** User text as inert markdown: no HTML, no table cell breaks, no code spans or links, no @mentions. */
export function escapeMarkdown(s: string | undefined, max = MAX_FIELD): string {
  return (
    clean(s, max)
      .replace(/[&<>"'|`\\*_[\]~]/g, (c) => MD_ENTITIES[c])
      // A zero-width space after an @ that could start a mention keeps "feature/@team" from notifying a team;
      // "repo@sha256:…" is no mention and stays as it is.
      .replace(/(^|[^\w])@/g, '$1@&#8203;')
  );
}

// Ids from the control plane in a code span when they are plainly safe there; entities would show literally.
const code = (s: string) => (/^[\w.:/-]{1,128}$/.test(s) ? `\`${s}\`` : escapeMarkdown(s));

function safeUrl(u: string | undefined): string | undefined {
  if (!u) return undefined;
  try {
    const url = new URL(u);
    if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
    return url.href.replace(/\(/g, '%28').replace(/\)/g, '%29');
  } catch {
    return undefined;
  }
}

export function formatDuration(ms: number): string {
  const v = Math.round(num(ms));
  if (v < 1000) return `${v} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(1)} s`;
  const s = Math.round(v / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** A share as a whole percent that never rounds "almost all" to 100% or "a few" to 0%. */
export function percent(part: number, whole: number): string {
  if (!(whole > 0)) return '–';
  const p = Math.round((part / whole) * 100);
  if (p === 100 && part < whole) return '99%';
  if (p === 0 && part > 0) return '1%';
  return `${p}%`;
}

// Billed minutes as the usage report shows them: 2 decimals, rounded up.
const minutes = (seconds: number) => (Math.ceil((num(seconds) / 60) * 100) / 100).toFixed(2);

const STATUS_MD: Record<BuildStatus, string> = { success: '✅ success', failure: '❌ failure', cancelled: '⏹️ cancelled' };
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

function builderLine(s: JobSummary, fmt: (id: string) => string): string | undefined {
  const parts: string[] = [];
  if (s.leaseId) parts.push(`lease ${fmt(s.leaseId)}`);
  if (s.builderShared !== undefined) parts.push(s.builderShared ? "shared with the pipeline's other jobs" : 'this job only');
  if (s.builderWarm !== undefined) parts.push(s.builderWarm ? 'warm start' : 'cold start');
  return parts.length ? parts.join(' · ') : undefined;
}

function headline(t: BuildTotals, md: boolean): string {
  const b = md ? (x: string) => `**${x}**` : (x: string) => x;
  const outcome = [`${t.succeeded} succeeded`, ...(t.failed ? [`${t.failed} failed`] : []), ...(t.cancelled ? [`${t.cancelled} cancelled`] : [])];
  const dedup = t.deduplicatedSteps ? `, ${plural(t.deduplicatedSteps, 'step')} deduplicated (run by another job's build at the same time)` : '';
  return `${b(plural(t.builds, 'build'))} (${outcome.join(', ')}), cache ratio ${b(percent(t.cachedSteps, t.totalSteps))} (${t.cachedSteps} of ${plural(t.totalSteps, 'step')} cached)${dedup}`;
}

/** One line on why a build's first executed step missed the cache: "<step>: <reason> (+N later steps rebuilt)". */
export function cacheMissLine(m: CacheMiss): string {
  const later = num(m.laterSteps) ? ` (+${plural(num(m.laterSteps), 'later step')} rebuilt)` : '';
  // A long RUN line would crowd out the reason (and a record's 256 characters): the step is cut, never the reason.
  const step = m.step && m.step.length > MAX_MISS_STEP ? `${m.step.slice(0, MAX_MISS_STEP - 1)}…` : m.step;
  return `${step ? `${step}: ` : ''}${m.reason}${later}`;
}

export function renderSummary(s: JobSummary): string {
  const t = totalsOf(s.builds);
  const out: string[] = [`## ${escapeMarkdown(s.title || 'Build Cloud', 100)}`, ''];
  if (t.builds === 0) {
    out.push('No image builds ran in this job.', '');
  } else {
    out.push(headline(t, true), '');
    // The deduplicated column only when some build has such steps: most jobs never share a solve.
    const dedupCol = t.deduplicatedSteps > 0;
    out.push(`| Image / target | Platform | Status | Duration | Steps | Cached steps | Cached % |${dedupCol ? ' Deduplicated steps |' : ''} Builder |`);
    out.push(`|---|---|---|--:|--:|--:|--:|${dedupCol ? '--:|' : ''}---|`);
    let bytes = 0;
    let shown = 0;
    for (const b of s.builds) {
      const row =
        `| ${escapeMarkdown(b.image || b.buildId)} | ${escapeMarkdown(b.platform)} | ${STATUS_MD[b.status] ?? escapeMarkdown(b.status)}${b.pushStatus ? `, ❌ push ${b.pushStatus}` : ''} ` +
        `| ${formatDuration(b.durationMs)} | ${num(b.totalSteps)} | ${num(b.cachedSteps)} | ${percent(num(b.cachedSteps), num(b.totalSteps))} ` +
        (dedupCol ? `| ${num(b.deduplicatedSteps)} ` : '') +
        `| ${b.builderId ? escapeMarkdown(b.builderId) : '–'} |`;
      bytes += Buffer.byteLength(row) + 1;
      if (shown >= MAX_TABLE_ROWS || bytes > MAX_TABLE_BYTES) break;
      out.push(row);
      shown++;
    }
    out.push('');
    if (shown < t.builds) {
      out.push(`_${t.builds - shown} more builds are not listed, to keep this summary under GitHub's 1 MiB limit; the totals count all ${t.builds}._`, '');
    }
    const misses = s.builds.filter((b) => b.cacheMiss).slice(0, MAX_MISSES);
    if (misses.length) {
      out.push('**Why steps missed the cache**', '');
      for (const b of misses) out.push(`- ${escapeMarkdown(b.image || b.buildId)}: ${escapeMarkdown(cacheMissLine(b.cacheMiss!), MAX_WARNING_CHARS)}`);
      out.push('');
    }
  }
  out.push('| Totals | |', '|---|---|');
  out.push(`| Builds | ${t.builds} |`);
  out.push(`| Build time (sum of builds) | ${formatDuration(t.durationMs)} |`);
  if (s.jobWallMs !== undefined) out.push(`| Job wall time | ${formatDuration(s.jobWallMs)} |`);
  if (s.billedSeconds !== undefined) out.push(`| Billed minutes (this job's lease) | ${minutes(s.billedSeconds)} |`);
  out.push(`| Cache ratio (this job) | ${percent(t.cachedSteps, t.totalSteps)} |`);
  if (t.deduplicatedSteps) out.push(`| Deduplicated steps (run by another job's build at the same time) | ${t.deduplicatedSteps} |`);
  out.push(`| Builds with a cached step | ${percent(t.withCache, t.builds)} (goal ${NORTH_STAR * 100}%) |`);
  if (s.pipeline) out.push(`| Pipeline cache ratio | ${percent(num(s.pipeline.cachedSteps), num(s.pipeline.totalSteps))} |`);
  out.push('');
  const builder = builderLine(s, code);
  if (builder) out.push(`**Builder:** ${builder}`, '');
  const links = [
    ['Run', safeUrl(s.runUrl)],
    ['Usage', safeUrl(s.usageUrl)]
  ]
    .filter(([, u]) => u)
    .map(([n, u]) => `[${n}](${u})`);
  if (links.length) out.push(links.join(' · '), '');
  const warnings = s.warnings ?? [];
  if (warnings.length) {
    out.push('### Warnings', '', ...warnings.slice(0, MAX_WARNINGS).map((w) => `- ${escapeMarkdown(w, MAX_WARNING_CHARS)}`));
    if (warnings.length > MAX_WARNINGS) out.push(`- … and ${warnings.length - MAX_WARNINGS} more`);
    out.push('');
  }
  return out.join('\n');
}

export function renderPrComment(p: PipelineSummary): string {
  const builds = num(p.builds);
  const facts = [plural(builds, 'build')];
  if (p.failed) facts.push(`${num(p.failed)} failed`);
  if (p.billedSeconds !== undefined) facts.push(`**${minutes(p.billedSeconds)}** build minutes`);
  facts.push(`cache ratio **${percent(num(p.cachedSteps), num(p.totalSteps))}** (${num(p.cachedSteps)} of ${num(p.totalSteps)} steps)`);
  if (num(p.deduplicatedSteps)) facts.push(`${plural(num(p.deduplicatedSteps), 'step')} deduplicated`);
  if (p.buildsWithCache !== undefined) facts.push(`${percent(num(p.buildsWithCache), builds)} of builds reused a cached layer`);
  const links = [
    ['run', safeUrl(p.runUrl)],
    ['usage', safeUrl(p.usageUrl)]
  ]
    .filter(([, u]) => u)
    .map(([n, u]) => `[${n}](${u})`);
  const branch = p.branch ? ` on ${escapeMarkdown(p.branch, 100)}` : '';
  return [PR_COMMENT_MARKER, `**Build Cloud**${branch}: ${facts.join(' · ')}${links.length ? ` · ${links.join(' · ')}` : ''}`, ''].join('\n');
}

/** Plain text for job logs (GitLab, CircleCI): no markup, no control characters from user strings. */
export function renderText(s: JobSummary): string {
  const t = totalsOf(s.builds);
  const out = [`${clean(s.title, 100) || 'Build Cloud'}: ${t.builds === 0 ? 'no image builds ran in this job' : headline(t, false)}`];
  s.builds.slice(0, MAX_TABLE_ROWS).forEach((b) => {
    const dedup = num(b.deduplicatedSteps) ? `, deduplicated ${num(b.deduplicatedSteps)}` : '';
    const cached = `cached ${num(b.cachedSteps)}/${num(b.totalSteps)} (${percent(num(b.cachedSteps), num(b.totalSteps))})${dedup}`;
    const builder = b.builderId ? `  builder ${clean(b.builderId)}` : '';
    out.push(
      `  ${(b.pushStatus ? `${b.status}, push ${b.pushStatus}` : b.status).padEnd(9)} ${clean(b.platform).padEnd(14)} ${formatDuration(b.durationMs).padStart(8)}  ${cached}${builder}  ${clean(b.image || b.buildId)}`
    );
  });
  if (t.builds > MAX_TABLE_ROWS) out.push(`  … ${t.builds - MAX_TABLE_ROWS} more builds not listed`);
  for (const b of s.builds.filter((x) => x.cacheMiss).slice(0, MAX_MISSES)) {
    out.push(`  cache miss: ${clean(b.image || b.buildId)}: ${clean(cacheMissLine(b.cacheMiss!), MAX_WARNING_CHARS)}`);
  }
  const totals = [`build time ${formatDuration(t.durationMs)}`];
  if (s.jobWallMs !== undefined) totals.push(`job wall time ${formatDuration(s.jobWallMs)}`);
  if (s.billedSeconds !== undefined) totals.push(`billed minutes ${minutes(s.billedSeconds)}`);
  totals.push(`builds with a cached step ${percent(t.withCache, t.builds)}`);
  if (t.deduplicatedSteps) totals.push(`deduplicated steps ${t.deduplicatedSteps}`);
  if (s.pipeline) totals.push(`pipeline cache ratio ${percent(num(s.pipeline.cachedSteps), num(s.pipeline.totalSteps))}`);
  out.push(`Totals: ${totals.join(', ')}`);
  const builder = builderLine(s, (id) => clean(id));
  if (builder) out.push(`Builder: ${builder}`);
  const run = safeUrl(s.runUrl);
  const usage = safeUrl(s.usageUrl);
  if (run) out.push(`Run: ${run}`);
  if (usage) out.push(`Usage: ${usage}`);
  const warnings = s.warnings ?? [];
  for (const w of warnings.slice(0, MAX_WARNINGS)) out.push(`Warning: ${clean(w, MAX_WARNING_CHARS)}`);
  if (warnings.length > MAX_WARNINGS) out.push(`Warning: … and ${warnings.length - MAX_WARNINGS} more`);
  return `${out.join('\n')}\n`;
}
