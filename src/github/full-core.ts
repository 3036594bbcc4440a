// The whole @actions/core (OIDC tokens, the job summary), required on first use and only from the steps' heavy
// half (steps.ts): its HTTP client, OIDC and exec modules are most of its load time.
/** The whole @actions/core module, loaded on the first call (about 40 ms) and cached by require after it. */
export function fullCore(): typeof import('@actions/core') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  return require('@actions/core') as typeof import('@actions/core');
}
