// The action's heavy halves, loaded on demand: one bundle per step beside the step's small entry
// (dist/github/{main,post,build}-step.js; scripts/build.mjs keeps these requires runtime requires), or the
// TypeScript modules under the tests. One bundle each, not one for the three: V8 compiles every byte of a script it
// loads, and the main step, which every job runs before its first request, needs neither Octokit nor the job summary
// (issue 10).
/* eslint-disable @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up */

/** The main step's work (setup); throws only when its bundle is missing. */
export function loadMainStep(): typeof import('./main-step') {
  return require('./main-step') as typeof import('./main-step');
}

/** The post step's work (report, summary, PR comment, carrying unsent records). */
export function loadPostStep(): typeof import('./post-step') {
  return require('./post-step') as typeof import('./post-step');
}

/** The build action's work. */
export function loadBuildStep(): typeof import('./build-step') {
  return require('./build-step') as typeof import('./build-step');
}
