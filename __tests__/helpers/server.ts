// Starts the real control plane (the bundled CLI, as users run it) and talks to it over real gRPC and HTTP.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { services, type LeaseMsg } from '../../src/contract/grpc';
import { Pki } from '../../src/server/pki';

import { createOrgWithToken, runCli, startServe, type ServeProcess } from '../../harness/control-plane';
import { ROOT } from '../../harness/github-runner';

/** A client of a service loaded from the .proto: its methods are named at run time. */
type ServiceClient = InstanceType<grpc.ServiceClientConstructor>;

export { ROOT };
export const CLI = path.join(ROOT, 'dist/cli.js');

// The control plane as a test sees it: harness/control-plane.ts, shared with the demo.
export type ServerProcess = ServeProcess;

export function requireBinaries(): void {
  const missing: string[] = [];
  for (const [bin, pkg] of [
    ['/usr/sbin/dockerd', 'docker.io'],
    ['/usr/bin/docker', 'docker.io'],
    ['/usr/bin/docker-registry', 'docker-registry'],
    ['/bin/busybox', 'busybox-static']
  ]) {
    if (!fs.existsSync(bin)) missing.push(`${bin} (apt-get install ${pkg})`);
  }
  if (!fs.existsSync(CLI)) missing.push(`${CLI} (npm run build)`);
  if (missing.length) throw new Error(`End-to-end tests need real binaries that are missing: ${missing.join(', ')}. .ci/run installs them.`);
}

/** Starts the real `buildcloud serve` (after checking the binaries it needs), logging at info into memory. */
export async function startServer(extra: string[] = [], stateDir?: string): Promise<ServerProcess> {
  requireBinaries();
  const dir = stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'bc-e2e-'));
  return startServe(CLI, dir, extra, { env: { ...process.env, BUILDCLOUD_LOG_LEVEL: 'info' } });
}

// One request to the org-cache registry proxy over HTTPS (plain HTTP is answered on loopback only, for BuildKit),
// verified against the PEM serve names in server.json (registryCaFile). `url` is https://<registry>/v2/...
export function registryRequest(
  info: Pick<ServerProcess['info'], 'registryCaFile'>,
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {}
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const ca = fs.readFileSync(info.registryCaFile, 'utf8');
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: init.method ?? 'GET', headers: init.headers, ca }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** Runs the bundled CLI to completion; `env` is added to this process's environment. */
export function cli(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  return runCli(CLI, args, env);
}

/** Creates `org` with `minutes` of bucket and returns an org token for it. */
export function adminSetup(stateDir: string, org: string, minutes: number): string {
  return createOrgWithToken(CLI, stateDir, org, minutes);
}

export class TestClient {
  private readonly bc: ServiceClient;
  constructor(
    address: string,
    private readonly token: string
  ) {
    const { BuildCloud } = services();
    this.bc = new BuildCloud(address, grpc.credentials.createInsecure());
  }
  private call<T>(method: string, req: object, deadlineMs = 60_000): Promise<T> {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.token}`);
    return new Promise((resolve, reject) =>
      this.bc[method](req, md, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)))
    );
  }
  /** Provision with the test identity (acme/app, main) unless `req` overrides it; `deadlineMs` is the call's deadline. */
  provision(
    req: { org?: string; pipelineKey: string; jobId: string; platforms?: string[]; scope?: string; identity?: object },
    deadlineMs?: number
  ): Promise<LeaseMsg> {
    return this.call(
      'Provision',
      {
        platforms: [],
        identity: { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main', actor: 'dev' },
        ...req
      },
      deadlineMs
    );
  }
  release(leaseId: string): Promise<LeaseMsg> {
    return this.call('Release', { leaseId });
  }
  get(leaseId: string): Promise<LeaseMsg> {
    return this.call('Get', { leaseId });
  }
  close(): void {
    this.bc.close();
  }
}

// Client side of a lease: DOCKER_CERT_PATH with the lease's certs (0600 in a 0700 dir) and a private
// DOCKER_CONFIG logged in to the org-cache registry.
export function dockerEnvFor(lease: LeaseMsg, dir: string): NodeJS.ProcessEnv {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const certs = path.join(dir, 'certs');
  fs.mkdirSync(certs, { mode: 0o700 });
  fs.writeFileSync(path.join(certs, 'ca.pem'), lease.tls!.caPem, { mode: 0o600 });
  fs.writeFileSync(path.join(certs, 'cert.pem'), lease.tls!.certPem, { mode: 0o600 });
  fs.writeFileSync(path.join(certs, 'key.pem'), lease.tls!.keyPem, { mode: 0o600 });
  const config = path.join(dir, 'docker-config');
  fs.mkdirSync(config, { mode: 0o700 });
  const r = lease.cache!.registry!;
  const auth = Buffer.from(`${r.username}:${r.password}`).toString('base64');
  fs.writeFileSync(path.join(config, 'config.json'), JSON.stringify({ auths: { [r.host]: { auth } } }), { mode: 0o600 });
  return {
    PATH: process.env.PATH,
    HOME: dir,
    DOCKER_HOST: lease.builders[0].address,
    DOCKER_TLS_VERIFY: '1',
    DOCKER_CERT_PATH: certs,
    DOCKER_CONFIG: config,
    DOCKER_BUILDKIT: '1'
  };
}

// Debian's 20.10 client: /usr/local/bin/docker on these machines is a newer client without buildx.
export const DOCKER = '/usr/bin/docker';

export function docker(args: string[], env: NodeJS.ProcessEnv, cwd?: string): { status: number | null; out: string } {
  const r = spawnSync(DOCKER, args, { env, cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 30_000, everyMs = 200): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

/**
 * `serve --tls-cert --tls-key` with a certificate of an operator's own CA (a Pki made under `dir`), for 127.0.0.1 and
 * localhost, no builders: the server, an org-token of 'acme' (10 minutes) and the CA's PEM file. `chain`: the cert
 * file also holds the CA after the server cert, as operators often give it.
 */
export async function startTlsServer(dir: string, o: { chain?: boolean } = {}): Promise<{ server: ServerProcess; token: string; caFile: string }> {
  const pki = await Pki.loadOrCreate(path.join(dir, 'operator-ca'));
  const cert = await pki.issueServer(['127.0.0.1', 'localhost']);
  fs.writeFileSync(path.join(dir, 'server.pem'), o.chain ? `${cert.certPem.trimEnd()}\n${pki.caPem}` : cert.certPem);
  fs.writeFileSync(path.join(dir, 'server-key.pem'), cert.keyPem, { mode: 0o600 });
  const caFile = path.join(dir, 'ca.pem');
  fs.writeFileSync(caFile, pki.caPem);
  const server = await startServer([
    '--tls-cert',
    path.join(dir, 'server.pem'),
    '--tls-key',
    path.join(dir, 'server-key.pem'),
    '--warm-pool',
    '0',
    '--driver',
    'none'
  ]);
  return { server, token: adminSetup(server.stateDir, 'acme', 10), caFile };
}
