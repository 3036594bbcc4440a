// The demo's judgement of its pipelines: every step the change left untouched (measured by control builds,
// harness/demo-untouched.ts) is reused; deduplicated steps are shown apart from cached ones, never as cache hits.
import { pipelineChecks, renderHtml, renderText, type DemoUsage, type JobOutcome } from '../../harness/demo-report';

const job = (pipeline: string, target: string, cached: number, untouched?: number): JobOutcome => ({
  ci: 'GitHub Actions',
  pipeline,
  job: `image (${target})`,
  target,
  leaseId: `l-${target}`,
  builder: 'tcp://127.0.0.1:4000',
  status: 'success',
  durationMs: 1000,
  totalSteps: 6,
  cachedSteps: cached,
  wallMs: 2000,
  untouchedSteps: untouched
});

const usage = (pipelineSteps: DemoUsage['pipelineSteps'] = {}): DemoUsage => ({
  minutesUsed: 1,
  minutesLeft: 59,
  minutesBought: 60,
  builds: 4,
  withCachedStepShare: 0.75,
  warmWithCachedStepShare: 1,
  warmBuilds: 2,
  avgCacheRatio: 0.5,
  cachedSteps: 9,
  deduplicatedSteps: 5,
  pipelineMinutes: {},
  pipelineSteps
});

test.each<[string, JobOutcome[], DemoUsage['pipelineSteps'], boolean[]]>([
  ['the first pipeline (nothing untouched to check) is not judged', [job('p1', 'api', 0)], {}, []],
  ['every job cached its untouched steps', [job('p2', 'api', 4, 4), job('p2', 'web', 5, 4)], { p2: { total: 12, cached: 9, deduplicated: 0 } }, [true]],
  [
    'a job that cached fewer than untouched fails its pipeline',
    [job('p2', 'api', 4, 4), job('p2', 'web', 3, 4)],
    { p2: { total: 12, cached: 7, deduplicated: 0 } },
    [false]
  ],
  // web's steps ran for api's identical solve: deduplicated, 0 cached; the pipeline's cached + deduplicated cover it.
  [
    'deduplicated steps count toward the pipeline, not toward a job',
    [job('p2', 'api', 4, 4), job('p2', 'web', 0, 4)],
    { p2: { total: 12, cached: 4, deduplicated: 6 } },
    [true]
  ],
  ['too few deduplicated steps still fail', [job('p2', 'api', 1, 4), job('p2', 'web', 0, 4)], { p2: { total: 12, cached: 1, deduplicated: 2 } }, [false]]
])('%s', (_, jobs, steps, want) => {
  expect(pipelineChecks(jobs, usage(steps)).map((c) => c.ok)).toEqual(want);
});

test('the text report shows cached and deduplicated steps apart, and says which pipeline missed', () => {
  const jobs = [job('p1', 'api', 0), job('p2', 'api', 4, 4), job('p2', 'web', 0, 4)];
  const text = renderText(jobs, usage({ p2: { total: 12, cached: 4, deduplicated: 1 } }));
  expect(text).toContain("p2 (GitHub Actions) — 2 jobs on 1 builder, 0.00 min billed, 1 steps deduplicated (run by another job's build at the same time)");
  expect(text).toContain("Steps: 9 cached (BuildKit reported CACHED), 5 deduplicated (run by another job's build at the same time)");
  expect(text).toContain('Not reused in p2: cached + deduplicated 5 < untouched 8');
  // The goal is judged on the pipelines after the first (it starts from an empty cache); all builds shown too.
  expect(text).toContain('with at least one cached step: 100% of the 2 after the first pipeline (goal 80%), 75% of all');
});

test('each job shows why its steps missed the cache, in text and HTML (escaped)', () => {
  const j = { ...job('p2', 'api', 5, 4), cacheMiss: '[build 1/2] COPY src/ /opt/app/src/: content of src/app.txt changed (+2 later steps rebuilt)' };
  expect(renderText([j], usage())).toContain(
    '       why steps missed the cache: [build 1/2] COPY src/ /opt/app/src/: content of src/app.txt changed (+2 later steps rebuilt)'
  );
  const html = renderHtml([{ ...j, cacheMiss: '<b>x</b>' }], usage(), { generatedAt: 'now', ok: true });
  expect(html).toContain('<td class="miss">&lt;b&gt;x&lt;/b&gt;</td>');
  expect(html).toContain('<th>why steps missed the cache</th>');
});
