// IPv4 subnet arithmetic for builder bridges: addresses as unsigned 32-bit integers, CIDRs as (base, size), and
// the /24s of the builder subnet pool. Pure; bridge.ts puts the subnets on links.

/** An IPv4 network: its address as an unsigned 32-bit int and its number of addresses. */
export interface Net {
  base: number; // network address as an unsigned 32-bit int
  size: number; // number of addresses
}

/** `10.213.7.1` → its unsigned 32-bit value. Throws for anything that is not a dotted-quad IPv4 address. */
export function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${ip}`);
  }
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

/** An unsigned 32-bit value → its dotted-quad IPv4 address. */
export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** `a.b.c.d/n` → the network it names (host bits cleared). Throws for a prefix outside 0..32 or a bad address. */
export function parseCidr(cidr: string): Net {
  const [ip, bits] = cidr.split('/');
  const prefix = Number(bits);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new Error(`bad CIDR: ${cidr}`);
  const size = 2 ** (32 - prefix);
  return { base: ipToInt(ip) - (ipToInt(ip) % size), size };
}

/** The /24s of the pool as network addresses, e.g. 10.213.0.0/16 gives 256 of them. Throws for a pool under a /24. */
export function poolSubnets(pool: string): number[] {
  const net = parseCidr(pool);
  if (net.size < 256) throw new Error(`subnet pool ${pool} is smaller than a /24`);
  const out: number[] = [];
  for (let b = net.base; b < net.base + net.size; b += 256) out.push(b);
  return out;
}

/** Whether two networks share an address. */
export function overlaps(a: Net, b: Net): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}
