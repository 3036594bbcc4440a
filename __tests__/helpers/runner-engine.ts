// "The runner's own Docker engine" for tests of load: true: a dockerd this test owns, with its own roots and
// socket, no bridge and no iptables rules, never the machine's /etc/docker/daemon.json.
import { spawn, spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { DOCKER, waitFor } from './server';

export interface RunnerEngine {
  proc: ChildProcess;
  dir: string;
  host: string; // unix://…/docker.sock
}

/** Debian's docker client against `host`, with a clean environment (PATH and HOME only). */
export function runnerDocker(args: string[], host: string, home = '/tmp'): { status: number | null; out: string } {
  const r = spawnSync(DOCKER, args, { env: { PATH: process.env.PATH, HOME: home, DOCKER_HOST: host }, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

export async function startRunnerEngine(): Promise<RunnerEngine> {
  // Short: the socket path must fit in sun_path (108 bytes).
  const dir = fs.mkdtempSync('/tmp/bc-rl-');
  fs.writeFileSync(path.join(dir, 'daemon.json'), '{}');
  const sock = path.join(dir, 'docker.sock');
  const log = fs.openSync(path.join(dir, 'dockerd.log'), 'a');
  const args = [
    '--config-file',
    path.join(dir, 'daemon.json'),
    '--data-root',
    path.join(dir, 'root'),
    '--exec-root',
    path.join(dir, 'exec'),
    '--pidfile',
    path.join(dir, 'docker.pid'),
    '-H',
    `unix://${sock}`,
    '--bridge=none',
    '--iptables=false',
    '--ip-masq=false'
  ];
  const proc = spawn('/usr/sbin/dockerd', args, { stdio: ['ignore', log, log], env: { PATH: process.env.PATH } });
  fs.closeSync(log);
  const host = `unix://${sock}`;
  await waitFor(
    'the runner engine',
    async () => {
      if (proc.exitCode !== null) throw new Error(`dockerd exited ${proc.exitCode}: ${fs.readFileSync(path.join(dir, 'dockerd.log'), 'utf8').slice(-2000)}`);
      return runnerDocker(['version', '--format', '{{.Server.Version}}'], host).status === 0;
    },
    30_000
  );
  return { proc, dir, host };
}

/** Stops the engine (SIGTERM, SIGKILL after 20 s) and removes its directories. */
export async function stopRunnerEngine(engine: RunnerEngine | null): Promise<void> {
  if (!engine) return;
  const { proc, dir } = engine;
  if (proc.exitCode === null) {
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 20_000)))]);
    clearTimeout(timer);
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
  }
  fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
}
