// The whole `buildcloud setup` and `buildcloud report` steps, wall clock, against a warm builder: what every CI job
// pays on top of its own build. Starts the real control plane (`dist/cli.js serve`, one warm builder), warms the
// pipeline's builder with one job, then runs ROUNDS jobs of that same pipeline (a fresh job id each, so each setup
// gets the pipeline's shared builder and each report releases it), timing `node dist/cli.js setup` and `report`
// from spawn to exit. Then one more job under `strace -f -e trace=execve` lists every program each step starts.
//
// The steps run the runner CLI, dist/runner.js: what `@buildcloud/ci` ships and every GitLab and CircleCI job runs
// (it loads dist/runner-steps.js beside it). The operator's dist/cli.js runs the same steps in the same rounds
// (wallMs.cliSetup, cliReport), as the figures before the runner CLI existed were taken with it. Each round also runs
// a job of the runner CLI naming the control plane by its HTTP endpoint (wallMs.httpSetup, httpReport): the API over
// HTTP/JSON, which loads no gRPC client; the others use the gRPC endpoint.
//
// Every step runs with a clean environment (PATH, HOME and the job's BUILDCLOUD_* variables): no
// NODE_EXTRA_CA_CERTS, which costs about 60 ms per Node start here (docs/benchmarks.md), and no BUILDCLOUD_DOCKER,
// so the docker client is chosen as a CI job would choose it (PATH order, then the usual install places).
// `node -e 0`, `node dist/runner.js --version` and `node dist/cli.js --version` (each bundle's load, no work) are
// timed in the same rounds, interleaved, as the floor the steps stand on.
//
// Writes bench/results/setup-report.json (the latest run; docs/benchmarks.md quotes it) and prints the same JSON.
// Run: node scripts/build.mjs && node scripts/run-ts.mjs bench/setup-report.ts   (BENCH_ROUNDS=N, default 7)
// Before/after in one run: BENCH_COMPARE_CLI=/path/to/other/dist/runner.js BENCH_COMPARE_COMMIT=<sha> times that
// build's setup and report in the same rounds, interleaved (wallMs.compare*).
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, startServer, CLI, type ServerProcess } from '../__tests__/helpers/server';
import { commitOf, machine } from './run-info';

const ROUNDS = Math.max(5, Number(process.env.BENCH_ROUNDS || 7));
// Another build of the runner CLI (e.g. an older commit's dist/runner.js, from `git archive`) to time in the same rounds.
const COMPARE = process.env.BENCH_COMPARE_CLI || '';
const NODE = process.execPath;
// The bundle runs from a temp dir (scripts/run-ts.mjs): find bench/ from the checkout it was started in.
const ROOT = process.env.BUILDCLOUD_ROOT || process.cwd();
// The runner CLI, beside the operator's.
const RUNNER = path.join(path.dirname(CLI), 'runner.js');

interface Run {
  ms: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Spawns `file args` with exactly `env`, and resolves with its wall time (ms, spawn to exit) and output. */
function timed(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const p = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ ms: performance.now() - t, code, stdout, stderr }));
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

function stats(xs: number[]): { median: number; min: number; max: number; all: number[] } {
  return { median: Math.round(median(xs)), min: Math.round(Math.min(...xs)), max: Math.round(Math.max(...xs)), all: xs.map(Math.round) };
}

const lastJson = (stdout: string) => JSON.parse(stdout.trim().split('\n').pop()!);

class Jobs {
  private n = 0;
  constructor(
    private readonly server: ServerProcess,
    private readonly token: string,
    private readonly work: string,
    private readonly pipeline: string
  ) {}

  /** A shell CI job's environment: nothing of this process leaks in. `endpoint`: the gRPC port, or the HTTP one. */
  env(endpoint: 'grpc' | 'http' = 'grpc'): NodeJS.ProcessEnv {
    const name = `job-${++this.n}`;
    const home = path.join(this.work, name);
    fs.mkdirSync(home, { recursive: true, mode: 0o700 });
    return {
      PATH: process.env.PATH,
      HOME: home,
      RUNNER_TEMP: home,
      BUILDCLOUD_ENDPOINT: endpoint === 'http' ? this.server.info.http : this.server.info.grpc,
      BUILDCLOUD_TOKEN: this.token,
      BUILDCLOUD_PROJECT: 'acme/bench',
      BUILDCLOUD_PIPELINE_ID: this.pipeline,
      BUILDCLOUD_JOB_ID: name,
      BUILDCLOUD_SPOOL_DIR: path.join(home, 'spool')
    };
  }
}

/** setup then report for one job with the bundle `cli`; throws with the step's stderr when either fails. */
async function job(jobs: Jobs, cli = RUNNER, endpoint: 'grpc' | 'http' = 'grpc'): Promise<{ setup: Run; report: Run }> {
  const env = jobs.env(endpoint);
  const setup = await timed(NODE, [cli, 'setup', '--json'], env);
  if (setup.code !== 0) throw new Error(`setup failed (${setup.code}):\n${setup.stderr}`);
  const setupEnv = { ...env, ...lastJson(setup.stdout).env };
  const report = await timed(NODE, [cli, 'report', '--json'], setupEnv);
  if (report.code !== 0) throw new Error(`report failed (${report.code}):\n${report.stderr}`);
  return { setup, report };
}

// Loaded with --require into one more job's steps: each line the step prints (and each program it starts), and the
// process's 'exit' event, stamped with performance.now() (ms since the process started). Wall minus the 'exit'
// stamp is what the process spends after its last JavaScript: Node's own teardown.
const TIMELINE_HOOK = `const { performance } = require('perf_hooks');
const fs = require('fs');
const out = process.env.BENCH_TIMELINE_OUT;
const mark = (m) => fs.appendFileSync(out, JSON.stringify([+performance.now().toFixed(1), m]) + '\\n');
for (const s of ['stdout', 'stderr']) {
  const w = process[s].write.bind(process[s]);
  process[s].write = (c, ...a) => (mark(s + ': ' + String(c).split('\\n')[0].slice(0, 90)), w(c, ...a));
}
const cp = require('child_process');
const ef = cp.execFile;
cp.execFile = function (f, a, ...r) { mark('spawn ' + f + ' ' + (a || []).join(' ')); return ef.call(this, f, a, ...r); };
process.on('exit', () => mark('exit event'));
`;

async function timeline(jobs: Jobs, work: string): Promise<Record<string, { wallMs: number; marks: [number, string][] }>> {
  const hook = path.join(work, 'timeline-hook.js');
  fs.writeFileSync(hook, TIMELINE_HOOK, { mode: 0o600 });
  const out: Record<string, { wallMs: number; marks: [number, string][] }> = {};
  let env: NodeJS.ProcessEnv = { ...jobs.env(), NODE_OPTIONS: `--require "${hook}"` };
  for (const step of ['setup', 'report']) {
    const file = path.join(work, `timeline-${step}.jsonl`);
    const r = await timed(NODE, [RUNNER, step, '--json'], { ...env, BENCH_TIMELINE_OUT: file });
    if (r.code !== 0) throw new Error(`${step} with the timeline hook failed:\n${r.stderr}`);
    out[step] = {
      wallMs: Math.round(r.ms),
      marks: fs
        .readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
    };
    if (step === 'setup') env = { ...env, ...lastJson(r.stdout).env };
  }
  return out;
}

/** Programs started (execve) by the traced process tree, node itself left out, as argv strings in order. */
function execs(traceFile: string): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync(traceFile, 'utf8').split('\n')) {
    // 1234  execve("/usr/bin/docker", ["docker", "--version"], 0x... /* 9 vars */) = 0
    const m = /execve\("([^"]+)", \[(.*)\], .*\) = 0/.exec(line);
    if (!m) continue;
    const argv = [...m[2].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((a) => a[1]);
    if (m[1] === NODE) continue;
    out.push([m[1], ...argv.slice(1)].join(' '));
  }
  return out;
}

async function main(): Promise<void> {
  for (const f of [CLI, RUNNER]) if (!fs.existsSync(f)) throw new Error(`${f} is missing: run node scripts/build.mjs first.`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-bench-sr-'));
  fs.chmodSync(work, 0o700);
  const server = await startServer(['--warm-pool', '1', '--idle-timeout', '120s', '--grace', '120s']);
  try {
    const token = adminSetup(server.stateDir, 'bench', 1000);
    const jobs = new Jobs(server, token, work, `bench-${process.pid}`);
    // The pipeline's first job takes the warm builder; every later job of the pipeline shares it.
    const warmup = await job(jobs);
    const clean = { PATH: process.env.PATH, HOME: work };

    const t: Record<string, number[]> = {
      setup: [],
      report: [],
      httpSetup: [],
      httpReport: [],
      nodeBare: [],
      runnerVersion: [],
      cliVersion: [],
      cliSetup: [],
      cliReport: []
    };
    if (COMPARE) Object.assign(t, { compareSetup: [], compareReport: [], compareCliVersion: [] });
    const shared: boolean[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      t.nodeBare.push((await timed(NODE, ['-e', '0'], clean)).ms);
      t.runnerVersion.push((await timed(NODE, [RUNNER, '--version'], clean)).ms);
      t.cliVersion.push((await timed(NODE, [CLI, '--version'], clean)).ms);
      const r = await job(jobs);
      t.setup.push(r.setup.ms);
      t.report.push(r.report.ms);
      shared.push(/shared with the pipeline/.test(r.setup.stderr));
      // The same runner CLI with the HTTP endpoint (the API over HTTP/JSON, no gRPC client loaded).
      const h = await job(jobs, RUNNER, 'http');
      t.httpSetup.push(h.setup.ms);
      t.httpReport.push(h.report.ms);
      shared.push(/shared with the pipeline/.test(h.setup.stderr));
      const o = await job(jobs, CLI);
      t.cliSetup.push(o.setup.ms);
      t.cliReport.push(o.report.ms);
      shared.push(/shared with the pipeline/.test(o.setup.stderr));
      if (COMPARE) {
        // The other bundle in the same round, against the same server and builder: the same load for both.
        t.compareCliVersion.push((await timed(NODE, [COMPARE, '--version'], clean)).ms);
        const c = await job(jobs, COMPARE);
        t.compareSetup.push(c.setup.ms);
        t.compareReport.push(c.report.ms);
        shared.push(/shared with the pipeline/.test(c.setup.stderr));
      }
    }

    const traceFile = path.join(work, 'trace');
    const strace = (args: string[]): [string, string[]] => ['strace', ['-f', '-qq', '-e', 'trace=execve', '-s', '200', '-o', traceFile, NODE, ...args]];
    // One more job, each step traced on its own.
    const tEnv = jobs.env();
    const s = await timed(...strace([RUNNER, 'setup', '--json']), tEnv);
    if (s.code !== 0) throw new Error(`traced setup failed:\n${s.stderr}`);
    const setupExecs = execs(traceFile);
    const r = await timed(...strace([RUNNER, 'report', '--json']), { ...tEnv, ...lastJson(s.stdout).env });
    if (r.code !== 0) throw new Error(`traced report failed:\n${r.stderr}`);
    const reportExecs = execs(traceFile);
    const marks = await timeline(jobs, work);

    const result = {
      bench: 'setup-report',
      machine: machine(),
      commit: commitOf(ROOT, ['src/core', 'bench/setup-report.ts']),
      when: new Date().toISOString(),
      rounds: ROUNDS,
      dockerChosen: /^using .*$/m.exec(warmup.setup.stderr)?.[0] ?? '',
      everyRoundShared: shared.every(Boolean),
      wallMs: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, stats(v)])),
      compareCli: COMPARE ? { path: COMPARE, commit: process.env.BENCH_COMPARE_COMMIT || 'unknown' } : undefined,
      target: { setupMaxMs: 250, reportMaxMs: 150 },
      processes: { setup: setupExecs, report: reportExecs },
      timeline: marks
    };
    const json = JSON.stringify(result, null, 2) + '\n';
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'setup-report.json'), json);
    process.stdout.write(json);
  } finally {
    await server.stop();
    fs.rmSync(server.stateDir, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
