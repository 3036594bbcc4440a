// The action's steps past their first input check, bundled once for all three (dist/github/steps.js) and required
// by the small entries (main.ts, post.ts, build.ts) only when there is work to do: the core, the gRPC client and
// the whole @actions/core cost a start-up that a step failing on its inputs should not pay (issue 10).
export { mainStep } from './main-step';
export { postStep } from './post-step';
export { buildActionStep } from './build-step';
