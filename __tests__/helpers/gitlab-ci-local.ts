// The runner lives with the demo, which uses it too.
export * from '../../src/demo/gitlab-runner';
