// The demo's report: per pipeline which builder served which job, per build the steps cached against the steps the
// code change left untouched (measured by control builds, demo-untouched.ts), steps deduplicated (run by another
// job's build at the same time: no cache hits), minutes billed, the bucket left and the north-star share. Text for the
// terminal, and a self-contained HTML page with charts (inline SVG, no scripts, no external assets).

export interface JobOutcome {
  ci: string;
  pipeline: string;
  job: string;
  target: string;
  leaseId: string;
  builder: string;
  status: 'success' | 'failure';
  durationMs: number;
  totalSteps: number;
  cachedSteps: number;
  wallMs: number;
  untouchedSteps?: number; // steps the change between pipelines left alone, measured (undefined for the first pipeline)
  cacheMiss?: string; // why its first executed step missed the org cache (the build record's cache_miss)
  error?: string;
}

export interface DemoUsage {
  minutesUsed: number;
  minutesLeft: number;
  minutesBought: number;
  builds: number;
  withCachedStepShare: number; // all builds, the cold first pipeline included
  warmWithCachedStepShare: number; // the builds of the pipelines after the first: what the 80% goal is checked on
  warmBuilds: number;
  avgCacheRatio: number;
  cachedSteps?: number; // all builds: steps BuildKit reported CACHED
  deduplicatedSteps?: number; // all builds: steps another job's build at the same time ran (no cache hits)
  pipelineMinutes: Record<string, number>;
  pipelineSteps?: Record<string, { total: number; cached: number; deduplicated: number }>; // from the usage API
  cacheMisses?: Array<{ leaseId: string; reason: string }>; // the pipelines' cache-miss lines, from the usage API
}

/** Whether a pipeline's builds reused what the change left untouched. */
export interface ReuseCheck {
  pipeline: string;
  ok: boolean;
  why: string;
}

/**
 * Every build after the first pipeline must reuse each step the change left untouched. Per job: cached ≥ untouched.
 * A job whose steps another job's build at the same time ran reports them deduplicated, not cached, and the per-job outputs
 * do not carry that count: in a pipeline where the usage API counted deduplicated steps, the pipeline as a whole
 * must reach its jobs' untouched steps with cached + deduplicated ones.
 */
export function pipelineChecks(jobs: JobOutcome[], u: DemoUsage): ReuseCheck[] {
  const out: ReuseCheck[] = [];
  for (const p of [...new Set(jobs.map((j) => j.pipeline))]) {
    const js = jobs.filter((j) => j.pipeline === p && j.untouchedSteps !== undefined);
    if (!js.length) continue;
    const dedup = u.pipelineSteps?.[p]?.deduplicated ?? 0;
    if (dedup === 0) {
      const short = js.filter((j) => j.cachedSteps < (j.untouchedSteps ?? 0));
      out.push({ pipeline: p, ok: short.length === 0, why: short.map((j) => `${j.job}: cached ${j.cachedSteps} < untouched ${j.untouchedSteps}`).join('; ') });
    } else {
      const want = js.reduce((s, j) => s + (j.untouchedSteps ?? 0), 0);
      const got = js.reduce((s, j) => s + j.cachedSteps, 0) + dedup;
      out.push({ pipeline: p, ok: got >= want, why: got >= want ? '' : `cached + deduplicated ${got} < untouched ${want}` });
    }
  }
  return out;
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;

export function renderText(jobs: JobOutcome[], u: DemoUsage): string {
  const out: string[] = [];
  for (const p of [...new Set(jobs.map((j) => j.pipeline))]) {
    const js = jobs.filter((j) => j.pipeline === p);
    const builders = [...new Set(js.map((j) => j.builder))];
    const dedup = u.pipelineSteps?.[p]?.deduplicated ?? 0;
    out.push(
      `\n${p} (${js[0].ci}) — ${js.length} jobs on ${builders.length} builder${builders.length === 1 ? '' : 's'}, ${(u.pipelineMinutes[p] ?? 0).toFixed(2)} min billed` +
        (dedup ? `, ${dedup} steps deduplicated (run by another job's build at the same time)` : '')
    );
    for (const j of js) {
      const expect = j.untouchedSteps === undefined ? '' : `  (untouched by the change: ${j.untouchedSteps})`;
      out.push(
        `  ${j.status === 'success' ? 'ok  ' : 'FAIL'} ${j.job.padEnd(20)} builder ${j.builder.padEnd(22)} ${(j.durationMs / 1000).toFixed(1).padStart(5)} s  cached ${j.cachedSteps}/${j.totalSteps}${expect}`
      );
      if (j.cacheMiss) out.push(`       why steps missed the cache: ${j.cacheMiss}`);
      if (j.error) out.push(`       ${j.error.replace(/\n/g, '\n       ')}`);
    }
  }
  out.push('');
  out.push(
    `Builds: ${u.builds}; with at least one cached step: ${pct(u.warmWithCachedStepShare)} of the ${u.warmBuilds} after the first pipeline (goal 80%), ` +
      `${pct(u.withCachedStepShare)} of all (the first pipeline starts from an empty cache); average cache ratio ${pct(u.avgCacheRatio)}`
  );
  if (u.cachedSteps !== undefined) {
    out.push(
      `Steps: ${u.cachedSteps} cached (BuildKit reported CACHED), ${u.deduplicatedSteps ?? 0} deduplicated (run by another job's build at the same time)`
    );
  }
  for (const c of pipelineChecks(jobs, u)) if (!c.ok) out.push(`Not reused in ${c.pipeline}: ${c.why}`);
  out.push(`Minutes: ${u.minutesUsed.toFixed(2)} billed, ${u.minutesLeft.toFixed(2)} left of ${u.minutesBought}`);
  return out.join('\n');
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function barChart(title: string, id: string, rows: Array<{ label: string; value: number; max: number; text: string }>): string {
  const h = 22;
  const w = 680; // label column 290 px, bars up to 280 px, then the value
  const bars = rows
    .map((r, i) => {
      const bw = r.max > 0 ? Math.round((r.value / r.max) * 280) : 0;
      return `<g transform="translate(0,${i * h})"><text x="0" y="15" font-size="12">${esc(r.label)}</text><rect x="290" y="3" width="${bw}" height="15" fill="#2b7bb9"></rect><text x="${295 + bw}" y="15" font-size="12" data-value="${r.value}">${esc(r.text)}</text></g>`;
    })
    .join('');
  return `<figure id="${id}"><figcaption>${esc(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${rows.length * h + 4}" role="img" aria-label="${esc(title)}">${bars}</svg></figure>`;
}

export function renderHtml(jobs: JobOutcome[], u: DemoUsage, meta: { generatedAt: string; ok: boolean }): string {
  const rows = jobs
    .map(
      (j) =>
        `<tr class="build" data-pipeline="${esc(j.pipeline)}" data-cached="${j.cachedSteps}" data-total="${j.totalSteps}"${j.untouchedSteps === undefined ? '' : ` data-untouched="${j.untouchedSteps}"`}><td>${esc(j.pipeline)}</td><td>${esc(j.ci)}</td><td>${esc(j.job)}</td><td>${esc(j.builder)}</td><td>${j.status}</td><td>${(j.durationMs / 1000).toFixed(1)} s</td><td>${j.cachedSteps}/${j.totalSteps}</td><td>${j.untouchedSteps ?? '–'}</td><td class="miss">${esc(j.cacheMiss ?? '–')}</td></tr>`
    )
    .join('\n');
  const ratioChart = barChart(
    'Cache ratio per build',
    'chart-cache-ratio',
    jobs.map((j) => ({
      label: `${j.pipeline}: ${j.target}`,
      value: j.totalSteps ? j.cachedSteps / j.totalSteps : 0,
      max: 1,
      text: j.totalSteps ? pct(j.cachedSteps / j.totalSteps) : '–'
    }))
  );
  const maxMin = Math.max(0.01, ...Object.values(u.pipelineMinutes));
  const minutesChart = barChart(
    'Minutes billed per pipeline',
    'chart-minutes',
    Object.entries(u.pipelineMinutes).map(([p, m]) => ({ label: p, value: m, max: maxMin, text: `${m.toFixed(2)} min` }))
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Build Cloud demo report</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.kpi{display:inline-block;margin-right:2em;font-size:18px}.ok{color:#1a7f37}.bad{color:#cf222e}figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.5em}</style></head>
<body><h1>Build Cloud demo <span class="${meta.ok ? 'ok' : 'bad'}" id="status">${meta.ok ? 'passed' : 'failed'}</span></h1>
<p>Generated ${esc(meta.generatedAt)}.</p>
<p><span class="kpi">Builds: <b id="kpi-builds">${u.builds}</b></span>
<span class="kpi">With a cached step after the first pipeline: <b id="kpi-north-star" data-value="${u.warmWithCachedStepShare}">${pct(u.warmWithCachedStepShare)}</b> (goal 80%; all builds: <span id="kpi-north-star-all" data-value="${u.withCachedStepShare}">${pct(u.withCachedStepShare)}</span>)</span>
<span class="kpi">Deduplicated steps: <b id="kpi-deduplicated" data-value="${u.deduplicatedSteps ?? 0}">${u.deduplicatedSteps ?? 0}</b></span>
<span class="kpi">Minutes billed: <b id="kpi-minutes-used" data-value="${u.minutesUsed}">${u.minutesUsed.toFixed(2)}</b></span>
<span class="kpi">Bucket left: <b id="kpi-minutes-left" data-value="${u.minutesLeft}">${u.minutesLeft.toFixed(2)}</b> of ${u.minutesBought}</span></p>
${ratioChart}
${minutesChart}
<h2>Builds</h2>
<table id="builds"><thead><tr><th>pipeline</th><th>CI</th><th>job</th><th>builder</th><th>status</th><th>duration</th><th>cached/total steps</th><th>untouched by the change</th><th>why steps missed the cache</th></tr></thead>
<tbody>
${rows}
</tbody></table>
</body></html>
`;
}
