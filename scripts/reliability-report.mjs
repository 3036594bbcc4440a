#!/usr/bin/env node
// docs/reliability.md from a test run (issue 14): Jest's JSON results say which reliability test passed or failed,
// the scenario files (__tests__/helpers/reliability.ts writes one per scenario to .ci/reliability/) say what each
// injected, what it checked and what it measured. The table joins the two by test name, so it cannot drift from
// the tests: a scenario whose test did not run, a reliability test that wrote no scenario file and figures left by
// an earlier run are each listed as such, never dropped.
//
//   node scripts/reliability-report.mjs [RESULTS.json ...] [--scenarios DIR] [--out FILE|-]
//
// RESULTS.json: `jest --json --outputFile=...` (default .ci/jest-results.json, the file .ci/run writes); several
// (test files run one at a time) are merged, a test file in more than one keeping its latest run. DIR: the
// scenario files (default $BUILDCLOUD_RELIABILITY_DIR, else .ci/reliability). FILE: where the Markdown goes (default
// docs/reliability.md; `-` for stdout). Exits 2 on bad arguments or unreadable results; the outcome of the tests
// themselves never changes its exit code (Jest's does that).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Test files under this directory (relative to the repository) are reliability tests. */
export const RELIABILITY_TESTS = '__tests__/reliability/';

/**
 * @typedef {{ scenario: string, injected: string, checked: string, figures: Record<string, unknown>, test?: string, file?: string }} Scenario
 *   one scenario file as reportScenario() writes it (test: the Jest test's full name; file: its test file's path)
 * @typedef {{ source: string, mtimeMs: number, data?: Scenario, error?: string }} ScenarioFile
 *   a file of the scenario directory: `data` when it parsed, else `error`
 * @typedef {{ scenario: string, injected: string, checked: string, figures: string, result: string, test: string, file: string }} Row
 *   one table row, every cell already plain text
 */

/** `p` relative to `root` with forward slashes (absolute paths from this machine; relative ones kept). */
function rel(root, p) {
  if (!p) return '';
  return (path.isAbsolute(p) ? path.relative(root, p) : p).split(path.sep).join('/');
}

const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g'); // colour codes in Jest's failure messages
const stripAnsi = (s) => String(s).replace(ANSI, '');
/** The first non-empty line of a Jest failure message, without colours, at most 200 characters. */
function firstLine(s) {
  const line = stripAnsi(s ?? '')
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '');
  return line === undefined ? '' : line.length > 200 ? `${line.slice(0, 197)}...` : line;
}

/** Jest's status words as the table says them. */
const STATUS = { passed: 'passed', failed: 'failed', pending: 'skipped', skipped: 'skipped', todo: 'todo', disabled: 'skipped', focused: 'passed' };

/** `figures` as one cell: `name: value` pairs in the order the test gave them. */
export function formatFigures(figures) {
  if (!figures || typeof figures !== 'object') return '';
  return Object.entries(figures)
    .map(([k, v]) => `${k}: ${typeof v === 'number' || typeof v === 'boolean' ? String(v) : JSON.stringify(v)}`)
    .join('<br>');
}

/**
 * One set of results from several `jest --json` files (this machine runs the heavy test files one at a time): their
 * test files together, a file in more than one keeping its latest run. Throws when one has no testResults array.
 * @param {{ path: string, results: any }[]} runs @returns {any}
 */
export function mergeResults(runs) {
  const byFile = new Map();
  let startTime = Infinity;
  for (const { path: p, results } of runs) {
    if (!results || !Array.isArray(results.testResults))
      throw new Error(`${p}: not Jest JSON results: no testResults array (write them with jest --json --outputFile=FILE)`);
    startTime = Math.min(startTime, Number(results.startTime) || Infinity);
    for (const suite of results.testResults) {
      const start = (x) => Number(x.perfStats?.start) || Number(results.startTime) || 0;
      const seen = byFile.get(suite.name);
      if (!seen || start(suite) >= seen.start)
        byFile.set(suite.name, { start: start(suite), suite: { ...suite, perfStats: { ...suite.perfStats, start: start(suite) } } });
    }
  }
  return { startTime: Number.isFinite(startTime) ? startTime : 0, testResults: [...byFile.values()].map((v) => v.suite) };
}

/**
 * The table's rows from Jest's JSON results (`results`, as `jest --json` writes them) and the scenario files
 * (`files`): one row per scenario file, then one per reliability test that wrote none, then one per reliability test
 * file that failed before any test ran. `root` resolves the absolute paths both carry. Throws when `results` has no
 * testResults array.
 * @param {any} results @param {ScenarioFile[]} files @param {{ root?: string }} [o] @returns {Row[]}
 */
export function buildRows(results, files, o = {}) {
  const root = o.root ?? ROOT;
  if (!results || !Array.isArray(results.testResults))
    throw new Error('not Jest JSON results: no testResults array (write them with jest --json --outputFile=FILE)');
  /** @type {Map<string, { status: string, message: string }>} */
  const tests = new Map();
  const filesRun = new Set();
  /** @type {Row[]} */
  const suiteRows = [];
  /** @type {Map<string, number>} when each test file's run began (unix ms): older scenario files are an earlier run's */
  const fileStart = new Map();
  for (const suite of results.testResults) {
    const file = rel(root, suite.name);
    filesRun.add(file);
    fileStart.set(file, Number(suite.perfStats?.start) || Number(results.startTime) || 0);
    for (const a of suite.assertionResults ?? []) {
      const fullName = a.fullName ?? [...(a.ancestorTitles ?? []), a.title].join(' ');
      tests.set(`${file}\0${fullName}`, { status: STATUS[a.status] ?? String(a.status), message: firstLine((a.failureMessages ?? []).join('\n')) });
    }
    if (file.startsWith(RELIABILITY_TESTS) && (suite.assertionResults ?? []).length === 0 && suite.status === 'failed') {
      const why = firstLine(suite.message || suite.failureMessage || 'no message');
      suiteRows.push({ scenario: '(whole file)', injected: '', checked: '', figures: '', result: `failed: the file did not run: ${why}`, test: '', file });
    }
  }

  /** @type {Row[]} */
  const rows = [];
  const reported = new Set();
  for (const f of files) {
    if (!f.data) {
      rows.push({
        scenario: path.basename(f.source),
        injected: '',
        checked: '',
        figures: '',
        result: `unreadable scenario file: ${f.error}`,
        test: '',
        file: ''
      });
      continue;
    }
    const d = f.data;
    const file = rel(root, d.file);
    const key = `${file}\0${d.test ?? ''}`;
    reported.add(key);
    const t = tests.get(key);
    let result;
    if (t) result = t.status === 'failed' && t.message ? `failed: ${t.message}` : t.status;
    else if (filesRun.has(file)) result = 'not run: no test of this name in this run';
    else result = 'not run: its test file was not in this run';
    const runStart = fileStart.get(file) ?? 0;
    if (t && runStart && f.mtimeMs < runStart) result += ` (figures from an earlier run, ${new Date(f.mtimeMs).toISOString()})`;
    rows.push({
      scenario: String(d.scenario ?? path.basename(f.source)),
      injected: String(d.injected ?? ''),
      checked: String(d.checked ?? ''),
      figures: formatFigures(d.figures),
      result,
      test: String(d.test ?? ''),
      file
    });
  }
  for (const [key, t] of tests) {
    const [file, name] = key.split('\0');
    if (!file.startsWith(RELIABILITY_TESTS) || reported.has(key)) continue;
    const base = t.status === 'failed' && t.message ? `failed: ${t.message}` : t.status;
    rows.push({
      scenario: name,
      injected: '',
      checked: '',
      figures: '',
      result: `${base} (no scenario file: the test did not reach reportScenario)`,
      test: name,
      file
    });
  }
  const order = (r) => `${r.file}\0${r.scenario}`;
  return [...rows.sort((a, b) => order(a).localeCompare(order(b))), ...suiteRows];
}

/** One Markdown table cell: pipes escaped, line breaks as <br>, empty as a dash. */
function cell(s) {
  const t = String(s).replace(/\|/g, '\\|').replace(/\r?\n/g, '<br>').trim();
  return t === '' ? '—' : t;
}

/** The Markdown table of `rows`. */
export function renderTable(rows) {
  const head = ['Scenario', 'Injected', 'Checked', 'Result', 'Figures', 'Test'];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const r of rows) {
    const test = r.file ? `${r.file}${r.test ? `: ${r.test}` : ''}` : r.test;
    lines.push(`| ${[r.scenario, r.injected, r.checked, `**${r.result}**`, r.figures, test].map(cell).join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Counts of rows by how their result starts (passed, failed, not run, ...), in a stable order. */
export function tally(rows) {
  const counts = {};
  for (const r of rows) {
    const k = r.result.startsWith('not run') ? 'not run' : r.result.split(/[:( ]/)[0];
    counts[k] = (counts[k] ?? 0) + 1;
  }
  return Object.entries(counts)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${n} ${k}`)
    .join(', ');
}

/** The whole document: header (run date, commit, machine, counts), the table, how it is made. */
export function renderReport({ rows, runDate, commit, machine }) {
  const noFile = rows.filter((r) => r.result.includes('no scenario file')).length;
  return `# Reliability under faults and load

Written by \`scripts/reliability-report.mjs\` from a test run's Jest JSON results and the scenario files the
reliability tests (\`${RELIABILITY_TESTS}\`) write; do not edit by hand. Regenerate: \`npm run reliability\`.
CI (\`.ci/run\`) prints the same report in its log after every run.

- Run: ${runDate}
- Commit: ${commit}
- Machine: ${machine}
- Scenarios: ${rows.length} (${tally(rows) || 'none'})${noFile ? `; ${noFile} test(s) wrote no scenario file` : ''}

${renderTable(rows)}

Result is Jest's for the test that wrote the scenario (by test name). "Not run" and "no scenario file" rows are
tests or scenario files missing from this run; "figures from an earlier run" means the test ran but its scenario
file is older than the run.
`;
}

/** Reads every *.json of `dir` (none when it does not exist); a file that does not parse is kept with its error. */
export function readScenarioFiles(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.json'))
    .sort()
    .map((n) => {
      const source = path.join(dir, n);
      const mtimeMs = fs.statSync(source).mtimeMs;
      try {
        const data = JSON.parse(fs.readFileSync(source, 'utf8'));
        if (!data || typeof data !== 'object' || typeof data.scenario !== 'string') return { source, mtimeMs, error: 'no "scenario" string in it' };
        return { source, mtimeMs, data };
      } catch (err) {
        return { source, mtimeMs, error: err.message };
      }
    });
}

function gitCommit() {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore']
    }).trim();
    return dirty ? `${sha} (with uncommitted changes to tracked files)` : sha;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

function machine() {
  let distro = os.type();
  try {
    distro = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? distro;
  } catch {
    // not Linux: os.type() it is
  }
  const cpus = os.cpus();
  return `${distro} (kernel ${os.release()}), ${cpus.length} vCPU (${cpus[0]?.model ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
}

function usage(msg) {
  process.stderr.write(`reliability-report: ${msg}\nusage: node scripts/reliability-report.mjs [RESULTS.json ...] [--scenarios DIR] [--out FILE|-]\n`);
  process.exit(2);
}

function main(argv) {
  const paths = [];
  let dir = process.env.BUILDCLOUD_RELIABILITY_DIR || path.join(ROOT, '.ci', 'reliability');
  let out = path.join(ROOT, 'docs', 'reliability.md');
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--scenarios' || a === '--out') {
      const v = argv[++i];
      if (v === undefined || v === '') usage(`${a} needs a value (${a === '--out' ? 'a file, or - for stdout' : 'a directory'})`);
      if (a === '--out') out = v;
      else dir = v;
    } else if (a.startsWith('-') && a !== '-') usage(`unknown option ${a}`);
    else paths.push(a);
  }
  if (paths.length === 0) paths.push(path.join(ROOT, '.ci', 'jest-results.json'));
  const runs = paths.map((p) => {
    try {
      return { path: p, results: JSON.parse(fs.readFileSync(p, 'utf8')) };
    } catch (err) {
      return usage(
        err.code === 'ENOENT'
          ? `no Jest results at ${p}: run npm run reliability, or jest --json --outputFile=${p}, first`
          : `cannot read Jest results ${p}: ${err.message}`
      );
    }
  });
  let rows;
  let results;
  try {
    results = mergeResults(runs);
    rows = buildRows(results, readScenarioFiles(dir));
  } catch (err) {
    usage(err.message);
  }
  const runDate = results.startTime ? new Date(results.startTime).toISOString() : 'unknown (no startTime in the results)';
  const doc = renderReport({
    rows,
    runDate: paths.length > 1 ? `${runDate} onwards (${paths.length} Jest runs)` : runDate,
    commit: gitCommit(),
    machine: machine()
  });
  if (out === '-') process.stdout.write(doc);
  else {
    fs.writeFileSync(out, doc);
    process.stderr.write(`reliability-report: ${rows.length} scenarios (${tally(rows) || 'none'}) written to ${rel(ROOT, path.resolve(out))}\n`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) main(process.argv.slice(2));
