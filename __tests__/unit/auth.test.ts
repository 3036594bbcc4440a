import { encodeVerified, type VerifiedIdentity } from '../../src/server/scope';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import {
  AuthError,
  Authenticator,
  createOrgToken,
  hashToken,
  issueAccessToken,
  loadOrCreateAdminToken,
  loadOrCreateFingerprintSecret,
  fingerprintKey,
  loadOrCreateSigningKey,
  trustDigest,
  verifyAccessToken,
  type SigningKey
} from '../../src/server/auth';
import { MemoryStore } from '../helpers/memory-store';
import type { TrustRow } from '../../src/server/store/store';

const NOW = Date.UTC(2026, 7, 20, 12, 0, 0);
let dir: string;
let key: SigningKey;
let adminToken: string;
let store: MemoryStore;
let auth: Authenticator;
let trust: TrustRow; // the rule access tokens in these tests were "exchanged" under
// What the OIDC token of those exchanges proved: the access token's scope.
const verified: VerifiedIdentity = {
  provider: 'github',
  project: 'acme/widget',
  branch: 'main',
  changeRequest: false,
  refProtected: null,
  readOnly: false,
  readOnlyReason: ''
};

const mode = async (p: string) => (await fs.stat(p)).mode & 0o777;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-auth-'));
  key = await loadOrCreateSigningKey(path.join(dir, 'state'));
  adminToken = await loadOrCreateAdminToken(path.join(dir, 'state'));
  store = new MemoryStore();
  await store.createOrg('acme', NOW);
  trust = await store.addTrust({
    org: 'acme',
    issuer: 'https://issuer.example',
    audience: 'buildcloud',
    claim: 'repository_owner',
    value: 'acme',
    createdAt: NOW
  });
  auth = new Authenticator(store, key, adminToken, () => NOW);
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('org tokens', () => {
  it('creates bct_<id>_<secret>, stores only the sha256, and authenticates', async () => {
    const { token, row } = await createOrgToken(store, 'acme', 'ci', NOW);
    expect(token).toMatch(/^bct_[A-Za-z0-9]{12}_[A-Za-z0-9]{32,}$/);
    expect(token.startsWith(`bct_${row.id}_`)).toBe(true);
    expect(row).toEqual({ id: row.id, org: 'acme', hash: hashToken(token), label: 'ci', createdAt: NOW, revokedAt: null, scope: null });
    expect(hashToken(token)).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify([...store.tokens.values()])).not.toContain(token.split('_')[2]);

    await expect(auth.authenticate(token)).resolves.toEqual({ kind: 'org', org: 'acme', subject: `token:${row.id}`, via: 'org-token' });
    await expect(auth.authenticate(`Bearer ${token}`)).resolves.toMatchObject({ org: 'acme' });
  });

  it('two tokens never share an id or secret', async () => {
    const a = await createOrgToken(store, 'acme', 'a', NOW);
    const b = await createOrgToken(store, 'acme', 'b', NOW);
    expect(a.row.id).not.toBe(b.row.id);
    expect(a.token.split('_')[2]).not.toBe(b.token.split('_')[2]);
  });

  it('rejects a wrong secret, a wrong id, malformed and unknown tokens', async () => {
    const { token, row } = await createOrgToken(store, 'acme', 'ci', NOW);
    const secret = token.split('_')[2];
    const flipped = secret.slice(0, -1) + (secret.endsWith('A') ? 'B' : 'A');
    await expect(auth.authenticate(`bct_${row.id}_${flipped}`)).resolves.toBeNull();
    await expect(auth.authenticate(`bct_ZZZZZZZZZZZZ_${secret}`)).resolves.toBeNull();
    await expect(auth.authenticate(`bct_${row.id}`)).resolves.toBeNull();
    await expect(auth.authenticate('')).resolves.toBeNull();
    await expect(auth.authenticate('not-a-token')).resolves.toBeNull();
  });

  it('rejects a row whose id does not match the token (a store returning the wrong row)', async () => {
    const { token } = await createOrgToken(store, 'acme', 'ci', NOW);
    const [row] = [...store.tokens.values()];
    row.id = 'XXXXXXXXXXXX';
    await expect(auth.authenticate(token)).resolves.toBeNull();
  });

  it('rejects a revoked token', async () => {
    const { token, row } = await createOrgToken(store, 'acme', 'ci', NOW);
    await expect(store.revokeToken(row.id, NOW + 1)).resolves.toBe(true);
    await expect(auth.authenticate(token)).resolves.toBeNull();
  });
});

describe('signing key', () => {
  it('is an ES256 JWK in a 0600 file inside a 0700 dir, reused on restart', async () => {
    const state = path.join(dir, 'state');
    expect(await mode(state)).toBe(0o700);
    expect(await mode(path.join(state, 'signing-key.json'))).toBe(0o600);
    const saved = JSON.parse(await fs.readFile(path.join(state, 'signing-key.json'), 'utf8'));
    expect(saved.privateJwk).toMatchObject({ kty: 'EC', crv: 'P-256' });
    expect(key.publicJwk).toMatchObject({ kid: key.kid, alg: 'ES256', use: 'sig' });
    expect(key.publicJwk).not.toHaveProperty('d');

    const { token } = await issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 60, nowMs: NOW, trust, verified });
    const again = await loadOrCreateSigningKey(state);
    expect(again.kid).toBe(key.kid);
    await expect(verifyAccessToken(again, token, NOW)).resolves.toMatchObject({ org: 'acme' });
  });

  it('concurrent first starts agree on one key and tighten loose permissions', async () => {
    const fresh = path.join(dir, 'fresh');
    const keys = await Promise.all([1, 2, 3, 4].map(() => loadOrCreateSigningKey(fresh)));
    expect(new Set(keys.map((k) => k.kid)).size).toBe(1);
    expect((await fs.readdir(fresh)).sort()).toEqual(['signing-key.json']); // no temp files left behind
    await fs.chmod(path.join(fresh, 'signing-key.json'), 0o644);
    await fs.chmod(fresh, 0o755);
    await loadOrCreateSigningKey(fresh);
    expect(await mode(fresh)).toBe(0o700);
    expect(await mode(path.join(fresh, 'signing-key.json'))).toBe(0o600);
  });

  it('refuses a corrupt key file with a message naming it', async () => {
    const bad = path.join(dir, 'bad');
    await fs.mkdir(bad, { mode: 0o700 });
    await fs.writeFile(path.join(bad, 'signing-key.json'), '{"privateJwk":{"kty":"oct"}}', { mode: 0o600 });
    await expect(loadOrCreateSigningKey(bad)).rejects.toThrow(/signing-key\.json is not a valid signing key/);
  });
});

describe('access tokens', () => {
  it('issues an at+jwt for buildcloud-api that verifies and authenticates', async () => {
    const { token, expiresAtMs } = await issueAccessToken(key, {
      org: 'acme',
      subject: 'repo:acme/widget:ref:refs/heads/main',
      ttlSeconds: 3600,
      trust,
      verified,
      claims: { provider: 'github', org: 'evil', sub: 'evil', exp: 9999999999, iss: 'evil', bcid: { p: 'github', prj: 'evil/x', br: 'main' } },
      nowMs: NOW
    });
    expect(expiresAtMs).toBe(NOW + 3600_000);
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'ES256', kid: key.kid, typ: 'at+jwt' });
    const payload = decodeJwt(token);
    expect(payload).toMatchObject({ iss: 'buildcloud', aud: 'buildcloud-api', org: 'acme', provider: 'github' });
    expect(payload.sub).toBe('repo:acme/widget:ref:refs/heads/main'); // caller claims cannot override reserved ones
    expect(payload.exp).toBe(NOW / 1000 + 3600);

    await expect(verifyAccessToken(key, token, NOW + 1000)).resolves.toMatchObject({ org: 'acme', provider: 'github' });
    // The scope is the verified identity it was issued with, never a caller-supplied bcid claim.
    await expect(auth.authenticate(token)).resolves.toEqual({
      kind: 'org',
      org: 'acme',
      subject: 'repo:acme/widget:ref:refs/heads/main',
      via: 'access-token',
      scope: { projects: null, branches: null, readOnly: false, verified }
    });
  });

  it('rejects an expired token', async () => {
    const { token } = await issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 60, nowMs: NOW - 120_000, trust, verified });
    await expect(auth.authenticate(token)).resolves.toBeNull();
    const err = await verifyAccessToken(key, token, NOW).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as AuthError).code).toBe('expired');
    expect((err as AuthError).message).not.toContain(token);
  });

  it('rejects a tampered payload, a foreign key, and a JWT with the wrong typ or audience', async () => {
    const { token } = await issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 60, nowMs: NOW, trust, verified });
    const [h, p, s] = token.split('.');
    const forged = Buffer.from(JSON.stringify({ ...decodeJwt(token), org: 'other' })).toString('base64url');
    await expect(auth.authenticate(`${h}.${forged}.${s}`)).resolves.toBeNull();
    await expect(auth.authenticate(`${h}.${p}.${s.slice(0, -4)}AAAA`)).resolves.toBeNull();

    const otherKey = await loadOrCreateSigningKey(path.join(dir, 'other'));
    const foreign = await issueAccessToken(otherKey, { org: 'acme', subject: 's', ttlSeconds: 60, nowMs: NOW, trust, verified });
    await expect(auth.authenticate(foreign.token)).resolves.toBeNull();

    const sign = (typ: string, aud: string, bcid: unknown = encodeVerified(verified)) =>
      new SignJWT({ org: 'acme', trust: trustDigest(trust), bcid } as Record<string, unknown>)
        .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ })
        .setIssuer('buildcloud')
        .setAudience(aud)
        .setSubject('s')
        .setIssuedAt(NOW / 1000)
        .setExpirationTime(NOW / 1000 + 60)
        .sign(key.privateKey);
    await expect(auth.authenticate(await sign('JWT', 'buildcloud-api'))).resolves.toBeNull();
    await expect(auth.authenticate(await sign('at+jwt', 'something-else'))).resolves.toBeNull();
    await expect(auth.authenticate(await sign('at+jwt', 'buildcloud-api'))).resolves.toMatchObject({ org: 'acme' });
    // Without the verified identity (a token from before scopes, or a malformed one) it cannot be scoped: refused.
    await expect(auth.authenticate(await sign('at+jwt', 'buildcloud-api', null))).resolves.toBeNull();
    await expect(auth.authenticate(await sign('at+jwt', 'buildcloud-api', { p: 'jenkins', prj: 'a/b', br: 'main' }))).resolves.toBeNull();
  });

  it('is accepted only while the trust rule it was exchanged under still exists, unchanged, for its org', async () => {
    const { token } = await issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 3600, trust, nowMs: NOW, verified });
    expect(decodeJwt(token).trust).toBe(trustDigest(trust));
    await expect(auth.authenticate(token)).resolves.toMatchObject({ org: 'acme', via: 'access-token' });
    // The rule is removed (buildcloud admin trust remove): the very next request is refused.
    await store.removeTrust(trust.id);
    await expect(auth.authenticate(token)).resolves.toBeNull();
    // A new rule that happens to get the same id does not revive the token.
    const reused: TrustRow = { ...trust, value: 'someone-else' };
    store.trust.push(reused);
    await expect(auth.authenticate(token)).resolves.toBeNull();
  });

  it('is refused when the rule belongs to another org, or when the token names no rule at all', async () => {
    await store.createOrg('beta', NOW);
    const betaRule = await store.addTrust({
      org: 'beta',
      issuer: 'https://issuer.example',
      audience: 'buildcloud',
      claim: 'repository_owner',
      value: 'beta',
      createdAt: NOW
    });
    await expect(issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 60, trust: betaRule, nowMs: NOW, verified })).rejects.toThrow(/trust rule/);
    const sign = (claims: Record<string, unknown>) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'at+jwt' })
        .setIssuer('buildcloud')
        .setAudience('buildcloud-api')
        .setSubject('s')
        .setIssuedAt(NOW / 1000)
        .setExpirationTime(NOW / 1000 + 60)
        .sign(key.privateKey);
    await expect(auth.authenticate(await sign({ org: 'acme', trust: trustDigest(betaRule) }))).resolves.toBeNull();
    await expect(auth.authenticate(await sign({ org: 'acme' }))).resolves.toBeNull();
    await expect(verifyAccessToken(key, await sign({ org: 'acme' }), NOW)).rejects.toThrow(/trust rule/);
  });

  it('validates its inputs', async () => {
    await expect(issueAccessToken(key, { org: 'acme', subject: 's', ttlSeconds: 0, trust, verified })).rejects.toThrow(RangeError);
    await expect(issueAccessToken(key, { org: '', subject: 's', ttlSeconds: 60, trust, verified })).rejects.toThrow(/org/);
  });
});

describe('admin token', () => {
  it('is bca_<secret> in a 0600 file, reused on restart, and authenticates as admin', async () => {
    const file = path.join(dir, 'state', 'admin-token');
    expect(adminToken).toMatch(/^bca_[A-Za-z0-9]{32,}$/);
    expect(await mode(file)).toBe(0o600);
    await expect(loadOrCreateAdminToken(path.join(dir, 'state'))).resolves.toBe(adminToken);
    await expect(auth.authenticate(adminToken)).resolves.toEqual({ kind: 'admin', org: null, subject: 'admin', via: 'admin-token' });
  });

  it('rejects a wrong admin token of any length', async () => {
    await expect(auth.authenticate(adminToken.slice(0, -1) + (adminToken.endsWith('x') ? 'y' : 'x'))).resolves.toBeNull();
    await expect(auth.authenticate('bca_short')).resolves.toBeNull();
    await expect(auth.authenticate(adminToken + 'extra')).resolves.toBeNull();
  });

  it('refuses a file that does not hold an admin token', async () => {
    const bad = path.join(dir, 'badadmin');
    await fs.mkdir(bad, { mode: 0o700 });
    await fs.writeFile(path.join(bad, 'admin-token'), 'hunter2\n', { mode: 0o600 });
    await expect(loadOrCreateAdminToken(bad)).rejects.toThrow(/admin-token does not hold an admin token/);
  });
});

describe('fingerprint keys', () => {
  test('one secret per state dir, 0600, kept across starts; a key per org and project, the same for every lease of it', async () => {
    const keys = path.join(dir, 'fp-keys');
    const secret = await loadOrCreateFingerprintSecret(keys);
    expect(secret).toHaveLength(32);
    expect((await fs.stat(path.join(keys, 'fingerprint-secret'))).mode & 0o777).toBe(0o600);
    expect(await loadOrCreateFingerprintSecret(keys)).toEqual(secret);
    const k = fingerprintKey(secret, 'acme', 'acme/app');
    expect(Buffer.from(k, 'base64url')).toHaveLength(32);
    expect(fingerprintKey(secret, 'acme', 'acme/app')).toBe(k);
    expect(fingerprintKey(secret, 'acme', 'acme/other')).not.toBe(k);
    expect(fingerprintKey(secret, 'beta', 'acme/app')).not.toBe(k);
    // org "a" + project "b/c" must not collide with org "a/b" + project "c"
    expect(fingerprintKey(secret, 'a', 'b/c')).not.toBe(fingerprintKey(secret, 'a/b', 'c'));
    expect(fingerprintKey(await loadOrCreateFingerprintSecret(path.join(dir, 'other-keys')), 'acme', 'acme/app')).not.toBe(k);
  });
  test('a file that holds something else is refused, naming it', async () => {
    const keys = path.join(dir, 'bad-keys');
    await fs.mkdir(keys, { recursive: true, mode: 0o700 });
    await fs.writeFile(path.join(keys, 'fingerprint-secret'), 'short\n', { mode: 0o600 });
    await expect(loadOrCreateFingerprintSecret(keys)).rejects.toThrow(/fingerprint-secret does not hold a fingerprint secret/);
  });
});
