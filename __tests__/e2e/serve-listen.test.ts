// Issue 12: `buildcloud serve` on a busy port ended in a stack trace, and `--host 0.0.0.0` printed an address
// clients cannot use. The real CLI (dist/cli.js), as an operator runs it: one line naming the flag to change, a
// non-zero exit, and nothing left running (no registry, no builder: the check comes before anything starts).
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { CLI } from '../helpers/server';

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function serve(args: string[], stateDir: string): Promise<Exit> {
  const started = Date.now();
  const proc = spawn(process.execPath, [CLI, 'serve', '--state-dir', stateDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, BUILDCLOUD_LOG_LEVEL: 'info' }
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => proc.once('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - started })));
}

/** Processes whose command line names `dir` (what serve would have started: the registry, builders' engines). */
function leftRunning(dir: string): string {
  const pids = spawnSync('pgrep', ['-f', dir], { encoding: 'utf8' }).stdout.trim();
  return pids ? spawnSync('ps', ['-o', 'pid,args', '-p', pids.split('\n').join(',')], { encoding: 'utf8' }).stdout : '';
}

let dir: string;
let busy: net.Server;
let port: number;

beforeEach(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run node scripts/build.mjs first.`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-serve-listen-'));
  busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  port = (busy.address() as net.AddressInfo).port;
});
afterEach(async () => {
  await new Promise((r) => busy.close(r));
  fs.rmSync(dir, { recursive: true, force: true });
});

test.each([
  ['--grpc-port', ['--http-port', '0', '--registry-port', '0']],
  ['--http-port', ['--grpc-port', '0', '--registry-port', '0']],
  ['--registry-port', ['--grpc-port', '0', '--http-port', '0']]
])('a busy %s: one line naming the port and the flag, exit 1, no stack, nothing left running', async (flag, others) => {
  const r = await serve([flag, String(port), ...others, '--warm-pool', '1'], dir);
  expect(r.code).toBe(1);
  expect(r.stderr).toBe(
    `buildcloud: Port ${port} is already in use on 127.0.0.1 (127.0.0.1:${port}): another program, or another buildcloud serve, listens there. Stop it, or pass ${flag} with a free port (0 = any free port).\n`
  );
  expect(r.stdout).toBe('');
  expect(leftRunning(dir)).toBe('');
  expect(fs.existsSync(path.join(dir, 'server.json'))).toBe(false);
});

test('--host 0.0.0.0: refused with one line that says which address to pass', async () => {
  const r = await serve(['--host', '0.0.0.0', '--insecure', '--grpc-port', '0', '--http-port', '0', '--registry-port', '0'], dir);
  expect(r.code).toBe(1);
  expect(r.stderr.split('\n')).toHaveLength(2); // one line and its newline
  expect(r.stderr).toMatch(
    /^buildcloud: Refusing --host 0\.0\.0\.0: it listens on every address, but the control plane gives its --host to jobs \(endpoint, metering URL, builders, org-cache registry\), and 0\.0\.0\.0 is not an address they can use\. Pass the address clients use(, e\.g\. --host \S+ \(an address of this machine\) or a name that resolves to it|, or a name that resolves to one) \(with --tls-cert\/--tls-key for a certificate that names it\)\.\n$/
  );
  expect(leftRunning(dir)).toBe('');
});
