// Who is calling the control plane: org tokens (long-lived, stored hashed), the server's own short-lived access
// tokens (ES256 JWTs, handed out for a CI's OIDC token) and the admin token. Nothing here logs; a token never
// appears in an error message either, so callers can log errors freely.
//
// An access token is re-checked on every use, not only by its signature: it names the trust rule it was exchanged
// under (id and a digest of the rule), and is accepted only while that rule still exists unchanged. Removing a rule
// (`buildcloud admin trust remove`) therefore ends every access token it produced at their next request, not when
// they expire. Org tokens are looked up (and their revocation seen) on every use already.
import { createHash, createHmac, randomBytes, randomInt, timingSafeEqual } from 'crypto';
import { promises as fs } from 'fs';
import * as path from 'path';
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, jwtVerify, type JWK, type JWTPayload, type KeyLike } from 'jose';
import type { Store, TokenRow, TrustRow } from './store/store';
import { AuthError } from './oidc';
import { decodeVerified, encodeVerified, type PrincipalScope, type VerifiedIdentity } from './scope';

export { AuthError, OIDC_REFUSAL, OIDC_UNAVAILABLE, OidcVerifier } from './oidc';
export type { AuthErrorCode, OidcExchangeResult, OidcVerifierOptions } from './oidc';

export const ACCESS_TOKEN_ISSUER = 'buildcloud';
export const ACCESS_TOKEN_AUDIENCE = 'buildcloud-api';
const ACCESS_TOKEN_TYP = 'at+jwt';
const MAX_ACCESS_TOKEN_TTL_S = 7 * 24 * 3600;
// Claims the server sets itself; `claims` passed by a caller must not be able to overwrite them.
const RESERVED_CLAIMS = new Set(['iss', 'aud', 'sub', 'exp', 'iat', 'nbf', 'jti', 'org', 'trust', 'bcid']);
// `trust` claim: "<rule id>.<first 16 hex of sha256 over the rule>". The digest makes a rule id that a store reuses
// after a removal (SQLite may hand out a deleted rowid again) unable to revive old tokens.
const TRUST_CLAIM_RE = /^([0-9]{1,15})\.([0-9a-f]{16})$/;

const ORG_TOKEN_RE = /^bct_([A-Za-z0-9]{12})_([A-Za-z0-9]{32,128})$/;
const ADMIN_TOKEN_RE = /^bca_[A-Za-z0-9]{32,128}$/;
const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

export interface Principal {
  kind: 'org' | 'admin';
  org: string | null;
  subject: string;
  via: 'org-token' | 'access-token' | 'admin-token';
  // What it may act for inside its org (src/server/scope.ts). Undefined: the admin token, or an unscoped org
  // token (the org-admin credential: any project, any branch, identity as the request sends it).
  scope?: PrincipalScope;
}

export interface SigningKey {
  kid: string; // RFC 7638 thumbprint of the public key
  alg: 'ES256';
  privateKey: KeyLike;
  publicKey: KeyLike;
  publicJwk: JWK; // with kid/alg/use, ready to publish in a JWKS
}

export interface AccessTokenRequest {
  org: string;
  subject: string;
  ttlSeconds: number;
  trust: TrustRow; // the rule the OIDC token matched; the access token lives only as long as it does
  verified: VerifiedIdentity; // what the OIDC token's claims prove (project, branch, ...): the token's scope
  claims?: Record<string, unknown>;
  nowMs?: number; // for tests; defaults to Date.now()
}

export interface AccessTokenClaims extends JWTPayload {
  org: string;
  sub: string;
  exp: number;
  trust: string;
  bcid: Record<string, unknown>; // scope.ts encodeVerified(): the verified identity
}

export function trustDigest(t: Pick<TrustRow, 'id' | 'org' | 'issuer' | 'audience' | 'claim' | 'value' | 'createdAt'>): string {
  const h = createHash('sha256').update([t.id, t.org, t.issuer, t.audience, t.claim, t.value, t.createdAt].join('\0'), 'utf8').digest('hex');
  return `${t.id}.${h.slice(0, 16)}`;
}

// Base62 so the token survives copy/paste, shells, URLs and the `_` separators; `randomInt` is unbiased.
function randomBase62(length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) out += BASE62[randomInt(BASE62.length)];
  return out;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

// Compares digests, not the strings: equal lengths for timingSafeEqual and no length leak.
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/**
 * Creates an org token: `bct_<id>_<secret>`, stored as its SHA-256 only. `scope` null makes the org-admin
 * credential (any project and branch); otherwise leases provisioned with it stay inside `scope`
 * (src/server/scope.ts resolveLeaseIdentity). The secret is returned once and never stored.
 */
export async function createOrgToken(
  store: Store,
  org: string,
  label: string,
  now: number,
  scope: TokenRow['scope'] = null
): Promise<{ token: string; row: TokenRow }> {
  const id = randomBase62(12);
  const token = `bct_${id}_${randomBase62(43)}`; // 43 base62 chars ≈ 256 bits
  const row: TokenRow = { id, org, hash: hashToken(token), label, createdAt: now, revokedAt: null, scope };
  await store.createToken(row);
  return { token, row };
}

// ---- files in the server's state dir -------------------------------------------------------------------------

async function ensurePrivateDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fs.stat(dir);
  if ((st.mode & 0o077) !== 0) await fs.chmod(dir, 0o700);
}

// Creates `file` with `content` (0600) unless it exists, atomically: the content is complete before the name
// appears (link fails if another process won the race), so concurrent starts all end up with the same secret.
async function createOnce(file: string, content: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  await fs.writeFile(tmp, content, { mode: 0o600, flag: 'wx' });
  try {
    await fs.link(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await fs.unlink(tmp).catch(() => undefined);
  }
}

async function readPrivateFile(file: string): Promise<string | null> {
  try {
    const st = await fs.stat(file);
    if ((st.mode & 0o077) !== 0) await fs.chmod(file, 0o600); // an older copy or a restore may have widened it
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

export async function loadOrCreateSigningKey(dir: string): Promise<SigningKey> {
  await ensurePrivateDir(dir);
  const file = path.join(dir, 'signing-key.json');
  let text = await readPrivateFile(file);
  if (text === null) {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = await exportJWK(privateKey);
    await createOnce(file, JSON.stringify({ alg: 'ES256', createdAt: new Date().toISOString(), privateJwk: jwk }, null, 2) + '\n');
    text = (await readPrivateFile(file)) as string;
  }
  let priv: JWK;
  try {
    priv = (JSON.parse(text) as { privateJwk: JWK }).privateJwk;
    if (priv?.kty !== 'EC' || priv.crv !== 'P-256' || typeof priv.d !== 'string') throw new Error('not a P-256 private JWK');
  } catch (err) {
    throw new Error(`${file} is not a valid signing key (${(err as Error).message}); move it away to create a new one`);
  }
  const { d: _d, ...pub } = priv;
  const kid = await calculateJwkThumbprint(pub);
  const publicJwk: JWK = { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y, kid, alg: 'ES256', use: 'sig' };
  return {
    kid,
    alg: 'ES256',
    privateKey: (await importJWK({ ...priv, alg: 'ES256' }, 'ES256')) as KeyLike,
    publicKey: (await importJWK(publicJwk, 'ES256')) as KeyLike,
    publicJwk
  };
}

export async function loadOrCreateAdminToken(dir: string): Promise<string> {
  await ensurePrivateDir(dir);
  const file = path.join(dir, 'admin-token');
  let text = await readPrivateFile(file);
  if (text === null) {
    await createOnce(file, `bca_${randomBase62(43)}\n`);
    text = (await readPrivateFile(file)) as string;
  }
  const token = text.trim();
  if (!ADMIN_TOKEN_RE.test(token)) throw new Error(`${file} does not hold an admin token (bca_…); move it away to create a new one`);
  return token;
}

/**
 * The secret the projects' fingerprint keys derive from (fingerprintKey): 32 random bytes in `<dir>/fingerprint-secret`
 * (base64url, 0600), made on first use. Throws when the file holds anything else.
 */
export async function loadOrCreateFingerprintSecret(dir: string): Promise<Buffer> {
  await ensurePrivateDir(dir);
  const file = path.join(dir, 'fingerprint-secret');
  let text = await readPrivateFile(file);
  if (text === null) {
    await createOnce(file, `${randomBytes(32).toString('base64url')}\n`);
    text = (await readPrivateFile(file)) as string;
  }
  const secret = Buffer.from(text.trim(), 'base64url');
  if (secret.length !== 32) throw new Error(`${file} does not hold a fingerprint secret (32 bytes, base64url); move it away to create a new one`);
  return secret;
}

/**
 * The key (base64url, 32 bytes) every lease of `org`'s `project` gets in CacheRefs.fingerprint_key: HMAC-SHA256 of
 * the org and project under the control plane's fingerprint secret. The same for every build of the project, another
 * for every other project.
 */
export function fingerprintKey(secret: Buffer, org: string, project: string): string {
  return createHmac('sha256', secret)
    .update(JSON.stringify(['buildcloud fingerprints', org, project]))
    .digest('base64url');
}

// ---- access tokens -----------------------------------------------------------------------------------------

export async function issueAccessToken(key: SigningKey, req: AccessTokenRequest): Promise<{ token: string; expiresAtMs: number }> {
  if (!req.org) throw new TypeError('issueAccessToken: org is required');
  if (!req.subject) throw new TypeError('issueAccessToken: subject is required');
  if (!req.trust || req.trust.org !== req.org) throw new TypeError('issueAccessToken: the trust rule of the same org is required');
  if (!Number.isInteger(req.ttlSeconds) || req.ttlSeconds < 1 || req.ttlSeconds > MAX_ACCESS_TOKEN_TTL_S) {
    throw new RangeError(`issueAccessToken: ttlSeconds must be an integer in 1..${MAX_ACCESS_TOKEN_TTL_S}`);
  }
  const extra: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(req.claims ?? {})) if (!RESERVED_CLAIMS.has(k)) extra[k] = v;
  const iat = Math.floor((req.nowMs ?? Date.now()) / 1000);
  const exp = iat + req.ttlSeconds;
  const token = await new SignJWT({ ...extra, org: req.org, trust: trustDigest(req.trust), bcid: encodeVerified(req.verified) })
    .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: ACCESS_TOKEN_TYP })
    .setIssuer(ACCESS_TOKEN_ISSUER)
    .setAudience(ACCESS_TOKEN_AUDIENCE)
    .setSubject(req.subject)
    .setIssuedAt(iat)
    .setExpirationTime(exp)
    .setJti(randomBase62(16))
    .sign(key.privateKey);
  return { token, expiresAtMs: exp * 1000 };
}

// Throws AuthError('expired' | 'invalid_token'). Only this server's key, alg, typ, iss and aud are accepted, so an
// OIDC token of a CI (or a token meant for another service) can never pass as an access token.
export async function verifyAccessToken(key: SigningKey, token: string, nowMs?: number): Promise<AccessTokenClaims> {
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, key.publicKey, {
      algorithms: ['ES256'],
      typ: ACCESS_TOKEN_TYP,
      issuer: ACCESS_TOKEN_ISSUER,
      audience: ACCESS_TOKEN_AUDIENCE,
      requiredClaims: ['exp', 'sub'],
      currentDate: nowMs === undefined ? undefined : new Date(nowMs),
      clockTolerance: 5 // replicas sharing the key may disagree on the time by a little
    }));
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_JWT_EXPIRED')
      throw new AuthError('expired', 'the access token has expired; exchange an org token or OIDC token for a new one');
    throw new AuthError('invalid_token', 'the access token is not valid for this server');
  }
  if (typeof payload.org !== 'string' || !payload.org || typeof payload.sub !== 'string') {
    throw new AuthError('invalid_token', 'the access token has no org or subject');
  }
  // Tokens signed before access tokens named their trust rule cannot be re-checked: refused, the job exchanges again.
  if (typeof payload.trust !== 'string' || !TRUST_CLAIM_RE.test(payload.trust)) {
    throw new AuthError('invalid_token', 'the access token does not name its trust rule; exchange the OIDC token again');
  }
  // Nor can tokens signed before they carried the verified identity be scoped: refused the same way.
  if (!decodeVerified(payload.bcid)) {
    throw new AuthError('invalid_token', 'the access token carries no verified identity; exchange the OIDC token again');
  }
  return payload as AccessTokenClaims;
}

// ---- the authenticator used by the API layer ------------------------------------------------------------------

export class Authenticator {
  constructor(
    private readonly store: Store,
    private readonly key: SigningKey,
    private readonly adminToken: string,
    private readonly now: () => number = Date.now
  ) {}

  // Resolves to null for anything not accepted (unknown, malformed, revoked, expired); callers answer
  // "unauthenticated" without saying which, and without echoing the token.
  async authenticate(bearer: string): Promise<Principal | null> {
    if (typeof bearer !== 'string') return null;
    const token = bearer.replace(/^bearer\s+/i, '').trim();
    if (!token || token.length > 8192) return null;

    if (token.startsWith('bca_')) {
      return sameSecret(token, this.adminToken) ? { kind: 'admin', org: null, subject: 'admin', via: 'admin-token' } : null;
    }
    if (token.startsWith('bct_')) return this.orgToken(token);
    if (token.split('.').length === 3) {
      try {
        const claims = await verifyAccessToken(this.key, token, this.now());
        if (!(await this.trustStillHolds(claims))) return null;
        const verified = decodeVerified(claims.bcid) as VerifiedIdentity; // verifyAccessToken checked it
        return { kind: 'org', org: claims.org, subject: claims.sub, via: 'access-token', scope: { projects: null, branches: null, readOnly: false, verified } };
      } catch {
        return null;
      }
    }
    return null;
  }

  // The rule the token was exchanged under must still exist, for the same org, unchanged. One indexed read of a
  // small table per request: the price of removal taking effect at once (no cache, so replicas agree too).
  private async trustStillHolds(claims: AccessTokenClaims): Promise<boolean> {
    const m = TRUST_CLAIM_RE.exec(claims.trust);
    if (!m) return false;
    const rows = await this.store.listTrust(claims.org);
    const row = rows.find((r) => r.id === Number(m[1]));
    return Boolean(row && row.org === claims.org && trustDigest(row) === claims.trust);
  }

  private async orgToken(token: string): Promise<Principal | null> {
    const m = ORG_TOKEN_RE.exec(token);
    if (!m) return null;
    // Lookup by the sha256 of the whole token: timing of the lookup depends only on the hash, which tells an
    // attacker nothing about the secret; the explicit compare below guards against a store returning a wrong row.
    const hash = hashToken(token);
    const row = await this.store.findTokenByHash(hash);
    if (!row || row.hash.length !== hash.length) return null;
    if (!timingSafeEqual(Buffer.from(row.hash, 'utf8'), Buffer.from(hash, 'utf8')) || row.id !== m[1]) return null;
    if (row.revokedAt !== null) return null;
    const principal: Principal = { kind: 'org', org: row.org, subject: `token:${row.id}`, via: 'org-token' };
    if (row.scope) principal.scope = { ...row.scope, verified: null };
    return principal;
  }
}
