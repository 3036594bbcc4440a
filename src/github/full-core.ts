// The whole @actions/core (OIDC tokens, the job summary), required on first use and only from the steps' heavy
// half (steps.ts): its HTTP client, OIDC and exec modules are most of its load time.
export function fullCore(): typeof import('@actions/core') {
  return require('@actions/core') as typeof import('@actions/core');
}
