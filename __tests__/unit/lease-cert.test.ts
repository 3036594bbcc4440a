// Lease client certs built from DER parts (lease-cert.ts): checked by three readers that did not write them
// (node:crypto, @peculiar/x509, `openssl verify`), by a real mutual-TLS handshake, and against the certificate the
// library itself issues for the same CA (the same extensions, in the same order, byte for byte but the key id).
import { X509Certificate, createPrivateKey } from 'crypto';
import { execFileSync } from 'child_process';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tls from 'tls';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, createPublicKey, generateKeyPairSync } from 'crypto';
import { Pki } from '../../src/server/pki';
import { LeaseCertIssuer } from '../../src/server/lease-cert';

let root: string;
let pki: Pki;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-lease-cert-'));
  pki = await Pki.loadOrCreate(path.join(root, 'pki'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

test('node:crypto, @peculiar/x509 and openssl all read it as a v3 client cert of the CA, with its own key', async () => {
  const pair = await pki.issueClient('la72a450f2430', 3600_000);
  const cert = new X509Certificate(pair.certPem);
  const ca = new X509Certificate(pki.caPem);
  expect(cert.checkIssued(ca)).toBe(true);
  expect(cert.verify(ca.publicKey)).toBe(true);
  expect(cert.checkPrivateKey(createPrivateKey(pair.keyPem))).toBe(true);
  expect(cert.subject).toBe('CN=la72a450f2430');
  expect(cert.issuer).toBe(ca.subject);
  expect(cert.ca).toBe(false);

  const p = new x509.X509Certificate(pair.certPem);
  const bc = p.getExtension(x509.BasicConstraintsExtension)!;
  expect([bc.critical, bc.ca]).toEqual([true, false]);
  const ku = p.getExtension(x509.KeyUsagesExtension)!;
  expect(ku.critical).toBe(true);
  expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement);
  expect(p.getExtension(x509.ExtendedKeyUsageExtension)!.usages).toEqual([x509.ExtendedKeyUsage.clientAuth]);
  // Key ids: the subject's is SHA-1 of its public key's bits (RFC 5280 4.2.1.2), the authority's is the CA's own.
  const point = Buffer.from(p.publicKey.rawData).subarray(-65);
  expect(p.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId).toBe(createHash('sha1').update(point).digest('hex'));
  const caSki = new x509.X509Certificate(pki.caPem).getExtension(x509.SubjectKeyIdentifierExtension)!.keyId;
  expect(p.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId).toBe(caSki);
  expect(await p.verify({ publicKey: new x509.X509Certificate(pki.caPem).publicKey, date: new Date() })).toBe(true);

  await fs.writeFile(path.join(root, 'ca.pem'), pki.caPem);
  await fs.writeFile(path.join(root, 'lease.pem'), pair.certPem);
  const out = execFileSync('openssl', ['verify', '-purpose', 'sslclient', '-CAfile', path.join(root, 'ca.pem'), path.join(root, 'lease.pem')], {
    encoding: 'utf8'
  });
  expect(out.trim()).toBe(`${path.join(root, 'lease.pem')}: OK`);
});

test('the same extensions, in the same order, as the library issues for this CA (only the key id differs)', async () => {
  const ours = new x509.X509Certificate((await pki.issueClient('a', 60_000)).certPem);
  const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const ca = new x509.X509Certificate(pki.caPem);
  const caKey = await crypto.subtle.importKey('pkcs8', await exportCaKey(), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const theirs = await x509.X509CertificateGenerator.create({
    serialNumber: '40',
    subject: [{ CN: ['a'] }],
    issuer: ca.subjectName,
    notBefore: new Date(),
    notAfter: new Date(Date.now() + 60_000),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey)
    ]
  });
  expect(ours.extensions.map((e) => e.type)).toEqual(theirs.extensions.map((e) => e.type));
  for (const [i, e] of ours.extensions.entries()) {
    if (e.type === '2.5.29.14') continue; // the subject key id: each key its own
    expect(Buffer.from(e.rawData).toString('hex')).toBe(Buffer.from(theirs.extensions[i].rawData).toString('hex'));
  }
  expect(ours.signatureAlgorithm).toEqual(theirs.signatureAlgorithm);
  expect(Buffer.from(ours.issuerName.toArrayBuffer())).toEqual(Buffer.from(theirs.issuerName.toArrayBuffer()));
});

async function exportCaKey(): Promise<ArrayBuffer> {
  const pem = await fs.readFile(path.join(root, 'pki', 'ca-key.pem'), 'utf8');
  const der = createPrivateKey(pem).export({ type: 'pkcs8', format: 'der' });
  return der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength) as ArrayBuffer;
}

test('a TLS server that requires a client cert of the CA accepts it, and refuses one of another CA', async () => {
  const server = await pki.issueServer(['127.0.0.1']);
  const srv = tls.createServer({ key: server.keyPem, cert: server.certPem, ca: pki.caPem, requestCert: true, rejectUnauthorized: true }, (s) => s.end('ok'));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const connect = (pair: { certPem: string; keyPem: string }) =>
    new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: pki.caPem, cert: pair.certPem, key: pair.keyPem }, () => undefined);
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('end', () => resolve(got));
      s.on('error', reject);
    });
  try {
    expect(await connect(await pki.issueClient('lease', 60_000))).toBe('ok');
    const other = await Pki.loadOrCreate(path.join(root, 'other'));
    // TLS 1.3: the server refuses the client's cert after the client's side of the handshake; it never says ok.
    expect(await connect(await other.issueClient('lease', 60_000)).catch((e: Error) => `refused: ${e.message}`)).not.toBe('ok');
  } finally {
    srv.close();
  }
});

test('validity: UTCTime to 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), to the second', async () => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const issuer = new LeaseCertIssuer({
    issuerDer: Buffer.from(new x509.X509Certificate(pki.caPem).subjectName.toArrayBuffer()),
    caKey: privateKey,
    extensionsDer: []
  });
  const from = Date.parse('2049-12-31T23:59:59.900Z');
  const to = Date.parse('2050-01-01T00:00:00.000Z');
  const cert = new X509Certificate((await issuer.issue('x', from, to)).certPem);
  expect(new Date(cert.validFrom).toISOString()).toBe('2049-12-31T23:59:59.000Z');
  expect(new Date(cert.validTo).toISOString()).toBe('2050-01-01T00:00:00.000Z');
  // The signature is the given key's (not the CA's): node reads it as signed by that key.
  expect(cert.verify(createPublicKey(privateKey))).toBe(true);
});

test('refuses an empty or over-long name and an empty validity', async () => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const issuer = new LeaseCertIssuer({ issuerDer: Buffer.from('3000', 'hex'), caKey: privateKey, extensionsDer: [] });
  await expect(issuer.issue('', 0, 1)).rejects.toThrow(/1-64 characters/);
  await expect(issuer.issue('x'.repeat(65), 0, 1)).rejects.toThrow(/1-64 characters/);
  await expect(issuer.issue('x', 5, 5)).rejects.toThrow(/must end after it begins/);
  const { privateKey: rsa } = generateKeyPairSync('rsa', { modulusLength: 1024 });
  expect(() => new LeaseCertIssuer({ issuerDer: Buffer.from('3000', 'hex'), caKey: rsa, extensionsDer: [] })).toThrow(/EC key/);
});
