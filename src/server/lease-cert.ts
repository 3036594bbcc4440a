// Client certificates for leases, on the provisioning path: one per Provision, so its cost is the control plane's
// throughput (issue 13: the profile of 1,000 provisions put @peculiar/x509's ASN.1 (de)serialisation and WebCrypto
// key export at about a sixth of all CPU). Every lease cert has the same shape, so it is assembled here from DER
// parts: what varies per lease (serial, validity, CN, public key, its key identifier) is encoded by the small DER
// writer below; what never varies (the issuer name, the extensions but the subject key identifier) is taken once
// from the CA certificate and from @peculiar/x509's own encoding of those extensions (pki.ts), and the signature
// is node:crypto's ECDSA. Key pairs come ready-made from a key source (key-pool.ts: a worker thread's stock).
//
// Shape (RFC 5280 §4.1): v3, a 16-byte positive serial, ecdsa-with-SHA256, the CA's subject as issuer, UTCTime
// validity (GeneralizedTime from 2050 on, §4.1.2.5), subject CN (UTF8String), a P-256 key, extensions as pki.ts
// lists them, the subject key identifier being SHA-1 of the subjectPublicKey bits (§4.2.1.2, method 1).
import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import { generateLeaseKey, type LeaseKey } from './key-pool';

/** What a lease's client cert needs of its CA: its subject (DER), private key, and the fixed extensions' DER. */
export interface LeaseCertTemplate {
  issuerDer: Buffer; // the CA certificate's subject Name, DER
  caKey: KeyObject; // the CA's EC P-256 private key
  extensionsDer: Buffer[]; // each a complete Extension (SEQUENCE), in order, but the subject key identifier
}

/** A lease's certificate and private key (PEM), and the certificate's SHA-256 fingerprint (lowercase hex). */
export interface IssuedCert {
  certPem: string;
  keyPem: string;
  fingerprint: string;
}

// --- a DER writer for the few types a lease cert has (X.690) ---

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag: number, ...content: Buffer[]): Buffer => {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), len(body.length), body]);
};
const seq = (...c: Buffer[]) => tlv(0x30, ...c);
const set = (...c: Buffer[]) => tlv(0x31, ...c);
const octets = (b: Buffer) => tlv(0x04, b);
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, 'utf8'));
const bits = (b: Buffer) => tlv(0x03, Buffer.from([0]), b); // no unused bits
const explicit = (n: number, c: Buffer) => tlv(0xa0 | n, c);

/** A non-negative INTEGER from big-endian bytes: leading zeros dropped, a 0x00 added when the top bit is set. */
function integer(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const v = b.subarray(i);
  return tlv(0x02, v[0] & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const out = [40 * a + b];
  for (const n of rest) {
    const enc = [n & 0x7f];
    for (let v = Math.floor(n / 128); v > 0; v = Math.floor(v / 128)) enc.unshift((v & 0x7f) | 0x80);
    out.push(...enc);
  }
  return tlv(0x06, Buffer.from(out));
}

/** UTCTime before 2050, GeneralizedTime from then on (RFC 5280 §4.1.2.5), to the second, in UTC. */
function time(ms: number): Buffer {
  const iso = new Date(Math.floor(ms / 1000) * 1000).toISOString(); // 2026-11-30T21:04:07.000Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, ''); // 20261130210407
  const year = Number(digits.slice(0, 4));
  return year < 2050 ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`)) : tlv(0x18, Buffer.from(`${digits}Z`));
}

const ECDSA_WITH_SHA256 = seq(oid('1.2.840.10045.4.3.2'));
const CN = oid('2.5.4.3');
const SUBJECT_KEY_IDENTIFIER = oid('2.5.29.14');

const pem = (der: Buffer, label: string): string =>
  `-----BEGIN ${label}-----\n${der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END ${label}-----\n`;

/** Issues lease client certificates from one CA (see the file comment for their shape). */
export class LeaseCertIssuer {
  /** `keys`: where each certificate's P-256 key pair comes from (default: one made per call, key-pool.ts). */
  constructor(
    private readonly t: LeaseCertTemplate,
    private readonly keys: () => Promise<LeaseKey> = generateLeaseKey
  ) {
    if (t.caKey.asymmetricKeyType !== 'ec') throw new Error(`the CA key must be an EC key, got ${t.caKey.asymmetricKeyType}`);
  }

  /**
   * A new key pair and a certificate for it: subject CN `commonName` (1-64 characters), valid from `notBeforeMs`
   * to `notAfterMs` (ms since the epoch). Throws on a bad name or an empty validity.
   */
  async issue(commonName: string, notBeforeMs: number, notAfterMs: number): Promise<IssuedCert> {
    if (!commonName || commonName.length > 64) throw new Error(`certificate common name must be 1-64 characters, got ${commonName.length}`);
    if (!(notAfterMs > notBeforeMs)) throw new Error('certificate validity must end after it begins');
    const key = await this.keys();
    const spki = key.spkiDer;
    // SPKI = SEQUENCE { AlgorithmIdentifier, BIT STRING }: the key's bits are the last 65 bytes (uncompressed point).
    const point = spki.subarray(spki.length - 65);
    const ski = seq(SUBJECT_KEY_IDENTIFIER, octets(octets(createHash('sha1').update(point).digest())));
    const serial = randomBytes(16);
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 bytes, as pki.ts's randomSerial
    const tbs = seq(
      explicit(0, integer(Buffer.from([2]))), // v3
      integer(serial),
      ECDSA_WITH_SHA256,
      this.t.issuerDer,
      seq(time(notBeforeMs), time(notAfterMs)),
      seq(set(seq(CN, utf8(commonName)))),
      spki,
      explicit(3, seq(...this.t.extensionsDer.slice(0, 3), ski, ...this.t.extensionsDer.slice(3)))
    );
    const signature = sign('sha256', tbs, this.t.caKey); // ECDSA, DER-encoded (r, s)
    const der = seq(tbs, ECDSA_WITH_SHA256, bits(signature));
    return {
      certPem: pem(der, 'CERTIFICATE'),
      keyPem: key.keyPem,
      fingerprint: createHash('sha256').update(der).digest('hex')
    };
  }
}
