// Outbound NAT of builders, for real: dockerd builders, the host's iptables, and a network namespace on this
// machine standing in for the internet (a veth pair with a /30, no route back to the builders' subnets, exactly
// like a host on the internet). All traffic stays on this machine.
import { execFile, spawn, type ChildProcess } from 'child_process';
import { existsSync, promises as fs } from 'fs';
import * as http from 'http';
import type { AddressInfo } from 'net';
import * as os from 'os';
import * as path from 'path';
import { hostTool, NAT_CHAINS } from '../../src/server/drivers/bridge';
import { DockerdDriver, findDockerd } from '../../src/server/drivers/dockerd';
import type { BuilderHandle } from '../../src/server/drivers/driver';
import { makeBusyboxContext } from '../helpers/busybox-context';

const DOCKER = '/usr/bin/docker';
const IP = hostTool('ip');
const IPTABLES = hostTool('iptables');

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env?: NodeJS.ProcessEnv, cwd?: string): Promise<Result> {
  return new Promise((resolve) => {
    execFile(file, args, { env, cwd, timeout: 120_000, maxBuffer: 32 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function must(file: string, args: string[]): Promise<string> {
  const r = await run(file, args);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

// Straight to the builder's socket with Debian's docker 20.10 client (BuildKit).
function docker(handle: BuilderHandle, args: string[], configDir: string, cwd?: string): Promise<Result> {
  const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_BUILDKIT: '1', DOCKER_HOST: `unix://${handle.socketPath}`, DOCKER_CONFIG: configDir };
  delete env.DOCKER_CONTEXT;
  return run(DOCKER, args, env, cwd);
}

// Every rule of the host in the filter and nat tables.
async function allRules(): Promise<string> {
  return (await must(IPTABLES, ['-w', '-S'])) + (await must(IPTABLES, ['-w', '-t', 'nat', '-S']));
}

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(url, { timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

interface Net {
  bridge: string;
  subnet: string;
  gateway: string;
}

describe('builder outbound NAT (iptables) with a network namespace as the internet', () => {
  const suffix = String(process.pid % 100000);
  const ns = `bcnat-${suffix}`;
  // Not bc…: every interface named bc* is treated as a builder bridge by the isolation rules.
  const hostIf = `xnat${suffix}`;
  let hostAddr = ''; // the host's end of the veth: what a masqueraded builder looks like from the "internet"
  let inetAddr = ''; // the namespace's end, where the "internet" server listens
  let inetServer: ChildProcess | null = null;
  const gatewayServers: http.Server[] = [];
  let tmp = '';
  let natDriver: DockerdDriver;
  let plainDriver: DockerdDriver;
  const live: Array<{ driver: DockerdDriver; handle: BuilderHandle }> = [];
  const roots: string[] = [];

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('the NAT e2e tests must run as root (dockerd, ip netns, iptables)');
    if (!findDockerd() || !existsSync(DOCKER)) throw new Error('dockerd and /usr/bin/docker are needed: apt-get install -y docker.io');
    if (!path.isAbsolute(IPTABLES)) throw new Error('iptables is needed: apt-get install -y iptables');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-e2e-nat-'));

    // A free /30 in 10.252.0.0/16.
    const used = await must(IP, ['-4', '-o', 'addr', 'show']);
    for (;;) {
      const c = Math.floor(Math.random() * 256);
      const d = Math.floor(Math.random() * 64) * 4;
      if (used.includes(` 10.252.${c}.`)) continue;
      hostAddr = `10.252.${c}.${d + 1}`;
      inetAddr = `10.252.${c}.${d + 2}`;
      break;
    }
    await must(IP, ['netns', 'add', ns]);
    await must(IP, ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await must(IP, ['addr', 'add', `${hostAddr}/30`, 'dev', hostIf]);
    await must(IP, ['link', 'set', hostIf, 'up']);
    await must(IP, ['netns', 'exec', ns, IP, 'addr', 'add', `${inetAddr}/30`, 'dev', 'eth0']);
    await must(IP, ['netns', 'exec', ns, IP, 'link', 'set', 'eth0', 'up']);
    await must(IP, ['netns', 'exec', ns, IP, 'link', 'set', 'lo', 'up']);
    // No default route in the namespace: like the internet, it can answer the host's address only.
    const script = `require('http').createServer((q, r) => r.end('seen-from ' + q.socket.remoteAddress + '\\n'))` +
      `.listen(8080, ${JSON.stringify(inetAddr)}, () => console.log('listening'))`;
    const srv = spawn(IP, ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    inetServer = srv;
    await new Promise<void>((resolve, reject) => {
      srv.stdout!.on('data', (d) => String(d).includes('listening') && resolve());
      srv.once('exit', (code) => reject(new Error(`the namespace's server exited with ${code}`)));
    });
    expect(await httpGet(`http://${inetAddr}:8080/`)).toBe(`seen-from ${hostAddr}\n`);

    roots.push(path.join(tmp, 'nat'), path.join(tmp, 'plain'), path.join(tmp, 'orphan'));
    natDriver = new DockerdDriver({ rootDir: roots[0] });
    plainDriver = new DockerdDriver({ rootDir: roots[1], builderNat: false });
  });

  afterAll(async () => {
    for (const { driver, handle } of live) await driver.destroy(handle).catch(() => undefined);
    for (const root of roots) await new DockerdDriver({ rootDir: root }).cleanupOrphans().catch(() => undefined);
    for (const s of gatewayServers) s.close();
    inetServer?.kill('SIGKILL');
    await run(IP, ['netns', 'del', ns]);
    // The namespace takes its end of the veth (and so ours) with it, asynchronously.
    for (let i = 0; i < 50 && (await run(IP, ['link', 'show', 'dev', hostIf])).code === 0; i++) await new Promise((r) => setTimeout(r, 100));
    await run(IP, ['link', 'del', 'dev', hostIf]);
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  async function start(driver: DockerdDriver, id: string): Promise<{ handle: BuilderHandle; net: Net; cfg: string }> {
    const handle = await driver.start(id);
    live.push({ driver, handle });
    const cfg = path.join(tmp, `config-${id}`);
    const r = await docker(handle, ['network', 'inspect', 'bridge', '--format',
      '{{index .Options "com.docker.network.bridge.name"}} {{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}}'], cfg);
    expect(r.stderr).toBe('');
    const [bridge, subnet, gateway] = r.stdout.trim().split(' ');
    expect(bridge).toMatch(/^bc[0-9a-f]{10}$/);
    return { handle, net: { bridge, subnet, gateway }, cfg };
  }

  async function destroy(driver: DockerdDriver, handle: BuilderHandle): Promise<void> {
    await driver.destroy(handle);
    live.splice(live.findIndex((b) => b.handle === handle), 1);
  }

  // One RUN step fetching each URL; prints "probe OK <url> <body>" or "probe FAIL <url>" for each.
  async function probe(b: { handle: BuilderHandle; cfg: string }, name: string, urls: string[]): Promise<Map<string, string | null>> {
    const ctx = path.join(tmp, `probe-${name}`);
    const cmd = urls.map((u) => `if r=$(timeout 4 wget -q -O - ${u}); then echo "probe OK ${u} $r"; else echo "probe FAIL ${u}"; fi`).join('; ');
    await makeBusyboxContext(ctx, `RUN ${cmd}\n`);
    const r = await docker(b.handle, ['build', '--no-cache', '--progress=plain', '.'], b.cfg, ctx);
    expect(r.code).toBe(0);
    const out = new Map<string, string | null>();
    for (const m of r.stderr.matchAll(/probe (OK|FAIL) (\S+)(?: ([^\n]*))?/g)) out.set(m[2], m[1] === 'OK' ? (m[3] ?? '').trim() : null);
    expect([...out.keys()].sort()).toEqual([...urls].sort());
    return out;
  }

  function gatewayServer(addr: string): Promise<string> {
    const s = http.createServer((_q, r) => r.end(`gateway ${addr}\n`));
    gatewayServers.push(s);
    return new Promise((resolve) => s.listen(0, addr, () => resolve(`http://${addr}:${(s.address() as AddressInfo).port}/`)));
  }

  it('masquerades RUN steps to the outside, keeps builders apart, and leaves no rule behind', async () => {
    const [a, b, c] = await Promise.all([start(natDriver, 'nat-a'), start(natDriver, 'nat-b'), start(plainDriver, 'plain-c')]);
    expect((await fs.readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim()).toBe('1');

    // Our chains, jumped to from the built-in ones, hold the rules of A and B and nothing of C.
    let rules = await allRules();
    for (const { table, chain, parent } of NAT_CHAINS) {
      expect(await must(IPTABLES, ['-w', '-t', table, '-S', parent])).toContain(`-A ${parent} -j ${chain}`);
    }
    for (const x of [a, b]) {
      expect(rules).toContain(`-A BUILDCLOUD-POSTROUTING -s ${x.net.subnet} ! -o ${x.net.bridge} -m comment --comment "buildcloud:${x.net.bridge}" -j MASQUERADE`);
      expect(rules).toContain(`-A BUILDCLOUD-FORWARD -i ${x.net.bridge} -o bc+ -m comment --comment "buildcloud:${x.net.bridge}" -j DROP`);
    }
    expect(rules).not.toContain(c.net.bridge);
    expect(rules).not.toContain(c.net.subnet);

    // Something to reach on B's bridge: a container serving HTTP.
    const web = path.join(tmp, 'web');
    await makeBusyboxContext(web, 'RUN mkdir -p /www && echo from-b > /www/index.html\n');
    expect((await docker(b.handle, ['build', '-q', '-t', 'web', '.'], b.cfg, web)).code).toBe(0);
    const cid = (await docker(b.handle, ['run', '-d', 'web', 'httpd', '-f', '-p', '8080', '-h', '/www'], b.cfg)).stdout.trim();
    const ipB = (await docker(b.handle, ['inspect', '-f', '{{.NetworkSettings.IPAddress}}', cid], b.cfg)).stdout.trim();
    const webB = `http://${ipB}:8080/`;
    await expect(httpGet(webB)).resolves.toBe('from-b\n'); // from the host it answers
    const [gwA, gwB] = await Promise.all([gatewayServer(a.net.gateway), gatewayServer(b.net.gateway)]);
    const inet = `http://${inetAddr}:8080/`;

    const [fromA, fromB, fromC] = await Promise.all([
      probe(a, 'a', [inet, gwA, gwB, webB]),
      probe(b, 'b', [inet, gwB, gwA]),
      probe(c, 'c', [inet]),
    ]);
    // Out through the host, seen with the host's address (masquerade), not the container's.
    expect(fromA.get(inet)).toBe(`seen-from ${hostAddr}`);
    expect(fromB.get(inet)).toBe(`seen-from ${hostAddr}`);
    // Its own gateway (the host), yes; another builder's gateway or containers, no.
    expect(fromA.get(gwA)).toBe(`gateway ${a.net.gateway}`);
    expect(fromB.get(gwB)).toBe(`gateway ${b.net.gateway}`);
    expect(fromA.get(gwB)).toBeNull();
    expect(fromB.get(gwA)).toBeNull();
    expect(fromA.get(webB)).toBeNull();
    // Without NAT the packets leave with the container's address, which the outside cannot answer.
    expect(fromC.get(inet)).toBeNull();

    await Promise.all([destroy(natDriver, a.handle), destroy(natDriver, b.handle), destroy(plainDriver, c.handle)]);
    rules = await allRules();
    for (const x of [a, b, c]) {
      expect(rules).not.toContain(x.net.bridge);
      expect(rules).not.toContain(x.net.subnet);
      expect(rules).not.toContain(`${x.net.gateway}/32`);
    }
  });

  it('removes the rules of a builder whose control plane died, and rules of bridges that are gone', async () => {
    const first = new DockerdDriver({ rootDir: roots[2] });
    const d = await start(first, 'orphan-d');
    expect(await allRules()).toContain(`buildcloud:${d.net.bridge}`);
    process.kill(d.handle.pid!, 'SIGKILL');
    // A rule of ours whose bridge no longer exists (a teardown that failed half-way).
    const gone = `bc${(0xa000000000 + process.pid).toString(16).slice(-10)}`;
    await must(IPTABLES, ['-w', '-A', 'BUILDCLOUD-FORWARD', '-i', gone, '-m', 'comment', '--comment', `buildcloud:${gone}`, '-j', 'ACCEPT']);

    const restarted = new DockerdDriver({ rootDir: roots[2] });
    expect(await restarted.cleanupOrphans()).toEqual(['orphan-d']);
    live.splice(live.findIndex((b) => b.handle === d.handle), 1);
    const rules = await allRules();
    expect(rules).not.toContain(d.net.bridge);
    expect(rules).not.toContain(d.net.subnet);
    expect(rules).not.toContain(gone);
  });
});
