// A control plane stopped while its warm pool is still starting builders leaves nothing behind: the starts under
// way finish, see the stop and destroy what they made (bridge, engine cgroup, rules, run dir, data root).
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, startServer } from '../helpers/server';

function links(): string[] {
  return spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(': ')[1]?.split('@')[0])
    .filter((n): n is string => Boolean(n));
}

interface Started {
  builder: string;
  bridge: string;
  runDir: string;
  dataRoot: string;
}

/** What this control plane started, from its own log ("starting dockerd" names each builder's host resources). */
function startedBy(stderr: string): Started[] {
  return stderr
    .split('\n')
    .filter((l) => l.includes('"starting dockerd"'))
    .map((l) => JSON.parse(l) as Started);
}

// Only this server's builders are looked at: other control planes on the machine (other tests) may start and stop
// builders of their own at the same time.
test('SIGTERM while the warm pool is starting: no builder outlives the control plane', async () => {
  // Ready is printed before the pool has started its builders: stop right away, with two starts under way.
  const server = await startServer(['--warm-pool', '2']);
  expect(await server.stop()).toBe(0);
  const started = startedBy(server.stderr());
  expect(started.length).toBeGreaterThanOrEqual(1); // the stop came while the pool's starts were under way
  const left = links();
  for (const s of started) {
    expect([s.builder, left.includes(s.bridge)]).toEqual([s.builder, false]);
    expect([s.builder, fs.existsSync(s.runDir), fs.existsSync(s.dataRoot)]).toEqual([s.builder, false, false]);
    expect([s.builder, fs.existsSync(`/sys/fs/cgroup/unified/buildcloud/${s.bridge}`)]).toEqual([s.builder, false]);
  }
  expect(server.stderr()).toMatch(/builder ready|control plane is stopping|stopping/);
  fs.rmSync(server.stateDir, { recursive: true, force: true });
});

// A supervisor may stop the control plane at any moment, including while it starts (a deploy rolled back, a
// Ctrl-C on a slow start). Stopped when its registry is up but before it says ready, it still stops cleanly:
// exit 0, and no process of its own (the registry) left running.
test('SIGTERM during start-up: a clean stop (exit 0), the registry it started is stopped too', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-stop-starting-'));
  const proc = spawn(
    process.execPath,
    [CLI, 'serve', '--state-dir', dir, '--grpc-port', '0', '--http-port', '0', '--registry-port', '0', '--json', '--warm-pool', '1'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, BUILDCLOUD_LOG_LEVEL: 'info' }
    }
  );
  let stderr = '';
  proc.stdout!.resume();
  const exited = new Promise<number | string | null>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal)));
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d) => {
      stderr += d;
      if (stderr.includes('embedded registry ready')) resolve();
    });
    proc.once('exit', () => reject(new Error(`serve exited before its registry was up:\n${stderr}`)));
  });
  proc.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(stderr).toContain('stop requested while starting');
  // Nothing it started is still running: no process has the state dir on its command line.
  const left = spawnSync('pgrep', ['-f', dir], { encoding: 'utf8' }).stdout.trim();
  expect(left ? spawnSync('ps', ['-o', 'pid,ppid,args', '-p', left.split('\n').join(',')], { encoding: 'utf8' }).stdout : '').toBe('');
  fs.rmSync(dir, { recursive: true, force: true });
});
