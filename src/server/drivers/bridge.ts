// One Linux bridge per builder daemon. Every builder then runs BuildKit RUN steps on the same kind of network
// (a bridge, never host), so cache keys match across builders, and a user's plain `docker build` needs no
// --network flag. Daemons must not share docker0: each would rewrite it and leave state behind.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import type { Logger } from '../../common/log';

export const DEFAULT_SUBNET_POOL = '10.213.0.0/16';

export interface BridgeLease {
  name: string;
  subnet: string; // e.g. 10.213.7.0/24
  gateway: string; // the bridge's own address, e.g. 10.213.7.1
}

interface Net {
  base: number; // network address as an unsigned 32-bit int
  size: number; // number of addresses
}

// Subnets handed out by this process and not yet released. Shared by every allocator of the process, because
// `ip addr add` happily puts one subnet on two bridges and tests run several control planes in one process.
const inFlight = new Set<number>();

// System tools by absolute path when we can find them: a service's PATH often lacks /usr/sbin, where `ip` lives.
const toolPaths = new Map<string, string>();
export function hostTool(name: string): string {
  let p = toolPaths.get(name);
  if (!p) {
    p = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].map((d) => `${d}/${name}`).find((c) => fs.existsSync(c)) ?? name;
    toolPaths.set(name, p);
  }
  return p;
}

export function runCommand(file: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${ip}`);
  }
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function parseCidr(cidr: string): Net {
  const [ip, bits] = cidr.split('/');
  const prefix = Number(bits);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new Error(`bad CIDR: ${cidr}`);
  const size = 2 ** (32 - prefix);
  return { base: ipToInt(ip) - (ipToInt(ip) % size), size };
}

// The /24s of the pool, e.g. 10.213.0.0/16 gives 256 of them.
export function poolSubnets(pool: string): number[] {
  const net = parseCidr(pool);
  if (net.size < 256) throw new Error(`subnet pool ${pool} is smaller than a /24`);
  const out: number[] = [];
  for (let b = net.base; b < net.base + net.size; b += 256) out.push(b);
  return out;
}

function overlaps(a: Net, b: Net): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}

interface HostAddr {
  ifname: string;
  net: Net;
}

async function hostAddrs(): Promise<HostAddr[]> {
  const links = JSON.parse(await runCommand(hostTool('ip'), ['-j', '-4', 'addr', 'show'])) as Array<{
    ifname: string;
    addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
  }>;
  const out: HostAddr[] = [];
  for (const l of links) {
    for (const a of l.addr_info ?? []) {
      if (a.family === 'inet') out.push({ ifname: l.ifname, net: parseCidr(`${a.local}/${a.prefixlen}`) });
    }
  }
  return out;
}

export async function linkExists(name: string): Promise<boolean> {
  try {
    await runCommand(hostTool('ip'), ['link', 'show', 'dev', name]);
    return true;
  } catch {
    return false;
  }
}

export class BridgeAllocator {
  private readonly subnets: number[];

  constructor(pool: string = DEFAULT_SUBNET_POOL, private readonly log?: Logger) {
    this.subnets = poolSubnets(pool);
  }

  // Creates bridge `name` with a free /24 of the pool. Another control plane on this host may pick the same
  // subnet at the same moment: after assigning, check no other interface holds it, and move on if one does.
  async create(name: string): Promise<BridgeLease> {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new Error(`invalid bridge name: ${name}`);
    if (await linkExists(name)) await this.remove(name); // a leftover of a crashed builder with the same id
    await runCommand(hostTool('ip'), ['link', 'add', 'name', name, 'type', 'bridge']);
    const tried: number[] = []; // reserved in inFlight while we work, so this loop never picks one twice
    let chosen: number | null = null;
    try {
      for (let attempt = 0; attempt < 8 && chosen === null; attempt++) {
        const used = (await hostAddrs()).map((a) => a.net);
        const free = this.subnets.filter((s) => !inFlight.has(s) && !used.some((u) => overlaps(u, { base: s, size: 256 })));
        if (free.length === 0) throw new Error(`no free /24 left in the builder subnet pool (${this.subnets.length} in it)`);
        // Random, not first-free: two control planes allocating at once rarely pick the same one.
        const base = free[Math.floor(Math.random() * free.length)];
        inFlight.add(base);
        tried.push(base);
        await runCommand(hostTool('ip'), ['addr', 'add', `${intToIp(base + 1)}/24`, 'dev', name]);
        const clash = (await hostAddrs()).some((a) => a.ifname !== name && overlaps(a.net, { base, size: 256 }));
        if (clash) {
          this.log?.warn({ bridge: name, subnet: `${intToIp(base)}/24` }, 'subnet taken concurrently, trying another');
          await runCommand(hostTool('ip'), ['addr', 'flush', 'dev', name]);
        } else {
          chosen = base;
        }
      }
      if (chosen === null) throw new Error('could not find a free subnet for the builder bridge');
      await runCommand(hostTool('ip'), ['link', 'set', 'dev', name, 'up']);
      return { name, subnet: `${intToIp(chosen)}/24`, gateway: intToIp(chosen + 1) };
    } catch (err) {
      chosen = null;
      await this.remove(name).catch(() => undefined);
      throw err;
    } finally {
      for (const t of tried) if (t !== chosen) inFlight.delete(t);
    }
  }

  // Never throws for a bridge that is already gone.
  async remove(name: string, subnet?: string): Promise<void> {
    try {
      await runCommand(hostTool('ip'), ['link', 'del', 'dev', name]);
    } catch (err) {
      if (await linkExists(name)) throw err;
    }
    if (subnet) inFlight.delete(parseCidr(subnet).base);
  }
}

// ---- outbound NAT ---------------------------------------------------------------------------------------------
// Builders' daemons run with --iptables=false (they must not rewrite a firewall all builders share), so the driver
// gives each bridge its own NAT and forwarding rules, in chains of ours, each rule tagged with the bridge's name:
// cleanup deletes exactly those rules and never looks at anybody else's. The chains and the jumps into them are
// shared by every control plane on the host and never removed (empty, they match nothing).
export const NAT_CHAINS = [
  { table: 'nat', chain: 'BUILDCLOUD-POSTROUTING', parent: 'POSTROUTING' },
  { table: 'filter', chain: 'BUILDCLOUD-FORWARD', parent: 'FORWARD' },
  { table: 'filter', chain: 'BUILDCLOUD-INPUT', parent: 'INPUT' },
] as const;
type NatTable = (typeof NAT_CHAINS)[number]['table'];
// Every builder bridge is named bc<10 hex digits>: `bc+` matches all of them, of every control plane.
const ALL_BUILDER_BRIDGES = 'bc+';
const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

export function natTag(bridge: string): string {
  return `buildcloud:${bridge}`;
}

// The rules of one builder, in the order they are appended (order matters within one builder only: every rule
// names this builder's bridge or gateway, so rules of other builders in between change nothing).
export function natRules(lease: BridgeLease): Array<{ table: NatTable; chain: string; spec: string[] }> {
  const br = lease.name;
  const tag = ['-m', 'comment', '--comment', natTag(br)];
  const [nat, forward, input] = NAT_CHAINS.map((c) => c.chain);
  return [
    // Outbound: the builder's subnet leaves the host with the host's address.
    { table: 'nat', chain: nat, spec: ['-s', lease.subnet, '!', '-o', br, ...tag, '-j', 'MASQUERADE'] },
    // Within the bridge (seen here only when br_netfilter is loaded): as without us.
    { table: 'filter', chain: forward, spec: ['-i', br, '-o', br, ...tag, '-j', 'ACCEPT'] },
    // Never into another builder's bridge, of this control plane or another one.
    { table: 'filter', chain: forward, spec: ['-i', br, '-o', ALL_BUILDER_BRIDGES, ...tag, '-j', 'DROP'] },
    { table: 'filter', chain: forward, spec: ['-i', br, ...tag, '-j', 'ACCEPT'] },
    { table: 'filter', chain: forward, spec: ['-o', br, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', ...tag, '-j', 'ACCEPT'] },
    // The host's address on this bridge answers this builder only, not the other builders (RETURN: the host's
    // own INPUT rules still apply).
    { table: 'filter', chain: input, spec: ['-i', br, '-d', `${lease.gateway}/32`, ...tag, '-j', 'RETURN'] },
    { table: 'filter', chain: input, spec: ['-i', ALL_BUILDER_BRIDGES, '-d', `${lease.gateway}/32`, ...tag, '-j', 'DROP'] },
  ];
}

// `iptables -S` prints a rule as arguments, quoting those with special characters (our comments).
export function splitRule(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]);
  return out;
}

// One NAT operation at a time in this process, so the checks for our chains and jumps never race each other.
// Two control planes setting up the very first builder at the same moment can at worst add a jump twice, which
// changes nothing (every rule of our chains decides or returns).
let natQueue: Promise<unknown> = Promise.resolve();
function serialized<T>(fn: () => Promise<T>): Promise<T> {
  const run = natQueue.then(fn, fn);
  natQueue = run.catch(() => undefined);
  return run;
}

export class BuilderNat {
  private available: Promise<boolean> | null = null;
  private forwardingEnabled = false; // we turned IPv4 forwarding on: it stays on (other builders may need it)

  constructor(private readonly log?: Logger) {}

  private iptables(table: NatTable, args: string[]): Promise<string> {
    // -w: wait for the xtables lock, other control planes and builders change rules at the same time.
    return runCommand(hostTool('iptables'), ['-w', '-t', table, ...args]);
  }

  // False (after one warning per instance) when the host has no iptables.
  isAvailable(): Promise<boolean> {
    this.available ??= runCommand(hostTool('iptables'), ['--version']).then(
      () => true,
      (err: Error) => {
        this.log?.warn({ err: err.message }, 'iptables not found: builders get no outbound NAT (RUN steps cannot reach the internet). Install it: apt-get install iptables');
        return false;
      },
    );
    return this.available;
  }

  // Gives the builder on `lease` outbound NAT. False when iptables is missing; throws (having removed what it
  // added) when the rules cannot be set up.
  async add(lease: BridgeLease): Promise<boolean> {
    if (!(await this.isAvailable())) return false;
    return serialized(async () => {
      await this.enableForwarding();
      try {
        await this.ensureChains();
        for (const r of natRules(lease)) await this.iptables(r.table, ['-A', r.chain, ...r.spec]);
      } catch (err) {
        await this.removeNow(lease.name).catch(() => undefined);
        throw new Error(`outbound NAT for builder bridge ${lease.name}: ${(err as Error).message} (serve --no-builder-nat runs builders without it)`);
      }
      return true;
    });
  }

  // Deletes every rule tagged with `bridge` from our chains. Nothing to do (no iptables, no chains) is no error.
  async remove(bridge: string): Promise<void> {
    if (!(await this.isAvailableQuiet())) return;
    await serialized(() => this.removeNow(bridge));
  }

  // Removes the rules of bridges that no longer exist (a teardown whose rule removal failed, bridges deleted by
  // hand) and returns those bridges. Safe with other control planes running: rules are added after their bridge
  // exists and removed before it is deleted, so a rule without its bridge is always stale.
  async removeStale(): Promise<string[]> {
    if (!(await this.isAvailableQuiet())) return [];
    return serialized(async () => {
      const bridges = new Set<string>();
      for (const c of NAT_CHAINS) for (const args of await this.listRules(c.table, c.chain)) {
        const tag = args[args.indexOf('--comment') + 1] ?? '';
        if (args.includes('--comment') && /^buildcloud:bc[0-9a-f]{10}$/.test(tag)) bridges.add(tag.slice('buildcloud:'.length));
      }
      const stale: string[] = [];
      for (const b of bridges) if (!(await linkExists(b))) stale.push(b);
      for (const b of stale) await this.removeNow(b);
      return stale;
    });
  }

  // Without the warning: removal is also tried by drivers that never added rules.
  private async isAvailableQuiet(): Promise<boolean> {
    if (this.available) return this.available;
    return runCommand(hostTool('iptables'), ['--version']).then(() => true, () => false);
  }

  private async enableForwarding(): Promise<void> {
    let current: string;
    try {
      current = (await fs.promises.readFile(IP_FORWARD, 'utf8')).trim();
    } catch (err) {
      throw new Error(`cannot read ${IP_FORWARD}: ${(err as Error).message}`);
    }
    if (current === '1') return;
    // Only ever turned on, never back off: builders of other control planes (or anything else on the host) may
    // rely on it by now.
    await fs.promises.writeFile(IP_FORWARD, '1\n');
    this.forwardingEnabled = true;
    this.log?.warn({ file: IP_FORWARD }, 'enabled IPv4 forwarding for builder NAT; it stays on after the control plane stops');
  }

  get enabledForwarding(): boolean {
    return this.forwardingEnabled;
  }

  private async ensureChains(): Promise<void> {
    for (const c of NAT_CHAINS) {
      try {
        await this.iptables(c.table, ['-N', c.chain]);
      } catch (err) {
        if (!/already exists/i.test((err as Error).message)) throw err;
      }
      const jump = ['-j', c.chain];
      try {
        await this.iptables(c.table, ['-C', c.parent, ...jump]);
      } catch {
        // First in the parent chain: the host's own DROP rules or policy must not decide for our bridges first.
        await this.iptables(c.table, ['-I', c.parent, '1', ...jump]);
      }
    }
  }

  private async listRules(table: NatTable, chain: string): Promise<string[][]> {
    let out: string;
    try {
      out = await this.iptables(table, ['-S', chain]);
    } catch {
      return []; // no such chain: nothing of ours here
    }
    return out
      .split('\n')
      .filter((l) => l.startsWith(`-A ${chain} `))
      .map((l) => splitRule(l).slice(2));
  }

  private async removeNow(bridge: string): Promise<void> {
    const tag = natTag(bridge);
    for (const c of NAT_CHAINS) {
      const ours = (await this.listRules(c.table, c.chain)).filter((args) => args.some((a, i) => a === tag && args[i - 1] === '--comment'));
      for (const args of ours) {
        try {
          await this.iptables(c.table, ['-D', c.chain, ...args]);
        } catch (err) {
          // Gone already (a concurrent cleanup of the same bridge) is fine; still there is not.
          const left = await this.listRules(c.table, c.chain);
          if (left.some((a) => a.join('\0') === args.join('\0'))) throw err;
        }
      }
    }
  }
}
