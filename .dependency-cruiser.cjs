// The arrows that must never exist in this house (docs/architecture.md, "Who may import whom"). Checked in CI by
// `npm run check-boundaries` (.ci/run); __tests__/unit/boundaries.test.ts proves a bad import fails the check.
//
// Paths are relative to the directory depcruise runs in, so the same rules check the real tree and the test's copy.
// Runner CLI files are named by rule, not by list: src/cli/runner*.ts and src/cli/ci*.ts (the runner entry may be
// renamed while the CLI is split in two; any name of that shape is covered).
const RUNNER_CLI = '^src/cli/(runner|ci)[^/]*\\.ts$';

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'core-not-to-server',
      comment: 'The runner core talks to the control plane through src/contract/ only; it never loads server code.',
      severity: 'error',
      from: { path: '^src/core/' },
      to: { path: '^src/server/' }
    },
    {
      name: 'core-not-to-github',
      comment: 'The core is CI-neutral: @actions/* and the GitHub wrapper stay in src/github/.',
      severity: 'error',
      from: { path: '^src/core/' },
      to: { path: '^src/github/' }
    },
    {
      name: 'core-not-to-cli',
      comment: 'The core is called by the CLI and the action, never the other way round.',
      severity: 'error',
      from: { path: '^src/core/' },
      to: { path: '^src/cli/' }
    },
    {
      name: 'github-not-to-server',
      comment: 'The GitHub Action is runner side: it reaches the control plane through src/contract/ only.',
      severity: 'error',
      from: { path: '^src/github/' },
      to: { path: '^src/server/' }
    },
    {
      name: 'server-not-to-github',
      comment: 'The control plane knows nothing of one CI wrapper.',
      severity: 'error',
      from: { path: '^src/server/' },
      to: { path: '^src/github/' }
    },
    {
      name: 'runner-cli-not-to-server',
      comment: 'The runner CLI (setup, build, report: what @buildcloud/ci ships) never loads control-plane code.',
      severity: 'error',
      from: { path: RUNNER_CLI },
      to: { path: '^src/server/' }
    },
    {
      name: 'runner-not-reaching-server',
      comment: 'Nor by a detour: nothing the runner CLI or the GitHub Action imports, however indirectly, is control-plane code.',
      severity: 'error',
      from: { path: [RUNNER_CLI, '^src/github/'] },
      to: { path: '^src/server/', reachable: true }
    },
    {
      name: 'contract-is-a-leaf',
      comment: 'src/contract/ is what both sides import; it imports neither side (nor anything else of src/).',
      severity: 'error',
      from: { path: '^src/contract/' },
      to: { path: '^src/', pathNot: '^src/contract/' }
    },
    {
      name: 'product-not-to-harness',
      comment:
        'The CI emulators and the demo in harness/ are test harness, not product. Only the operator command ' +
        '`buildcloud demo` (src/cli/demo.ts) loads the demo, lazily, and it is not part of the runner CLI.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/cli/demo\\.ts$' },
      to: { path: '^harness/' }
    }
  ],
  options: {
    // Type-only imports count too: a runner file that imports a server type still stands on the server.
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(node_modules|dist)/' },
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.json'] },
    moduleSystems: ['cjs', 'es6'],
    reporterOptions: { text: { highlightFocused: true } }
  }
};
