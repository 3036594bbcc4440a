// What builders' RUN steps may reach: the public internet, nothing else by default. A RUN step runs whatever a
// Dockerfile says, so it must not see the host, the operator's private networks, the cloud metadata service or
// other builders. Pure policy here; BuilderNat (bridge.ts) turns it into iptables rules.
import * as fs from 'node:fs';

// Destinations a RUN step never reaches unless an operator allows a range (--builder-egress-allow): the ranges of
// the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and its updates) where something of the host, of the
// operator's networks or of the cloud provider can live. Left out: the documentation ranges (192.0.2.0/24,
// 198.51.100.0/24, 203.0.113.0/24, RFC 5737) and the deprecated 6to4 relay anycast (192.88.99.0/24).
export const BLOCKED_IPV4_RANGES: readonly string[] = [
  '0.0.0.0/8', // "this network" (RFC 791)
  // Private (RFC 1918). The builder subnet pool (10.213.0.0/16 by default) lies in it too: traffic inside a
  // builder's own bridge is accepted before these drops, other builders' bridges are dropped before them.
  '10.0.0.0/8',
  '100.64.0.0/10', // shared address space, carrier-grade NAT (RFC 6598): cloud VPCs use it
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local (RFC 3927): the cloud metadata service 169.254.169.254 and cloud resolvers
  '172.16.0.0/12', // private (RFC 1918)
  '192.0.0.0/24', // IETF protocol assignments (RFC 6890)
  '192.168.0.0/16', // private (RFC 1918)
  '198.18.0.0/15', // benchmarking (RFC 2544): used as a private range in practice
  '224.0.0.0/4', // multicast (RFC 5771)
  '240.0.0.0/4' // reserved (RFC 1112), with the limited broadcast 255.255.255.255
];

// Where the host's resolvers are listed. Docker gives a RUN step the host's /etc/resolv.conf, or on a host with
// systemd-resolved (127.0.0.53 only) the upstream list in /run/systemd/resolve/resolv.conf. Reading both only ever
// allows port 53 of resolvers the host itself uses.
export const DEFAULT_RESOLV_CONF_PATHS: readonly string[] = ['/etc/resolv.conf', '/run/systemd/resolve/resolv.conf'];

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIpv4(s: string): number | null {
  const m = IPV4.exec(s);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return null;
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

// "10.20.0.0/16" → { base, prefix }, the base masked to the prefix (iptables does the same with 10.20.3.4/16).
export function parseIpv4Cidr(s: string): { base: number; prefix: number } | null {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s.trim());
  if (!m) return null;
  const ip = parseIpv4(m[1]);
  const prefix = Number(m[2]);
  if (ip === null || prefix > 32) return null;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { base: (ip & mask) >>> 0, prefix };
}

// The CIDR as iptables prints it (network address), or null when it is not an IPv4 CIDR.
export function normalizeIpv4Cidr(s: string): string | null {
  const c = parseIpv4Cidr(s);
  return c ? `${formatIpv4(c.base)}/${c.prefix}` : null;
}

function inCidr(ip: number, cidr: string): boolean {
  const c = parseIpv4Cidr(cidr)!;
  const size = 2 ** (32 - c.prefix);
  return ip >= c.base && ip < c.base + size;
}

export function isBlocked(ip: string): boolean {
  const n = parseIpv4(ip);
  return n !== null && BLOCKED_IPV4_RANGES.some((r) => inCidr(n, r));
}

// The IPv4 `nameserver` lines of a resolv.conf (builders have no IPv6, so IPv6 resolvers are of no use to them).
export function parseNameservers(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && parseIpv4(m[1]) !== null && !out.includes(m[1])) out.push(m[1]);
  }
  return out;
}

// Resolvers a RUN step must reach on port 53 although they lie in a blocked range. On cloud VMs the resolver is
// usually private (the VPC's .2) or link-local (169.254.169.253 on AWS, 169.254.169.254 on GCP): without these
// exceptions every `apt-get` or `npm install` in a RUN step fails to resolve. Only port 53 opens, so a resolver
// that is also the metadata service still keeps its HTTP port closed. Loopback resolvers are left out: Docker
// never gives them to containers (it replaces them with public ones).
export function dnsExceptions(nameservers: string[]): string[] {
  return nameservers.filter((ns) => isBlocked(ns) && !inCidr(parseIpv4(ns)!, '127.0.0.0/8'));
}

// The host's IPv4 resolvers, from every file of `paths` that exists.
export async function readNameservers(paths: readonly string[] = DEFAULT_RESOLV_CONF_PATHS): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    let text: string;
    try {
      text = await fs.promises.readFile(p, 'utf8');
    } catch {
      continue; // no such file: this host does not use it
    }
    for (const ns of parseNameservers(text)) if (!out.includes(ns)) out.push(ns);
  }
  return out;
}
