/** Unit tests mock at module seams; e2e tests start the real control plane, dockerd and registry. */
const base = {
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': ['ts-jest', { diagnostics: false }],
    '\\.proto$': '<rootDir>/__tests__/helpers/text-transform.js'
  },
  moduleFileExtensions: ['ts', 'js', 'json', 'proto']
};
module.exports = {
  projects: [
    { ...base, displayName: 'unit', testMatch: ['<rootDir>/__tests__/unit/**/*.test.ts'] },
    { ...base, displayName: 'e2e', testMatch: ['<rootDir>/__tests__/e2e/**/*.test.ts'], testTimeout: 180000 }
  ]
};
