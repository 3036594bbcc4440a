// Outbound NAT and egress filtering of builders, for real: dockerd builders, the host's iptables, and network
// namespaces on this machine standing in for the world outside: "the internet" (a documentation address, RFC 5737,
// that no real network routes), "a LAN host" (a private 10.199.x.2) and "a link-local host" (169.254.x.2, never
// 169.254.169.254). Each is a veth pair whose far end lives in its own namespace with no route back to the
// builders' subnets, like a real host. All traffic stays on this machine: no probe goes to an address of the
// real network.
import { execFile, type ChildProcess } from 'child_process';
import { existsSync, promises as fs } from 'fs';
import * as http from 'http';
import type { AddressInfo } from 'net';
import * as os from 'os';
import * as path from 'path';
import { NAT_CHAINS } from '../../src/server/drivers/builder-nat';
import { dnsExceptions, readNameservers } from '../../src/server/drivers/builder-egress';
import { DockerdDriver, findDockerd } from '../../src/server/drivers/dockerd';
import type { BuilderHandle } from '../../src/server/drivers/driver';
import { hostTool } from '../../src/server/drivers/host-tools';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { adminSetup, dockerEnvFor, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { httpGet, ipToInt, makeOutsideHost, removeOutsideHost, unusedNet, usedAddresses } from '../helpers/outside-hosts';

const DOCKER = '/usr/bin/docker';
const IP = hostTool('ip');
const IPTABLES = hostTool('iptables');
const IP6TABLES = hostTool('ip6tables');

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

// Every IPv4 rule of the host in the filter and nat tables.
async function rules4(): Promise<string> {
  return (await must(IPTABLES, ['-w', '-S'])) + (await must(IPTABLES, ['-w', '-t', 'nat', '-S']));
}

// Every rule of the host in those tables, IPv4 and IPv6.
async function allRules(): Promise<string> {
  return (await rules4()) + (await must(IP6TABLES, ['-w', '-S']));
}

interface Net {
  bridge: string;
  subnet: string;
  gateway: string;
}

// A builder as the probes need it: how to run docker against it, and its network.
interface Builder {
  env: NodeJS.ProcessEnv;
  net: Net;
}

const NET_FORMAT = '{{index .Options "com.docker.network.bridge.name"}} {{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}}';

describe('builder outbound NAT and egress filtering (iptables) with network namespaces as the world outside', () => {
  const suffix = String(process.pid % 100000);
  // Host ends are not named bc…: every interface named bc* is treated as a builder bridge by the isolation rules.
  const outside = {
    inet: { ns: `bcnat-${suffix}`, hostIf: `xnat${suffix}`, host: '', far: '', label: '' },
    lan: { ns: `bclan-${suffix}`, hostIf: `xlan${suffix}`, host: '', far: '', label: 'lan ' },
    ll: { ns: `bcll-${suffix}`, hostIf: `xll${suffix}`, host: '', far: '', label: 'link-local ' }
  };
  let lanNet = ''; // e.g. 10.199.37.0/24
  let llNet = ''; // e.g. 169.254.37.0/24
  const nsServers: ChildProcess[] = [];
  const hostServers: http.Server[] = [];
  let hostPort = 0; // a listener of the host on 0.0.0.0
  const servers: ServerProcess[] = [];
  let tmp = '';
  let natDriver: DockerdDriver;
  let plainDriver: DockerdDriver;
  let allowDriver: DockerdDriver;
  const live: Array<{ driver: DockerdDriver; handle: BuilderHandle }> = [];
  const roots: string[] = [];

  // A veth pair to a new namespace: `hostCidr` on our end, `farCidr` on the far end, an HTTP server there on
  // port 8080 answering `<label>seen-from <client address>` (helpers/outside-hosts.ts).
  async function makeOutside(o: (typeof outside)['inet'], hostCidr: string, farCidr: string): Promise<void> {
    const made = await makeOutsideHost({ ns: o.ns, hostIf: o.hostIf, hostCidr, farCidr, label: o.label });
    o.host = made.host;
    o.far = made.far;
    nsServers.push(made.server);
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('the NAT e2e tests must run as root (dockerd, ip netns, iptables)');
    if (!findDockerd() || !existsSync(DOCKER)) throw new Error('dockerd and /usr/bin/docker are needed: apt-get install -y docker.io');
    if (!path.isAbsolute(IPTABLES) || !path.isAbsolute(IP6TABLES)) throw new Error('iptables and ip6tables are needed: apt-get install -y iptables');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-e2e-nat-'));

    const used = await usedAddresses();
    const range = (n: number, f: (i: number) => string) => [...Array(n).keys()].map(f);
    // "The internet": a /30 of TEST-NET-3 (203.0.113.0/24), public as far as the builders' rules go.
    const inet = ipToInt(
      unusedNet(
        used,
        range(64, (i) => `203.0.113.${i * 4}`),
        4
      )
    );
    await makeOutside(outside.inet, `203.0.113.${(inet % 256) + 1}/30`, `203.0.113.${(inet % 256) + 2}/30`);
    // A LAN host: private, 10.199.c.2/24. The host's end 10.199.c.1 is what a masqueraded builder looks like.
    lanNet = `${unusedNet(
      used,
      range(254, (i) => `10.199.${i + 1}.0`),
      256
    )}/24`;
    const lan = lanNet.split('.').slice(0, 3).join('.');
    await makeOutside(outside.lan, `${lan}.1/24`, `${lan}.2/24`);
    // A link-local host: 169.254.d.2/24, outside 169.254.169.0/24 (the metadata service's) and the reserved first
    // and last /24 (RFC 3927).
    llNet = `${unusedNet(
      used,
      range(253, (i) => `169.254.${i + 1}.0`).filter((n) => n !== '169.254.169.0'),
      256
    )}/24`;
    const ll = llNet.split('.').slice(0, 3).join('.');
    await makeOutside(outside.ll, `${ll}.1/24`, `${ll}.2/24`);

    // A listener of the host on every address, like a control plane started with --host 0.0.0.0.
    const s = http.createServer((_q, r) => r.end('host-listener\n'));
    hostServers.push(s);
    hostPort = await new Promise<number>((resolve) => s.listen(0, '0.0.0.0', () => resolve((s.address() as AddressInfo).port)));

    roots.push(path.join(tmp, 'nat'), path.join(tmp, 'plain'), path.join(tmp, 'orphan'), path.join(tmp, 'allow'));
    natDriver = new DockerdDriver({ rootDir: roots[0] });
    plainDriver = new DockerdDriver({ rootDir: roots[1], builderNat: false });
    allowDriver = new DockerdDriver({ rootDir: roots[3], builderEgressAllow: [lanNet, llNet] });
  });

  afterAll(async () => {
    for (const s of nsServers) s.kill('SIGKILL');
    for (const s of hostServers) s.close();
    for (const s of servers) {
      // stop() waits for an exit that already happened if the process died of a signal.
      if (s.proc.exitCode === null && s.proc.signalCode === null) {
        await Promise.race([s.stop(), new Promise((r) => setTimeout(r, 30_000))]);
        s.proc.kill('SIGKILL');
      }
      await fs.rm(s.stateDir, { recursive: true, force: true }).catch(() => undefined);
    }
    for (const { driver, handle } of live) await driver.destroy(handle).catch(() => undefined);
    for (const root of roots) await new DockerdDriver({ rootDir: root }).cleanupOrphans().catch(() => undefined);
    for (const o of Object.values(outside)) await removeOutsideHost(o);
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  async function inspectNet(env: NodeJS.ProcessEnv): Promise<Net> {
    const r = await run(DOCKER, ['network', 'inspect', 'bridge', '--format', NET_FORMAT], env);
    expect(r.stderr).toBe('');
    const [bridge, subnet, gateway] = r.stdout.trim().split(' ');
    expect(bridge).toMatch(/^bc[0-9a-f]{10}$/);
    return { bridge, subnet, gateway };
  }

  // Straight to the builder's socket with Debian's docker 20.10 client (BuildKit).
  async function start(driver: DockerdDriver, id: string): Promise<Builder & { handle: BuilderHandle }> {
    const handle = await driver.start(id);
    live.push({ driver, handle });
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DOCKER_BUILDKIT: '1',
      DOCKER_HOST: `unix://${handle.socketPath}`,
      DOCKER_CONFIG: path.join(tmp, `config-${id}`)
    };
    delete env.DOCKER_CONTEXT;
    return { handle, env, net: await inspectNet(env) };
  }

  async function destroy(driver: DockerdDriver, handle: BuilderHandle): Promise<void> {
    await driver.destroy(handle);
    live.splice(
      live.findIndex((b) => b.handle === handle),
      1
    );
  }

  // One RUN step fetching every URL at once (each within 4 s; not `wget -T`, which segfaults in Debian 12's busybox
  // 1.35); prints "probe OK <url> <body>" or
  // "probe FAIL <url>" for each. Async all the way: the host's listeners live in this process.
  async function probe(b: Builder, name: string, urls: string[]): Promise<Map<string, string | null>> {
    const ctx = path.join(tmp, `probe-${name}`);
    const one = (u: string) => `(if r=$(timeout 4 wget -q -O - ${u}); then echo "probe OK ${u} $r"; else echo "probe FAIL ${u}"; fi) &`;
    await makeBusyboxContext(ctx, `RUN ${urls.map(one).join(' ')} wait\n`);
    const r = await run(DOCKER, ['build', '--no-cache', '--progress=plain', '.'], b.env, ctx);
    if (r.code !== 0) throw new Error(`probe build on ${b.net.bridge} failed:\n${r.stderr.slice(-3000)}`);
    const out = new Map<string, string | null>();
    for (const m of r.stderr.matchAll(/probe (OK|FAIL) (\S+)(?: ([^\n]*))?/g)) out.set(m[2], m[1] === 'OK' ? (m[3] ?? '').trim() : null);
    expect([...out.keys()].sort()).toEqual([...urls].sort());
    return out;
  }

  const url = (host: string, port = 8080) => `http://${host}:${port}/`;

  it('RUN steps reach the internet, masqueraded, and nothing else: not the host, other builders, private or link-local hosts', async () => {
    const [a, b, c, e] = await Promise.all([
      start(natDriver, 'nat-a'),
      start(natDriver, 'nat-b'),
      start(plainDriver, 'plain-c'),
      start(allowDriver, 'allow-e')
    ]);
    expect((await fs.readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim()).toBe('1');

    // Our chains, jumped to from the built-in ones, hold the rules of A, B and E and nothing of C.
    let rules = await rules4();
    for (const { family, table, chain, parent } of NAT_CHAINS) {
      expect(await must(family === 6 ? IP6TABLES : IPTABLES, ['-w', '-t', table, '-S', parent])).toContain(`-A ${parent} -j ${chain}`);
    }
    const resolvers = dnsExceptions(await readNameservers());
    for (const x of [a, b, e]) {
      const tag = `-m comment --comment "buildcloud:${x.net.bridge}"`;
      expect(rules).toContain(`-A BUILDCLOUD-POSTROUTING -s ${x.net.subnet} ! -o ${x.net.bridge} ${tag} -j MASQUERADE`);
      expect(rules).toContain(`-A BUILDCLOUD-FORWARD -i ${x.net.bridge} -o bc+ ${tag} -j DROP`);
      expect(rules).toContain(`-A BUILDCLOUD-FORWARD -d 169.254.0.0/16 -i ${x.net.bridge} ${tag} -j DROP`);
      expect(rules).toContain(`-A BUILDCLOUD-INPUT -i ${x.net.bridge} ${tag} -j DROP`);
      for (const ns of resolvers) expect(rules).toContain(`-A BUILDCLOUD-FORWARD -d ${ns}/32 -i ${x.net.bridge} -p udp -m udp --dport 53 ${tag} -j ACCEPT`);
      // IPv6: off on the bridge (no fe80:: address to reach the host by), and dropped by ip6tables anyway.
      const rules6 = await must(IP6TABLES, ['-w', '-S']);
      for (const r of [`-A BUILDCLOUD-INPUT -i ${x.net.bridge}`, `-A BUILDCLOUD-FORWARD -i ${x.net.bridge}`, `-A BUILDCLOUD-FORWARD -o ${x.net.bridge}`]) {
        expect(rules6).toContain(`${r} ${tag} -j DROP`);
      }
    }
    for (const x of [a, b, c, e]) {
      expect((await fs.readFile(`/proc/sys/net/ipv6/conf/${x.net.bridge}/disable_ipv6`, 'utf8')).trim()).toBe('1');
      expect((await must(IP, ['-6', 'addr', 'show', 'dev', x.net.bridge])).trim()).toBe('');
    }
    expect(rules).toContain(`-A BUILDCLOUD-FORWARD -d ${lanNet} -i ${e.net.bridge} -m comment --comment "buildcloud:${e.net.bridge}" -j ACCEPT`);
    expect(rules).not.toContain(`-d ${lanNet} -i ${a.net.bridge}`);
    expect(await allRules()).not.toContain(c.net.bridge);
    expect(rules).not.toContain(c.net.subnet);

    // Something to reach on B's bridge: a container serving HTTP.
    const web = path.join(tmp, 'web');
    await makeBusyboxContext(web, 'RUN mkdir -p /www && echo from-b > /www/index.html\n');
    const built = await run(DOCKER, ['build', '-q', '-t', 'web', '.'], b.env, web);
    if (built.code !== 0) throw new Error(`build of the web image failed:\n${built.stderr.slice(-3000)}`);
    const cid = (await run(DOCKER, ['run', '-d', 'web', 'httpd', '-f', '-p', '8080', '-h', '/www'], b.env)).stdout.trim();
    const ipB = (await run(DOCKER, ['inspect', '-f', '{{.NetworkSettings.IPAddress}}', cid], b.env)).stdout.trim();
    const webB = url(ipB);
    await expect(httpGet(webB)).resolves.toBe('from-b\n'); // from the host it answers
    const inet = url(outside.inet.far);
    const lan = url(outside.lan.far);
    const ll = url(outside.ll.far);
    const hostVia = (x: Builder) => url(x.net.gateway, hostPort);
    await expect(httpGet(hostVia(a))).resolves.toBe('host-listener\n');

    const [fromA, fromB, fromC, fromE] = await Promise.all([
      probe(a, 'a', [inet, hostVia(a), hostVia(b), webB, lan, ll]),
      probe(b, 'b', [inet, hostVia(b), hostVia(a)]),
      probe(c, 'c', [inet, hostVia(c), hostVia(a)]),
      probe(e, 'e', [inet, lan, ll, hostVia(e)])
    ]);
    // Out through the host, seen with the host's address (masquerade), not the container's.
    for (const from of [fromA, fromB, fromE]) expect(from.get(inet)).toBe(`seen-from ${outside.inet.host}`);
    // Without our rules (C) a builder reaches the host's listener through its own gateway and through another
    // builder's: the listener answers builders. With them, neither.
    expect(fromC.get(hostVia(c))).toBe('host-listener');
    expect(fromC.get(hostVia(a))).toBe('host-listener');
    expect(fromA.get(hostVia(a))).toBeNull();
    expect(fromB.get(hostVia(b))).toBeNull();
    expect(fromA.get(hostVia(b))).toBeNull();
    expect(fromB.get(hostVia(a))).toBeNull();
    // Nor another builder's containers.
    expect(fromA.get(webB)).toBeNull();
    // A LAN host and a link-local host: reached by a builder whose operator allowed their ranges (E), so routing
    // would carry A there too; A is refused.
    expect(fromE.get(lan)).toBe(`lan seen-from ${outside.lan.host}`);
    expect(fromE.get(ll)).toBe(`link-local seen-from ${outside.ll.host}`);
    expect(fromA.get(lan)).toBeNull();
    expect(fromA.get(ll)).toBeNull();
    // An allowed range never opens the host itself.
    expect(fromE.get(hostVia(e))).toBeNull();
    // Without NAT the packets leave with the container's address, which the outside cannot answer.
    expect(fromC.get(inet)).toBeNull();

    await Promise.all([destroy(natDriver, a.handle), destroy(natDriver, b.handle), destroy(plainDriver, c.handle), destroy(allowDriver, e.handle)]);
    rules = await allRules();
    for (const x of [a, b, c, e]) {
      expect(rules).not.toContain(x.net.bridge);
      expect(rules).not.toContain(x.net.subnet);
    }
  });

  it('serve --builder-egress-allow opens that range to RUN steps of its builders, and only that range', async () => {
    const server = await startServer(['--builder-egress-allow', lanNet, '--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '1']);
    servers.push(server);
    const client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
    try {
      const lease = await client.provision({ pipelineKey: 'egress/1', jobId: 'build' });
      const env = dockerEnvFor(lease, path.join(tmp, 'lease'));
      // `docker network` is refused through a lease: the builder's bridge is in the control plane's state.
      const state = JSON.parse(await fs.readFile(path.join(server.stateDir, 'builders', lease.builders[0].builderId, 'state.json'), 'utf8'));
      const d: Builder = { env, net: { bridge: state.bridge, subnet: state.subnet, gateway: '' } };
      expect(await allRules()).toContain(`-A BUILDCLOUD-FORWARD -d ${lanNet} -i ${d.net.bridge} -m comment --comment "buildcloud:${d.net.bridge}" -j ACCEPT`);
      const [inet, lan, ll] = [url(outside.inet.far), url(outside.lan.far), url(outside.ll.far)];
      const fromD = await probe(d, 'd', [inet, lan, ll]);
      expect(fromD.get(inet)).toBe(`seen-from ${outside.inet.host}`);
      expect(fromD.get(lan)).toBe(`lan seen-from ${outside.lan.host}`);
      expect(fromD.get(ll)).toBeNull(); // not allowed on this server
      await client.release(lease.id);
    } finally {
      client.close();
    }
    expect(await server.stop()).toBe(0);
  });

  it('serve --no-builder-nat warns that RUN steps are not filtered; a bad --builder-egress-allow stops serve', async () => {
    const server = await startServer(['--no-builder-nat', '--builder-egress-allow', lanNet, '--warm-pool', '0']);
    servers.push(server);
    const code = await server.stop();
    if (code !== 0) throw new Error(`serve exited with ${code} (signal ${server.proc.signalCode}):\n${server.stderr()}`);
    expect(server.stderr()).toContain('no egress filtering');
    expect(server.stderr()).toContain('builder egress allow-list ignored');
    await expect(startServer(['--builder-egress-allow', '10.0.0.0/33', '--warm-pool', '0'])).rejects.toThrow(
      "Invalid --builder-egress-allow '10.0.0.0/33'. Expected an IPv4 CIDR such as 10.20.0.0/16."
    );
  });

  it('removes the rules of a builder whose control plane died, and rules of bridges that are gone', async () => {
    const first = new DockerdDriver({ rootDir: roots[2] });
    const d = await start(first, 'orphan-d');
    expect(await allRules()).toContain(`buildcloud:${d.net.bridge}`);
    process.kill(d.handle.pid!, 'SIGKILL');
    // Rules of ours whose bridge no longer exists (a teardown that failed half-way), IPv4 and IPv6.
    const gone = `bc${(0xa000000000 + process.pid).toString(16).slice(-10)}`;
    await must(IPTABLES, ['-w', '-A', 'BUILDCLOUD-FORWARD', '-i', gone, '-m', 'comment', '--comment', `buildcloud:${gone}`, '-j', 'ACCEPT']);
    await must(IP6TABLES, ['-w', '-A', 'BUILDCLOUD-INPUT', '-i', gone, '-m', 'comment', '--comment', `buildcloud:${gone}`, '-j', 'DROP']);

    const restarted = new DockerdDriver({ rootDir: roots[2] });
    expect(await restarted.cleanupOrphans()).toEqual(['orphan-d']);
    live.splice(
      live.findIndex((b) => b.handle === d.handle),
      1
    );
    const rules = await allRules();
    expect(rules).not.toContain(d.net.bridge);
    expect(rules).not.toContain(d.net.subnet);
    expect(rules).not.toContain(gone);
  });
});
