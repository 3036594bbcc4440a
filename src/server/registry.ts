// The embedded org-cache registry: Debian's `docker-registry` (distribution 2.8) run as a child process.
//
// It listens on a unix socket in a private directory, never on TCP: the registry itself has no auth in this
// setup, so the only way in must be the RegistryProxy, which authenticates and enforces org prefixes.
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from './log';

export interface EmbeddedRegistryOptions {
  dir: string; // private state: config, data/, registry.log (and the socket when the path is short enough)
  registryPath?: string; // the docker-registry binary; default findRegistryBinary()
  log?: Logger;
  readyTimeoutMs?: number; // default 15 s
}

// sun_path is 108 bytes including the NUL on Linux; keep a margin.
const MAX_SOCKET_PATH = 100;
const TAIL_BYTES = 4096;

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** `docker-registry` on PATH, else Debian's /usr/bin/docker-registry; null when neither exists. */
export function findRegistryBinary(): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir !== '' && isExecutable(path.join(dir, 'docker-registry'))) return path.join(dir, 'docker-registry');
  }
  return isExecutable('/usr/bin/docker-registry') ? '/usr/bin/docker-registry' : null;
}

// Our own config: the packaged /etc/docker/registry/config.yml turns on htpasswd auth and listens on :5000.
// JSON is valid YAML, so no YAML writer is needed.
function registryConfig(dataDir: string, socketPath: string): object {
  return {
    version: '0.1',
    log: { level: 'info', formatter: 'text', accesslog: { disabled: true } },
    storage: {
      filesystem: { rootdirectory: dataDir },
      // No blob descriptor cache: the control plane's own GC (cache-gc.ts) deletes blobs while the registry serves,
      // and a cached descriptor would let a push skip a layer that is gone.
      // Deletes stay off: cache entries are overwritten by tag, never removed by clients.
      delete: { enabled: false },
      // Uploads a client began and never finished (a cancelled job's push) leave directories under _uploads; the
      // registry removes those older than `age`, checking every `interval` (first check within an hour of start,
      // distribution's jitter). 2h is the longest a lease lives by default (--max-ttl).
      maintenance: { uploadpurging: { enabled: true, age: '2h', interval: '1h', dryrun: false } }
    },
    http: {
      net: 'unix',
      addr: socketPath,
      // Signs upload-session state (_state). Set explicitly so the registry does not warn and make its own.
      secret: randomBytes(24).toString('hex')
    }
  };
}

function pingOnce(socketPath: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/v2/', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

export class EmbeddedRegistry {
  readonly socketPath: string;
  private readonly dir: string;
  private readonly registryPath: string | null;
  private readonly log?: Logger;
  private readonly readyTimeoutMs: number;
  private readonly ownSocketDir: string | null; // a short private dir we made for the socket, removed on stop
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private tail = '';

  constructor(opts: EmbeddedRegistryOptions) {
    this.dir = path.resolve(opts.dir);
    this.registryPath = opts.registryPath ?? findRegistryBinary();
    this.log = opts.log;
    this.readyTimeoutMs = opts.readyTimeoutMs ?? 15_000;
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(this.dir, 0o700);
    const inDir = path.join(this.dir, 'registry.sock');
    if (Buffer.byteLength(inDir) <= MAX_SOCKET_PATH) {
      this.socketPath = inDir;
      this.ownSocketDir = null;
    } else {
      // Deep state dirs (jest temp dirs, /var/lib/...) overflow sun_path: use a short 0700 dir under the tmpdir.
      const base = Buffer.byteLength(os.tmpdir()) < 60 ? os.tmpdir() : '/tmp';
      this.ownSocketDir = fs.mkdtempSync(path.join(base, 'bcreg-'));
      fs.chmodSync(this.ownSocketDir, 0o700);
      this.socketPath = path.join(this.ownSocketDir, 'r.sock');
    }
  }

  async start(): Promise<void> {
    if (this.child) throw new Error('embedded registry already started');
    if (!this.registryPath) {
      throw new Error('docker-registry not found on PATH or at /usr/bin/docker-registry: install it with `apt-get install -y docker-registry`');
    }
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 }); // again after a stop()
    const dataDir = path.join(this.dir, 'data');
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const configPath = path.join(this.dir, 'registry-config.json');
    fs.writeFileSync(configPath, JSON.stringify(registryConfig(dataDir, this.socketPath), null, 2), { mode: 0o600 });
    const logFile = fs.openSync(path.join(this.dir, 'registry.log'), 'a', 0o600);

    const started = Date.now();
    const child = spawn(this.registryPath, ['serve', configPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true /* Ctrl-C reaches serve only; serve stops it in order */
    });
    this.child = child;
    const onData = (chunk: Buffer): void => {
      fs.writeSync(logFile, chunk);
      this.tail = (this.tail + chunk.toString('utf8')).slice(-TAIL_BYTES);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    let exitInfo: string | null = null;
    this.exited = new Promise<void>((resolve) => {
      child.on('error', (err) => {
        exitInfo = `failed to run ${this.registryPath}: ${err.message}`;
        resolve();
      });
      child.on('exit', (code, signal) => {
        exitInfo = `exited with ${signal ?? `code ${code}`}`;
        resolve();
      });
    }).finally(() => fs.closeSync(logFile));

    // Ready when /v2/ answers over the socket; poll with a short back-off instead of a fixed sleep.
    let delay = 10;
    while (true) {
      if (exitInfo !== null) {
        this.child = null;
        throw new Error(`docker-registry ${exitInfo} before it was ready; log tail:\n${this.tail.trim()}`);
      }
      if (await pingOnce(this.socketPath, 1000)) break;
      if (Date.now() - started > this.readyTimeoutMs) {
        await this.stop();
        throw new Error(`docker-registry did not answer on ${this.socketPath} within ${this.readyTimeoutMs} ms; log tail:\n${this.tail.trim()}`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 100);
    }
    child.on('exit', (code, signal) => {
      if (this.child === child) this.log?.error({ code, signal, tail: this.tail.slice(-1000) }, 'embedded registry exited unexpectedly');
    });
    this.log?.info({ socket: this.socketPath, pid: child.pid, ms: Date.now() - started }, 'embedded registry ready');
  }

  /** Kills the registry and waits for it to exit. Safe to call twice or without start(). */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(timer);
    } else {
      await this.exited;
    }
    fs.rmSync(this.socketPath, { force: true });
    if (this.ownSocketDir) fs.rmSync(this.ownSocketDir, { recursive: true, force: true });
  }
}
