// The whole @actions/core (OIDC tokens, the job summary), required on first use from its own bundle
// (actions-core.ts): its HTTP client (undici), OIDC and exec modules are most of its load and compile time.
/** The whole @actions/core module, loaded on the first call (about 40 ms) and cached by require after it. */
export function fullCore(): typeof import('@actions/core') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  return require('./actions-core') as typeof import('@actions/core');
}
