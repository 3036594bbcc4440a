// A CI's OIDC side on loopback, for end-to-end tests: a discovery document and the JWKS it names over plain HTTP
// (serve needs --insecure-oidc-issuers), tokens signed with RS256 in each CI's real shape (CI-REFERENCE.md §3), and
// GitHub's token request endpoint (ACTIONS_ID_TOKEN_REQUEST_URL).
import { randomUUID } from 'crypto';
import * as http from 'http';
import type { AddressInfo } from 'net';
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload, type KeyLike } from 'jose';

export interface IssuerKey {
  kid: string;
  privateKey: KeyLike;
  jwk: JWK;
}

/** A fresh RS256 signing key and its public JWK under `kid` (two keys may share a kid: that is how a forgery looks). */
export async function newIssuerKey(kid: string): Promise<IssuerKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

/** One CI's OIDC issuer on 127.0.0.1: discovery, JWKS, and (for GitHub) the runner's ID token request endpoint. */
export class LocalIssuer {
  base = '';
  // GitHub: what GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=… answers (claims without iss/aud/iat/exp), and the key
  // it signs with (another key: a forged token from the issuer's own endpoint).
  githubClaims: JWTPayload = {};
  githubSignWith: IssuerKey | null = null;
  // Every token the GitHub endpoint handed out, so a test can check that none reached a log.
  readonly issued: string[] = [];
  readonly requestToken = 'gh-request-token-not-a-secret';
  private readonly server = http.createServer((req, res) => void this.handle(req, res));

  // path: '/gitlab', '/org/<uuid>' (CircleCI), '' (GitHub)
  constructor(
    readonly key: IssuerKey,
    readonly path = ''
  ) {}

  get issuer(): string {
    return `${this.base}${this.path}`;
  }

  get githubRequestUrl(): string {
    return `${this.base}/_apis/id-token?api-version=2.0`;
  }

  /** Listens on an ephemeral loopback port; `issuer` is valid once this resolves. */
  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.base = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** Closes the listener and any open connections. */
  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const json = (body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    const url = new URL(req.url ?? '/', this.base);
    if (url.pathname === `${this.path}/.well-known/openid-configuration`) {
      json({ issuer: this.issuer, jwks_uri: `${this.issuer}/.well-known/jwks`, id_token_signing_alg_values_supported: ['RS256'] });
    } else if (url.pathname === `${this.path}/.well-known/jwks`) {
      json({ keys: [this.key.jwk] });
    } else if (url.pathname === '/_apis/id-token') {
      if (req.headers.authorization !== `bearer ${this.requestToken}` && req.headers.authorization !== `Bearer ${this.requestToken}`) {
        res.writeHead(401).end();
        return;
      }
      const value = await this.sign(
        { ...this.githubClaims, aud: url.searchParams.get('audience') ?? 'https://github.com/acme' },
        this.githubSignWith ?? this.key
      );
      this.issued.push(value);
      json({ value });
    } else {
      res.writeHead(404).end();
    }
  }

  /** Signs `claims` as this issuer (iss, iat, nbf, exp filled in unless given) with its key, or with `key`. */
  sign(claims: JWTPayload, key: IssuerKey = this.key): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: this.issuer, iat: now, nbf: now - 5, exp: now + 300, ...claims })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
      .sign(key.privateKey);
  }
}

/**
 * GitHub Actions ID token claims of a job in `repository` (owner/name), in the shape GitHub issues them
 * (CI-REFERENCE.md §3; the docs' and actions-oidc-debugger's example tokens): every value a string, head_ref and
 * base_ref '' outside pull request events, sub `repo:O/R:ref:REF` or `repo:O/R:pull_request`. `o` overrides claims;
 * sub, workflow_ref and job_workflow_ref follow the overridden event_name and ref. aud, iss, iat, nbf and exp are
 * set when the token is signed.
 */
export function githubClaims(repository: string, o: JWTPayload = {}): JWTPayload {
  const event = typeof o.event_name === 'string' ? o.event_name : 'push';
  const pr = event.startsWith('pull_request');
  const ref = typeof o.ref === 'string' ? o.ref : pr ? 'refs/pull/57/merge' : 'refs/heads/main';
  const enc = (v: string) => v.replace(/:/g, '%3A');
  const workflowRef = `${repository}/.github/workflows/ci.yml@${ref}`;
  return {
    jti: randomUUID(),
    sub: pr ? `repo:${enc(repository)}:pull_request` : `repo:${enc(repository)}:ref:${enc(ref)}`,
    ref,
    ref_type: ref.startsWith('refs/tags/') ? 'tag' : 'branch',
    ref_protected: pr ? 'false' : 'true',
    sha: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
    repository,
    repository_owner: repository.split('/')[0],
    repository_owner_id: '98765432',
    repository_id: '712345678',
    repository_visibility: 'private',
    run_id: '9876543210',
    run_number: '412',
    run_attempt: '1',
    runner_environment: 'github-hosted',
    actor: 'jdoe',
    actor_id: '1234567',
    workflow: 'CI',
    workflow_ref: workflowRef,
    workflow_sha: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
    job_workflow_ref: workflowRef,
    job_workflow_sha: '3f6c2a9e1b7d4c8f0a5e9b2d6c1f8e4a7b0d3c5e',
    event_name: event,
    head_ref: pr ? 'feature/login' : '',
    base_ref: pr ? 'main' : '',
    ...o
  };
}

/**
 * GitLab `id_tokens` claims of a job in <namespace>/<project> (GitLab's documented example token: ids as strings
 * except runner_id, ref_protected as "true"/"false", sub `project_path:G/P:ref_type:T:ref:R`). `o` overrides
 * claims; sub and ref_path follow the overridden ref and ref_type.
 */
export function gitlabClaims(namespace: string, project = 'widget-api', o: JWTPayload = {}): JWTPayload {
  const ref = typeof o.ref === 'string' ? o.ref : 'main';
  const refType = typeof o.ref_type === 'string' ? o.ref_type : 'branch';
  const path = `${namespace}/${project}`;
  return {
    sub: `project_path:${path}:ref_type:${refType}:ref:${ref}`,
    aud: 'buildcloud',
    jti: randomUUID(),
    namespace_id: '72',
    namespace_path: namespace,
    project_id: '4821',
    project_path: path,
    project_visibility: 'private',
    user_id: '1',
    user_login: 'jdoe',
    user_email: 'jdoe@example.com',
    user_access_level: 'developer',
    pipeline_id: '1093344',
    pipeline_source: 'push',
    job_id: '55012931',
    ref,
    ref_type: refType,
    ref_path: refType === 'tag' ? `refs/tags/${ref}` : `refs/heads/${ref}`,
    ref_protected: 'true',
    runner_id: 1,
    runner_environment: 'self-hosted',
    sha: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
    ci_config_ref_uri: `gitlab.example.com/${path}//.gitlab-ci.yml@refs/heads/main`,
    ci_config_sha: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
    ...o
  };
}

/**
 * CircleCI $CIRCLE_OIDC_TOKEN_V2 claims: aud is the org id (the default), sub is V2's
 * `org/O/project/P/user/U/vcs-origin/ORIGIN/vcs-ref/REF`, exp one hour after issue. `o` overrides claims; sub follows
 * the overridden vcs-ref.
 */
export function circleClaims(orgId: string, vcsOrigin: string, o: JWTPayload = {}): JWTPayload {
  const projectId = '2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5';
  const userId = '7a1c2b3d-0000-4000-8000-000000000001';
  const vcsRef = typeof o['oidc.circleci.com/vcs-ref'] === 'string' ? (o['oidc.circleci.com/vcs-ref'] as string) : 'refs/heads/main';
  return {
    sub: `org/${orgId}/project/${projectId}/user/${userId}/vcs-origin/${vcsOrigin}/vcs-ref/${vcsRef}`,
    aud: orgId,
    exp: Math.floor(Date.now() / 1000) + 3600,
    'oidc.circleci.com/org-id': orgId,
    'oidc.circleci.com/project-id': projectId,
    'oidc.circleci.com/pipeline-id': '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d',
    'oidc.circleci.com/pipeline-definition-id': '1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f',
    'oidc.circleci.com/workflow-id': '4f7238f8-bbeb-4428-912f-da28c816002f',
    'oidc.circleci.com/job-id': '0793c975-7b9f-489f-909b-5c6d7e8f9a0b',
    'oidc.circleci.com/context-ids': ['3a4b5c6d-7e8f-4a9b-8c0d-1e2f3a4b5c6d'],
    'oidc.circleci.com/vcs-origin': vcsOrigin,
    'oidc.circleci.com/vcs-ref': vcsRef,
    'oidc.circleci.com/ssh-rerun': false,
    ...o
  };
}
