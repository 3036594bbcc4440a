// The gRPC face of the control plane: authentication from metadata, one error boundary per call.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from './log';
import { services, type ProvisionRequestMsg, type ExchangeTokenResponseMsg } from '../contract/grpc';
import { ApiError, denied, invalid, unauthenticated, unavailable } from './errors';
import { checkOrgMatch, type LeaseManager } from './leases';
import type { Store } from './store/store';
import { AuthError, OIDC_REFUSAL, OIDC_UNAVAILABLE, issueAccessToken, type Authenticator, type OidcVerifier, type Principal, type SigningKey } from './auth';
import { ScopeError, verifiedIdentityFromClaims, type VerifiedIdentity } from './scope';
import { validateOrgName, validateProvisionIdentity } from './validate';
import { RateLimited, rateLimitKey, type RateLimiter } from './rate-limit';

export interface GrpcApiDeps {
  leases: LeaseManager;
  store: Store;
  authenticator: Authenticator;
  oidc: OidcVerifier;
  signingKey: SigningKey;
  accessTokenTtlS: number;
  log: Logger;
  provisionLimiter?: RateLimiter | null; // Provision calls per credential (--provision-rate); none: no limit
  exchangeLimiter?: RateLimiter | null; // ExchangeToken calls per client address; none: no limit
}

// The client's address from grpc-js's peer string ("ipv4:127.0.0.1:5000", "[::1]:5000", "127.0.0.1:5000").
function peerAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const m = /^\[([^\]]+)\]:\d+$/.exec(p) ?? /^(.*):\d+$/.exec(p);
  return m ? m[1] : p;
}

type Handler<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>;

function unary<Req, Res>(log: Logger, name: string, fn: Handler<Req, Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call).then(
      (res) => callback(null, res),
      (err: unknown) => {
        if (err instanceof RateLimited) {
          // The wait is in the message for people and in trailing metadata for clients: `retry-after` (whole seconds)
          // tells a rate limit, worth retrying after it, from RESOURCE_EXHAUSTED for an empty bucket, which is not.
          const metadata = new grpc.Metadata();
          metadata.set('retry-after', String(err.retryAfterSeconds));
          return callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: err.message, metadata });
        }
        if (err instanceof ApiError) return callback({ code: err.code, details: err.message });
        if (err instanceof AuthError) {
          // AuthError messages are for the operator (they may name rules and orgs); the caller gets the generic one.
          log.warn({ rpc: name, reason: err.code, detail: err.message }, 'authentication refused');
          return callback({ code: grpc.status.PERMISSION_DENIED, details: OIDC_REFUSAL });
        }
        log.error({ rpc: name, err: err instanceof Error ? err.stack : String(err) }, 'internal error');
        callback({ code: grpc.status.INTERNAL, details: `Internal error in ${name}; the control plane's log has the details.` });
      }
    );
  };
}

function bearer(md: grpc.Metadata): string {
  const v = md.get('authorization')[0];
  const s = typeof v === 'string' ? v : v ? v.toString('utf8') : '';
  const m = /^Bearer\s+(\S+)$/i.exec(s.trim());
  if (!m)
    throw unauthenticated(
      'Missing credentials. Send metadata "authorization: Bearer <token>" with an org token (buildcloud admin token create) or an access token from Auth/ExchangeToken.'
    );
  return m[1];
}

export function addGrpcApi(server: grpc.Server, d: GrpcApiDeps): void {
  const { BuildCloud, Auth } = services();

  // The org a call acts for: an org token's own org; the admin token acts for the org named in the request.
  async function caller(md: grpc.Metadata, requested: string): Promise<{ org: string; principal: Principal }> {
    const p = await d.authenticator.authenticate(bearer(md));
    if (!p) throw unauthenticated('Invalid, expired or revoked token. Create a new one with: buildcloud admin token create --org ORG');
    // Checked for every caller before it is compared or quoted: a bounded, printable name (validate.ts).
    if (requested) validateOrgName(requested);
    if (p.kind === 'admin') {
      if (!requested) throw invalid('Missing org. The admin token must name the org it acts for.');
      if (!(await d.store.getOrg(requested))) throw new ApiError(grpc.status.NOT_FOUND, `Org '${requested}' not found.`);
      return { org: requested, principal: p };
    }
    return { org: checkOrgMatch(p.org as string, requested), principal: p };
  }

  server.addService(BuildCloud.service, {
    Provision: unary<ProvisionRequestMsg, unknown>(d.log, 'Provision', async (call) => {
      const { org, principal } = await caller(call.metadata, call.request.org);
      d.provisionLimiter?.check(rateLimitKey(principal)); // after authentication: a stranger cannot drain a token's bucket
      validateProvisionIdentity(call.request);
      return d.leases.provision(org, call.request, principal.scope);
    }),
    Release: unary<{ leaseId: string }, unknown>(d.log, 'Release', async (call) => {
      const { org, principal } = await caller(call.metadata, '');
      return d.leases.release(org, call.request.leaseId, principal.scope);
    }),
    Get: unary<{ leaseId: string }, unknown>(d.log, 'Get', async (call) => {
      const { org, principal } = await caller(call.metadata, '');
      return d.leases.get(org, call.request.leaseId, principal.scope);
    })
  });

  server.addService(Auth.service, {
    ExchangeToken: unary<{ oidcToken: string; org: string }, ExchangeTokenResponseMsg>(d.log, 'ExchangeToken', async (call) => {
      const { oidcToken, org } = call.request;
      d.exchangeLimiter?.check(`peer:${peerAddress(call.getPeer())}`);
      if (!oidcToken) throw invalid("Missing oidc_token. Expected the CI job's OIDC token (a JWT).");
      if (oidcToken.length > 16384) throw invalid('Invalid oidc_token: longer than 16384 characters.');
      if (org) validateOrgName(org);
      // Every org's rules: the verifier checks the signature before it looks at which org was asked for.
      const trusts = await d.store.listTrust();
      let verified;
      try {
        verified = await d.oidc.exchange(oidcToken, trusts, org || undefined);
      } catch (err) {
        if (!(err instanceof AuthError)) throw err;
        // The detail (which rule, which claim, which check) stays in this log; the caller learns only "refused".
        d.log.warn({ rpc: 'ExchangeToken', reason: err.code, detail: err.message, requestedOrg: org || undefined }, 'oidc token refused');
        if (err.code === 'discovery_failed') throw unavailable(OIDC_UNAVAILABLE);
        throw denied(OIDC_REFUSAL);
      }
      // The token is trusted; what it proves (project, branch, pull request, protection) becomes the scope of every
      // lease provisioned with the access token. A token that names no project gets none: said plainly, since the
      // caller holds a token this org trusts.
      let identity: VerifiedIdentity;
      try {
        identity = verifiedIdentityFromClaims(verified.claims, verified.trust);
      } catch (err) {
        if (!(err instanceof ScopeError)) throw err;
        d.log.warn({ rpc: 'ExchangeToken', org: verified.org, trustRule: verified.trust.id, detail: err.message }, 'oidc token names no project');
        throw denied(err.message);
      }
      const issued = await issueAccessToken(d.signingKey, {
        org: verified.org,
        subject: verified.subject,
        ttlSeconds: d.accessTokenTtlS,
        trust: verified.trust,
        verified: identity
      });
      d.log.info(
        {
          org: verified.org,
          subject: verified.subject,
          trustRule: verified.trust.id,
          project: identity.project,
          branch: identity.branch,
          readOnly: identity.readOnly
        },
        'oidc token exchanged'
      );
      return { accessToken: issued.token, org: verified.org, expiresAtMs: issued.expiresAtMs };
    })
  });
}
