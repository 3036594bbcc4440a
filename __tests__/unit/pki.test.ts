import { X509Certificate, createPrivateKey } from 'crypto';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Pki, fingerprintOfPem } from '../../src/server/pki';

const EKU_SERVER = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2';

function nodeFingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase();
}

describe('Pki', () => {
  let root: string;
  let dir: string;

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-pki-'));
    dir = path.join(root, 'nested', 'pki');
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  it('creates a CA with private file modes and reuses it on the next load', async () => {
    const a = await Pki.loadOrCreate(dir);
    expect((await fs.stat(dir)).mode & 0o777).toBe(0o700);
    expect((await fs.stat(path.join(dir, 'ca.pem'))).mode & 0o777).toBe(0o600);
    expect((await fs.stat(path.join(dir, 'ca-key.pem'))).mode & 0o777).toBe(0o600);
    expect(await fs.readFile(path.join(dir, 'ca.pem'), 'utf8')).toBe(a.caPem);
    expect(await fs.readFile(path.join(dir, 'ca-key.pem'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);

    const ca = new X509Certificate(a.caPem);
    expect(ca.ca).toBe(true);
    expect(ca.publicKey.asymmetricKeyType).toBe('ec');
    expect(ca.verify(ca.publicKey)).toBe(true);

    const b = await Pki.loadOrCreate(dir);
    expect(b.caPem).toBe(a.caPem);
    // The reloaded key signs certs that chain to the same CA.
    const leaf = new X509Certificate((await b.issueClient('after-reload', 60_000)).certPem);
    expect(leaf.checkIssued(ca)).toBe(true);
    expect(leaf.verify(ca.publicKey)).toBe(true);
  });

  it('tightens the mode of an existing directory', async () => {
    await fs.mkdir(dir, { recursive: true, mode: 0o755 });
    await Pki.loadOrCreate(dir);
    expect((await fs.stat(dir)).mode & 0o777).toBe(0o700);
  });

  it('issues server certs with IP and DNS SANs and the serverAuth EKU', async () => {
    const pki = await Pki.loadOrCreate(dir);
    const ca = new X509Certificate(pki.caPem);
    const pair = await pki.issueServer(['127.0.0.1', 'builder.example.test', '::1']);
    const cert = new X509Certificate(pair.certPem);
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual([EKU_SERVER]);
    expect(cert.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(cert.subjectAltName).toContain('DNS:builder.example.test');
    expect(cert.checkIP('::1')).toBe('::1');
    expect(cert.subjectAltName).not.toContain('DNS:127.0.0.1');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkHost('builder.example.test')).toBe('builder.example.test');
    expect(pair.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(pair.fingerprint).toBe(nodeFingerprint(pair.certPem));
    expect(pair.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(cert.checkPrivateKey(createPrivateKey(pair.keyPem))).toBe(true);
  });

  it('issues client certs with the clientAuth EKU, the given CN and ttl', async () => {
    const pki = await Pki.loadOrCreate(dir);
    const ca = new X509Certificate(pki.caPem);
    const before = Date.now();
    const pair = await pki.issueClient('lease-42', 3600_000);
    const cert = new X509Certificate(pair.certPem);
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.keyUsage).toEqual([EKU_CLIENT]);
    expect(cert.subject).toBe('CN=lease-42');
    const notAfter = Date.parse(cert.validTo);
    expect(notAfter).toBeGreaterThan(before + 3600_000 - 5_000);
    expect(notAfter).toBeLessThan(before + 3600_000 + 5_000);
    expect(Date.parse(cert.validFrom)).toBeLessThanOrEqual(before);
    expect(fingerprintOfPem(pair.certPem)).toBe(pair.fingerprint);
    expect(pair.fingerprint).toBe(nodeFingerprint(pair.certPem));
  });

  it('gives every cert its own key, serial and fingerprint', async () => {
    const pki = await Pki.loadOrCreate(dir);
    const a = await pki.issueClient('same', 60_000);
    const b = await pki.issueClient('same', 60_000);
    expect(a.fingerprint).not.toBe(b.fingerprint);
    expect(a.keyPem).not.toBe(b.keyPem);
    const sa = new X509Certificate(a.certPem).serialNumber;
    const sb = new X509Certificate(b.certPem).serialNumber;
    expect(sa).not.toBe(sb);
    expect(sa.length).toBeGreaterThanOrEqual(30); // ~128 random bits
  });

  it('a cert from another CA does not chain to this one', async () => {
    const pki = await Pki.loadOrCreate(dir);
    const other = await Pki.loadOrCreate(path.join(root, 'other'));
    expect(other.caPem).not.toBe(pki.caPem);
    const foreign = new X509Certificate((await other.issueClient('x', 60_000)).certPem);
    expect(foreign.verify(new X509Certificate(pki.caPem).publicKey)).toBe(false);
  });

  it('rejects invalid arguments', async () => {
    const pki = await Pki.loadOrCreate(dir);
    await expect(pki.issueServer([])).rejects.toThrow(/host/);
    await expect(pki.issueClient('x', 0)).rejects.toThrow(/ttl/);
  });
});
