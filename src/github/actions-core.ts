// @actions/core as a bundle of its own (dist/github/actions-core.js): full-core.ts requires it on first use, so the
// steps that never ask for an OIDC token or write a job summary never compile it (its HTTP client brings undici).
export * from '@actions/core';
