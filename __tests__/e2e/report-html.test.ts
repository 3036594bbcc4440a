// The demo's HTML report in a real browser (Debian's headless Chromium): it renders without errors and the
// numbers read back from the page are the ones it was given.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { chromium, type Browser } from 'playwright-core';
import { renderHtml, type DemoUsage, type JobOutcome } from '../../harness/demo-report';

const CHROMIUM = '/usr/bin/chromium';

const job = (pipeline: string, target: string, cached: number, untouched?: number): JobOutcome => ({
  ci: pipeline.startsWith('gitlab') ? 'GitLab CI' : 'GitHub Actions',
  pipeline,
  job: `image (${target})`,
  target,
  leaseId: `l-${pipeline}-${target}`,
  builder: 'tcp://127.0.0.1:4000',
  status: 'success',
  durationMs: 2500,
  totalSteps: 7,
  cachedSteps: cached,
  wallMs: 4000,
  untouchedSteps: untouched
});

let browser: Browser;

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does).`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync'
    ]
  });
});

afterAll(async () => {
  await browser?.close();
});

test('the report renders without errors and its numbers read back', async () => {
  const jobs = [
    job('github run 1', 'api', 0),
    job('github run 1', 'web', 5),
    job('gitlab pipeline 2', 'api', 4, 4),
    job('gitlab pipeline 2', 'web<script>alert(1)</script>', 6, 4)
  ];
  const usage: DemoUsage = {
    minutesUsed: 1.75,
    minutesLeft: 58.25,
    minutesBought: 60,
    builds: 4,
    withCachedStepShare: 0.5,
    warmWithCachedStepShare: 0.75,
    warmBuilds: 8,
    avgCacheRatio: 0.54,
    pipelineMinutes: { 'github run 1': 1.2, 'gitlab pipeline 2': 0.55 }
  };
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bc-report-')), 'report.html');
  fs.writeFileSync(file, renderHtml(jobs, usage, { generatedAt: '2026-11-23T12:00:00Z', ok: false }));

  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(String(e)));
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.message()}`);
    void d.dismiss();
  });
  page.on('request', (r) => !r.url().startsWith('file:') && problems.push(`external request: ${r.url()}`));
  await page.goto(`file://${file}`);

  expect(await page.locator('#status').textContent()).toBe('failed');
  expect(Number(await page.locator('#kpi-north-star').getAttribute('data-value'))).toBe(0.75);
  expect(Number(await page.locator('#kpi-north-star-all').getAttribute('data-value'))).toBe(0.5);
  expect(Number(await page.locator('#kpi-minutes-used').getAttribute('data-value'))).toBe(1.75);
  expect(Number(await page.locator('#kpi-minutes-left').getAttribute('data-value'))).toBe(58.25);
  const rows = await page
    .locator('#builds tbody tr.build')
    .evaluateAll((trs) => trs.map((tr) => ({ cached: Number(tr.getAttribute('data-cached')), untouched: tr.getAttribute('data-untouched') })));
  expect(rows).toEqual([
    { cached: 0, untouched: null },
    { cached: 5, untouched: null },
    { cached: 4, untouched: '4' },
    { cached: 6, untouched: '4' }
  ]);
  // Both charts drew a bar per build / per pipeline, with widths proportional to the values.
  expect(await page.locator('#chart-cache-ratio rect').count()).toBe(4);
  expect(await page.locator('#chart-minutes rect').count()).toBe(2);
  const widths = await page.locator('#chart-minutes rect').evaluateAll((rs) => rs.map((r) => Number(r.getAttribute('width'))));
  expect(widths[0]).toBeGreaterThan(widths[1]);
  // A hostile target name is text, not markup.
  expect(await page.locator('script').count()).toBe(0);
  const box = await page.locator('#chart-cache-ratio svg').boundingBox();
  expect(box!.width).toBeGreaterThan(100);
  expect(problems).toEqual([]);
  await page.close();
});
