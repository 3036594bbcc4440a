// The contract both sides speak (src/contract/): routes built the way the server routes them, and the rules the
// runner checks its inputs with agree with the control plane's checks, value for value.
import { EVENTS_PATH, orgUsagePath, pipelineUsagePath, RECORD_STATUSES } from '../../src/contract/http-api';
import { KEY_PATTERN, ORG_PATTERN, PLATFORM_PATTERN } from '../../src/contract/rules';
import { setupSettings } from '../../src/core/settings';
import { normalisePlatforms, validateKey, validateOrgName } from '../../src/server/validate';

test('routes: paths are encoded the way the server routes them', () => {
  expect(EVENTS_PATH).toBe('/v1/events');
  expect(orgUsagePath('acme')).toBe('/v1/orgs/acme/usage');
  expect(orgUsagePath('acme', '2025-01')).toBe('/v1/orgs/acme/usage?month=2025-01');
  expect(pipelineUsagePath('acme', '123/456/1')).toBe('/v1/orgs/acme/pipelines/usage?key=123%2F456%2F1');
  expect(RECORD_STATUSES).toEqual(['accepted', 'duplicate', 'rejected', 'deferred']);
});

const get = (values: Record<string, string>) => (name: string) => values[name] ?? '';

test.each(['acme', 'acme-corp', 'a.b_c', 'Acme', '-acme', 'acme--corp', 'acme corp', ''])('org %j: the runner and the control plane agree', (org) => {
  const server = (() => {
    try {
      validateOrgName(org);
      return true;
    } catch {
      return false;
    }
  })();
  const runner = (() => {
    try {
      setupSettings(get({ org }));
      return true;
    } catch {
      return false;
    }
  })();
  // The runner lets an empty org through (it then comes from the token); the server never does.
  if (org === '') expect(runner).toBe(true);
  else expect(runner).toBe(server);
  expect(ORG_PATTERN.test(org)).toBe(server);
});

test.each(['linux/amd64', 'linux/arm64/v8', 'linux/arm/v7', 'Linux/amd64', 'linux', 'linux/amd64/x'])('platform %j: one rule on both sides', (p) => {
  const server = (() => {
    try {
      normalisePlatforms([p], [p.toLowerCase()]);
      return true;
    } catch {
      return false;
    }
  })();
  // The server lowercases first; the runner's input is checked as given.
  expect(PLATFORM_PATTERN.test(p.toLowerCase())).toBe(server);
});

test('keys: printable ASCII without spaces', () => {
  expect(KEY_PATTERN.test('a/b~c')).toBe(true);
  expect(KEY_PATTERN.test('a b')).toBe(false);
  expect(() => validateKey('a b', 'pipeline_key')).toThrow(/printable ASCII/);
});
