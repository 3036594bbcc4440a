// Exchange of a CI's OIDC token (GitHub Actions, GitLab id_tokens, CircleCI) for an org: the token must come from
// an issuer some org trusts, be signed by a key the issuer publishes, be meant for the trust row's audience, and
// carry the trust row's claim with exactly the trusted value. See CI-REFERENCE.md §3 for each CI's claims.
//
// Every AuthError message here is for the control plane's log (it names rules, orgs and claims); callers of
// ExchangeToken get OIDC_REFUSAL instead (grpc-api.ts), so a refusal tells an outsider nothing about who trusts what.
// The order is part of the contract: the signature is verified against the issuer's keys before any org is looked
// at, so an unsigned or forged token cannot even time the difference between orgs.
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';
import type { TrustRow } from './store/store';

export type AuthErrorCode = 'untrusted_issuer' | 'invalid_token' | 'expired' | 'audience_mismatch' | 'claim_mismatch' | 'discovery_failed';

export class AuthError extends Error {
  constructor(
    readonly code: AuthErrorCode,
    message: string
  ) {
    super(message);
    this.name = 'AuthError';
  }
}

export interface OidcVerifierOptions {
  fetchTimeoutMs?: number; // discovery document and JWKS requests (default 5 s)
  cacheMaxAgeMs?: number; // how long a discovery document and a JWKS are reused (default 10 min)
  // Minimum time between two JWKS refetches triggered by an unknown `kid` (default 30 s): a rotated key is picked
  // up, but tokens with made-up kids cannot make us hammer the issuer.
  jwksCooldownMs?: number;
  allowInsecureIssuers?: boolean; // http:// issuers: tests, self-hosted GitLab on a private network
}

export interface OidcExchangeResult {
  org: string;
  subject: string;
  claims: JWTPayload;
  trust: TrustRow; // the rule that matched: access tokens are bound to it (auth.ts) so removing it ends them
}

// Asymmetric algorithms only: `none` and HS* would let anyone who knows (or guesses) the "key" mint tokens.
const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
const CLOCK_TOLERANCE_S = 30;
const MAX_TOKEN_LENGTH = 16 * 1024;
const MAX_DISCOVERY_BYTES = 256 * 1024;

// The one answer a caller gets for any refused OIDC token: unknown issuer, bad or missing signature, expired, wrong
// audience, no matching rule, or a rule of another org. It says what the caller can check on its own side and who
// can fix the rest; nothing in it depends on the trust table.
export const OIDC_REFUSAL =
  'This OIDC token is not trusted by this control plane. Check that the job requests a fresh token with the audience ' +
  'the operator configured (default: buildcloud); otherwise ask the operator to run `buildcloud admin trust add --org <org> ' +
  "--github-owner <owner> | --gitlab-namespace <path> [--issuer <url>] | --circleci-org-id <uuid>` for your CI's issuer and " +
  "namespace. The control plane's log says which check failed.";
// When the issuer's keys cannot be loaded the token can be neither accepted nor refused: the caller may retry.
export const OIDC_UNAVAILABLE =
  "The control plane could not verify this OIDC token right now (its issuer's signing keys could not be loaded). Retry later; if it persists, ask the operator (the log has the details).";

export const normalizeIssuer = (iss: string): string => iss.replace(/\/+$/, '');

interface IssuerEntry {
  jwksUri: string;
  jwks: ReturnType<typeof createRemoteJWKSet>;
  fetchedAt: number;
}

export class OidcVerifier {
  private readonly fetchTimeoutMs: number;
  private readonly cacheMaxAgeMs: number;
  private readonly jwksCooldownMs: number;
  private readonly allowInsecure: boolean;
  // One entry per trusted issuer (the set is bounded by the trust table, never by what tokens claim). Pending
  // discoveries are shared so a burst of jobs triggers one request, not hundreds.
  private readonly issuers = new Map<string, IssuerEntry>();
  private readonly pending = new Map<string, Promise<IssuerEntry>>();

  constructor(opts: OidcVerifierOptions = {}) {
    this.fetchTimeoutMs = opts.fetchTimeoutMs ?? 5_000;
    this.cacheMaxAgeMs = opts.cacheMaxAgeMs ?? 10 * 60_000;
    this.jwksCooldownMs = opts.jwksCooldownMs ?? 30_000;
    this.allowInsecure = opts.allowInsecureIssuers ?? false;
  }

  async exchange(oidcToken: string, trusts: TrustRow[], requestedOrg?: string): Promise<OidcExchangeResult> {
    if (typeof oidcToken !== 'string' || !oidcToken || oidcToken.length > MAX_TOKEN_LENGTH) {
      throw new AuthError('invalid_token', 'the OIDC token is empty or too long');
    }
    // Unverified decode: only to choose candidate trust rows and reject hopeless tokens early.
    let iss: unknown;
    let alg: unknown;
    try {
      iss = decodeJwt(oidcToken).iss;
      alg = decodeProtectedHeader(oidcToken).alg;
    } catch {
      throw new AuthError('invalid_token', 'the OIDC token is not a JWT (expected header.payload.signature)');
    }
    if (typeof alg !== 'string' || !ALGORITHMS.includes(alg)) {
      throw new AuthError('invalid_token', `the OIDC token uses alg ${show(alg)}; only ${ALGORITHMS.join(', ')} are accepted`);
    }
    if (typeof iss !== 'string' || !iss) throw new AuthError('invalid_token', 'the OIDC token has no "iss" claim');

    const issuer = normalizeIssuer(iss);
    // Every org's rules for this issuer: which orgs trust it must not change what happens before the signature check.
    const issuerRows = trusts.filter((t) => normalizeIssuer(t.issuer) === issuer);
    if (issuerRows.length === 0) throw new AuthError('untrusted_issuer', `no trust rule names the issuer ${show(iss)}`);

    const entry = await this.discover(issuer);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(oidcToken, entry.jwks, {
        issuer: iss,
        algorithms: ALGORITHMS,
        clockTolerance: CLOCK_TOLERANCE_S,
        requiredClaims: ['exp', 'sub']
      }));
    } catch (err) {
      throw mapVerifyError(err, issuer);
    }
    // Only now, with a token its issuer signed, does anything depend on an org.
    const candidates = requestedOrg === undefined ? issuerRows : issuerRows.filter((t) => t.org === requestedOrg);
    if (candidates.length === 0) {
      throw new AuthError(
        'untrusted_issuer',
        `org ${show(requestedOrg)} has no trust rule for the issuer ${show(iss)} (rules of other orgs: ${ruleIds(issuerRows)})`
      );
    }
    return matchTrust(payload, candidates);
  }

  private async discover(issuer: string): Promise<IssuerEntry> {
    const cached = this.issuers.get(issuer);
    if (cached && Date.now() - cached.fetchedAt < this.cacheMaxAgeMs) return cached;
    let p = this.pending.get(issuer);
    if (!p) {
      p = this.fetchDiscovery(issuer, cached).finally(() => this.pending.delete(issuer));
      this.pending.set(issuer, p);
    }
    return p;
  }

  private checkUrl(raw: string, what: string): URL {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new AuthError('discovery_failed', `${what} "${raw}" is not a URL`);
    }
    const okProtocol = url.protocol === 'https:' || (this.allowInsecure && url.protocol === 'http:');
    if (!okProtocol || url.username || url.password) {
      throw new AuthError('discovery_failed', `${what} "${raw}" must be an https:// URL (http:// only when insecure OIDC issuers are allowed)`);
    }
    return url;
  }

  private async fetchDiscovery(issuer: string, previous: IssuerEntry | undefined): Promise<IssuerEntry> {
    const docUrl = this.checkUrl(`${issuer}/.well-known/openid-configuration`, 'OIDC issuer');
    let doc: { issuer?: unknown; jwks_uri?: unknown };
    try {
      // No redirects: the discovery document must come from the issuer itself.
      const res = await fetch(docUrl, { redirect: 'error', signal: AbortSignal.timeout(this.fetchTimeoutMs), headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const text = await res.text();
      if (text.length > MAX_DISCOVERY_BYTES) throw new Error('document too large');
      doc = JSON.parse(text) as typeof doc;
    } catch (err) {
      // fetch() reports "fetch failed" and keeps the useful part (ECONNREFUSED, redirect, TLS) in `cause`.
      const e = err as Error & { cause?: { message?: string } };
      throw new AuthError('discovery_failed', `cannot read ${docUrl.href}: ${e.cause?.message ?? e.message}`);
    }
    // OIDC Discovery §4.3: the document's issuer must be the one we asked for, or keys of one issuer could be
    // presented for another.
    if (typeof doc?.issuer !== 'string' || normalizeIssuer(doc.issuer) !== issuer) {
      throw new AuthError('discovery_failed', `${docUrl.href} names issuer "${String(doc?.issuer)}", expected "${issuer}"`);
    }
    if (typeof doc.jwks_uri !== 'string') throw new AuthError('discovery_failed', `${docUrl.href} has no jwks_uri`);
    const jwksUrl = this.checkUrl(doc.jwks_uri, 'jwks_uri');
    // Keep the key set (and its cached keys) when only the discovery document was refreshed.
    const jwks =
      previous && previous.jwksUri === jwksUrl.href
        ? previous.jwks
        : createRemoteJWKSet(jwksUrl, {
            timeoutDuration: this.fetchTimeoutMs,
            cacheMaxAge: this.cacheMaxAgeMs,
            cooldownDuration: this.jwksCooldownMs
          });
    const entry: IssuerEntry = { jwksUri: jwksUrl.href, jwks, fetchedAt: Date.now() };
    this.issuers.set(issuer, entry);
    return entry;
  }
}

function mapVerifyError(err: unknown, iss: string): AuthError {
  const e = err as { code?: string; claim?: string; message?: string };
  switch (e.code) {
    case 'ERR_JWT_EXPIRED':
      return new AuthError('expired', `the OIDC token from ${iss} has expired; request a fresh one in the job`);
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if (e.claim === 'nbf') return new AuthError('invalid_token', `the OIDC token from ${iss} is not valid yet ("nbf" is in the future; check the clock)`);
      return new AuthError('invalid_token', `the OIDC token from ${iss} failed the "${String(e.claim)}" check: ${String(e.message)}`);
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return new AuthError('invalid_token', `the OIDC token's signing key is not among the keys ${iss} publishes`);
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return new AuthError('invalid_token', `the OIDC token's signature does not verify with the keys ${iss} publishes`);
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case 'ERR_JOSE_NOT_SUPPORTED':
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return new AuthError('invalid_token', `the OIDC token from ${iss} is malformed or uses an unsupported key: ${String(e.message)}`);
    default:
      // JWKS unreachable, non-200, bad JSON, timeout, invalid key set.
      return new AuthError('discovery_failed', `cannot load the signing keys of ${iss}: ${String(e.message ?? err)}`);
  }
}

// The claim name is looked up literally first (CircleCI's `oidc.circleci.com/org-id` contains dots and slashes);
// only if absent is a dotted name read as a path into nested objects. Own properties only, never the prototype.
function claimValue(payload: JWTPayload, name: string): unknown {
  const own = (o: unknown, k: string): unknown =>
    o !== null && typeof o === 'object' && Object.prototype.hasOwnProperty.call(o, k) ? (o as Record<string, unknown>)[k] : undefined;
  const literal = own(payload, name);
  if (literal !== undefined || !name.includes('.')) return literal;
  return name.split('.').reduce<unknown>((o, k) => own(o, k), payload);
}

function audiences(payload: JWTPayload): string[] {
  if (typeof payload.aud === 'string') return [payload.aud];
  return Array.isArray(payload.aud) ? payload.aud.filter((a): a is string => typeof a === 'string') : [];
}

const show = (v: unknown): string => (v === undefined ? '(absent)' : String(JSON.stringify(v)).slice(0, 200));
const ruleIds = (rows: TrustRow[]): string => rows.map((t) => `#${t.id}`).join(', ') || 'none';

// First row (in the given order) whose audience and claim both match wins. Matching is exact: GitLab's
// namespace_path "platform" does NOT match a project in "platform/tools"; add one rule per namespace instead.
function matchTrust(payload: JWTPayload, candidates: TrustRow[]): OidcExchangeResult {
  const aud = audiences(payload);
  const audOk = candidates.filter((t) => aud.includes(t.audience));
  if (audOk.length === 0) {
    const want = [...new Set(candidates.map((t) => t.audience))].map((a) => `"${a}"`).join(' or ');
    throw new AuthError('audience_mismatch', `the OIDC token's audience is ${show(payload.aud)}, rules ${ruleIds(candidates)} expect ${want}`);
  }
  const misses: string[] = [];
  for (const t of audOk) {
    const found = claimValue(payload, t.claim);
    // Strings only: an array claim (e.g. CircleCI context-ids) would turn "equals" into "contains".
    if (typeof found === 'string' && found === t.value) {
      return { org: t.org, subject: payload.sub as string, claims: payload, trust: t };
    }
    misses.push(`rule #${t.id} of org "${t.org}" expects ${t.claim}="${t.value}", the token has ${t.claim}=${show(found)}`);
  }
  throw new AuthError('claim_mismatch', `no trust rule matched the OIDC token from ${String(payload.iss)}: ${misses.slice(0, 5).join('; ')}`);
}
