// A CI's OIDC side on loopback, for end-to-end tests: a discovery document and the JWKS it names over plain HTTP
// (serve needs --insecure-oidc-issuers), tokens signed with RS256 in each CI's real shape (CI-REFERENCE.md §3), and
// GitHub's token request endpoint (ACTIONS_ID_TOKEN_REQUEST_URL).
import * as http from 'http';
import type { AddressInfo } from 'net';
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload, type KeyLike } from 'jose';

export interface IssuerKey {
  kid: string;
  privateKey: KeyLike;
  jwk: JWK;
}

export async function newIssuerKey(kid: string): Promise<IssuerKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

export class LocalIssuer {
  base = '';
  // GitHub: what GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=… answers (claims without iss/aud/iat/exp).
  githubClaims: JWTPayload = {};
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

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.base = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

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
      json({ value: await this.sign({ ...this.githubClaims, aud: url.searchParams.get('audience') ?? 'https://github.com/acme' }) });
    } else {
      res.writeHead(404).end();
    }
  }

  sign(claims: JWTPayload, key: IssuerKey = this.key): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: this.issuer, iat: now, nbf: now - 5, exp: now + 300, ...claims })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
      .sign(key.privateKey);
  }
}

// GitLab `id_tokens` claims of a job in <namespace>/<project>.
export function gitlabClaims(namespace: string, project = 'widget-api', o: JWTPayload = {}): JWTPayload {
  return {
    sub: `project_path:${namespace}/${project}:ref_type:branch:ref:main`,
    aud: 'buildcloud',
    namespace_id: '72',
    namespace_path: namespace,
    project_id: '4821',
    project_path: `${namespace}/${project}`,
    pipeline_id: '1093344',
    pipeline_source: 'push',
    job_id: '55012931',
    ref: 'main',
    ref_type: 'branch',
    ref_path: 'refs/heads/main',
    ref_protected: 'true',
    user_login: 'mallory',
    runner_environment: 'self-hosted',
    ...o
  };
}

// CircleCI $CIRCLE_OIDC_TOKEN_V2 claims: default aud is the org id.
export function circleClaims(orgId: string, vcsOrigin: string, o: JWTPayload = {}): JWTPayload {
  const projectId = '2d4e6f80-1a3b-4c5d-8e9f-a0b1c2d3e4f5';
  return {
    sub: `org/${orgId}/project/${projectId}/user/7a1c2b3d-0000-4000-8000-000000000001/vcs-origin/${vcsOrigin}/vcs-ref/refs/heads/main`,
    aud: orgId,
    exp: Math.floor(Date.now() / 1000) + 3600,
    'oidc.circleci.com/org-id': orgId,
    'oidc.circleci.com/project-id': projectId,
    'oidc.circleci.com/pipeline-id': '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d',
    'oidc.circleci.com/workflow-id': '4f7238f8-bbeb-4428-912f-da28c816002f',
    'oidc.circleci.com/job-id': '0793c975-7b9f-489f-909b-5c6d7e8f9a0b',
    'oidc.circleci.com/context-ids': [],
    'oidc.circleci.com/vcs-origin': vcsOrigin,
    'oidc.circleci.com/vcs-ref': 'refs/heads/main',
    'oidc.circleci.com/ssh-rerun': false,
    ...o
  };
}
