// Builders' egress policy: the iptables rules of one builder (allowed ranges before the drops, DNS exceptions for
// the host's private resolvers, every blocked range, tags), resolv.conf parsing and the --builder-egress-allow flag.
import { Command } from 'commander';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { BridgeLease } from '../../src/server/drivers/bridge';
import { BuilderNat, natRules, natTag, NAT_CHAINS, type NatRule } from '../../src/server/drivers/builder-nat';
import { cgroup2Mount } from '../../src/server/drivers/engine-egress';
import { BLOCKED_IPV4_RANGES, dnsExceptions, normalizeIpv4Cidr, parseNameservers, readNameservers } from '../../src/server/drivers/builder-egress';
import { ConfigError, parseEgressAllow, type ServerConfig } from '../../src/server/config';

const started: ServerConfig[] = [];
jest.mock('../../src/server/server', () => ({
  startServer: async (config: ServerConfig) => {
    started.push(config);
    throw new Error('not starting in a unit test');
  }
}));
import { registerServe } from '../../src/cli/serve';

const lease: BridgeLease = { name: 'bc0123456789', subnet: '10.213.7.0/24', gateway: '10.213.7.1' };
const TAG = ['-m', 'comment', '--comment', 'buildcloud:bc0123456789'];

// A rule as `iptables -S` would start it, without the tag, to compare lists readably.
function show(r: NatRule): string {
  const spec = [...r.spec];
  const at = spec.findIndex((a, i) => a === '-m' && spec[i + 1] === 'comment');
  expect(spec.slice(at, at + 4)).toEqual(TAG); // every rule carries the builder's tag
  spec.splice(at, 4);
  return `${r.family === 6 ? 'ip6' : 'ip'}tables -t ${r.table} -A ${r.chain} ${spec.join(' ')}`;
}

const FWD = 'iptables -t filter -A BUILDCLOUD-FORWARD';
const DROPS = BLOCKED_IPV4_RANGES.map((r) => `${FWD} -i bc0123456789 -d ${r} -j DROP`);
const HEAD = [
  'iptables -t nat -A BUILDCLOUD-POSTROUTING -s 10.213.7.0/24 ! -o bc0123456789 -j MASQUERADE',
  `${FWD} -i bc0123456789 -o bc0123456789 -j ACCEPT`,
  `${FWD} -i bc0123456789 -o bc+ -j DROP`
];
const TAIL = [
  `${FWD} -i bc0123456789 -j ACCEPT`,
  `${FWD} -o bc0123456789 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
  'iptables -t filter -A BUILDCLOUD-INPUT -i bc0123456789 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
  'iptables -t filter -A BUILDCLOUD-INPUT -i bc0123456789 -j DROP',
  'ip6tables -t filter -A BUILDCLOUD-INPUT -i bc0123456789 -j DROP',
  'ip6tables -t filter -A BUILDCLOUD-FORWARD -i bc0123456789 -j DROP',
  'ip6tables -t filter -A BUILDCLOUD-FORWARD -o bc0123456789 -j DROP'
];
const dns = (ns: string) => ['udp', 'tcp'].map((p) => `${FWD} -i bc0123456789 -d ${ns}/32 -p ${p} -m ${p} --dport 53 -j ACCEPT`);

describe('natRules', () => {
  test.each<[string, { allow: string[]; nameservers: string[] }, string[]]>([
    ['no allow-list, public resolvers only: nothing opened', { allow: [], nameservers: ['1.1.1.1', '8.8.8.8'] }, [...HEAD, ...DROPS, ...TAIL]],
    [
      'allowed ranges, in the order given, after the other-builders drop and before the range drops',
      { allow: ['10.199.3.0/24', '192.168.50.0/23'], nameservers: [] },
      [...HEAD, `${FWD} -i bc0123456789 -d 10.199.3.0/24 -j ACCEPT`, `${FWD} -i bc0123456789 -d 192.168.50.0/23 -j ACCEPT`, ...DROPS, ...TAIL]
    ],
    [
      'port 53 of private and link-local resolvers (cloud VPC, GCP metadata), not of public or loopback ones',
      { allow: [], nameservers: ['10.0.0.2', '8.8.8.8', '127.0.0.53', '169.254.169.254'] },
      [...HEAD, ...dns('10.0.0.2'), ...dns('169.254.169.254'), ...DROPS, ...TAIL]
    ],
    [
      'allowed ranges before the DNS exceptions',
      { allow: ['100.64.0.0/10'], nameservers: ['100.100.100.100'] },
      [...HEAD, `${FWD} -i bc0123456789 -d 100.64.0.0/10 -j ACCEPT`, ...dns('100.100.100.100'), ...DROPS, ...TAIL]
    ]
  ])('%s', (_name, policy, expected) => {
    expect(natRules(lease, policy).map(show)).toEqual(expected);
  });

  test("the engine's own traffic: the registry proxy, every resolver (loopback too), allowed ranges; then no address of the host and no blocked range, refused at once", () => {
    const engine = { cgroup: 'buildcloud/bc0123456789', endpoints: [{ address: '127.0.0.1', port: 7645 }] };
    const out = natRules(lease, { allow: ['10.1.0.0/16'], nameservers: ['127.0.0.53', '10.0.0.2'], engine });
    // The bridge's rules come first and are what they are without an engine.
    expect(out.filter((r) => r.chain !== 'BUILDCLOUD-OUTPUT')).toEqual(natRules(lease, { allow: ['10.1.0.0/16'], nameservers: ['127.0.0.53', '10.0.0.2'] }));
    const OUT = 'iptables -t filter -A BUILDCLOUD-OUTPUT -m cgroup --path buildcloud/bc0123456789';
    const OUT6 = 'ip6tables -t filter -A BUILDCLOUD-OUTPUT -m cgroup --path buildcloud/bc0123456789';
    const resolver = (ns: string) => ['udp', 'tcp'].map((p) => `${OUT} -d ${ns}/32 -p ${p} -m ${p} --dport 53 -j ACCEPT`);
    expect(out.filter((r) => r.chain === 'BUILDCLOUD-OUTPUT').map(show)).toEqual([
      `${OUT} -d 127.0.0.1/32 -p tcp -m tcp --dport 7645 -j ACCEPT`,
      ...resolver('127.0.0.53'),
      ...resolver('10.0.0.2'),
      `${OUT} -d 10.1.0.0/16 -j ACCEPT`,
      `${OUT} -m addrtype --dst-type LOCAL -j REJECT`,
      ...BLOCKED_IPV4_RANGES.map((r) => `${OUT} -d ${r} -j REJECT`),
      `${OUT6} -m addrtype --dst-type LOCAL -j REJECT`,
      ...['fe80::/10', 'fc00::/7', 'ff00::/8', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48'].map((r) => `${OUT6} -d ${r} -j REJECT`)
    ]);
  });

  test('every private, shared, loopback, link-local, multicast and reserved IPv4 range is dropped', () => {
    expect(BLOCKED_IPV4_RANGES).toEqual([
      '0.0.0.0/8',
      '10.0.0.0/8',
      '100.64.0.0/10',
      '127.0.0.0/8',
      '169.254.0.0/16',
      '172.16.0.0/12',
      '192.0.0.0/24',
      '192.168.0.0/16',
      '198.18.0.0/15',
      '224.0.0.0/4',
      '240.0.0.0/4'
    ]);
  });

  test('no rule lets the builder into the host: INPUT from its bridge ends in DROP, with no exception but replies', () => {
    const input = natRules(lease, { allow: ['0.0.0.0/0'], nameservers: ['10.213.7.1'] }).filter((r) => r.chain === 'BUILDCLOUD-INPUT');
    expect(input.map(show)).toEqual(TAIL.filter((l) => l.includes('INPUT')));
  });

  test('every rule is in a chain of ours and names this builder bridge', () => {
    const chains = new Set(NAT_CHAINS.map((c) => `${c.family} ${c.table} ${c.chain}`));
    for (const r of natRules(lease, { allow: ['10.1.0.0/16'], nameservers: ['10.0.0.2'] })) {
      expect(chains).toContain(`${r.family} ${r.table} ${r.chain}`);
      expect(r.spec).toContain(lease.name);
      expect(r.spec[r.spec.indexOf('--comment') + 1]).toBe(natTag(lease.name));
    }
  });
});

describe('resolvers', () => {
  test('IPv4 nameserver lines only, first occurrence kept', () => {
    const text =
      '# generated\nsearch example.internal\nnameserver 10.0.0.2\nnameserver fd00::53\n;nameserver 9.9.9.9\n  nameserver 8.8.8.8 \nnameserver 10.0.0.2\noptions ndots:1\n';
    expect(parseNameservers(text)).toEqual(['10.0.0.2', '8.8.8.8']);
  });

  test.each<[string[], string[]]>([
    [['8.8.8.8', '1.1.1.1'], []],
    [['10.0.0.2'], ['10.0.0.2']],
    [
      ['172.31.0.2', '192.168.1.1', '100.100.100.100', '169.254.169.253'],
      ['172.31.0.2', '192.168.1.1', '100.100.100.100', '169.254.169.253']
    ],
    [['127.0.0.53', '127.0.0.11'], []] // Docker replaces loopback resolvers: nothing to open
  ])('DNS exceptions for %j: %j', (nameservers, expected) => {
    expect(dnsExceptions(nameservers)).toEqual(expected);
  });

  test('read from every file that exists, missing ones ignored', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-resolv-'));
    try {
      fs.writeFileSync(path.join(dir, 'a'), 'nameserver 127.0.0.53\n');
      fs.writeFileSync(path.join(dir, 'b'), 'nameserver 10.0.0.2\nnameserver 127.0.0.53\n');
      expect(await readNameservers([path.join(dir, 'a'), path.join(dir, 'missing'), path.join(dir, 'b')])).toEqual(['127.0.0.53', '10.0.0.2']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('--builder-egress-allow', () => {
  test.each<[string, string | null]>([
    ['10.20.0.0/16', '10.20.0.0/16'],
    ['10.20.3.4/16', '10.20.0.0/16'], // as iptables stores it
    ['169.254.7.0/24', '169.254.7.0/24'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['1.2.3.4/32', '1.2.3.4/32'],
    ['10.0.0.0/33', null],
    ['10.0.0.0', null],
    ['10.0.0.256/24', null],
    ['fd00::/8', null],
    ['10.0.0.0/8 ', '10.0.0.0/8'],
    ['', null]
  ])('%j → %j', (value, expected) => {
    expect(normalizeIpv4Cidr(value)).toBe(expected);
  });

  test('errors name the flag and the expected form; duplicates collapse', () => {
    expect(() => parseEgressAllow(['10.0.0.0/8', '10.0.0.0/33'])).toThrow(
      new ConfigError("Invalid --builder-egress-allow '10.0.0.0/33'. Expected an IPv4 CIDR such as 10.20.0.0/16.")
    );
    expect(parseEgressAllow(['10.0.0.0/8', '10.1.2.3/8', '192.168.0.0/16'])).toEqual(['10.0.0.0/8', '192.168.0.0/16']);
  });

  test('BuilderNat refuses a CIDR that did not come through the flag', () => {
    expect(() => new BuilderNat(undefined, { egressAllow: ['10.0.0.0/40'] })).toThrow(/not an IPv4 CIDR/);
  });

  async function serve(args: string[]): Promise<unknown> {
    const program = new Command().exitOverride();
    registerServe(program);
    return program.parseAsync(['node', 'buildcloud', 'serve', '--state-dir', os.tmpdir(), ...args]).then(
      () => null,
      (err: Error) => err
    );
  }

  test('serve: repeatable, accumulates, and reaches the server config; a bad one stops serve before it starts', async () => {
    started.length = 0;
    expect(String(await serve(['--builder-egress-allow', '10.199.0.0/16', '--builder-egress-allow', '169.254.5.0/24']))).toMatch(/not starting/);
    expect(started.map((c) => c.builderEgressAllow)).toEqual([['10.199.0.0/16', '169.254.5.0/24']]);
    expect(String(await serve([]))).toMatch(/not starting/);
    expect(started[1].builderEgressAllow).toEqual([]);
    const bad = await serve(['--builder-egress-allow', 'lan']);
    expect(bad).toBeInstanceOf(ConfigError);
    expect(String(bad)).toContain("Invalid --builder-egress-allow 'lan'. Expected an IPv4 CIDR such as 10.20.0.0/16.");
    expect(started).toHaveLength(2);
  });
});

describe('cgroup2Mount', () => {
  test.each([
    [
      'hybrid (cgroup v1 controllers, v2 at unified)',
      '35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n36 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory',
      '/sys/fs/cgroup/unified'
    ],
    ['unified', '29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot', '/sys/fs/cgroup'],
    ['v1 only', '36 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory', null],
    ['a bind mount of a sub-cgroup is not the root', '40 24 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw', null]
  ])('%s', (_name, mountinfo, expected) => {
    expect(cgroup2Mount(mountinfo)).toBe(expected);
  });
});
