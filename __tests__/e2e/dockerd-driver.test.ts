// Real builders end to end: DockerdDriver starts dockerd, BuilderTlsProxy is its mutual-TLS face, and Debian's
// docker 20.10 client (/usr/bin/docker; the 28.x client in /usr/local/bin lacks buildx) builds through it.
import { execFile, spawnSync } from 'child_process';
import { existsSync, promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DockerdDriver, findDockerd } from '../../src/server/drivers/dockerd';
import type { BuilderHandle } from '../../src/server/drivers/driver';
import { Pki, CertPair } from '../../src/server/pki';
import { BuilderTlsProxy } from '../../src/server/tls-proxy';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { mountsUnder, processesMentioning } from '../helpers/host-state';

const DOCKER = '/usr/bin/docker';

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

interface Builder {
  handle: BuilderHandle;
  proxy: BuilderTlsProxy;
  port: number;
}

function runDocker(args: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<Result> {
  return new Promise((resolve) => {
    const full: NodeJS.ProcessEnv = { ...process.env, DOCKER_BUILDKIT: '1', ...env };
    delete full.DOCKER_CONTEXT;
    execFile(DOCKER, args, { env: full, cwd, timeout: 120_000, maxBuffer: 32 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

// Through the TLS proxy, as a CI job would.
function docker(args: string[], port: number, certDir: string, cwd?: string): Promise<Result> {
  return runDocker(
    args,
    {
      DOCKER_HOST: `tcp://127.0.0.1:${port}`,
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: certDir,
      DOCKER_CONFIG: path.join(certDir, 'config') // never the machine's ~/.docker (contexts, credential helpers)
    },
    cwd
  );
}

// Straight to the engine's socket, as the control plane would.
function dockerLocal(args: string[], handle: BuilderHandle, configDir: string, cwd?: string): Promise<Result> {
  return runDocker(args, { DOCKER_HOST: `unix://${handle.socketPath}`, DOCKER_CONFIG: configDir }, cwd);
}

async function writeCertDir(dir: string, caPem: string, pair: CertPair): Promise<string> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.writeFile(path.join(dir, 'ca.pem'), caPem, { mode: 0o600 });
  await fs.writeFile(path.join(dir, 'cert.pem'), pair.certPem, { mode: 0o600 });
  await fs.writeFile(path.join(dir, 'key.pem'), pair.keyPem, { mode: 0o600 });
  return dir;
}

// Processes whose command line names one of the builder's private paths: dockerd, containerd, shims.
async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function linkExists(name: string): Promise<boolean> {
  return new Promise((resolve) => execFile('ip', ['link', 'show', 'dev', name], (err) => resolve(!err)));
}

describe('DockerdDriver + BuilderTlsProxy with the real docker client', () => {
  let tmp: string;
  let pki: Pki;
  let server: CertPair;
  let driver: DockerdDriver;
  let driverRoot: string;
  let certA: string;
  let certB: string;
  let leaseA: CertPair;
  const builders: Builder[] = [];

  beforeAll(async () => {
    if (!findDockerd()) {
      throw new Error('dockerd not found: these tests need a real Docker Engine. Install it: apt-get install -y docker.io');
    }
    if (!existsSync(DOCKER)) {
      throw new Error(`${DOCKER} (Debian's docker 20.10 client with BuildKit) not found: apt-get install -y docker.io`);
    }
    if (process.getuid?.() !== 0) throw new Error('the dockerd driver e2e tests must run as root (dockerd, ip link)');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-e2e-driver-'));
    pki = await Pki.loadOrCreate(path.join(tmp, 'pki'));
    server = await pki.issueServer(['127.0.0.1', 'localhost']);
    leaseA = await pki.issueClient('lease-a', 3600_000);
    const leaseB = await pki.issueClient('lease-b', 3600_000);
    certA = await writeCertDir(path.join(tmp, 'certs-a'), pki.caPem, leaseA);
    certB = await writeCertDir(path.join(tmp, 'certs-b'), pki.caPem, leaseB);
    // A deliberately long root dir: sockets must still fit in 107 bytes.
    driverRoot = path.join(tmp, 'state', 'x'.repeat(80), 'builders');
    driver = new DockerdDriver({ rootDir: driverRoot });
  });

  afterAll(async () => {
    for (const b of builders) {
      await b.proxy.close();
      await driver?.destroy(b.handle);
    }
    // Whatever a failed test left behind: a fresh driver on the same root treats every builder there as an orphan.
    for (const root of driver ? [driverRoot, path.join(tmp, 'crashed')] : []) {
      await new DockerdDriver({ rootDir: root }).cleanupOrphans();
    }
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  async function startBuilder(id: string): Promise<Builder> {
    const handle = await driver.start(id);
    const proxy = new BuilderTlsProxy({ socketPath: handle.socketPath, server, caPem: pki.caPem });
    const port = await proxy.listen();
    proxy.allow(leaseA.fingerprint);
    const b = { handle, proxy, port };
    builders.push(b);
    return b;
  }

  // Straight from the engine's socket: a lease's front refuses network calls (engine-api-policy.ts).
  async function bridgeOf(b: Builder): Promise<{ name: string; subnet: string }> {
    const args = ['network', 'inspect', 'bridge', '--format', '{{index .Options "com.docker.network.bridge.name"}} {{(index .IPAM.Config 0).Subnet}}'];
    const viaFront = await docker(args, b.port, certA);
    expect(viaFront.stderr).toMatch(/networks \(`docker network`\) are not available on a remote builder/);
    const r = spawnSync('/usr/bin/docker', ['-H', `unix://${b.handle.socketPath}`, ...args], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const [name, subnet] = r.stdout.trim().split(' ');
    return { name, subnet };
  }

  it('starts two builders at once, each on its own bridge, builds with RUN steps and no --network, then cleans up', async () => {
    const t0 = Date.now();
    const [a, b] = await Promise.all([startBuilder('e2e-a'), startBuilder('e2e-b')]);
    console.log(`builder start (cold, two at once): a=${a.handle.startedMs} ms, b=${b.handle.startedMs} ms, wall ${Date.now() - t0} ms`);
    for (const x of [a, b]) {
      expect(x.handle.startedMs).toBeGreaterThan(0);
      expect(x.handle.startedMs).toBeLessThan(60_000);
      expect(x.handle.platform).toBe(driver.platforms()[0]);
      expect(Buffer.byteLength(x.handle.socketPath)).toBeLessThan(100);
      expect(await driver.alive(x.handle)).toBe(true);
    }

    const version = await docker(['version', '--format', '{{.Server.Version}}'], a.port, certA);
    expect(version.stderr).toBe('');
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+/);

    const [bridgeA, bridgeB] = await Promise.all([bridgeOf(a), bridgeOf(b)]);
    expect(bridgeA.name).toMatch(/^bc[0-9a-f]+$/);
    expect(bridgeA.name.length).toBeLessThanOrEqual(15);
    expect(bridgeA.name).not.toBe(bridgeB.name);
    expect(bridgeA.subnet).not.toBe(bridgeB.subnet);
    expect(await linkExists(bridgeA.name)).toBe(true);

    // RUN steps on the default network: they run on the builder's bridge and get an address in its subnet.
    const ctx = path.join(tmp, 'ctx');
    await makeBusyboxContext(ctx, 'RUN echo hello > /hello.txt\nRUN cat /hello.txt && ip -4 addr show eth0 | grep inet\n');
    const build = ['build', '--progress=plain', '-t', 'e2e:latest', '.'];
    const t1 = Date.now();
    const [firstA, firstB] = await Promise.all([docker(build, a.port, certA, ctx), docker(build, b.port, certA, ctx)]);
    console.log(`first builds (both builders at once): ${Date.now() - t1} ms`);
    expect(firstA.stderr).not.toMatch(/ERROR|error:/);
    expect(firstA.code).toBe(0);
    expect(firstB.code).toBe(0);
    const prefixA = bridgeA.subnet.split('.').slice(0, 3).join('.');
    const prefixB = bridgeB.subnet.split('.').slice(0, 3).join('.');
    expect(firstA.stderr).toContain(`inet ${prefixA}.`);
    expect(firstB.stderr).toContain(`inet ${prefixB}.`);

    const t2 = Date.now();
    const second = await docker(build, a.port, certA, ctx);
    console.log(`second build on the same builder: ${Date.now() - t2} ms`);
    expect(second.code).toBe(0);
    expect(second.stderr).toContain('CACHED');
    expect(second.stderr).not.toContain('inet '); // the RUN steps did not run again

    // The engine itself refuses BuildKit's network-host entitlement (daemon.json), whatever reaches its socket;
    // --network none still builds. (builder-userns.test.ts checks the same under --userns-remap.)
    const engineCfg = path.join(tmp, 'config-entitlements');
    const netCtx = path.join(tmp, 'ctx-entitlements');
    await makeBusyboxContext(netCtx, 'RUN echo entitlements\n');
    const hostNet = await dockerLocal(['build', '--no-cache', '--network', 'host', '.'], a.handle, engineCfg, netCtx);
    expect(hostNet.code).not.toBe(0);
    expect(hostNet.stderr).toMatch(/entitlement network\.host is not allowed/);
    expect((await dockerLocal(['build', '--no-cache', '--network', 'none', '.'], a.handle, engineCfg, netCtx)).code).toBe(0);

    // Same CA, another lease, not allowed on this builder: refused.
    const other = await docker(['version', '--format', '{{.Server.Version}}'], a.port, certB);
    expect(other.code).not.toBe(0);
    expect(other.stdout.trim()).toBe('');
    expect(other.stderr).toContain('not allowed on this builder');

    // Destroy: no process, no data root, no exec root, no bridge left behind.
    const runDir = path.dirname(a.handle.socketPath);
    const markers = [runDir, a.handle.dir];
    expect(processesMentioning(markers).length).toBeGreaterThanOrEqual(2); // dockerd + containerd
    await a.proxy.close();
    const t3 = Date.now();
    await driver.destroy(a.handle);
    console.log(`destroy: ${Date.now() - t3} ms`);
    builders.splice(builders.indexOf(a), 1);
    expect(processesMentioning(markers)).toEqual([]);
    expect(existsSync(a.handle.dir)).toBe(false);
    expect(existsSync(runDir)).toBe(false);
    expect(await linkExists(bridgeA.name)).toBe(false);
    expect(await driver.alive(a.handle)).toBe(false);
    await driver.destroy(a.handle); // already gone: no throw

    // The other builder is unaffected.
    expect(await driver.alive(b.handle)).toBe(true);
    const again = await docker(build, b.port, certA, ctx);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('CACHED');
  });

  // What a builder leaves behind, checked from the host: processes (by path or by a marker argument of their
  // workload), mounts, directories and the bridge.
  async function expectGone(handle: BuilderHandle, bridge: string, workloadMarkers: string[]): Promise<void> {
    const runDir = path.dirname(handle.socketPath);
    expect(processesMentioning([runDir, handle.dir, ...workloadMarkers])).toEqual([]);
    expect(mountsUnder([runDir, handle.dir])).toEqual([]);
    expect(existsSync(handle.dir)).toBe(false);
    expect(existsSync(runDir)).toBe(false);
    expect(await linkExists(bridge)).toBe(false);
  }

  async function busyBuilder(d: DockerdDriver, id: string, tag: string): Promise<{ handle: BuilderHandle; bridge: string; build: Promise<Result> }> {
    const handle = await d.start(id);
    const cfg = path.join(tmp, `config-${id}`);
    const ctx = path.join(tmp, `ctx-${id}`);
    await makeBusyboxContext(ctx, 'RUN true\n');
    expect((await dockerLocal(['build', '-q', '-t', 'img', '.'], handle, cfg, ctx)).code).toBe(0);
    const bridge = (
      await dockerLocal(['network', 'inspect', 'bridge', '--format', '{{index .Options "com.docker.network.bridge.name"}}'], handle, cfg)
    ).stdout.trim();
    expect(await linkExists(bridge)).toBe(true);
    // A running container (its shim outlives containerd by design) and a build in the middle of a RUN step.
    expect((await dockerLocal(['run', '-d', 'img', 'sleep', `${tag}1`], handle, cfg)).code).toBe(0);
    const slow = path.join(tmp, `slow-${id}`);
    await makeBusyboxContext(slow, `RUN sleep ${tag}2\n`);
    const build = dockerLocal(['build', '--progress=plain', '.'], handle, cfg, slow);
    await waitFor(
      'the container and the RUN step to be running',
      () => processesMentioning([`sleep ${tag}1`]).length > 0 && processesMentioning([`sleep ${tag}2`]).length > 0
    );
    return { handle, bridge, build };
  }

  it('destroys a busy builder (running container, build mid-RUN) quickly and completely', async () => {
    const { handle, bridge, build } = await busyBuilder(driver, 'e2e-busy', '7071');
    const t0 = Date.now();
    await driver.destroy(handle);
    const took = Date.now() - t0;
    console.log(`destroy of a busy builder: ${took} ms`);
    expect(took).toBeLessThan(8_000); // not dockerd's 10 s per-container stop timeout
    expect((await build).code).not.toBe(0);
    await expectGone(handle, bridge, ['sleep 70711', 'sleep 70712']);
  });

  it('cleans up after a control plane that died: dockerd SIGKILLed, shim and container orphaned', async () => {
    const root = path.join(tmp, 'crashed');
    const first = new DockerdDriver({ rootDir: root });
    const { handle, bridge, build } = await busyBuilder(first, 'e2e-crash', '8081');
    process.kill(handle.pid!, 'SIGKILL');
    expect((await build).code).not.toBe(0);
    // The shim and the container outlive dockerd and containerd.
    expect(processesMentioning(['sleep 80811']).length).toBe(1);
    const restarted = new DockerdDriver({ rootDir: root });
    expect(await restarted.cleanupOrphans()).toEqual(['e2e-crash']);
    await expectGone(handle, bridge, ['sleep 80811', 'sleep 80812']);
  });

  it('reports a dockerd that dies at start with the tail of its log, and leaves nothing behind', async () => {
    const bad = new DockerdDriver({ rootDir: path.join(tmp, 'bad'), dockerdPath: '/bin/false', startTimeoutMs: 5000 });
    await expect(bad.start('broken')).rejects.toThrow(/exited with 1 before it was ready/);
    expect(existsSync(path.join(tmp, 'bad', 'broken'))).toBe(false);
  });

  it('gives up on a dockerd that never answers, with its log, and kills it', async () => {
    const fake = path.join(tmp, 'hung-dockerd');
    await fs.writeFile(fake, '#!/bin/sh\necho "pretending to start $*"\nsleep 9191\n', { mode: 0o755 });
    const hung = new DockerdDriver({ rootDir: path.join(tmp, 'hung'), dockerdPath: fake, startTimeoutMs: 1000 });
    await expect(hung.start('hung')).rejects.toThrow(/not ready after 1000 ms[\s\S]*pretending to start --config-file/);
    expect(processesMentioning(['sleep 9191', fake])).toEqual([]);
    expect(existsSync(path.join(tmp, 'hung', 'hung'))).toBe(false);
  });
});
