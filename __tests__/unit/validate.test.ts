// Bounds on what a client says about itself in Provision: each field has a documented limit (docs/api.md), and a
// refusal names the field and its limit without echoing an oversize value back.
import * as grpc from '@grpc/grpc-js';
import { ApiError } from '../../src/server/errors';
import { IDENTITY_LIMITS } from '../../src/contract/rules';
import { validateKey, validateProvisionIdentity } from '../../src/server/validate';

const ok = {
  provider: 'github',
  project: 'acme/widget-api',
  branch: 'feature/x',
  defaultBranch: 'main',
  actor: 'dependabot[bot]',
  runUrl: 'https://github.com/acme/widget-api/actions/runs/1/attempts/2',
  fork: false
};

function refusal(fn: () => unknown): ApiError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ApiError) return e;
    throw e;
  }
  throw new Error('expected an INVALID_ARGUMENT');
}

test('a normal identity passes, and so do empty optional fields', () => {
  expect(() => validateProvisionIdentity({ pipelineKey: '712345678/9876543210/2', jobId: 'build', identity: ok })).not.toThrow();
  expect(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { project: 'acme/app' } })).not.toThrow();
  expect(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, branch: 'fix/ünïcode-é' } })).not.toThrow();
});

const fields: Array<[keyof typeof IDENTITY_LIMITS, string]> = [
  ['provider', 'identity.provider'],
  ['project', 'identity.project'],
  ['branch', 'identity.branch'],
  ['defaultBranch', 'identity.default_branch'],
  ['actor', 'identity.actor'],
  ['runUrl', 'identity.run_url']
];

test.each(fields)('%s: one character over the limit is INVALID_ARGUMENT naming %s and the limit, with at most 40 characters of the value', (name, field) => {
  const max = IDENTITY_LIMITS[name].max;
  const long = name === 'runUrl' ? 'https://x/' + 'a'.repeat(max) : name === 'provider' ? 'a'.repeat(max + 1) : 'A'.repeat(max + 1);
  const err = refusal(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, [name]: long } }));
  expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
  expect(err.message).toContain(`Invalid ${field}: ${long.length} characters, the limit is ${max}`);
  expect(err.message.length).toBeLessThan(400);
  // At the limit it passes.
  const atLimit = name === 'runUrl' ? 'https://x/' + 'a'.repeat(max - 10) : name === 'provider' ? 'a'.repeat(max) : 'A'.repeat(max);
  expect(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, [name]: atLimit } })).not.toThrow();
});

test('a 900 KB actor is refused naming identity.actor and 255, and the message stays short', () => {
  const err = refusal(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, actor: 'x'.repeat(900 * 1024) } }));
  expect(err.message).toMatch(/^Invalid identity\.actor: 921600 characters, the limit is 255 /);
  expect(err.message.length).toBeLessThan(300);
});

test.each([
  ['branch', 'main\nSet-Cookie: x', 'identity.branch'],
  ['actor', 'bob smith', 'identity.actor'],
  ['actor', 'bob\u001b[31m', 'identity.actor'],
  ['actor', 'bob\u202e', 'identity.actor'],
  ['provider', 'GitHub', 'identity.provider'],
  ['project', 'acme/ app', 'identity.project'],
  ['runUrl', 'javascript:alert(1)', 'identity.run_url'],
  ['runUrl', 'https://example.com/a b', 'identity.run_url']
])('%s %j breaks its character rule → names %s; control characters are escaped in the message', (name, value, field) => {
  const err = refusal(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, [name]: value } }));
  expect(err.message).toContain(`Invalid ${field} '`);
  expect(err.message).toContain(`Expected up to ${IDENTITY_LIMITS[name as keyof typeof IDENTITY_LIMITS].max} `);
  // eslint-disable-next-line no-control-regex -- the message must carry no control characters
  expect(err.message).not.toMatch(/[\n\u001b\u202e]/);
});

test('non-string identity fields are refused', () => {
  const err = refusal(() => validateProvisionIdentity({ pipelineKey: 'p', jobId: 'j', identity: { ...ok, actor: 42 as unknown as string } }));
  expect(err.message).toBe('Invalid identity.actor: expected a string.');
});

test('oversize pipeline_key and job_id are refused by length, without the value', () => {
  const err = refusal(() => validateProvisionIdentity({ pipelineKey: 'k'.repeat(5000), jobId: 'j', identity: ok }));
  expect(err.message).toMatch(/^Invalid pipeline_key: 5000 characters, the limit is 256 /);
  expect(err.message).not.toContain('k'.repeat(41));
  expect(refusal(() => validateKey('j'.repeat(300), 'job_id')).message).toMatch(/^Invalid job_id: 300 characters, the limit is 256 /);
  expect(refusal(() => validateKey('a b', 'job_id')).message).toBe("Invalid job_id 'a b'. Expected up to 256 printable ASCII characters without spaces.");
});

test('truncate: control and bidi characters of a caller value are escaped, so an error cannot forge lines or colours in a CI log', () => {
  const { truncate } = jest.requireActual('../../src/server/validate') as typeof import('../../src/server/validate');
  expect(truncate('ab\ncd\x1b[31m\u202eok')).toBe('ab\\u000acd\\u001b[31m\\u202eok');
  expect(truncate('x'.repeat(100), 10)).toBe('xxxxxxxxxx...');
});
