// Presets for `buildcloud admin trust add`: the trust row (issuer, audience, claim and value) that admits one CI's
// OIDC tokens for one owner, group or organization, so an admin names the owner and not the claim. The exchange
// that checks tokens against these rows is oidc.ts.
import { normalizeIssuer } from './oidc';
import type { TrustRow } from './store/store';

export type TrustPresetKind = 'github' | 'gitlab' | 'circleci';

export interface TrustPresetOptions {
  owner?: string; // --github-owner: the owner login → claim repository_owner
  ownerId?: string; // --github-owner-id: numeric owner id → repository_owner_id (survives renames)
  namespace?: string; // --gitlab-namespace: group/user path → namespace_path (exact; subgroups need their own rules)
  orgId?: string; // --circleci-org-id: the organization UUID
  issuer?: string; // --issuer: GitLab instance (default https://gitlab.com), GHES, or a test issuer
  audience?: string; // --audience
  allowInsecureIssuer?: boolean; // accept an http:// --issuer on any host (loopback is always accepted)
}

const GITHUB_ISSUER = 'https://token.actions.githubusercontent.com';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function presetIssuer(raw: string | undefined, fallback: string, insecure: boolean | undefined): string {
  if (raw === undefined || raw === '') return fallback;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`--issuer "${raw}" is not a URL (e.g. https://gitlab.example.com)`);
  }
  // http:// on loopback is a test or a GitLab on the same machine; anywhere else it must be asked for explicitly.
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && (insecure || loopback))) {
    throw new Error(`--issuer "${raw}" must start with https:// (http:// only on loopback or for a server that allows insecure OIDC issuers)`);
  }
  if (url.search || url.hash || url.username || url.password) throw new Error(`--issuer "${raw}" must not have a query, fragment or credentials`);
  return normalizeIssuer(url.href);
}

export function trustPreset(kind: TrustPresetKind, opts: TrustPresetOptions): Omit<TrustRow, 'id' | 'createdAt' | 'org'> {
  const audience = opts.audience ?? 'buildcloud';
  if (!audience || audience.length > 255 || /\s/.test(audience)) throw new Error('--audience must be a non-empty string without spaces');
  switch (kind) {
    case 'github': {
      if (!!opts.owner === !!opts.ownerId) throw new Error('github trust needs exactly one of --github-owner <login> or --github-owner-id <number>');
      if (opts.ownerId !== undefined && !/^[0-9]{1,20}$/.test(opts.ownerId))
        throw new Error(`--github-owner-id "${opts.ownerId}" must be a number (GITHUB_REPOSITORY_OWNER_ID)`);
      if (opts.owner !== undefined && !/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$/.test(opts.owner)) {
        throw new Error(`--github-owner "${opts.owner}" is not a GitHub user or organization login`);
      }
      const issuer = presetIssuer(opts.issuer, GITHUB_ISSUER, opts.allowInsecureIssuer);
      return opts.owner
        ? { issuer, audience, claim: 'repository_owner', value: opts.owner }
        : { issuer, audience, claim: 'repository_owner_id', value: opts.ownerId as string };
    }
    case 'gitlab': {
      const ns = opts.namespace ?? '';
      if (!/^[A-Za-z0-9_.][A-Za-z0-9_.-]*(\/[A-Za-z0-9_.][A-Za-z0-9_.-]*)*$/.test(ns)) {
        throw new Error(`--gitlab-namespace "${ns}" must be a GitLab group or user path such as platform or platform/tools`);
      }
      const issuer = presetIssuer(opts.issuer, 'https://gitlab.com', opts.allowInsecureIssuer);
      return { issuer, audience, claim: 'namespace_path', value: ns };
    }
    case 'circleci': {
      const id = opts.orgId ?? '';
      if (!UUID_RE.test(id)) throw new Error(`--circleci-org-id "${id}" must be the CircleCI organization id (a UUID, $CIRCLE_ORGANIZATION_ID)`);
      const value = id.toLowerCase();
      const issuer = presetIssuer(opts.issuer, `https://oidc.circleci.com/org/${value}`, opts.allowInsecureIssuer);
      // $CIRCLE_OIDC_TOKEN_V2's default aud is the org id, so that token works without `circleci run oidc get`.
      return { issuer, audience: opts.audience ?? value, claim: 'oidc.circleci.com/org-id', value };
    }
    default:
      throw new Error(`unknown trust kind "${String(kind)}": use github, gitlab or circleci`);
  }
}
