// The real control plane for the demo and the end-to-end tests: `buildcloud serve` from the bundled CLI as a child
// process, on ports the kernel picks, ready once it prints its JSON line; and the CLI's admin commands run to
// completion. One way to start it, so the demo and the tests cannot drift apart on how serve is driven.
import { spawn, spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as readline from 'readline';

// A type, not an interface: tests read it as a Record too.
/** What `buildcloud serve --json` prints on its first line once every listener is up. */
export type ServeInfo = {
  grpc: string; // host:port of the gRPC API
  http: string; // http(s)://host:port of the HTTP API
  registry: string; // host:port of the org-cache registry proxy
  registryCaFile: string; // PEM the registry proxy's certificate chains to
  driver: string;
  platforms: string[];
  adminTokenFile: string;
  pid: number;
};

/** A running `buildcloud serve`. */
export interface ServeProcess {
  proc: ChildProcess;
  stateDir: string;
  info: ServeInfo;
  /** What serve wrote on stderr so far; with `logFile`, the file's path instead (the log goes there). */
  stderr: () => string;
  /** SIGTERM, then the exit code, or the name of the signal that ended it (so a failure says which). */
  stop(): Promise<number | NodeJS.Signals | null>;
}

export interface ServeOptions {
  env?: NodeJS.ProcessEnv; // default: this process's environment
  logFile?: string; // stderr goes to this file (0600) instead of memory: for long runs such as the demo
  nodeArgs?: string[]; // options for node itself, before the CLI (e.g. --cpu-prof for a benchmark's profile)
}

/**
 * Starts `node <cli> serve --state-dir <stateDir>` on ports 0 with `--json` and `extra` flags, and resolves once it
 * printed its ready line. Rejects, with serve's stderr (or the log file's path), when it exits before that or its
 * first line is not JSON.
 */
export async function startServe(cli: string, stateDir: string, extra: string[] = [], o: ServeOptions = {}): Promise<ServeProcess> {
  const args = [cli, 'serve', '--state-dir', stateDir, '--grpc-port', '0', '--http-port', '0', '--registry-port', '0', '--json', ...extra];
  const proc = spawn(process.execPath, [...(o.nodeArgs ?? []), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env });
  let err = '';
  if (o.logFile) proc.stderr!.pipe(fs.createWriteStream(o.logFile, { mode: 0o600 }));
  else proc.stderr!.on('data', (d) => (err += d.toString()));
  const stderr = () => (o.logFile ? `(serve's log: ${o.logFile})` : err);
  const rl = readline.createInterface({ input: proc.stdout! });
  const info = await new Promise<ServeInfo>((resolve, reject) => {
    const onExit = (code: number | null) => reject(new Error(`buildcloud serve exited (${code}) before it was ready:\n${stderr()}`));
    proc.once('exit', onExit);
    rl.once('line', (line) => {
      proc.off('exit', onExit);
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(new Error(`unexpected first line from serve: ${line}\n${stderr()}`));
      }
    });
  });
  return {
    proc,
    stateDir,
    info,
    stderr,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode ?? proc.signalCode);
        proc.once('exit', (code, signal) => resolve(code ?? signal));
        proc.kill('SIGTERM');
      })
  };
}

/** Runs `node <cli> <args>` to completion; `env` is added to this process's environment. */
export function runCli(cli: string, args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Creates `org` with a bucket of `minutes` on the control plane whose state is in `stateDir`, and an org token for
 * it (labelled `label` when given); returns the token. Throws with the CLI's stderr when either command fails.
 */
export function createOrgWithToken(cli: string, stateDir: string, org: string, minutes: number, label?: string): string {
  const c = runCli(cli, ['admin', 'org', 'create', org, '--minutes', String(minutes), '--state-dir', stateDir]);
  if (c.status !== 0) throw new Error(`buildcloud admin org create failed: ${c.stderr}`);
  const t = runCli(cli, ['admin', 'token', 'create', '--org', org, ...(label ? ['--label', label] : []), '--state-dir', stateDir]);
  if (t.status !== 0) throw new Error(`buildcloud admin token create failed: ${t.stderr}`);
  return t.stdout.trim();
}
