// Start-up of what runs in every CI job, measured against bare Node in one run (issue 10).
// Prints one JSON object and writes it to bench/results/startup.json (docs/benchmarks.md quotes it):
// - `node -e 0`, the action's main entry and the runner CLI's `setup`, each started with a clean environment
//   (PATH and HOME only, so NODE_EXTRA_CA_CERTS and the like do not hide the bundle's own cost), timed from spawn to
//   exit at the first input check (no endpoint given: both fail fast with "Missing input 'endpoint'");
// - the same two to the first request sent to a control plane, for each transport the endpoint can choose: a local
//   TCP listener stands in for it and records when the first byte arrives (the HTTP/2 preface of the gRPC client for
//   a host:port endpoint, the POST line of the Connect client for an http:// one); the process is killed then;
// - bundle sizes of dist/.
// Runs are interleaved (bare, main, setup, bare, main, setup, ...) so drift on a shared machine hits all alike;
// figures are medians of BENCH_ROUNDS (default 15) runs in ms.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { commitOf, machine } from './run-info';

const ROUNDS = Math.max(10, Number(process.env.BENCH_ROUNDS || 15));
const ROOT = process.env.BUILDCLOUD_ROOT || process.cwd();
const NODE = process.execPath;
const dist = (f: string) => path.join(ROOT, 'dist', f);
// What `@buildcloud/ci` ships as its runner (dist/runner.js since issue 10; dist/cli.js before it).
const RUNNER = fs.existsSync(dist('runner.js')) ? dist('runner.js') : dist('cli.js');

interface Target {
  name: string;
  argv: string[];
  expect?: RegExp; // stderr/stdout must show it: proof the run reached the point being timed
}

const inputCheck: Target[] = [
  { name: 'bare', argv: ['-e', '0'] },
  { name: 'actionMain', argv: [dist('github/main.js')], expect: /Missing input 'endpoint'/ },
  { name: 'runnerSetup', argv: [RUNNER, 'setup'], expect: /Missing input 'endpoint'/ }
];

// One POST over https to $U and nothing else: what Node itself takes to its first TLS byte (the ClientHello).
const BARE_HTTPS = "require('https').request(process.env.U, { method: 'POST' }).on('error', () => {}).end('{}')";

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? os.homedir(), ...extra };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? Math.round(s[Math.floor((s.length - 1) / 2)] * 10) / 10 : NaN;
}

/** Spawn to exit, in ms; throws when the output lacks `t.expect` (the run did not reach the point it claims to time). */
function timeToExit(t: Target, cwd: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(NODE, t.argv, { env: cleanEnv(), cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', () => {
      const ms = performance.now() - start;
      if (t.expect && !t.expect.test(out)) reject(new Error(`${t.name}: expected ${t.expect} in its output, got:\n${out}`));
      else resolve(ms);
    });
  });
}

/**
 * Spawn to the first byte the program sends to `port`, in ms. `env` points the program at the listener; the child
 * is killed once the byte is seen (or after 20 s, which fails the bench).
 */
function timeToFirstRequest(argv: string[], env: NodeJS.ProcessEnv, server: net.Server, cwd: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let start = 0;
    let out = '';
    let done = false;
    const onConn = (sock: net.Socket) => {
      sock.once('data', () => {
        const ms = performance.now() - start;
        if (done) return;
        done = true;
        clearTimeout(timer);
        server.off('connection', onConn);
        sock.destroy();
        child.kill('SIGKILL');
        resolve(ms);
      });
      sock.on('error', () => undefined);
    };
    server.on('connection', onConn);
    start = performance.now();
    const child = spawn(NODE, argv, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', () => {
      clearTimeout(timer);
      if (done) return;
      done = true;
      server.off('connection', onConn);
      reject(new Error(`${argv.join(' ')} exited before sending anything to the control plane:\n${out}`));
    });
  });
}

function sizes(): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(dist(''), p)] = fs.statSync(p).size;
    }
  };
  walk(dist(''));
  return out;
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-startup-'));
  // A docker client that answers the client probe at once: the runner's own docker is not what this measures.
  const stub = path.join(work, 'docker');
  fs.writeFileSync(
    stub,
    '#!/bin/sh\ncase "$1" in\n  --version) echo "Docker version 99.0.0, build bench" ;;\n  buildx) echo "github.com/docker/buildx v0.99.0 bench" ;;\n  *) exit 1 ;;\nesac\n',
    { mode: 0o755 }
  );
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const reqEnv = (spool: string, endpoint = `127.0.0.1:${port}`) =>
    cleanEnv({
      BUILDCLOUD_ENDPOINT: endpoint,
      BUILDCLOUD_TOKEN: 'bench-token',
      BUILDCLOUD_DOCKER: stub,
      BUILDCLOUD_SPOOL_DIR: spool,
      BUILDCLOUD_FALLBACK: 'none'
    });
  // The action reads its inputs as INPUT_*; RUNNER_TEMP keeps its files in the bench's own directory.
  const actionEnv = (spool: string, endpoint = `127.0.0.1:${port}`) => ({
    ...reqEnv(spool, endpoint),
    INPUT_ENDPOINT: endpoint,
    INPUT_TOKEN: 'bench-token',
    INPUT_FALLBACK: 'none',
    RUNNER_TEMP: work
  });

  const runs: Record<string, number[]> = {};
  const add = (k: string, v: number) => (runs[k] ??= []).push(v);
  try {
    // One warm-up of each, not counted: the first run pays for the page cache.
    for (const t of inputCheck) await timeToExit(t, work);
    for (let i = 0; i < ROUNDS; i++) {
      for (const t of inputCheck) add(t.name, await timeToExit(t, work));
      const spool = path.join(work, `spool-${i}`);
      add('actionMainFirstRequest', await timeToFirstRequest([dist('github/main.js')], actionEnv(spool), server, work));
      add('runnerSetupFirstRequest', await timeToFirstRequest([RUNNER, 'setup'], reqEnv(spool), server, work));
      const http = `http://127.0.0.1:${port}`;
      add('actionMainFirstRequestHttp', await timeToFirstRequest([dist('github/main.js')], actionEnv(`${spool}-h`, http), server, work));
      add('runnerSetupFirstRequestHttp', await timeToFirstRequest([RUNNER, 'setup'], reqEnv(`${spool}-h`, http), server, work));
      // https: the first byte is the TLS ClientHello (the listener answers nothing), so TLS's own load is counted.
      const https = `https://127.0.0.1:${port}`;
      add('actionMainFirstRequestHttps', await timeToFirstRequest([dist('github/main.js')], actionEnv(`${spool}-s`, https), server, work));
      add('runnerSetupFirstRequestHttps', await timeToFirstRequest([RUNNER, 'setup'], reqEnv(`${spool}-s`, https), server, work));
      // Node's own floor for that byte: a bare script that does nothing but one https request.
      add('bareHttpsFirstRequest', await timeToFirstRequest(['-e', BARE_HTTPS], cleanEnv({ U: https }), server, work));
    }
  } finally {
    server.close();
    fs.rmSync(work, { recursive: true, force: true });
  }

  const med = Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, median(v)]));
  const ratio = (k: string) => Math.round((med[k] / med.bare) * 100) / 100;
  const result = {
    bench: 'startup',
    machine: machine(),
    commit: commitOf(ROOT, ['src', 'scripts', 'dist']),
    when: new Date().toISOString(),
    rounds: ROUNDS,
    runner: path.relative(ROOT, RUNNER),
    env: 'PATH and HOME only; first-request runs add BUILDCLOUD_* (or INPUT_*) for a local listener and a stub docker client',
    endpoints: {
      FirstRequest: 'host:port (gRPC; first byte: the HTTP/2 preface)',
      FirstRequestHttp: 'http://host:port (Connect, HTTP/JSON; first byte: the POST line)',
      FirstRequestHttps: 'https://host:port (Connect over TLS; first byte: the ClientHello)'
    },
    medianMs: med,
    ratioToBare: {
      actionMainInputCheck: ratio('actionMain'),
      runnerSetupInputCheck: ratio('runnerSetup'),
      actionMainFirstRequest: ratio('actionMainFirstRequest'),
      runnerSetupFirstRequest: ratio('runnerSetupFirstRequest'),
      actionMainFirstRequestHttp: ratio('actionMainFirstRequestHttp'),
      runnerSetupFirstRequestHttp: ratio('runnerSetupFirstRequestHttp'),
      actionMainFirstRequestHttps: ratio('actionMainFirstRequestHttps'),
      runnerSetupFirstRequestHttps: ratio('runnerSetupFirstRequestHttps'),
      bareHttpsFirstRequest: ratio('bareHttpsFirstRequest')
    },
    goals: { inputCheck: 1.25, firstRequest: 2 },
    allMs: Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, v.map((x) => Math.round(x))])),
    bundleBytes: sizes()
  };
  const json = JSON.stringify(result, null, 2);
  process.stdout.write(json + '\n');
  fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'startup.json'), json + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
