// A small private CA: one per control plane. It signs each builder's TLS server cert and each lease's client
// cert, so a builder can tell "a cert of this lease" from "a cert of another lease" by fingerprint alone.
import 'reflect-metadata';
import { createHash, KeyObject, randomBytes, webcrypto } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import * as x509 from '@peculiar/x509';
import { LeaseKeyPool } from './key-pool';
import { LeaseCertIssuer } from './lease-cert';

// @peculiar/x509 types its provider with the DOM's Crypto, which this Node-only project has no lib for.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

export interface CertPair {
  certPem: string;
  keyPem: string;
  fingerprint: string; // sha256 of the cert DER, lowercase hex
}

// ECDSA P-256: small, fast to make, and accepted by Go's crypto/tls (docker client and daemon) and OpenSSL.
const KEY_ALG: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGN_ALG: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const CA_TTL_MS = 10 * 365 * 24 * 3600 * 1000;
const SERVER_TTL_MS = 365 * 24 * 3600 * 1000;
// Clocks of clients and builders drift; a cert that is "not yet valid" for a few seconds breaks a CI job.
const BACKDATE_MS = 5 * 60 * 1000;

const subtle = webcrypto.subtle;

export function fingerprintOfDer(der: ArrayBuffer | Uint8Array): string {
  return createHash('sha256').update(new Uint8Array(der)).digest('hex');
}

export function fingerprintOfPem(pem: string): string {
  return fingerprintOfDer(x509.PemConverter.decodeFirst(pem));
}

function randomSerial(): string {
  const b = randomBytes(16);
  // Positive and of a fixed length: RFC 5280 wants a positive integer, and a leading zero octet would be dropped.
  b[0] = (b[0] & 0x7f) | 0x40;
  return b.toString('hex');
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function importKeyPem(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decodeFirst(pem);
  return subtle.importKey('pkcs8', der, KEY_ALG, false, ['sign']);
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

export class Pki {
  readonly caPem: string;
  private readonly caCert: x509.X509Certificate;
  private readonly caKey: CryptoKey;

  private leaseCerts: Promise<LeaseCertIssuer> | null = null;
  // Lease key pairs made ahead on a worker thread: a provision takes one instead of making it (key-pool.ts).
  private readonly leaseKeys = new LeaseKeyPool();

  private constructor(caPem: string, caKey: CryptoKey) {
    this.caPem = caPem;
    this.caCert = new x509.X509Certificate(caPem);
    this.caKey = caKey;
  }

  // The fast path for client certs (lease-cert.ts): the extensions every client cert carries but its own key id,
  // encoded once by @peculiar/x509, the CA's subject and key as node:crypto uses them.
  private leaseCertIssuer(): Promise<LeaseCertIssuer> {
    this.leaseCerts ??= (async () => {
      const fixed = [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
        await x509.AuthorityKeyIdentifierExtension.create(this.caCert.publicKey)
      ];
      return new LeaseCertIssuer(
        {
          issuerDer: Buffer.from(this.caCert.subjectName.toArrayBuffer()),
          caKey: KeyObject.from(this.caKey),
          extensionsDer: fixed.map((e) => Buffer.from(e.rawData))
        },
        () => this.leaseKeys.take()
      );
    })();
    return this.leaseCerts;
  }

  /** Starts making lease key pairs ahead (serve calls it once it listens). */
  warm(): void {
    this.leaseKeys.warm();
  }

  /** Stops the key worker; lease certs cannot be issued after. */
  close(): Promise<void> {
    return this.leaseKeys.close();
  }

  // Reuses the CA in `dir` if there is one, so certs issued before a restart stay valid.
  static async loadOrCreate(dir: string): Promise<Pki> {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.chmod(dir, 0o700); // mkdir's mode is masked by umask and ignored when dir already exists
    const certPath = path.join(dir, 'ca.pem');
    const keyPath = path.join(dir, 'ca-key.pem');
    if ((await exists(certPath)) && (await exists(keyPath))) {
      const [certPem, keyPem] = await Promise.all([fs.readFile(certPath, 'utf8'), fs.readFile(keyPath, 'utf8')]);
      return new Pki(certPem, await importKeyPem(keyPem));
    }
    const keys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: [{ CN: ['buildcloud CA'] }],
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + CA_TTL_MS),
      keys,
      signingAlgorithm: SIGN_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
      ]
    });
    const certPem = cert.toString('pem');
    const keyPem = await exportKeyPem(keys.privateKey);
    // Write the key first and the cert last: a crash in between leaves no ca.pem, so the next start recreates both.
    await writePrivate(keyPath, keyPem);
    await writePrivate(certPath, certPem);
    return new Pki(certPem, keys.privateKey);
  }

  // hosts: IP literals become IP SANs, anything else a DNS SAN (Go's clients ignore the CN).
  async issueServer(hosts: string[], ttlMs: number = SERVER_TTL_MS): Promise<CertPair> {
    if (hosts.length === 0) throw new Error('issueServer: at least one host is required');
    const sans: x509.JsonGeneralNames = hosts.map((h) => ({ type: isIP(h) ? 'ip' : 'dns', value: h }));
    return this.issue({ CN: [hosts[0]] }, ttlMs, x509.ExtendedKeyUsage.serverAuth, [new x509.SubjectAlternativeNameExtension(sans, false)]);
  }

  async issueClient(commonName: string, ttlMs: number): Promise<CertPair> {
    if (!(ttlMs > 0)) throw new Error(`certificate ttl must be positive, got ${ttlMs}`);
    const now = Date.now();
    return (await this.leaseCertIssuer()).issue(commonName, now - BACKDATE_MS, now + ttlMs);
  }

  private async issue(subject: Record<string, string[]>, ttlMs: number, eku: x509.ExtendedKeyUsage, extra: x509.Extension[]): Promise<CertPair> {
    if (!(ttlMs > 0)) throw new Error(`certificate ttl must be positive, got ${ttlMs}`);
    const keys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: [subject],
      issuer: this.caCert.subjectName,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + ttlMs),
      publicKey: keys.publicKey,
      signingKey: this.caKey,
      signingAlgorithm: SIGN_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([eku], false),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(this.caCert.publicKey),
        ...extra
      ]
    });
    return {
      certPem: cert.toString('pem'),
      keyPem: await exportKeyPem(keys.privateKey),
      fingerprint: fingerprintOfDer(cert.rawData)
    };
  }
}

async function writePrivate(file: string, data: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, data, { mode: 0o600 });
  await fs.chmod(tmp, 0o600);
  await fs.rename(tmp, file);
}
