// OIDC exchange against real issuers on loopback: each serves a discovery document and a JWKS over HTTP, and
// signs tokens shaped like the real GitHub Actions, GitLab CI and CircleCI ones (CI-REFERENCE.md §3).
import * as http from 'http';
import type { AddressInfo } from 'net';
import { exportJWK, generateKeyPair, SignJWT, UnsecuredJWT, type JWK, type JWTPayload, type KeyLike } from 'jose';
import { AuthError, OIDC_REFUSAL, OidcVerifier, type OidcVerifierOptions } from '../../src/server/oidc';
import { trustPreset } from '../../src/server/trust-presets';
import type { TrustRow } from '../../src/server/store/store';

interface SigningKeyPair {
  kid: string;
  alg: string;
  privateKey: KeyLike;
  jwk: JWK;
}

async function newKey(kid: string, alg = 'RS256'): Promise<SigningKeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

class TestIssuer {
  keys: SigningKeyPair[] = [];
  mode: 'ok' | 'error500' | 'hang' | 'wrong-issuer' | 'jwks-error' = 'ok';
  discoveryHits = 0;
  jwksHits = 0;
  base = '';
  private readonly server = http.createServer((req, res) => this.handle(req, res));

  constructor(readonly path: string) {}

  get issuer(): string {
    return this.base + this.path;
  }

  async start(key: SigningKeyPair): Promise<this> {
    this.keys = [key];
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.base = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.mode === 'hang') return;
    if (this.mode === 'error500') {
      res.writeHead(500).end('down for maintenance');
      return;
    }
    const json = (body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (req.url === `${this.path}/.well-known/openid-configuration`) {
      this.discoveryHits++;
      json({
        issuer: this.mode === 'wrong-issuer' ? 'https://elsewhere.example.com' : this.issuer,
        jwks_uri: `${this.issuer}/.well-known/jwks`,
        response_types_supported: ['id_token'],
        id_token_signing_alg_values_supported: ['RS256', 'ES256']
      });
    } else if (req.url === `${this.path}/.well-known/jwks`) {
      this.jwksHits++;
      if (this.mode === 'jwks-error') res.writeHead(503).end();
      else json({ keys: this.keys.map((k) => k.jwk) });
    } else {
      res.writeHead(404).end();
    }
  }

  sign(claims: JWTPayload, key: SigningKeyPair = this.keys[0], header: Record<string, unknown> = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: this.issuer, iat: now, exp: now + 300, ...claims })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header })
      .sign(key.privateKey);
  }
}

const ORG_ID = '8f3b2c1d-4e5a-4b6c-9d7e-0a1b2c3d4e5f';
const now = () => Math.floor(Date.now() / 1000);

// GitHub: both doc examples have exp − iat = 300 s and nbf = iat − 600 s.
const githubClaims = (o: JWTPayload = {}): JWTPayload => ({
  jti: 'b1f0c2e4-1d9a-4c55-8f0a-5d2b3c4e5f60',
  sub: 'repo:acme-corp/widget-api:ref:refs/heads/main',
  aud: 'buildcloud',
  ref: 'refs/heads/main',
  sha: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
  repository: 'acme-corp/widget-api',
  repository_owner: 'acme-corp',
  repository_owner_id: '98765432',
  repository_id: '712345678',
  repository_visibility: 'private',
  run_id: '9876543210',
  run_number: '412',
  run_attempt: '2',
  actor: 'jdoe',
  actor_id: '1234567',
  workflow: 'CI',
  workflow_ref: 'acme-corp/widget-api/.github/workflows/ci.yml@refs/heads/main',
  job_workflow_ref: 'acme-corp/widget-api/.github/workflows/ci.yml@refs/heads/main',
  event_name: 'push',
  ref_type: 'branch',
  runner_environment: 'github-hosted',
  nbf: now() - 600,
  ...o
});

const gitlabClaims = (o: JWTPayload = {}): JWTPayload => ({
  sub: 'project_path:platform/tools/widget-api:ref_type:branch:ref:main',
  aud: ['buildcloud', 'https://vault.example.com'], // GitLab allows an array aud
  namespace_id: '72',
  namespace_path: 'platform/tools',
  project_id: '4821',
  project_path: 'platform/tools/widget-api',
  user_id: '31',
  user_login: 'jdoe',
  pipeline_id: '1093344',
  pipeline_source: 'push',
  job_id: '55012931',
  ref: 'main',
  ref_type: 'branch',
  ref_path: 'refs/heads/main',
  ref_protected: 'true',
  runner_id: 12,
  runner_environment: 'gitlab-hosted',
  sha: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
  project_visibility: 'private',
  ci_config_ref_uri: 'gitlab.example.com/platform/tools/widget-api//.gitlab-ci.yml@refs/heads/main',
  ...o
});

// CircleCI: $CIRCLE_OIDC_TOKEN_V2, default aud = the org id, valid for one hour.
const circleClaims = (o: JWTPayload = {}): JWTPayload => ({
  sub: `org/${ORG_ID}/project/2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5/user/7a1c2b3d-0000-4000-8000-000000000001/vcs-origin/github.com/acme-corp/widget-api/vcs-ref/refs/heads/main`,
  aud: ORG_ID,
  exp: now() + 3600,
  'oidc.circleci.com/org-id': ORG_ID,
  'oidc.circleci.com/project-id': '2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5',
  'oidc.circleci.com/pipeline-id': '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d',
  'oidc.circleci.com/pipeline-definition-id': '11111111-2222-4333-8444-555555555555',
  'oidc.circleci.com/workflow-id': '4f7238f8-bbeb-4428-912f-da28c816002f',
  'oidc.circleci.com/job-id': '0793c975-7b9f-489f-909b-5c6d7e8f9a0b',
  'oidc.circleci.com/context-ids': ['ctx-aaaa', 'ctx-bbbb'],
  'oidc.circleci.com/vcs-origin': 'github.com/acme-corp/widget-api',
  'oidc.circleci.com/vcs-ref': 'refs/heads/main',
  'oidc.circleci.com/ssh-rerun': false,
  ...o
});

let github: TestIssuer;
let gitlab: TestIssuer;
let circle: TestIssuer;
let trusts: TrustRow[];
let nextId = 1;
const row = (org: string, r: Omit<TrustRow, 'id' | 'createdAt' | 'org'>): TrustRow => ({ ...r, org, id: nextId++, createdAt: 0 });
const verifier = (o: OidcVerifierOptions = {}) => new OidcVerifier({ allowInsecureIssuers: true, fetchTimeoutMs: 1000, ...o });

async function authError(p: Promise<unknown>): Promise<AuthError> {
  const err = await p.then(
    () => new Error('expected an AuthError, the exchange succeeded'),
    (e: unknown) => e
  );
  if (!(err instanceof AuthError)) throw err;
  return err;
}

// RSA key generation is slow; the issuers' starting keys are made once and each test gets fresh servers.
let startKeys: SigningKeyPair[];
beforeAll(async () => {
  startKeys = await Promise.all([newKey('gh-1'), newKey('gl-1'), newKey('cc-1', 'ES256')]);
});
beforeEach(async () => {
  github = await new TestIssuer('').start(startKeys[0]);
  gitlab = await new TestIssuer('/gitlab').start(startKeys[1]);
  circle = await new TestIssuer(`/org/${ORG_ID}`).start(startKeys[2]);
  // The presets accept http:// issuers on loopback, where these test issuers live.
  trusts = [
    row('acme', trustPreset('github', { owner: 'acme-corp', issuer: github.issuer })),
    row('platform', trustPreset('gitlab', { namespace: 'platform/tools', issuer: gitlab.issuer })),
    row('circle-acme', trustPreset('circleci', { orgId: ORG_ID, issuer: circle.issuer }))
  ];
});
afterEach(async () => {
  await Promise.all([github.stop(), gitlab.stop(), circle.stop()]);
});

describe('successful exchanges', () => {
  it('GitHub Actions: repository_owner', async () => {
    const token = await github.sign(githubClaims());
    const res = await verifier().exchange(token, trusts);
    expect(res.org).toBe('acme');
    expect(res.trust).toBe(trusts[0]); // access tokens are bound to the rule that matched
    expect(res.subject).toBe('repo:acme-corp/widget-api:ref:refs/heads/main');
    expect(res.claims).toMatchObject({ repository: 'acme-corp/widget-api', run_id: '9876543210' });
  });

  it('GitHub Actions: repository_owner_id, and a trailing slash on either issuer', async () => {
    const byId = row('acme-id', trustPreset('github', { ownerId: '98765432', issuer: github.issuer + '/' }));
    expect(byId.issuer).toBe(github.issuer);
    const token = await github.sign(githubClaims({ iss: github.issuer + '/' }));
    await expect(verifier().exchange(token, [{ ...byId, issuer: github.issuer + '/' }])).resolves.toMatchObject({ org: 'acme-id' });
  });

  it('GitLab CI: namespace_path, aud given as an array', async () => {
    const res = await verifier().exchange(await gitlab.sign(gitlabClaims()), trusts);
    expect(res).toMatchObject({ org: 'platform', subject: 'project_path:platform/tools/widget-api:ref_type:branch:ref:main' });
  });

  it('CircleCI: the dotted, slashed claim name is taken literally; default aud is the org id (ES256)', async () => {
    const res = await verifier().exchange(await circle.sign(circleClaims()), trusts);
    expect(res.org).toBe('circle-acme');
    expect(res.claims['oidc.circleci.com/vcs-origin']).toBe('github.com/acme-corp/widget-api');
  });

  it('falls back to a nested path only when the literal claim is absent', async () => {
    const nested = row('nested', { issuer: github.issuer, audience: 'buildcloud', claim: 'extra.team', value: 'builders' });
    const token = await github.sign(githubClaims({ extra: { team: 'builders' } }));
    await expect(verifier().exchange(token, [nested])).resolves.toMatchObject({ org: 'nested' });
    const literalWins = await github.sign(githubClaims({ extra: { team: 'builders' }, 'extra.team': 'other' }));
    expect((await authError(verifier().exchange(literalWins, [nested]))).code).toBe('claim_mismatch');
  });

  it('caches discovery and keys: a burst of exchanges fetches each once', async () => {
    const v = verifier();
    const tokens = await Promise.all(Array.from({ length: 20 }, () => github.sign(githubClaims())));
    const results = await Promise.all(tokens.map((t) => v.exchange(t, trusts)));
    expect(results.every((r) => r.org === 'acme')).toBe(true);
    expect(github.discoveryHits).toBe(1);
    expect(github.jwksHits).toBe(1);
  });
});

describe('rejected tokens', () => {
  it('wrong audience → audience_mismatch naming the expected audience', async () => {
    const token = await github.sign(githubClaims({ aud: 'https://github.com/acme-corp' })); // GitHub's default aud
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('audience_mismatch');
    expect(err.message).toContain('"buildcloud"');
    expect(err.message).toContain('https://github.com/acme-corp');
  });

  it('expired → expired (30 s of clock skew is tolerated)', async () => {
    const old = await github.sign(githubClaims({ iat: now() - 500, exp: now() - 120 }));
    expect((await authError(verifier().exchange(old, trusts))).code).toBe('expired');
    const justExpired = await github.sign(githubClaims({ iat: now() - 300, exp: now() - 10 }));
    await expect(verifier().exchange(justExpired, trusts)).resolves.toMatchObject({ org: 'acme' });
  });

  it('nbf in the future → invalid_token', async () => {
    const err = await authError(verifier().exchange(await github.sign(githubClaims({ nbf: now() + 300 })), trusts));
    expect(err.code).toBe('invalid_token');
    expect(err.message).toMatch(/not valid yet/);
  });

  it('a token without exp → invalid_token', async () => {
    const token = await new SignJWT(githubClaims({ iss: github.issuer })).setProtectedHeader({ alg: 'RS256', kid: 'gh-1' }).sign(github.keys[0].privateKey);
    expect((await authError(verifier().exchange(token, trusts))).code).toBe('invalid_token');
  });

  it('issuer nobody trusts → untrusted_issuer naming it (for the log); nothing is fetched', async () => {
    const token = await github.sign(githubClaims({ iss: 'https://token.actions.example.net' }));
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('untrusted_issuer');
    expect(err.message).toContain('"https://token.actions.example.net"');
    expect(github.discoveryHits).toBe(0);
  });

  it("the caller's refusal names the admin command and nothing of the trust table", () => {
    expect(OIDC_REFUSAL).toContain('buildcloud admin trust add --org <org> --github-owner');
    for (const t of trusts) {
      expect(OIDC_REFUSAL).not.toContain(t.org);
      expect(OIDC_REFUSAL).not.toContain(t.value);
    }
  });

  it("a trusted issuer's name on a token signed by another issuer's key → invalid_token", async () => {
    const foreign = await newKey('gh-1'); // same kid, different key
    const err = await authError(verifier().exchange(await github.sign(githubClaims(), foreign), trusts));
    expect(err.code).toBe('invalid_token');
    expect(err.message).toMatch(/signature/);
    const unknownKid = await newKey('gh-unknown');
    expect((await authError(verifier().exchange(await github.sign(githubClaims(), unknownKid), trusts))).code).toBe('invalid_token');
  });

  it('alg "none" → invalid_token before any fetch', async () => {
    const token = new UnsecuredJWT(githubClaims({ iss: github.issuer, exp: now() + 300 })).encode();
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('invalid_token');
    expect(err.message).toContain('alg "none"');
    expect(github.discoveryHits).toBe(0);
  });

  it('HS256 (e.g. signed with the public key as an HMAC secret) → invalid_token', async () => {
    const secret = new TextEncoder().encode(JSON.stringify(github.keys[0].jwk));
    const token = await new SignJWT(githubClaims({ iss: github.issuer, exp: now() + 300 })).setProtectedHeader({ alg: 'HS256', kid: 'gh-1' }).sign(secret);
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('invalid_token');
    expect(err.message).toContain('HS256');
  });

  it('garbage → invalid_token', async () => {
    expect((await authError(verifier().exchange('not.a.jwt', trusts))).code).toBe('invalid_token');
    expect((await authError(verifier().exchange('', trusts))).code).toBe('invalid_token');
  });

  it('claim mismatch says which claim and value were expected and found, never the token', async () => {
    const token = await github.sign(githubClaims({ repository_owner: 'evil-corp' }));
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('claim_mismatch');
    expect(err.message).toContain('repository_owner="acme-corp"');
    expect(err.message).toContain('repository_owner="evil-corp"');
    expect(err.message).toContain('org "acme"');
    expect(err.message).not.toContain(token.split('.')[2]);
  });

  it('GitLab namespace_path matches exactly: a parent group does not cover its subgroups', async () => {
    const parentOnly = row('platform-root', trustPreset('gitlab', { namespace: 'platform', issuer: gitlab.issuer }));
    const err = await authError(verifier().exchange(await gitlab.sign(gitlabClaims()), [parentOnly]));
    expect(err.code).toBe('claim_mismatch');
    expect(err.message).toContain('namespace_path="platform/tools"');
  });

  it('an array claim is never accepted as a match', async () => {
    const ctx = row('ctx', { issuer: circle.issuer, audience: ORG_ID, claim: 'oidc.circleci.com/context-ids', value: 'ctx-aaaa' });
    const err = await authError(verifier().exchange(await circle.sign(circleClaims()), [ctx]));
    expect(err.code).toBe('claim_mismatch');
  });
});

describe('requestedOrg', () => {
  it('selects among orgs that trust the same issuer', async () => {
    const both = [
      row('acme-a', trustPreset('github', { owner: 'acme-corp', issuer: github.issuer })),
      row('acme-b', trustPreset('github', { owner: 'acme-corp', issuer: github.issuer })),
      row('other', trustPreset('github', { owner: 'other-corp', issuer: github.issuer }))
    ];
    const token = await github.sign(githubClaims());
    const v = verifier();
    await expect(v.exchange(token, both)).resolves.toMatchObject({ org: 'acme-a' });
    await expect(v.exchange(token, both, 'acme-b')).resolves.toMatchObject({ org: 'acme-b' });
    const mismatch = await authError(v.exchange(token, both, 'other'));
    expect(mismatch.code).toBe('claim_mismatch');
    expect(mismatch.message).not.toContain('acme-a');
    const nobody = await authError(v.exchange(token, both, 'nobody'));
    expect(nobody.code).toBe('untrusted_issuer');
    expect(nobody.message).toContain('org "nobody"');
  });

  it('the signature is checked before the requested org: a forged or unsigned token fails the same way for any org', async () => {
    const forgedKey = await newKey('gh-1');
    const forged = await github.sign(githubClaims(), forgedKey);
    const unsigned = new UnsecuredJWT(githubClaims({ iss: github.issuer, exp: now() + 300 })).encode();
    const v = verifier();
    for (const org of [undefined, 'acme', 'nobody', 'platform']) {
      expect((await authError(v.exchange(forged, trusts, org))).code).toBe('invalid_token');
      expect((await authError(v.exchange(unsigned, trusts, org))).code).toBe('invalid_token');
    }
  });
});

describe('discovery and keys', () => {
  it('issuer down → discovery_failed', async () => {
    const token = await github.sign(githubClaims());
    await github.stop();
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('discovery_failed');
    expect(err.message).toContain(`${github.issuer}/.well-known/openid-configuration`);
    expect(err.message).toContain('ECONNREFUSED');
    github = await new TestIssuer('').start(startKeys[0]); // for afterEach
  });

  it('HTTP 500, a hanging issuer and a document naming another issuer → discovery_failed', async () => {
    const token = await github.sign(githubClaims());
    github.mode = 'error500';
    expect((await authError(verifier().exchange(token, trusts))).message).toMatch(/HTTP 500/);
    github.mode = 'hang';
    expect((await authError(verifier({ fetchTimeoutMs: 200 }).exchange(token, trusts))).code).toBe('discovery_failed');
    github.mode = 'wrong-issuer';
    const err = await authError(verifier().exchange(token, trusts));
    expect(err.code).toBe('discovery_failed');
    expect(err.message).toContain('elsewhere.example.com');
  });

  it('an http:// issuer is refused unless insecure issuers are allowed', async () => {
    const err = await authError(new OidcVerifier().exchange(await github.sign(githubClaims()), trusts));
    expect(err.code).toBe('discovery_failed');
    expect(err.message).toMatch(/https:\/\//);
    expect(github.discoveryHits).toBe(0);
  });

  it('JWKS failing after discovery → discovery_failed', async () => {
    github.mode = 'jwks-error';
    const err = await authError(verifier().exchange(await github.sign(githubClaims()), trusts));
    expect(err.code).toBe('discovery_failed');
    expect(err.message).toContain('signing keys');
    expect(github.discoveryHits).toBe(1);
  });

  it('key rotation: a token with a new kid makes the verifier fetch the JWKS again', async () => {
    const v = verifier({ jwksCooldownMs: 0 });
    await expect(v.exchange(await github.sign(githubClaims()), trusts)).resolves.toMatchObject({ org: 'acme' });
    expect(github.jwksHits).toBe(1);
    const rotated = await newKey('gh-2');
    github.keys = [rotated];
    await expect(v.exchange(await github.sign(githubClaims(), rotated), trusts)).resolves.toMatchObject({ org: 'acme' });
    expect(github.jwksHits).toBe(2);
    await expect(v.exchange(await github.sign(githubClaims(), rotated), trusts)).resolves.toMatchObject({ org: 'acme' });
    expect(github.jwksHits).toBe(2);
  });

  it('unknown kids inside the cooldown do not make the verifier hammer the issuer', async () => {
    const v = verifier(); // default 30 s cooldown
    await v.exchange(await github.sign(githubClaims()), trusts);
    for (let i = 0; i < 5; i++) {
      const k = await newKey(`made-up-${i}`, 'ES256');
      expect((await authError(v.exchange(await github.sign(githubClaims(), k), trusts))).code).toBe('invalid_token');
    }
    expect(github.jwksHits).toBe(1);
  });
});

describe('trustPreset', () => {
  it('GitHub, GitLab and CircleCI defaults', () => {
    expect(trustPreset('github', { owner: 'acme-corp' })).toEqual({
      issuer: 'https://token.actions.githubusercontent.com',
      audience: 'buildcloud',
      claim: 'repository_owner',
      value: 'acme-corp'
    });
    expect(trustPreset('github', { ownerId: '98765432', audience: 'bc' })).toMatchObject({ claim: 'repository_owner_id', value: '98765432', audience: 'bc' });
    expect(trustPreset('gitlab', { namespace: 'platform/tools' })).toEqual({
      issuer: 'https://gitlab.com',
      audience: 'buildcloud',
      claim: 'namespace_path',
      value: 'platform/tools'
    });
    expect(trustPreset('gitlab', { namespace: 'g', issuer: 'https://gitlab.example.com/' }).issuer).toBe('https://gitlab.example.com');
    expect(trustPreset('circleci', { orgId: ORG_ID })).toEqual({
      issuer: `https://oidc.circleci.com/org/${ORG_ID}`,
      audience: ORG_ID,
      claim: 'oidc.circleci.com/org-id',
      value: ORG_ID
    });
  });

  it('names the flag that is wrong', () => {
    expect(() => trustPreset('github', {})).toThrow(/--github-owner/);
    expect(() => trustPreset('github', { owner: 'a', ownerId: '1' })).toThrow(/exactly one/);
    expect(() => trustPreset('github', { owner: 'acme corp' })).toThrow(/--github-owner "acme corp"/);
    expect(() => trustPreset('github', { ownerId: 'abc' })).toThrow(/--github-owner-id/);
    expect(() => trustPreset('gitlab', { namespace: '/platform/' })).toThrow(/--gitlab-namespace/);
    expect(() => trustPreset('gitlab', { namespace: 'g', issuer: 'http://gitlab.internal' })).toThrow(/--issuer .*https:\/\//);
    expect(trustPreset('gitlab', { namespace: 'g', issuer: 'http://gitlab.internal', allowInsecureIssuer: true }).issuer).toBe('http://gitlab.internal');
    expect(trustPreset('gitlab', { namespace: 'g', issuer: 'http://127.0.0.1:8080' }).issuer).toBe('http://127.0.0.1:8080');
    expect(() => trustPreset('gitlab', { namespace: 'g', issuer: 'not a url' })).toThrow(/--issuer/);
    expect(() => trustPreset('circleci', { orgId: 'acme' })).toThrow(/--circleci-org-id "acme"/);
    expect(() => trustPreset('github', { owner: 'a', audience: '' })).toThrow(/--audience/);
    expect(() => trustPreset('bitbucket' as 'github', {})).toThrow(/unknown trust kind/);
  });
});
