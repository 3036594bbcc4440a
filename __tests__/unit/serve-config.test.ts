// `buildcloud serve` settings that guard secrets: TLS by default off loopback, and no registry password in messages.
import { ConfigError, INSECURE_WARNING, checkListenSecurity, isLoopbackHost, parseRegistryUrl, redactUrl } from '../../src/server/config';

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
