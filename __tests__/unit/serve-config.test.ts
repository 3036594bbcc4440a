// `buildcloud serve` settings that guard secrets: TLS by default off loopback, and no registry password in messages.
import * as net from 'net';
import {
  ConfigError,
  INSECURE_WARNING,
  checkListenHost,
  checkListenSecurity,
  isLoopbackHost,
  listenError,
  machineAddresses,
  parseCacheStorage,
  parseRegistryUrl,
  redactUrl,
  validateConfig,
  type ServerConfig
} from '../../src/server/config';
import { checkPortsFree } from '../../src/server/server';

describe('isLoopbackHost', () => {
  test.each([
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['localhost', true],
    ['::1', true],
    ['[::1]', true],
    ['0.0.0.0', false], // every address
    ['::', false],
    ['192.0.2.2', false],
    ['10.0.0.1', false],
    ['127.0.0.256', false],
    ['127.evil.example', false],
    ['buildcloud.internal', false]
  ])('%s → %p', (host, want) => {
    expect(isLoopbackHost(host)).toBe(want);
  });
});

describe('checkListenSecurity', () => {
  const tls = { certFile: '/c.pem', keyFile: '/k.pem' };
  it('loopback needs nothing, with or without TLS', () => {
    expect(checkListenSecurity({ host: '127.0.0.1', tls: null })).toBeNull();
    expect(checkListenSecurity({ host: '127.0.0.1', tls })).toBeNull();
  });
  it('a non-loopback host without TLS is refused, naming --tls-cert, --tls-key and --insecure', () => {
    for (const host of ['0.0.0.0', '192.0.2.2', '::']) {
      let err: unknown;
      try {
        checkListenSecurity({ host, tls: null });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toContain(host);
      for (const flag of ['--tls-cert', '--tls-key', '--insecure']) expect((err as Error).message).toContain(flag);
    }
  });
  it('with TLS it is accepted silently; with --insecure it is accepted with a loud warning', () => {
    expect(checkListenSecurity({ host: '0.0.0.0', tls })).toBeNull();
    expect(checkListenSecurity({ host: '0.0.0.0', tls: null, insecure: true })).toBe(INSECURE_WARNING);
    expect(INSECURE_WARNING).toMatch(/^WARNING: .*WITHOUT TLS/);
  });
});

describe('--registry never echoes a password', () => {
  test.each([
    ['https://bob:s3cret@registry.example.com/v2', 'https://bob:***@registry.example.com/v2'],
    ['https://bob@registry.example.com', 'https://bob@registry.example.com'],
    ['http://registry.example.com:5000', 'http://registry.example.com:5000'],
    ['ftp://bob:s3cret@host', 'ftp://bob:***@host'],
    ['https://bob:s3cret@host:notaport', 'https://bob:***@host:notaport'],
    ['not a url', 'not a url']
  ])('redactUrl(%s) = %s', (raw, want) => {
    expect(redactUrl(raw)).toBe(want);
  });

  test.each([['ftp://bob:s3cret@host'], ['https://bob:s3cret@host:notaport'], ['https://bob:s3cret@[::1']])(
    'parseRegistryUrl(%s) refuses without the password',
    (raw) => {
      let msg = '';
      try {
        parseRegistryUrl(raw);
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg).toMatch(/^Invalid --registry 'https?:\/\/bob:\*\*\*@|^Invalid --registry 'ftp:\/\/bob:\*\*\*@/);
      expect(msg).not.toContain('s3cret');
    }
  );

  it('a valid URL keeps its credentials for the server (which strips them before use)', () => {
    expect(parseRegistryUrl('https://bob:s3cret@registry.example.com/')).toBe('https://bob:s3cret@registry.example.com');
  });
});

// Issue 12: `serve` on a busy port ended in a stack trace, and --host 0.0.0.0 printed an address clients cannot use.
describe('where serve listens: one line naming the flag to change', () => {
  const servers: net.Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });
  async function busyPort(): Promise<number> {
    const s = net.createServer();
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as net.AddressInfo).port;
  }
  const config = { host: '127.0.0.1', grpcPort: 0, httpPort: 0, registryPort: 0 };

  test.each([
    ['grpcPort', '--grpc-port'],
    ['httpPort', '--http-port'],
    ['registryPort', '--registry-port']
  ])('a busy %s is named with %s, before anything starts', async (key, flag) => {
    const port = await busyPort();
    await expect(checkPortsFree({ ...config, [key]: port })).rejects.toThrow(
      new ConfigError(
        `Port ${port} is already in use on 127.0.0.1 (127.0.0.1:${port}): another program, or another buildcloud serve, listens there. Stop it, or pass ${flag} with a free port (0 = any free port).`
      )
    );
  });

  test('free ports (and 0, any free port) pass, and are free again afterwards', async () => {
    const port = await busyPort();
    await new Promise((r) => servers.pop()!.close(r));
    await expect(checkPortsFree({ ...config, httpPort: port })).resolves.toBeUndefined();
    await expect(checkPortsFree({ ...config, httpPort: port })).resolves.toBeUndefined();
  });

  test("grpc-js's bind error (text only, no code) is mapped too; other errors are left as they are", () => {
    const grpcBind = new Error('No address added out of total 1 resolved errors: [listen EADDRINUSE: address already in use 127.0.0.1:7643]');
    expect((listenError(grpcBind, '127.0.0.1', 7643, '--grpc-port') as Error).message).toBe(
      'Port 7643 is already in use on 127.0.0.1 (127.0.0.1:7643): another program, or another buildcloud serve, listens there. Stop it, or pass --grpc-port with a free port (0 = any free port).'
    );
    const other = new Error('something else');
    expect(listenError(other, '127.0.0.1', 7643, '--grpc-port')).toBe(other);
  });

  test('a --host that is not an address of this machine (EADDRNOTAVAIL) says to pass one of its addresses', async () => {
    const err = await checkPortsFree({ ...config, host: '192.0.2.10', httpPort: 7644 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/^Cannot listen on 192\.0\.2\.10: it is not an address of this machine\. Pass --host with one of its addresses/);
  });

  test('the same port for two flags is refused before anything listens', () => {
    const c = { idleTimeoutMs: 600_000, maxTtlMs: 7_200_000, warmPool: 1, maxBuilders: 16, grpcPort: 7643, httpPort: 7643, registryPort: 7645 } as ServerConfig;
    expect(() => validateConfig(c)).toThrow(new ConfigError('--grpc-port and --http-port are both 7643: give each its own port (0 = any free port).'));
    expect(() => validateConfig({ ...c, httpPort: 0, registryPort: 0 })).not.toThrow();
  });

  test.each(['0.0.0.0', '::', '[::]', '0:0:0:0:0:0:0:0'])('--host %s is refused, naming the address to pass instead', (host) => {
    expect(() => checkListenHost(host, ['10.1.2.3'])).toThrow(
      new ConfigError(
        `Refusing --host ${host}: it listens on every address, but the control plane gives its --host to jobs (endpoint, metering URL, builders, org-cache registry), and ${host} is not an address they can use. Pass the address clients use, e.g. --host 10.1.2.3 (an address of this machine) or a name that resolves to it (with --tls-cert/--tls-key for a certificate that names it).`
      )
    );
  });

  test.each(['127.0.0.1', '10.1.2.3', 'cp.example.com', '::1'])('--host %s is accepted', (host) => {
    expect(() => checkListenHost(host, ['10.1.2.3'])).not.toThrow();
  });

  test("this machine's addresses are neither loopback nor link-local", () => {
    for (const a of machineAddresses()) expect(isLoopbackHost(a) || /^(fe80:|169\.254\.)/i.test(a)).toBe(false);
  });
});

describe('parseCacheStorage: the GC grace', () => {
  test('refuses a grace under 1 s, naming the flag and what blobs it protects; takes seconds and hours', () => {
    expect(() => parseCacheStorage({ cacheGcGrace: '0' })).toThrow(
      "Invalid --cache-gc-grace '0'. Expected at least 1s (default 1h): younger blobs may belong to pushes under way."
    );
    expect(() => parseCacheStorage({ cacheGcGrace: '500ms' })).toThrow(ConfigError);
    expect(parseCacheStorage({ cacheGcGrace: '5s' }).graceMs).toBe(5000);
    expect(parseCacheStorage({ cacheGcGrace: '1h' }).graceMs).toBe(3600_000);
  });
});
