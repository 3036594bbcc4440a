// Outbound NAT and egress filtering of builder bridges, with iptables (and ip6tables) rules of our own.
import * as fs from 'node:fs';
import type { Logger } from '../log';
import type { BridgeLease } from './bridge';
import { BLOCKED_IPV4_RANGES, DEFAULT_RESOLV_CONF_PATHS, dnsExceptions, normalizeIpv4Cidr, readNameservers } from './builder-egress';
import { BLOCKED_IPV6_RANGES, type EngineEndpoint } from './engine-egress';
import { hostTool, linkExists, runCommand } from './host-tools';

// Builders' daemons run with --iptables=false (they must not rewrite a firewall all builders share), so the driver
// gives each bridge its own NAT and filter rules, in chains of ours, each rule tagged with the bridge's name:
// cleanup deletes exactly those rules and never looks at anybody else's. The chains and the jumps into them are
// shared by every control plane on the host and never removed (empty, they match nothing).
//
// The policy for RUN steps: out to the public internet only. Not the host (any of its addresses, so none of the
// control plane's listeners whatever --host says), not private, shared or link-local ranges (builder-egress.ts),
// not other builders; ranges the operator allows (--builder-egress-allow) and port 53 of the host's resolvers
// excepted. The builder's dockerd runs in the host's network namespace: its own traffic (pulls, pushes, ADD <url>)
// is held to the same policy by rules on OUTPUT that match its cgroup (engine-egress.ts), with the org-cache
// registry proxy and the host's resolvers as the only addresses of the host it reaches.
export const NAT_CHAINS = [
  { family: 4, table: 'nat', chain: 'BUILDCLOUD-POSTROUTING', parent: 'POSTROUTING' },
  { family: 4, table: 'filter', chain: 'BUILDCLOUD-FORWARD', parent: 'FORWARD' },
  { family: 4, table: 'filter', chain: 'BUILDCLOUD-INPUT', parent: 'INPUT' },
  { family: 6, table: 'filter', chain: 'BUILDCLOUD-FORWARD', parent: 'FORWARD' },
  { family: 6, table: 'filter', chain: 'BUILDCLOUD-INPUT', parent: 'INPUT' },
  { family: 4, table: 'filter', chain: 'BUILDCLOUD-OUTPUT', parent: 'OUTPUT' },
  { family: 6, table: 'filter', chain: 'BUILDCLOUD-OUTPUT', parent: 'OUTPUT' }
] as const;
type NatChain = (typeof NAT_CHAINS)[number];
type NatTable = NatChain['table'];
export type IpFamily = NatChain['family'];
export interface NatRule {
  family: IpFamily;
  table: NatTable;
  chain: string;
  spec: string[];
}
// Every builder bridge is named bc<10 hex digits>: `bc+` matches all of them, of every control plane.
const ALL_BUILDER_BRIDGES = 'bc+';
const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

export function natTag(bridge: string): string {
  return `buildcloud:${bridge}`;
}

export interface EgressPolicy {
  allow: readonly string[]; // IPv4 CIDRs RUN steps may reach although they are in a blocked range
  nameservers: readonly string[]; // the host's resolvers; those in a blocked range keep port 53 open
  // The engine's own traffic, matched by its cgroup (a path relative to the cgroup v2 root); absent: not filtered.
  engine?: { cgroup: string; endpoints: readonly EngineEndpoint[] };
}

// The rules of one builder, in the order they are appended (order matters within one builder only: every rule
// names this builder's bridge, so rules of other builders in between change nothing).
export function natRules(lease: BridgeLease, policy: EgressPolicy = { allow: [], nameservers: [] }): NatRule[] {
  const br = lease.name;
  const tag = ['-m', 'comment', '--comment', natTag(br)];
  const rule = (family: IpFamily, table: NatTable, chain: string, match: string[], target: string): NatRule => ({
    family,
    table,
    chain,
    spec: [...match, ...tag, '-j', target]
  });
  const POSTROUTING = 'BUILDCLOUD-POSTROUTING';
  const FORWARD = 'BUILDCLOUD-FORWARD';
  const INPUT = 'BUILDCLOUD-INPUT';
  return [
    // Outbound: the builder's subnet leaves the host with the host's address.
    rule(4, 'nat', POSTROUTING, ['-s', lease.subnet, '!', '-o', br], 'MASQUERADE'),
    // Within the bridge (seen here only when br_netfilter is loaded): as without us. The pool is in 10/8, so this
    // comes before the drops below.
    rule(4, 'filter', FORWARD, ['-i', br, '-o', br], 'ACCEPT'),
    // Never into another builder's bridge, of this control plane or another one, whatever the operator allows.
    rule(4, 'filter', FORWARD, ['-i', br, '-o', ALL_BUILDER_BRIDGES], 'DROP'),
    ...policy.allow.map((cidr) => rule(4, 'filter', FORWARD, ['-i', br, '-d', cidr], 'ACCEPT')),
    ...dnsExceptions([...policy.nameservers]).flatMap((ns) =>
      ['udp', 'tcp'].map((p) => rule(4, 'filter', FORWARD, ['-i', br, '-d', `${ns}/32`, '-p', p, '-m', p, '--dport', '53'], 'ACCEPT'))
    ),
    ...BLOCKED_IPV4_RANGES.map((range) => rule(4, 'filter', FORWARD, ['-i', br, '-d', range], 'DROP')),
    rule(4, 'filter', FORWARD, ['-i', br], 'ACCEPT'),
    rule(4, 'filter', FORWARD, ['-o', br, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED'], 'ACCEPT'),
    // No address of the host at all (every listener, on any interface, the gateway included): only replies to
    // connections the host opened into the builder.
    rule(4, 'filter', INPUT, ['-i', br, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED'], 'ACCEPT'),
    rule(4, 'filter', INPUT, ['-i', br], 'DROP'),
    // No IPv6 either way. The bridge has IPv6 turned off (BridgeAllocator); these hold if it is turned back on.
    rule(6, 'filter', INPUT, ['-i', br], 'DROP'),
    rule(6, 'filter', FORWARD, ['-i', br], 'DROP'),
    rule(6, 'filter', FORWARD, ['-o', br], 'DROP'),
    ...(policy.engine ? engineRules(policy.engine, policy, rule) : [])
  ];
}

// The engine's own connections: the endpoints of the host it needs, the host's resolvers (dockerd resolves with the
// host's resolv.conf, loopback resolvers included), the operator's allowed ranges; then no address of the host and
// no blocked range. What is left (the public internet) falls through to the host's own OUTPUT rules.
function engineRules(
  engine: NonNullable<EgressPolicy['engine']>,
  policy: EgressPolicy,
  rule: (family: IpFamily, table: NatTable, chain: string, match: string[], target: string) => NatRule
): NatRule[] {
  const OUTPUT = 'BUILDCLOUD-OUTPUT';
  const cg = ['-m', 'cgroup', '--path', engine.cgroup];
  const tcp = (dport: number | string) => ['-p', 'tcp', '-m', 'tcp', '--dport', String(dport)];
  return [
    ...engine.endpoints.map((e) => rule(4, 'filter', OUTPUT, [...cg, '-d', `${e.address}/32`, ...tcp(e.port)], 'ACCEPT')),
    ...policy.nameservers.flatMap((ns) =>
      ['udp', 'tcp'].map((p) => rule(4, 'filter', OUTPUT, [...cg, '-d', `${ns}/32`, '-p', p, '-m', p, '--dport', '53'], 'ACCEPT'))
    ),
    ...policy.allow.map((cidr) => rule(4, 'filter', OUTPUT, [...cg, '-d', cidr], 'ACCEPT')),
    // REJECT, not DROP: the engine's pull, push or ADD fails at once ("connection refused") instead of hanging.
    rule(4, 'filter', OUTPUT, [...cg, '-m', 'addrtype', '--dst-type', 'LOCAL'], 'REJECT'),
    ...BLOCKED_IPV4_RANGES.map((range) => rule(4, 'filter', OUTPUT, [...cg, '-d', range], 'REJECT')),
    rule(6, 'filter', OUTPUT, [...cg, '-m', 'addrtype', '--dst-type', 'LOCAL'], 'REJECT'),
    ...BLOCKED_IPV6_RANGES.map((range) => rule(6, 'filter', OUTPUT, [...cg, '-d', range], 'REJECT'))
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

export interface BuilderNatOptions {
  egressAllow?: readonly string[]; // IPv4 CIDRs, validated (serve --builder-egress-allow)
  resolvConfPaths?: readonly string[]; // where the host's resolvers are listed (tests give their own)
}

const TOOL: Record<IpFamily, string> = { 4: 'iptables', 6: 'ip6tables' };

export class BuilderNat {
  private available: Promise<boolean> | null = null;
  private available6: Promise<boolean> | null = null;
  private forwardingEnabled = false; // we turned IPv4 forwarding on: it stays on (other builders may need it)
  private readonly egressAllow: readonly string[];
  private readonly resolvConfPaths: readonly string[];

  constructor(
    private readonly log?: Logger,
    opts: BuilderNatOptions = {}
  ) {
    this.egressAllow = (opts.egressAllow ?? []).map((c) => {
      const n = normalizeIpv4Cidr(c);
      if (!n) throw new Error(`not an IPv4 CIDR for builder egress: ${c}`);
      return n;
    });
    this.resolvConfPaths = opts.resolvConfPaths ?? DEFAULT_RESOLV_CONF_PATHS;
  }

  private iptables(family: IpFamily, table: NatTable, args: string[]): Promise<string> {
    // -w: wait for the xtables lock, other control planes and builders change rules at the same time.
    return runCommand(hostTool(TOOL[family]), ['-w', '-t', table, ...args]);
  }

  // False (after one warning per instance) when the host has no iptables.
  isAvailable(): Promise<boolean> {
    this.available ??= runCommand(hostTool('iptables'), ['--version']).then(
      () => true,
      (err: Error) => {
        this.log?.warn(
          { err: err.message },
          'iptables not found: builders get no outbound NAT (RUN steps cannot reach the internet) and no egress filtering (RUN steps can reach the host). Install it: apt-get install iptables'
        );
        return false;
      }
    );
    return this.available;
  }

  // IPv6 rules need ip6tables and a kernel with IPv6. Without the kernel's IPv6 there is nothing to filter;
  // without ip6tables the builder bridges' disable_ipv6 is all there is (warned once).
  private isAvailable6(quiet = false): Promise<boolean> {
    if (!fs.existsSync('/proc/sys/net/ipv6')) return Promise.resolve(false);
    if (quiet && !this.available6)
      return runCommand(hostTool('ip6tables'), ['--version']).then(
        () => true,
        () => false
      );
    this.available6 ??= runCommand(hostTool('ip6tables'), ['--version']).then(
      () => true,
      (err: Error) => {
        this.log?.warn({ err: err.message }, 'ip6tables not found: builders are kept off IPv6 by turning it off on their bridges only');
        return false;
      }
    );
    return this.available6;
  }

  // The IP families whose rules we manage; [] without iptables.
  private async families(quiet: boolean): Promise<IpFamily[]> {
    if (!(await (quiet ? this.isAvailableQuiet() : this.isAvailable()))) return [];
    return (await this.isAvailable6(quiet)) ? [4, 6] : [4];
  }

  // Gives the builder on `lease` outbound NAT and its egress filter. False when iptables is missing; throws (having
  // removed what it added) when the rules cannot be set up.
  async add(lease: BridgeLease, engine?: EgressPolicy['engine']): Promise<boolean> {
    const families = await this.families(false);
    if (families.length === 0) return false;
    // Read at every builder's start: a DHCP renewal may have changed the host's resolvers since the last one.
    const nameservers = await readNameservers(this.resolvConfPaths);
    const rules = natRules(lease, { allow: this.egressAllow, nameservers, engine }).filter((r) => families.includes(r.family));
    return serialized(async () => {
      await this.enableForwarding();
      try {
        await this.ensureChains(families);
        for (const r of rules) await this.iptables(r.family, r.table, ['-A', r.chain, ...r.spec]);
      } catch (err) {
        await this.removeNow(lease.name, families).catch(() => undefined);
        throw new Error(
          `outbound NAT and egress rules for builder bridge ${lease.name}: ${(err as Error).message} (serve --no-builder-nat runs builders without them)`
        );
      }
      return true;
    });
  }

  // Deletes every rule tagged with `bridge` from our chains. Nothing to do (no iptables, no chains) is no error.
  async remove(bridge: string): Promise<void> {
    const families = await this.families(true);
    if (families.length === 0) return;
    await serialized(() => this.removeNow(bridge, families));
  }

  // Removes the rules of bridges that no longer exist (a teardown whose rule removal failed, bridges deleted by
  // hand) and returns those bridges. Safe with other control planes running: rules are added after their bridge
  // exists and removed before it is deleted, so a rule without its bridge is always stale.
  async removeStale(): Promise<string[]> {
    const families = await this.families(true);
    if (families.length === 0) return [];
    return serialized(async () => {
      const bridges = new Set<string>();
      for (const c of NAT_CHAINS.filter((x) => families.includes(x.family))) {
        for (const args of await this.listRules(c.family, c.table, c.chain)) {
          const tag = args[args.indexOf('--comment') + 1] ?? '';
          if (args.includes('--comment') && /^buildcloud:bc[0-9a-f]{10}$/.test(tag)) bridges.add(tag.slice('buildcloud:'.length));
        }
      }
      const stale: string[] = [];
      for (const b of bridges) if (!(await linkExists(b))) stale.push(b);
      for (const b of stale) await this.removeNow(b, families);
      return stale;
    });
  }

  // Without the warning: removal is also tried by drivers that never added rules.
  private async isAvailableQuiet(): Promise<boolean> {
    if (this.available) return this.available;
    return runCommand(hostTool('iptables'), ['--version']).then(
      () => true,
      () => false
    );
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

  private async ensureChains(families: IpFamily[]): Promise<void> {
    for (const c of NAT_CHAINS.filter((x) => families.includes(x.family))) {
      try {
        await this.iptables(c.family, c.table, ['-N', c.chain]);
      } catch (err) {
        if (!/already exists/i.test((err as Error).message)) throw err;
      }
      const jump = ['-j', c.chain];
      try {
        await this.iptables(c.family, c.table, ['-C', c.parent, ...jump]);
      } catch {
        // First in the parent chain: the host's own DROP rules or policy must not decide for our bridges first.
        await this.iptables(c.family, c.table, ['-I', c.parent, '1', ...jump]);
      }
    }
  }

  private async listRules(family: IpFamily, table: NatTable, chain: string): Promise<string[][]> {
    let out: string;
    try {
      out = await this.iptables(family, table, ['-S', chain]);
    } catch {
      return []; // no such chain: nothing of ours here
    }
    return out
      .split('\n')
      .filter((l) => l.startsWith(`-A ${chain} `))
      .map((l) => splitRule(l).slice(2));
  }

  private async removeNow(bridge: string, families: IpFamily[]): Promise<void> {
    const tag = natTag(bridge);
    for (const c of NAT_CHAINS.filter((x) => families.includes(x.family))) {
      const ours = (await this.listRules(c.family, c.table, c.chain)).filter((args) => args.some((a, i) => a === tag && args[i - 1] === '--comment'));
      for (const args of ours) {
        try {
          await this.iptables(c.family, c.table, ['-D', c.chain, ...args]);
        } catch (err) {
          // Gone already (a concurrent cleanup of the same bridge) is fine; still there is not.
          const left = await this.listRules(c.family, c.table, c.chain);
          if (left.some((a) => a.join('\0') === args.join('\0'))) throw err;
        }
      }
    }
  }
}
