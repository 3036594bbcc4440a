// The action's heavy half, loaded on demand: dist/github/steps.js beside the step's own bundle (scripts/build.mjs
// keeps `require('./steps')` a runtime require), or the TypeScript module under the tests.
/** The steps' heavy half (main-step, post-step, build-step); throws only when its bundle is missing. */
export function loadSteps(): typeof import('./steps') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  return require('./steps') as typeof import('./steps');
}
