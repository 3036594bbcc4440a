// The harness lives with the demo, which runs the orb the same way.
export * from '../../src/demo/circleci-runner';
