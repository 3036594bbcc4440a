/** Unit tests mock at module seams; e2e tests start the real control plane, dockerd and registry. */
const base = {
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': ['ts-jest', { diagnostics: false }],
    '\\.proto$': '<rootDir>/__tests__/helpers/text-transform.js'
  },
  moduleFileExtensions: ['ts', 'js', 'json', 'proto'],
  setupFiles: ['<rootDir>/__tests__/helpers/sqlite-realm.js']
};
const e2e = { ...base, testTimeout: 180000 };
module.exports = {
  // e2e tests start real dockerd builders and build images: minutes, not seconds.
  testTimeout: 180000,
  projects: [
    { ...base, displayName: 'unit', testMatch: ['<rootDir>/__tests__/unit/**/*.test.ts'] },
    { ...e2e, displayName: 'e2e', testMatch: ['<rootDir>/__tests__/e2e/**/*.test.ts'] },
    // Faults and load against the real processes (issue 14); each test reports its scenario (helpers/reliability.ts).
    { ...e2e, displayName: 'reliability', testMatch: ['<rootDir>/__tests__/reliability/**/*.test.ts'] }
  ]
};
