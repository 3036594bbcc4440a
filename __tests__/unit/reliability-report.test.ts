// scripts/reliability-report.mjs: the table of docs/reliability.md from Jest's JSON results and the scenario files.
// Every reliability test and every scenario file gets a row, whatever happened to it; the script is run as CI runs it.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.join(__dirname, '..', '..');
const SCRIPT = path.join(ROOT, 'scripts', 'reliability-report.mjs');
const REL = path.join(ROOT, '__tests__', 'reliability');

let dir: string;
let scenarios: string;
const RUN_START = Date.parse('2026-11-30T12:00:00Z');

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-relreport-'));
  scenarios = path.join(dir, 'scenarios');
  fs.mkdirSync(scenarios);
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

type Assertion = { fullName: string; status: string; failureMessages?: string[] };
type Suite = { file: string; tests: Assertion[]; status?: string; message?: string; start?: number };
function results(suites: Suite[], name = 'results.json', startTime = RUN_START): string {
  const file = path.join(dir, name);
  const testResults = suites.map((s) => ({
    name: s.file,
    perfStats: s.start === undefined ? undefined : { start: s.start, end: s.start + 1000 },
    status: s.status ?? (s.tests.some((t) => t.status === 'failed') ? 'failed' : 'passed'),
    message: s.message ?? '',
    assertionResults: s.tests.map((t) => ({ ...t, title: t.fullName, ancestorTitles: [], failureMessages: t.failureMessages ?? [] }))
  }));
  fs.writeFileSync(file, JSON.stringify({ startTime, success: false, testResults }));
  return file;
}

function scenario(name: string, test: string, file: string, figures: object = { recordsSent: 3, duplicates: 0 }, writtenAt = RUN_START + 1000): void {
  const p = path.join(scenarios, `${name.replace(/\W+/g, '-')}.json`);
  fs.writeFileSync(p, JSON.stringify({ scenario: name, injected: `inject ${name}`, checked: `check ${name}`, figures, test, file }));
  fs.utimesSync(p, writtenAt / 1000, writtenAt / 1000);
}

function report(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [SCRIPT, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The table's rows as arrays of cells (the header and the separator left out). */
function rows(md: string): string[][] {
  const table = md.split('\n').filter((l) => l.startsWith('| '));
  return table.slice(2).map((l) =>
    l
      .slice(2, -2)
      .split(/(?<!\\) \| /)
      .map((c) => c.trim())
  );
}

test('one row per scenario and per reliability test, each with its result from Jest by test name', () => {
  const metering = path.join(REL, 'metering.test.ts');
  const storage = path.join(REL, 'storage.test.ts');
  const file = results([
    {
      file: metering,
      tests: [
        { fullName: 'metering 500 | retried', status: 'passed' },
        { fullName: 'metering hangs', status: 'failed', failureMessages: ['\u001b[2mexpect(received).toEqual(expected)\u001b[22m\n\nExpected: 0'] },
        { fullName: 'metering down, no report', status: 'passed' },
        { fullName: 'stale one', status: 'passed' }
      ]
    },
    { file: path.join(ROOT, '__tests__', 'unit', 'other.test.ts'), tests: [{ fullName: 'a unit test', status: 'passed' }] },
    { file: path.join(REL, 'broken.test.ts'), tests: [], status: 'failed', message: '  ● Test suite failed to run\n\nCannot find module x' }
  ]);
  scenario('metering answers 500', 'metering 500 | retried', metering, { recordsSent: 3, recordsAccepted: 3, note: 'a|b' });
  scenario('metering hangs', 'metering hangs', metering, { recordsSent: 2 });
  scenario('gone test', 'a test renamed since', metering);
  scenario('storage full', 'disk full', storage);
  scenario('stale one', 'stale one', metering, {}, RUN_START - 60_000);
  fs.writeFileSync(path.join(scenarios, 'broken.json'), '{ not json');

  const r = report([file, '--scenarios', scenarios, '--out', '-']);
  expect(r).toMatchObject({ status: 0, stderr: '' });
  const byName = new Map(rows(r.stdout).map((c) => [c[0], c]));
  expect(byName.get('metering answers 500')).toEqual([
    'metering answers 500',
    'inject metering answers 500',
    'check metering answers 500',
    '**passed**',
    'recordsSent: 3<br>recordsAccepted: 3<br>note: "a\\|b"',
    '__tests__/reliability/metering.test.ts: metering 500 \\| retried'
  ]);
  expect(byName.get('metering hangs')?.[3]).toBe('**failed: expect(received).toEqual(expected)**');
  expect(byName.get('gone test')?.[3]).toBe('**not run: no test of this name in this run**');
  expect(byName.get('storage full')?.[3]).toBe('**not run: its test file was not in this run**');
  expect(byName.get('stale one')?.[3]).toBe('**passed (figures from an earlier run, 2026-11-30T11:59:00.000Z)**');
  expect(byName.get('metering down, no report')?.slice(1, 5)).toEqual(['—', '—', '**passed (no scenario file: the test did not reach reportScenario)**', '—']);
  expect(byName.get('broken.json')?.[3]).toMatch(/^\*\*unreadable scenario file: .*JSON/);
  expect(byName.get('(whole file)')?.[3]).toBe('**failed: the file did not run: ● Test suite failed to run**');
  // Unit tests are not reliability scenarios; nothing else is in the table.
  expect([...byName.keys()].sort()).toEqual(
    ['(whole file)', 'broken.json', 'gone test', 'metering answers 500', 'metering down, no report', 'metering hangs', 'stale one', 'storage full'].sort()
  );
  expect(r.stdout).toMatch(/^- Run: 2026-11-30T12:00:00\.000Z$/m);
  expect(r.stdout).toMatch(/^- Commit: ([0-9a-f]{12}|unknown)/m);
  expect(r.stdout).toMatch(/^- Machine: .*\d+ vCPU .*GiB, Node v\d+/m);
  expect(r.stdout).toMatch(/^- Scenarios: 8 \(2 failed, 2 not run, 3 passed, 1 unreadable\); 1 test\(s\) wrote no scenario file$/m);
});

test('writes docs to --out; no scenario directory is no scenario, not an error', () => {
  const file = results([{ file: path.join(REL, 'load.test.ts'), tests: [{ fullName: 'load', status: 'passed' }] }]);
  const out = path.join(dir, 'reliability.md');
  const r = report([file, '--scenarios', path.join(dir, 'none'), '--out', out]);
  expect(r.status).toBe(0);
  expect(r.stderr).toContain(`1 scenarios (1 passed) written to`);
  expect(rows(fs.readFileSync(out, 'utf8')).map((c) => c[3])).toEqual(['**passed (no scenario file: the test did not reach reportScenario)**']);
});

test('several result files (test files run one at a time): merged, a file run twice keeps its latest run; staleness is per test file', () => {
  const load = path.join(REL, 'load.test.ts');
  const storage = path.join(REL, 'storage.test.ts');
  const hour = 3_600_000;
  const first = results(
    [
      { file: load, tests: [{ fullName: 'load', status: 'failed', failureMessages: ['boom'] }], start: RUN_START },
      { file: storage, tests: [{ fullName: 'disk full', status: 'passed' }], start: RUN_START }
    ],
    'a.json'
  );
  const second = results([{ file: load, tests: [{ fullName: 'load', status: 'passed' }], start: RUN_START + 2 * hour }], 'b.json', RUN_START + 2 * hour);
  scenario('load', 'load', load, { builds: 300 }, RUN_START + 2 * hour + 1000);
  // Written after storage's run, before load's second one: current for storage.
  scenario('storage full', 'disk full', storage, { leftovers: 0 }, RUN_START + hour);
  const r = report([second, first, '--scenarios', scenarios, '--out', '-']);
  expect(r.status).toBe(0);
  expect(rows(r.stdout).map((c) => [c[0], c[3]])).toEqual([
    ['load', '**passed**'],
    ['storage full', '**passed**']
  ]);
  expect(r.stdout).toMatch(/^- Run: 2026-11-30T12:00:00\.000Z onwards \(2 Jest runs\)$/m);
});

test('bad input: one line naming the file or the option and what is expected, exit 2', () => {
  const missing = path.join(dir, 'nope.json');
  expect(report([missing, '--out', '-'])).toMatchObject({
    status: 2,
    stdout: '',
    stderr: expect.stringContaining(`reliability-report: no Jest results at ${missing}: run npm run reliability`)
  });
  fs.writeFileSync(path.join(dir, 'x.json'), '{"numPassedTests": 1}');
  expect(report([path.join(dir, 'x.json'), '--out', '-']).stderr).toContain('no testResults array');
  expect(report(['--out'])).toMatchObject({ status: 2, stderr: expect.stringContaining('--out needs a value (a file, or - for stdout)') });
  expect(report(['--bogus'])).toMatchObject({ status: 2, stderr: expect.stringContaining('unknown option --bogus') });
});
