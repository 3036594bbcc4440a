// Which credential a job presents to the control plane: an org token the user gave, else the CI's own OIDC token
// (exchanged server-side for a short-lived access token). Choosing is pure; fetching GitHub's token is a seam the
// GitHub wrapper fills with @actions/core's getIDToken (retries, masking), which the core must not import.
// When there is nothing, ONE error says what to add for this CI and this situation (CI-REFERENCE.md §3).
import type { Env, Identity } from './identity';
import { httpRequest } from './http-request';

export interface AuthSettings {
  token?: string;
  oidc: 'auto' | 'off';
  audience: string; // default 'buildcloud'; must match the org's trust row
  oidcTokenEnv?: string; // GitLab: the variable declared under `id_tokens:`; default BUILDCLOUD_ID_TOKEN
}

export type OidcSource = { kind: 'github'; fetch: (audience: string) => Promise<string> } | { kind: 'env'; name: string; value: string };

export type Credential = { kind: 'token'; token: string } | { kind: 'oidc'; source: OidcSource };

export class AuthMissingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthMissingError';
  }
}

export const DEFAULT_AUDIENCE = 'buildcloud';
export const DEFAULT_OIDC_TOKEN_ENV = 'BUILDCLOUD_ID_TOKEN';
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

const get = (env: Env, name: string): string => (env[name] ?? '').trim();
const lowerFirst = (s: string): string => s.charAt(0).toLowerCase() + s.slice(1);

export function chooseCredential(
  identity: Pick<Identity, 'provider' | 'fork'>,
  settings: AuthSettings,
  env: Env,
  githubOidc?: (audience: string) => Promise<string>
): Credential {
  // An explicit token wins: the input / --token, then BUILDCLOUD_TOKEN (a masked GitLab variable, a CircleCI
  // context, a GitHub secret mapped into env). It is how forks and older CI servers get in at all.
  const token = (settings.token ?? '').trim() || get(env, 'BUILDCLOUD_TOKEN');
  if (token) return { kind: 'token', token };

  const audience = settings.audience || DEFAULT_AUDIENCE;
  const tokenEnv = settings.oidcTokenEnv || DEFAULT_OIDC_TOKEN_ENV;
  if (!ENV_NAME.test(tokenEnv)) {
    throw new AuthMissingError(`Invalid OIDC token variable name '${tokenEnv}'. Expected a variable name such as ${DEFAULT_OIDC_TOKEN_ENV}.`);
  }
  if (settings.oidc === 'off') {
    throw new AuthMissingError(`No Build Cloud credential: OIDC is off and no token was given. ${tokenHint(identity.provider)}`);
  }

  // A token already in the named variable is used on every CI: GitLab's id_tokens land there, and on CircleCI it
  // is how a job passes a token with a custom aud (`circleci run oidc get --claims '{"aud":"buildcloud"}'`).
  const named = get(env, tokenEnv);
  if (named) return { kind: 'oidc', source: { kind: 'env', name: tokenEnv, value: named } };

  switch (identity.provider) {
    case 'github': {
      // Both are set only when the job has `permissions: id-token: write` (and never for a fork's pull_request).
      if (get(env, 'ACTIONS_ID_TOKEN_REQUEST_URL') && get(env, 'ACTIONS_ID_TOKEN_REQUEST_TOKEN')) {
        return { kind: 'oidc', source: { kind: 'github', fetch: githubOidc ?? githubIdTokenFetcher(env) } };
      }
      throw new AuthMissingError(githubMissing(identity.fork, get(env, 'GITHUB_EVENT_NAME'), get(env, 'GITHUB_ACTOR')));
    }
    case 'gitlab':
      throw new AuthMissingError(gitlabMissing(identity.fork, tokenEnv, audience));
    case 'circleci': {
      // V2's sub names the VCS origin and ref, which trust rules can check; V1 is the fallback on older servers.
      for (const name of ['CIRCLE_OIDC_TOKEN_V2', 'CIRCLE_OIDC_TOKEN']) {
        const value = get(env, name);
        if (value) return { kind: 'oidc', source: { kind: 'env', name, value } };
      }
      throw new AuthMissingError(circleciMissing(identity.fork));
    }
    default:
      throw new AuthMissingError(`No Build Cloud credential. ${tokenHint('local')}`);
  }
}

function tokenHint(provider: Identity['provider']): string {
  switch (provider) {
    case 'github':
      return 'Pass `token: ${{ secrets.BUILDCLOUD_TOKEN }}` (an org token from `buildcloud admin token create --org ORG`).';
    case 'gitlab':
      return 'Set a masked CI/CD variable BUILDCLOUD_TOKEN holding an org token (`buildcloud admin token create --org ORG`).';
    case 'circleci':
      return 'Set BUILDCLOUD_TOKEN to an org token (`buildcloud admin token create --org ORG`) in a context the job uses.';
    default:
      return 'Pass --token or set BUILDCLOUD_TOKEN to an org token (`buildcloud admin token create --org ORG`).';
  }
}

// GitHub's login of Dependabot: github.actor (GITHUB_ACTOR) of every run it starts. It stays the actor when someone
// else re-runs the run (that person is GITHUB_TRIGGERING_ACTOR), and so do the restrictions below.
export const DEPENDABOT_ACTOR = 'dependabot[bot]';

/**
 * The message for a GitHub job with neither a token nor an ID token request URL: the cause and what works.
 * - Dependabot started the run (`actor`). GitHub treats the runs Dependabot starts (pull_request, push, ...) like a
 *   fork's: a read-only GITHUB_TOKEN, and "Secrets are populated from Dependabot secrets. GitHub Actions secrets are
 *   not available." ("Restrictions when Dependabot triggers events",
 *   https://docs.github.com/en/code-security/dependabot/troubleshooting-dependabot/troubleshooting-dependabot-on-github-actions).
 *   Such runs fail with "Unable to get ACTIONS_ID_TOKEN_REQUEST_URL" even with `permissions: id-token: write`
 *   (google-github-actions/auth#51), so the permission advice would mislead: what works is the org token stored
 *   as a Dependabot secret too, skipping Build Cloud for Dependabot, or `fallback: local`.
 * - A fork's pull request (not pull_request_target): no OIDC token and no secrets, whatever `permissions:` says.
 * - Otherwise the job lacks `permissions: id-token: write` (or a token).
 */
export function githubMissing(fork: boolean, event: string, actor = ''): string {
  const fallback = " Or set the input `fallback: local` to build on the runner's own Docker instead (no remote builder, no org cache).";
  if (actor === DEPENDABOT_ACTOR) {
    return (
      `No Build Cloud credential: Dependabot started this run (github.actor is ${DEPENDABOT_ACTOR}), and GitHub gives ` +
      "Dependabot's runs no OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL is not set) and no GitHub Actions secrets, only " +
      'Dependabot secrets, so `secrets.BUILDCLOUD_TOKEN` is empty here. Store the org token also as a Dependabot secret ' +
      'of the same name (Settings > Secrets and variables > Dependabot, or `gh secret set BUILDCLOUD_TOKEN --app dependabot`); ' +
      'a token for this repository that never writes the org cache is enough: ' +
      '`buildcloud admin token create --org ORG --project OWNER/REPO --read-only`. Or skip Build Cloud for Dependabot ' +
      `(\`if: github.actor != '${DEPENDABOT_ACTOR}'\`).${fallback}`
    );
  }
  if (fork && event !== 'pull_request_target') {
    return (
      'No Build Cloud credential: this is a pull request from a fork, and GitHub gives such workflows no OIDC token ' +
      'and no secrets, whatever `permissions:` says. Either skip Build Cloud for forks ' +
      '(`if: github.event.pull_request.head.repo.full_name == github.repository`), or run the workflow on ' +
      "`pull_request_target`, which has the id-token and secrets: but it runs with the base repository's " +
      "credentials, so never check out and build the fork's code there without a maintainer's review " +
      `(e.g. gate it on a label or an environment with required reviewers).${fallback}`
    );
  }
  return (
    'No Build Cloud credential: GitHub gave this job no OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL is not set). ' +
    'Add to the job:\n  permissions:\n    id-token: write\n    contents: read\n' +
    '(once a job lists permissions, the ones not listed are none, so keep contents: read for actions/checkout), or ' +
    lowerFirst(tokenHint('github'))
  );
}

function gitlabMissing(fork: boolean, tokenEnv: string, audience: string): string {
  const add =
    `Add to the job:\n  id_tokens:\n    ${tokenEnv}:\n      aud: ${audience}\n` +
    '(a job-level id_tokens replaces default:id_tokens, so list it in the job that runs Build Cloud), or set a masked ' +
    'CI/CD variable BUILDCLOUD_TOKEN holding an org token (`buildcloud admin token create --org ORG`); a protected ' +
    'variable reaches only pipelines of protected branches and tags.';
  const forkNote = fork
    ? " This merge request comes from a fork: by default its pipeline runs in the fork project, with the fork's " +
      "configuration and variables, so the parent's BUILDCLOUD_TOKEN is not there and its id token names the fork; " +
      'a member of the parent project can run the pipeline in the parent project instead. Or set the input ' +
      "`fallback: local` to build on the runner's own Docker."
    : '';
  return `No Build Cloud credential: the job has no ID token in $${tokenEnv}. ${add}${forkNote}`;
}

function circleciMissing(fork: boolean): string {
  if (fork) {
    return (
      'No Build Cloud credential: this is a build of a forked pull request, and CircleCI gives it no OIDC token and ' +
      'no secrets unless "Pass secrets to builds from forked pull requests" is on (Project Settings > Advanced). If you ' +
      "turn it on, restrict the org's trust to your repository's oidc.circleci.com/vcs-origin, since any fork can " +
      'then get a token; otherwise skip Build Cloud for forked PRs, or set the parameter `fallback: local` to build ' +
      "on the job's own Docker."
    );
  }
  return (
    'No Build Cloud credential: CircleCI gave this job no OIDC token (CIRCLE_OIDC_TOKEN_V2 and CIRCLE_OIDC_TOKEN are ' +
    'not set). CircleCI cloud sets them in every job; CircleCI server needs v4.4 or later and is not supported ' +
    'air-gapped, and some setups issue them only to jobs that use a context, so add `context: <name>` to the job ' +
    `in the workflow. Or ${lowerFirst(tokenHint('circleci'))}`
  );
}

/**
 * GitHub's ID token request without @actions/core (for the CLI run from a `run:` step): GET the request URL with
 * `&audience=` and the bearer request token; the answer is {"value": "<jwt>"}. Transient failures are retried
 * a few times, as getIDToken does. The caller masks the result.
 */
export function githubIdTokenFetcher(env: Env, attempts = 3, delayMs = 1000): (audience: string) => Promise<string> {
  return async (audience: string) => {
    const url = get(env, 'ACTIONS_ID_TOKEN_REQUEST_URL');
    const bearer = get(env, 'ACTIONS_ID_TOKEN_REQUEST_TOKEN');
    if (!url || !bearer) throw new AuthMissingError(githubMissing(false, '', get(env, 'GITHUB_ACTOR')));
    const target = `${url}${url.includes('?') ? '&' : '?'}audience=${encodeURIComponent(audience)}`;
    let last = '';
    for (let i = 1; i <= attempts; i++) {
      try {
        // node:http, not the global fetch: src/core/http-request.ts says why.
        const res = await httpRequest(target, {
          headers: { authorization: `Bearer ${bearer}`, accept: 'application/json' },
          signal: AbortSignal.timeout(30_000)
        });
        if (res.status >= 200 && res.status < 300) {
          const value = (JSON.parse(res.text) as { value?: unknown }).value;
          if (typeof value === 'string' && value) return value;
          throw new Error('the response has no "value"');
        }
        last = `HTTP ${res.status}`;
        if (res.status < 500 && res.status !== 429) break; // 401/403 will not get better
      } catch (err) {
        const e = err as Error & { cause?: { message?: string } };
        last = e.name === 'TimeoutError' ? 'no reply within 30000 ms' : e.cause?.message ? `${e.message} (${e.cause.message})` : e.message;
      }
      if (i < attempts) await new Promise((r) => setTimeout(r, delayMs * i));
    }
    throw new Error(`Could not get GitHub's OIDC token for audience '${audience}': ${last}`);
  };
}
