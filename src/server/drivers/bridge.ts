// One Linux bridge per builder daemon. Every builder then runs BuildKit RUN steps on the same kind of network
// (a bridge, never host), so cache keys match across builders, and a user's plain `docker build` needs no
// --network flag. Daemons must not share docker0: each would rewrite it and leave state behind.
import * as fs from 'node:fs';
import type { Logger } from '../log';
import { hostTool, linkExists, runCommand } from './host-tools';
import { intToIp, overlaps, parseCidr, poolSubnets, type Net } from './subnets';

export const DEFAULT_SUBNET_POOL = '10.213.0.0/16';

export interface BridgeLease {
  name: string;
  subnet: string; // e.g. 10.213.7.0/24
  gateway: string; // the bridge's own address, e.g. 10.213.7.1
}

// Subnets handed out by this process and not yet released. Shared by every allocator of the process, because
// `ip addr add` happily puts one subnet on two bridges and tests run several control planes in one process.
const inFlight = new Set<number>();

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

export class BridgeAllocator {
  private readonly subnets: number[];

  constructor(
    pool: string = DEFAULT_SUBNET_POOL,
    private readonly log?: Logger
  ) {
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
      await this.disableIpv6(name);
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

  // Before the link is up, so the bridge never gets its IPv6 link-local (fe80::) address: through it a RUN step
  // could reach host services bound to `::`, which no IPv4 rule sees. Builders are IPv4 only. BuilderNat adds
  // ip6tables drops as well, for a host where something turns IPv6 back on (a sysctl.d reload, a network manager).
  private async disableIpv6(name: string): Promise<void> {
    const file = `/proc/sys/net/ipv6/conf/${name}/disable_ipv6`;
    try {
      await fs.promises.writeFile(file, '1\n');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // a kernel without IPv6: nothing to turn off
      throw new Error(`cannot turn IPv6 off on builder bridge ${name} (${file}): ${(err as Error).message}`);
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
