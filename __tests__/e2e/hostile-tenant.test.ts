// A hostile tenant, for real: one org's CI job holds a lease (a client cert for its builder) on the real
// `buildcloud serve`, with real dockerd builders, the real registry and Debian's docker 20.10 CLI, and tries what
// the issue lists. Each attempt must be refused with a message saying what to do instead, and leave the host as it
// was; the things a build needs must keep working.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as tls from 'tls';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, docker as dockerRun, dockerEnvFor, startServer, TestClient, waitFor, type ServerProcess } from '../helpers/server';
import { Pki } from '../../src/server/pki';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { makeOutsideHost, removeOutsideHost, unusedNet, usedAddresses, type OutsideHost } from '../helpers/outside-hosts';
import { resolveDocker, type BuildOptions, type ResolvedDocker } from '../../src/core/docker-cli';
import { cleanupRunner, configureRunner, runnerName, type RunnerConfig } from '../../src/core/runner-config';
import { runBuild } from '../../src/core/build';
import { loadImage } from '../../src/core/load-image';
import { runnerDocker, startRunnerEngine, stopRunnerEngine } from '../helpers/runner-engine';
import type { LeaseMsg } from '../../src/contract/grpc';

const REFUSED = /Error response from daemon: Build Cloud builders run builds only/;

let server: ServerProcess;
let acme: TestClient; // the victim org
let beta: TestClient; // the hostile tenant
let work: string;
let betaLease: LeaseMsg;
let acmeLease: LeaseMsg;
let env: NodeJS.ProcessEnv; // beta's job: its docker CLI pointed at its builder
let acmeEnv: NodeJS.ProcessEnv;
let docker: ResolvedDocker;
let cfg: RunnerConfig;
let base: string; // a busybox build context
const outside: OutsideHost[] = [];
let hostListener: http.Server;
let hostListenerHits = 0;
let hostPort = 0;

const sh = (args: string[], e: NodeJS.ProcessEnv = env) => dockerRun(args, e, work);

// The host's bridges but builders' own (bc + 10 hex, named by the driver): what a `docker network create` would add.
// Only bridges: veths come and go with any build on the machine (another test's, the demo's), bridges of other
// builders too, and neither says anything about this lease.
function hostBridges(): string[] {
  return spawnSync('ip', ['-o', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(': ')[1]?.split('@')[0])
    .filter((n): n is string => Boolean(n) && !/^bc[0-9a-f]{10}$/.test(n!));
}

function bridgeGateways(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of spawnSync('ip', ['-4', '-o', 'addr', 'show'], { encoding: 'utf8' }).stdout.split('\n')) {
    const m = /^\d+: (bc[0-9a-f]{10})\s+inet (\d+\.\d+\.\d+\.\d+)\//.exec(line);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '0.0.0.0', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const opts = (o: Partial<BuildOptions> = {}): BuildOptions => ({
  context: base,
  tags: [],
  buildArgs: {},
  push: false,
  platforms: [],
  exportCache: false,
  ...o
});

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('the hostile-tenant e2e tests must run as root (dockerd, ip netns, iptables)');
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-hostile-'));
  server = await startServer(['--idle-timeout', '120s', '--grace', '1s', '--warm-pool', '1']);
  acme = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  beta = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'beta', 60));
  docker = await resolveDocker();
  betaLease = await beta.provision({
    pipelineKey: 'beta/pipe/1',
    jobId: 'evil',
    identity: { provider: 'local', project: 'beta/app', branch: 'main', defaultBranch: 'main', actor: 'mallory' }
  });
  acmeLease = await acme.provision({ pipelineKey: 'acme/pipe/1', jobId: 'build' });
  expect(acmeLease.builders[0].builderId).not.toBe(betaLease.builders[0].builderId);
  env = dockerEnvFor(betaLease, path.join(work, 'beta'));
  acmeEnv = dockerEnvFor(acmeLease, path.join(work, 'acme'));
  cfg = await configureRunner(betaLease, runnerName(['local', 'beta/app', betaLease.pipelineKey, 'evil']), { tempRoot: path.join(work, 'tmp'), docker });

  base = path.join(work, 'base');
  await makeBusyboxContext(base, 'CMD ["sh"]\n');
  const built = sh(['build', '-q', '-t', 'hostile:1', base]);
  expect(built).toMatchObject({ status: 0 });

  // The world outside, made by this test: "the internet" (TEST-NET-3), a LAN host and a link-local host.
  const used = await usedAddresses();
  const range = (n: number, f: (i: number) => string) => [...Array(n).keys()].map(f);
  const suffix = String(process.pid % 100000);
  const inet = unusedNet(
    used,
    range(64, (i) => `203.0.113.${i * 4}`),
    4
  )
    .split('.')
    .map(Number)[3];
  outside.push(
    await makeOutsideHost({
      ns: `bcht-inet-${suffix}`,
      hostIf: `xhti${suffix}`,
      hostCidr: `203.0.113.${inet + 1}/30`,
      farCidr: `203.0.113.${inet + 2}/30`,
      label: ''
    })
  );
  const lan = unusedNet(
    used,
    range(254, (i) => `10.199.${i + 1}.0`),
    256
  )
    .split('.')
    .slice(0, 3)
    .join('.');
  outside.push(await makeOutsideHost({ ns: `bcht-lan-${suffix}`, hostIf: `xhtl${suffix}`, hostCidr: `${lan}.1/24`, farCidr: `${lan}.2/24`, label: 'lan ' }));
  const ll = unusedNet(
    used,
    range(253, (i) => `169.254.${i + 1}.0`).filter((n) => n !== '169.254.169.0'),
    256
  )
    .split('.')
    .slice(0, 3)
    .join('.');
  outside.push(
    await makeOutsideHost({ ns: `bcht-ll-${suffix}`, hostIf: `xhtk${suffix}`, hostCidr: `${ll}.1/24`, farCidr: `${ll}.2/24`, label: 'link-local ' })
  );

  // A listener of the host on every address: a control plane started with --host 0.0.0.0 looks like this.
  hostListener = http.createServer((_q, r) => {
    hostListenerHits++;
    r.end('host\n');
  });
  hostPort = await new Promise<number>((resolve) => hostListener.listen(0, '0.0.0.0', () => resolve((hostListener.address() as net.AddressInfo).port)));
});

afterAll(async () => {
  if (cfg) await cleanupRunner(cfg, docker).catch(() => undefined);
  beta?.close();
  acme?.close();
  hostListener?.close();
  for (const o of outside) await removeOutsideHost(o);
  if (server) {
    expect(await server.stop()).toBe(0);
    fs.rmSync(server.stateDir, { recursive: true, force: true });
  }
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('refused, with a message, and nothing changed on the host', () => {
  test("docker run with / bind-mounted cannot read the control plane's secrets", () => {
    const secret = fs.readFileSync(server.info.adminTokenFile, 'utf8').trim();
    const caKey = fs.readFileSync(path.join(server.stateDir, 'pki', 'ca-key.pem'), 'utf8');
    const r = sh([
      'run',
      '--rm',
      '-v',
      '/:/host',
      'hostile:1',
      'sh',
      '-c',
      `cat /host${server.info.adminTokenFile}; head -c 200 /host${server.stateDir}/pki/ca-key.pem`
    ]);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(REFUSED);
    expect(r.out).toContain('containers (`docker run`, `docker exec`, `docker create`) are not available on a remote builder; use `load: true`');
    expect(r.out).not.toContain(secret);
    expect(r.out).not.toContain(caKey.split('\n')[1]);
  });

  test('--privileged is refused the same way (the engine never sees the request)', () => {
    const r = sh(['run', '--rm', '--privileged', 'hostile:1', 'true']);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(REFUSED);
    expect(r.out).not.toMatch(/unable to apply caps/); // the engine's own error on these machines: never reached
  });

  test('-p cannot publish a port on the host', async () => {
    const port = await freePort();
    const r = sh(['run', '-d', '-p', `0.0.0.0:${port}:8080`, 'hostile:1', 'httpd', '-f', '-p', '8080']);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(REFUSED);
    await expect(new Promise((resolve, reject) => net.connect(port, '127.0.0.1').on('connect', resolve).on('error', reject))).rejects.toThrow(/ECONNREFUSED/);
  });

  test('docker exec, docker volume create and docker network create are refused; no volume, no bridge appears', () => {
    const root = JSON.parse(sh(['info', '--format', '{{json .DockerRootDir}}']).out) as string;
    const bridgesBefore = hostBridges();
    const exec = sh(['exec', 'anything', 'sh']);
    expect(exec.status).not.toBe(0);
    expect(exec.out).toMatch(REFUSED);
    expect(exec.out).toContain('`docker exec`');
    const vol = sh(['volume', 'create', 'stolen']);
    expect(vol.status).not.toBe(0);
    expect(vol.out).toContain('volumes (`docker volume`) are not available');
    const netw = sh(['network', 'create', 'evil-net']);
    expect(netw.status).not.toBe(0);
    expect(netw.out).toContain('networks (`docker network`) are not available');
    expect(fs.existsSync(path.join(root, 'volumes', 'stolen'))).toBe(false);
    expect(hostBridges().filter((l) => !bridgesBefore.includes(l))).toEqual([]);
  });

  test('a build with --network host is refused', () => {
    const r = sh(['build', '--network', 'host', '-t', 'x:1', base]);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/--network "host" is not allowed/);
  });

  test('build options smuggled in a form-encoded body (Go prefers them over the query) are refused before the engine', async () => {
    const [host, port] = betaLease.builders[0].address.replace('tcp://', '').split(':');
    const certs = env.DOCKER_CERT_PATH!;
    const sock = tls.connect({
      host,
      port: Number(port),
      ca: fs.readFileSync(path.join(certs, 'ca.pem')),
      cert: fs.readFileSync(path.join(certs, 'cert.pem')),
      key: fs.readFileSync(path.join(certs, 'key.pem')),
      servername: 'localhost'
    });
    const form = 'version=1&networkmode=host&cgroupparent=/evil&t=smuggled:1';
    const answer = await new Promise<string>((resolve, reject) => {
      let got = '';
      sock.on('data', (d) => (got += d));
      sock.on('close', () => resolve(got));
      sock.on('error', reject);
      sock.on('secureConnect', () =>
        sock.write(
          `POST /v1.41/build?version=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\nConnection: close\r\n\r\n${form}`
        )
      );
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toContain('form-encoded request bodies (application/x-www-form-urlencoded) are not accepted');
    expect(sh(['image', 'inspect', 'smuggled:1']).status).not.toBe(0);
  });

  test("another lease's builder refuses this lease's cert, and this one refuses the other's", () => {
    const crossed = { ...env, DOCKER_HOST: acmeLease.builders[0].address };
    const r = sh(['version', '--format', '{{.Server.Version}}'], crossed);
    expect(r.status).not.toBe(0);
    expect(r.out).toContain('not allowed on this builder');
    const back = sh(['version', '--format', '{{.Server.Version}}'], { ...acmeEnv, DOCKER_HOST: betaLease.builders[0].address });
    expect(back.out).toContain('not allowed on this builder');
    // Each lease still reaches its own.
    expect(sh(['version', '--format', '{{.Server.Version}}'], acmeEnv).status).toBe(0);
  });

  test('RUN steps reach the internet but not the host, its listeners, the LAN, link-local hosts or other builders', async () => {
    const [inet, lan, ll] = outside;
    const gateways = bridgeGateways();
    expect(gateways.size).toBeGreaterThanOrEqual(2); // beta's builder and acme's (at least)
    const port = (a: string) => a.split(':').pop();
    const targets: Record<string, string> = {
      internet: `${inet.far}:8080`,
      lan: `${lan.far}:8080`,
      'link-local': `${ll.far}:8080`,
      'host-listener-via-gateway': `GATEWAY:${hostPort}`,
      'host-listener-via-other-address': `${inet.host}:${hostPort}`,
      'control-plane-grpc': `GATEWAY:${port(server.info.grpc)}`,
      'control-plane-http': `GATEWAY:${port(server.info.http)}`,
      'control-plane-registry': `GATEWAY:${port(server.info.registry)}`,
      'other-builder-front': `GATEWAY:${port(acmeLease.builders[0].address)}`
    };
    for (const [bridge, gw] of gateways) targets[`bridge-${bridge}`] = `${gw}:${hostPort}`;
    const list = Object.entries(targets)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
    fs.writeFileSync(
      path.join(base, 'Dockerfile.probe'),
      `FROM hostile:1\nARG TARGETS\nRUN GW=$(ip route | awk '/^default/ {print $3}'); echo "GATEWAY-IS $GW"; for t in $TARGETS; do ( n=\${t%%=*}; a=$(echo \${t#*=} | sed "s/GATEWAY/$GW/"); h=\${a%:*}; p=\${a##*:}; if [ "$h" = "$GW" ] && [ "\${n#bridge-}" != "$n" ]; then echo "PROBE $n SELF"; elif nc -w 3 $h $p -e true 2>/dev/null; then echo "PROBE $n REACHED"; else echo "PROBE $n BLOCKED"; fi ) & done; wait\n`
    );
    const hitsBefore = hostListenerHits;
    const r = sh(['build', '--no-cache', '--progress', 'plain', '-f', path.join(base, 'Dockerfile.probe'), '--build-arg', `TARGETS=${list}`, base]);
    expect(r).toMatchObject({ status: 0 });
    const seen = Object.fromEntries([...r.out.matchAll(/^#\d+ [\d.]+ PROBE (\S+) (REACHED|BLOCKED|SELF)$/gm)].map((m) => [m[1], m[2]]));
    const expected: Record<string, string> = {};
    for (const k of Object.keys(targets)) expected[k] = k === 'internet' ? 'REACHED' : 'BLOCKED';
    const own = /^#\d+ [\d.]+ GATEWAY-IS (\S+)$/m.exec(r.out)![1];
    for (const [bridge, gw] of gateways) if (gw === own) expected[`bridge-${bridge}`] = 'SELF';
    expect(seen).toEqual(expected);
    expect(Object.values(seen).filter((v) => v === 'SELF')).toHaveLength(1);
    // The host's listener was reachable from the host itself all along: the refusals are the rules' doing.
    expect(hostListenerHits).toBe(hitsBefore);
    const fromHost = await new Promise<string>((resolve, reject) =>
      http.get(`http://${own}:${hostPort}/`, (res) => res.on('data', (d) => resolve(String(d)))).on('error', reject)
    );
    expect(fromHost).toBe('host\n');
  });
  test("the engine's own fetches (ADD <url>, FROM) reach the internet but not the host's loopback, its listeners, the LAN or link-local hosts", () => {
    const [inet, lan, ll] = outside;
    const port = (a: string) => a.split(':').pop();
    const targets: Record<string, string> = {
      internet: `http://${inet.far}:8080/`,
      lan: `http://${lan.far}:8080/`,
      'link-local': `http://${ll.far}:8080/`,
      'host-listener-loopback': `http://127.0.0.1:${hostPort}/`,
      'host-listener-other-address': `http://${inet.host}:${hostPort}/`,
      'control-plane-http': `http://127.0.0.1:${port(server.info.http)}/metrics`
    };
    const seen: Record<string, string> = {};
    for (const [name, url] of Object.entries(targets)) {
      fs.writeFileSync(path.join(base, 'Dockerfile.fetch'), `FROM scratch\nADD ${url} /fetched\n`);
      const r = sh(['build', '--no-cache', '--progress', 'plain', '-f', path.join(base, 'Dockerfile.fetch'), base]);
      seen[name] = r.status === 0 ? 'FETCHED' : /connection refused/.test(r.out) ? 'REFUSED' : `other: ${r.out.slice(-300)}`;
    }
    const expected = Object.fromEntries(Object.keys(targets).map((k) => [k, k === 'internet' ? 'FETCHED' : 'REFUSED']));
    expect(seen).toEqual(expected);
    // A base image from a LAN registry: refused the same way, with the address in the message.
    fs.writeFileSync(path.join(base, 'Dockerfile.from'), `FROM ${lan.far}:8080/base:1\n`);
    const from = sh(['build', '--progress', 'plain', '-f', path.join(base, 'Dockerfile.from'), base]);
    expect(from.status).not.toBe(0);
    expect(from.out).toMatch(new RegExp(`${lan.far.replace(/\./g, '\\.')}:8080.*connection refused`));
  });
});

describe('still works', () => {
  test('a multi-stage build with RUN steps, its cache exported to the org cache', async () => {
    fs.writeFileSync(
      path.join(base, 'Dockerfile.multi'),
      'FROM hostile:1 AS deps\nRUN echo deps > /deps.txt\nFROM hostile:1\nCOPY --from=deps /deps.txt /deps.txt\nRUN cat /deps.txt > /built.txt\n'
    );
    const r = await runBuild(opts({ file: path.join(base, 'Dockerfile.multi'), exportCache: true }), cfg, betaLease, docker);
    expect(r).toMatchObject({ status: 'success', cacheExported: true });
    expect(r.pushed).toEqual([expect.stringContaining(`:${betaLease.cache!.uploadPrefix}`)]); // its own upload tag, promoted to its scope's tag
    expect(r.cacheRef).toMatch(new RegExp(`^${betaLease.cache!.repository!.replace(/[.[\]]/g, '\\$&')}/`));
  });

  test('push to a registry of the user on the internet, given as a tag (TLS, its CA trusted by the host)', async () => {
    const inet = outside[0];
    const port = 5000;
    const dir = path.join(work, 'user-registry');
    fs.mkdirSync(dir);
    const ca = await Pki.loadOrCreate(path.join(dir, 'pki'));
    const cert = await ca.issueServer([inet.far]);
    fs.writeFileSync(path.join(dir, 'cert.pem'), cert.certPem);
    fs.writeFileSync(path.join(dir, 'key.pem'), cert.keyPem, { mode: 0o600 });
    const config = path.join(dir, 'config.yml');
    fs.writeFileSync(
      config,
      `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\nhttp:\n  addr: ${inet.far}:${port}\n  tls:\n    certificate: ${dir}/cert.pem\n    key: ${dir}/key.pem\n`
    );
    // Every engine of this host reads a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt.
    const trust = `/etc/docker/certs.d/${inet.far}:${port}`;
    fs.mkdirSync(trust, { recursive: true });
    fs.writeFileSync(path.join(trust, 'ca.crt'), ca.caPem);
    const reg = spawn('ip', ['netns', 'exec', inet.ns, '/usr/bin/docker-registry', 'serve', config], { stdio: 'ignore' });
    try {
      const agent = new https.Agent({ ca: ca.caPem });
      const tags = (): Promise<string> =>
        new Promise((resolve, reject) =>
          https
            .get(`https://${inet.far}:${port}/v2/me/app/tags/list`, { agent }, (res) => {
              let b = '';
              res.on('data', (d) => (b += d));
              res.on('end', () => resolve(b));
            })
            .on('error', reject)
        );
      await waitFor('the user registry', () => tags().then(() => true), 10_000, 50);
      const tag = `${inet.far}:${port}/me/app:1`;
      const r = await runBuild(opts({ tags: [tag], push: true }), cfg, betaLease, docker);
      expect(r).toMatchObject({ status: 'success' });
      expect(r.pushed).toContain(tag);
      expect(JSON.parse(await tags())).toEqual({ name: 'me/app', tags: ['1'] });
    } finally {
      reg.kill('SIGKILL');
      fs.rmSync(trust, { recursive: true, force: true });
    }
  });

  test("load: true brings the built image into the runner's own engine (docker save through the front)", async () => {
    const engine = await startRunnerEngine();
    try {
      expect(runnerDocker(['images', '-q'], engine.host)).toEqual({ status: 0, out: '' });
      const built = await runBuild(opts({ tags: ['hostile-app:loaded'] }), cfg, betaLease, docker);
      expect(built.status).toBe('success');
      const runnerEnv = { PATH: process.env.PATH, HOME: work, DOCKER_HOST: engine.host };
      const out = await loadImage({ docker: docker.path, refs: ['hostile-app:loaded'], builderEnv: env, runnerEnv, engine: engine.host });
      expect(out).toMatchObject({ loaded: true, refs: ['hostile-app:loaded'] });
      expect(runnerDocker(['image', 'inspect', '--format', '{{.Id}}', 'hostile-app:loaded'], engine.host)).toEqual({ status: 0, out: built.imageId });
    } finally {
      await stopRunnerEngine(engine);
    }
  });

  test('a running build can be cancelled, and the builder serves the next one', async () => {
    const slow = path.join(work, 'slow');
    await makeBusyboxContext(slow, 'RUN echo started && sleep 60\n');
    const ac = new AbortController();
    const t = Date.now();
    const r = await runBuild(opts({ context: slow }), cfg, betaLease, docker, {
      signal: ac.signal,
      onLine: (l) => /#\d+ [\d.]+ started/.test(l) && ac.abort()
    });
    expect(r.status).toBe('cancelled');
    expect(Date.now() - t).toBeLessThan(30_000);
    expect(sh(['version', '--format', '{{.Server.Version}}']).status).toBe(0);
  });
});
