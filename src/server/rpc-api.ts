// The control plane's RPCs, whatever carries them: authentication from the bearer credential, rate limits, the
// handlers, and one error boundary that turns any failure into a status and a message fit for the caller. The
// gRPC face (grpc-api.ts) and the Connect face on the HTTP port (connect-api.ts) only adapt their wire to this.
import type { Logger } from './log';
import type { RpcMethod } from '../contract/connect';
import type { ExchangeTokenResponseMsg, ProvisionRequestMsg } from '../contract/grpc';
import { Status } from '../contract/rpc-status';
import { ApiError, denied, invalid, unauthenticated, unavailable } from './errors';
import { checkOrgMatch, type LeaseManager } from './leases';
import type { Store } from './store/store';
import { AuthError, OIDC_REFUSAL, OIDC_UNAVAILABLE, issueAccessToken, type Authenticator, type OidcVerifier, type Principal, type SigningKey } from './auth';
import { ScopeError, verifiedIdentityFromClaims, type VerifiedIdentity } from './scope';
import { validateOrgName, validateProvisionIdentity } from './validate';
import { RateLimited, rateLimitKey, type RateLimiter } from './rate-limit';

export interface RpcApiDeps {
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

/** What a transport knows of a call besides its message. */
export interface RpcContext {
  authorization: string | undefined; // the `authorization` metadata or header, as sent
  peer: string; // the client's IP address (no port)
  // True once the caller can no longer receive the reply (it cancelled, its deadline passed, its connection closed).
  gone?: () => boolean;
}

/** One handler per method: the request message as the gRPC loader delivers it (grpc.ts) → the reply message. */
export type RpcApi = Record<RpcMethod, (req: Record<string, unknown>, ctx: RpcContext) => Promise<object>>;

/** A failed call as the caller sees it: a status (rpc-status.ts), a message, and for a rate limit the wait. */
export interface RpcFailure {
  code: number;
  message: string;
  retryAfterSeconds?: number; // whole seconds; only rate limits set it
}

function bearer(authorization: string | undefined): string {
  const m = /^Bearer\s+(\S+)$/i.exec((authorization ?? '').trim());
  if (!m)
    throw unauthenticated(
      'Missing credentials. Send metadata "authorization: Bearer <token>" with an org token (buildcloud admin token create) or an access token from Auth/ExchangeToken.'
    );
  return m[1];
}

/**
 * Any error of a handler as the caller sees it. ApiError and RateLimited say what to fix; an AuthError's detail (which
 * rule, which claim) is for the operator's log only; anything else is INTERNAL with its stack in the log.
 */
export function rpcFailure(err: unknown, log: Logger, method: string): RpcFailure {
  // The wait is in the message for people and apart for clients (gRPC `retry-after` metadata, HTTP Retry-After):
  // it tells a rate limit, worth retrying after it, from RESOURCE_EXHAUSTED for an empty bucket, which is not.
  if (err instanceof RateLimited) return { code: Status.RESOURCE_EXHAUSTED, message: err.message, retryAfterSeconds: err.retryAfterSeconds };
  if (err instanceof ApiError) return { code: err.code, message: err.message };
  if (err instanceof AuthError) {
    log.warn({ rpc: method, reason: err.code, detail: err.message }, 'authentication refused');
    return { code: Status.PERMISSION_DENIED, message: OIDC_REFUSAL };
  }
  log.error({ rpc: method, err: err instanceof Error ? err.stack : String(err) }, 'internal error');
  return { code: Status.INTERNAL, message: `Internal error in ${method}; the control plane's log has the details.` };
}

/** The handlers of every method of the contract (proto/buildcloud/v1/buildcloud.proto). */
export function createRpcApi(d: RpcApiDeps): RpcApi {
  // The org a call acts for: an org token's own org; the admin token acts for the org named in the request.
  async function caller(ctx: RpcContext, requested: string): Promise<{ org: string; principal: Principal }> {
    const p = await d.authenticator.authenticate(bearer(ctx.authorization));
    if (!p) throw unauthenticated('Invalid, expired or revoked token. Create a new one with: buildcloud admin token create --org ORG');
    // Checked for every caller before it is compared or quoted: a bounded, printable name (validate.ts).
    if (requested) validateOrgName(requested);
    if (p.kind === 'admin') {
      if (!requested) throw invalid('Missing org: the admin token acts for any org, so name one: pass --org ORG (BUILDCLOUD_ORG; the org input).');
      if (!(await d.store.getOrg(requested))) {
        throw new ApiError(Status.NOT_FOUND, `Org '${requested}' not found: create it with \`buildcloud admin org create ${requested} --minutes N\`.`);
      }
      return { org: requested, principal: p };
    }
    return { org: checkOrgMatch(p.org as string, requested), principal: p };
  }

  return {
    'BuildCloud/Provision': async (req, ctx) => {
      const request = req as unknown as ProvisionRequestMsg;
      const { org, principal } = await caller(ctx, request.org);
      d.provisionLimiter?.check(rateLimitKey(principal)); // after authentication: a stranger cannot drain a token's bucket
      validateProvisionIdentity(request);
      const lease = await d.leases.provision(org, request, principal.scope);
      // A caller that gave up meanwhile (a cold builder outlasting its deadline) never gets this lease, and will retry
      // for another: this one ends now, unbilled, instead of holding a reservation and a builder until the reaper.
      if (ctx.gone?.()) {
        await d.leases.abandon(lease.id);
        throw new ApiError(Status.CANCELLED, 'The call was cancelled or its deadline passed before the lease was ready; the lease was ended unbilled.');
      }
      return lease;
    },
    'BuildCloud/Release': async (req, ctx) => {
      const { org, principal } = await caller(ctx, '');
      return d.leases.release(org, String(req.leaseId ?? ''), principal.scope);
    },
    'BuildCloud/Get': async (req, ctx) => {
      const { org, principal } = await caller(ctx, '');
      return d.leases.get(org, String(req.leaseId ?? ''), principal.scope);
    },
    'Auth/ExchangeToken': async (req, ctx): Promise<ExchangeTokenResponseMsg> => {
      const oidcToken = String(req.oidcToken ?? '');
      const org = String(req.org ?? '');
      d.exchangeLimiter?.check(`peer:${ctx.peer}`);
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
    }
  };
}
