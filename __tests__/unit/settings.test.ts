// Raw inputs → validated settings (every error names the input and what is expected), and the generated
// action.yml files in step with the one input definition.
import * as fs from 'fs';
import * as path from 'path';
import YAML from 'yaml';
import { BUILD_INPUTS, BUILD_OUTPUTS, envName, SETUP_INPUTS, SETUP_OUTPUTS, type InputDef, type OutputDef } from '../../src/core/inputs';
import { buildSettings, setupSettings, type BuildSettings, type SetupSettings } from '../../src/core/settings';
import { MULTI_LINE_FORM } from '../../src/core/build-inputs';
import { errorOf } from '../helpers/input-error';

const ROOT = path.resolve(__dirname, '../..');

/** A getter as the CI wrappers give one: '' for every input not set. */
const inputs =
  (values: Record<string, string> = {}) =>
  (name: string): string =>
    values[name] ?? '';

// Which settings field each input fills: the only place these tests name the mapping.
const SETUP_FIELDS: Record<string, keyof SetupSettings> = {
  endpoint: 'endpoint',
  token: 'token',
  org: 'org',
  'oidc-audience': 'oidcAudience',
  platforms: 'platforms',
  scope: 'scope',
  cache: 'cache',
  fallback: 'fallback',
  summary: 'summary',
  'pr-comment': 'prComment',
  'github-token': 'githubToken',
  'job-id': 'jobId',
  'metering-endpoint': 'meteringEndpoint',
  'provision-timeout': 'provisionTimeoutS'
};
const BUILD_FIELDS: Record<string, keyof BuildSettings> = {
  context: 'context',
  file: 'file',
  tags: 'tags',
  'build-args': 'buildArgs',
  target: 'target',
  'cache-scope': 'cacheScope',
  labels: 'labels',
  push: 'push',
  load: 'load',
  platforms: 'platforms',
  'no-cache': 'noCache',
  pull: 'pull',
  secrets: 'secrets',
  'secret-files': 'secretFiles',
  ssh: 'ssh'
};

/** An input's default as its type reads it. */
function typedDefault(def: InputDef): unknown {
  switch (def.type) {
    case 'boolean':
      return def.default === 'true';
    case 'number':
      return Number(def.default);
    case 'list':
      return def.default
        .split(/[\n,]/)
        .map((s) => s.trim())
        .filter(Boolean);
    default:
      return def.default;
  }
}

const expectedDefaults = (defs: InputDef[], fields: Record<string, string>) => Object.fromEntries(defs.map((d) => [fields[d.name], typedDefault(d)]));

describe('defaults', () => {
  test('the field map covers every input, one field each', () => {
    expect(Object.keys(SETUP_FIELDS).sort()).toEqual(SETUP_INPUTS.map((d) => d.name).sort());
    expect(Object.keys(BUILD_FIELDS).sort()).toEqual(BUILD_INPUTS.map((d) => d.name).sort());
  });

  test('setup: every input empty gives the InputDef defaults', () => {
    expect(setupSettings(inputs())).toEqual(expectedDefaults(SETUP_INPUTS, SETUP_FIELDS));
  });

  test('build: every input empty gives the InputDef defaults', () => {
    expect(buildSettings(inputs())).toEqual(expectedDefaults(BUILD_INPUTS, BUILD_FIELDS));
  });

  // The same, spelled out: a changed default shows up here as well as in action.yml.
  test('the defaults, literally', () => {
    expect(setupSettings(inputs())).toEqual({
      endpoint: '',
      token: '',
      org: '',
      oidcAudience: 'buildcloud',
      platforms: [],
      scope: 'pipeline',
      cache: true,
      fallback: 'none',
      summary: true,
      prComment: false,
      githubToken: '',
      jobId: '',
      meteringEndpoint: '',
      provisionTimeoutS: 120
    });
    expect(buildSettings(inputs())).toEqual({
      context: '.',
      file: '',
      tags: [],
      buildArgs: [],
      target: '',
      cacheScope: '',
      labels: [],
      push: false,
      load: false,
      platforms: [],
      noCache: false,
      pull: false,
      secrets: [],
      secretFiles: [],
      ssh: []
    });
  });

  test('values are trimmed', () => {
    const s = setupSettings(inputs({ endpoint: ' cp:7443 ', org: ' acme ', 'job-id': ' build-1 ', token: ' t ', 'provision-timeout': ' 30 ' }));
    expect([s.endpoint, s.org, s.jobId, s.token, s.provisionTimeoutS]).toEqual(['cp:7443', 'acme', 'build-1', 't', 30]);
  });

  test('envName gives the BUILDCLOUD_* variable of an input', () => {
    expect(['endpoint', 'provision-timeout', 'pr-comment'].map(envName)).toEqual([
      'BUILDCLOUD_ENDPOINT',
      'BUILDCLOUD_PROVISION_TIMEOUT',
      'BUILDCLOUD_PR_COMMENT'
    ]);
  });
});

describe('accepted values', () => {
  test.each([
    ['endpoint', 'cp.example.com:443', 'endpoint', 'cp.example.com:443'],
    ['endpoint', 'grpc://127.0.0.1:7443', 'endpoint', 'grpc://127.0.0.1:7443'],
    ['endpoint', 'grpcs://cp.example.com:443/', 'endpoint', 'grpcs://cp.example.com:443/'],
    ['metering-endpoint', 'https://metering.example.com/v1/events', 'meteringEndpoint', 'https://metering.example.com/v1/events'],
    ['metering-endpoint', 'http://127.0.0.1:7644', 'meteringEndpoint', 'http://127.0.0.1:7644'],
    ['org', 'acme', 'org', 'acme'],
    ['org', 'acme-corp.eu_1', 'org', 'acme-corp.eu_1'],
    ['scope', 'job', 'scope', 'job'],
    ['fallback', 'local', 'fallback', 'local'],
    ['platforms', 'linux/amd64,linux/arm64', 'platforms', ['linux/amd64', 'linux/arm64']],
    ['platforms', 'linux/amd64\nlinux/arm64/v8\n', 'platforms', ['linux/amd64', 'linux/arm64/v8']],
    ['provision-timeout', '1', 'provisionTimeoutS', 1],
    ['provision-timeout', '3600', 'provisionTimeoutS', 3600],
    ['job-id', 'build-0-123456', 'jobId', 'build-0-123456'],
    ['job-id', 'x'.repeat(200), 'jobId', 'x'.repeat(200)]
  ])('setup %s %j', (name, value, field, expected) => {
    expect(setupSettings(inputs({ [name]: value }))[field as keyof SetupSettings]).toEqual(expected);
  });

  const BOOLEANS: [string, boolean][] = [
    ['true', true],
    ['True', true],
    ['TRUE', true],
    ['1', true],
    ['yes', true],
    [' true ', true],
    ['false', false],
    ['False', false],
    ['FALSE', false],
    ['0', false],
    ['no', false]
  ];
  test.each((['cache', 'summary', 'pr-comment'] as const).flatMap((name) => BOOLEANS.map(([v, b]) => [name, v, b] as const)))(
    'setup boolean %s %j → %s',
    (name, value, expected) => {
      expect(setupSettings(inputs({ [name]: value }))[SETUP_FIELDS[name]]).toBe(expected);
    }
  );

  test.each((['push', 'load', 'no-cache', 'pull'] as const).flatMap((name) => BOOLEANS.map(([v, b]) => [name, v, b] as const)))(
    'build boolean %s %j → %s',
    (name, value, expected) => {
      expect(buildSettings(inputs({ [name]: value }))[BUILD_FIELDS[name]]).toBe(expected);
    }
  );

  test.each([
    ['comma-separated', 'acme/app:1.0,acme/app:latest', ['acme/app:1.0', 'acme/app:latest']],
    ['newline-separated', 'acme/app:1.0\nacme/app:latest\n', ['acme/app:1.0', 'acme/app:latest']],
    ['both, with blanks and spaces', ' acme/app:1.0 ,\n\n acme/app:latest,,', ['acme/app:1.0', 'acme/app:latest']]
  ])('tags %s', (_name, value, expected) => {
    expect(buildSettings(inputs({ tags: value })).tags).toEqual(expected);
  });

  test('build-args are split per line only: a value with a comma survives', () => {
    expect(buildSettings(inputs({ 'build-args': 'LIST=a,b,c\r\nVERSION=1.2\n\n  EMPTY=  ' })).buildArgs).toEqual(['LIST=a,b,c', 'VERSION=1.2', 'EMPTY=']);
  });

  test('labels are split per line only: a value with a comma survives', () => {
    expect(buildSettings(inputs({ labels: 'org.opencontainers.image.title=app, the API\ncom.example.team=core' })).labels).toEqual([
      'org.opencontainers.image.title=app, the API',
      'com.example.team=core'
    ]);
  });

  test('build platforms and strings', () => {
    expect(buildSettings(inputs({ platforms: 'linux/amd64,linux/arm64', context: ' ./app ', file: 'app/Dockerfile', target: 'runtime' }))).toMatchObject({
      platforms: ['linux/amd64', 'linux/arm64'],
      context: './app',
      file: 'app/Dockerfile',
      target: 'runtime'
    });
  });
});

describe('every validation error names the input and the expectation', () => {
  const ENDPOINT = 'Expected host:port, grpc://host:port, grpcs://host:port, or the http:// or https:// URL of its HTTP port.';
  const BOOL = 'Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no).';
  const TIMEOUT = 'Expected a whole number from 1 to 3600.';
  const PLATFORM = 'Expected os/arch such as linux/amd64.';
  test.each([
    ['endpoint', 'ftp://cp.example.com:21', `Invalid input 'endpoint': 'ftp://cp.example.com:21'. ${ENDPOINT}`],
    [
      'endpoint',
      'https://bct_secret:x@cp.example.com',
      "Invalid input 'endpoint': it holds credentials (user@ or user:password@), which are not accepted or shown. Give the token as 'token' instead."
    ],
    ['endpoint', 'cp.example.com', `Invalid input 'endpoint': 'cp.example.com'. ${ENDPOINT}`],
    ['endpoint', 'cp example.com:443', `Invalid input 'endpoint': 'cp example.com:443'. ${ENDPOINT}`],
    ['endpoint', 'grpc://cp:443/v1', `Invalid input 'endpoint': 'grpc://cp:443/v1'. ${ENDPOINT}`],
    ['metering-endpoint', 'metering.example.com', "Invalid input 'metering-endpoint': 'metering.example.com'. Expected an http:// or https:// URL."],
    [
      'metering-endpoint',
      'ftp://metering.example.com',
      "Invalid input 'metering-endpoint': 'ftp://metering.example.com'. Expected an http:// or https:// URL."
    ],
    ['org', 'Acme', "Invalid input 'org': 'Acme'. Expected lowercase letters, digits and single . _ - between them."],
    ['org', 'acme--corp', "Invalid input 'org': 'acme--corp'. Expected lowercase letters, digits and single . _ - between them."],
    ['org', '-acme', "Invalid input 'org': '-acme'. Expected lowercase letters, digits and single . _ - between them."],
    ['scope', 'workflow', "Invalid input 'scope': 'workflow'. Expected one of: pipeline, job."],
    ['scope', 'Job', "Invalid input 'scope': 'Job'. Expected one of: pipeline, job."],
    ['fallback', 'remote', "Invalid input 'fallback': 'remote'. Expected one of: none, local."],
    ['cache', 'on', `Invalid input 'cache': 'on'. ${BOOL}`],
    ['cache', 'tru', `Invalid input 'cache': 'tru'. ${BOOL}`],
    ['summary', 'Yes', `Invalid input 'summary': 'Yes'. ${BOOL}`],
    ['pr-comment', 'enabled', `Invalid input 'pr-comment': 'enabled'. ${BOOL}`],
    ['provision-timeout', '0', `Invalid input 'provision-timeout': '0'. ${TIMEOUT}`],
    ['provision-timeout', '3601', `Invalid input 'provision-timeout': '3601'. ${TIMEOUT}`],
    ['provision-timeout', '1.5', `Invalid input 'provision-timeout': '1.5'. ${TIMEOUT}`],
    ['provision-timeout', '-5', `Invalid input 'provision-timeout': '-5'. ${TIMEOUT}`],
    ['provision-timeout', '2m', `Invalid input 'provision-timeout': '2m'. ${TIMEOUT}`],
    ['platforms', 'linux/amd64,linux', `Invalid input 'platforms': 'linux'. ${PLATFORM}`],
    ['platforms', 'Linux/AMD64', `Invalid input 'platforms': 'Linux/AMD64'. ${PLATFORM}`],
    ['platforms', 'linux/amd64 linux/arm64', `Invalid input 'platforms': 'linux/amd64 linux/arm64'. ${PLATFORM}`],
    ['job-id', 'build 1', "Invalid input 'job-id': 'build 1'. Expected up to 200 characters without spaces."],
    ['job-id', 'x'.repeat(201), `Invalid input 'job-id': '${'x'.repeat(60)}'. Expected up to 200 characters without spaces.`]
  ])('setup %s %j', (name, value, message) => {
    expect(errorOf(() => setupSettings(inputs({ [name]: value }))).message).toBe(message);
  });

  test.each([
    // Entry numbers and lines, never the entry's text (build-inputs.test.ts has the multi-line cases).
    [
      'build-args',
      'VERSION=1\nNOEQUALS',
      `Invalid input 'build-args': entry 2 (line 2) is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit). ${MULTI_LINE_FORM}`
    ],
    [
      'build-args',
      '1X=2',
      `Invalid input 'build-args': entry 1 (line 1) is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit). ${MULTI_LINE_FORM}`
    ],
    [
      'build-args',
      '=value',
      `Invalid input 'build-args': entry 1 (line 1) is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit). ${MULTI_LINE_FORM}`
    ],
    ['labels', 'a-label-without-value', `Invalid input 'labels': entry 1 (line 1) is not KEY=VALUE (KEY without spaces, = or quotes). ${MULTI_LINE_FORM}`],
    ['labels', 'two words=x', `Invalid input 'labels': entry 1 (line 1) is not KEY=VALUE (KEY without spaces, = or quotes). ${MULTI_LINE_FORM}`],
    ['push', 'sometimes', `Invalid input 'push': 'sometimes'. ${BOOL}`],
    ['load', 'maybe', `Invalid input 'load': 'maybe'. ${BOOL}`],
    ['no-cache', 'y', `Invalid input 'no-cache': 'y'. ${BOOL}`],
    ['pull', 'always', `Invalid input 'pull': 'always'. ${BOOL}`],
    ['platforms', 'linux/amd64,windows', "Invalid input 'platforms': 'windows'. Expected os/arch such as linux/amd64."]
  ])('build %s %j', (name, value, message) => {
    expect(errorOf(() => buildSettings(inputs({ [name]: value }))).message).toBe(message);
  });
});

describe('generated action.yml files match the input definition', () => {
  interface ActionYaml {
    inputs: Record<string, { description: string; required: boolean; default: string }>;
    outputs: Record<string, { description: string }>;
    runs: { using: string; main: string; post?: string; 'post-if'?: string };
  }
  const load = (rel: string): ActionYaml => YAML.parse(fs.readFileSync(path.join(ROOT, rel), 'utf8'));

  describe.each([
    ['action.yml', SETUP_INPUTS, SETUP_OUTPUTS],
    ['build/action.yml', BUILD_INPUTS, BUILD_OUTPUTS]
  ] as [string, InputDef[], OutputDef[]][])('%s', (file, defs, outs) => {
    const action = load(file);

    test('exactly the defined inputs, in order', () => {
      expect(Object.keys(action.inputs)).toEqual(defs.map((d) => d.name));
    });

    test('exactly the defined outputs, in order', () => {
      expect(Object.keys(action.outputs)).toEqual(outs.map((o) => o.name));
      for (const o of outs) expect(action.outputs[o.name].description).toBe(o.description);
    });

    test.each(defs.map((d) => [d.name, d] as const))("input %s: same default (GitHub's own where set), optional, described", (name, def) => {
      const yml = action.inputs[name];
      expect(yml.default).toBe(def.githubDefault ?? def.default);
      expect(yml.required).toBe(false);
      expect(yml.description.startsWith(def.description)).toBe(true);
      if (def.options) expect(yml.description).toContain(`One of: ${def.options.join(', ')}.`);
    });

    test('runs on node24 with a main that exists under dist/', () => {
      expect(action.runs.using).toBe('node24');
      const main = path.resolve(ROOT, path.dirname(file), action.runs.main);
      expect(path.relative(path.join(ROOT, 'dist'), main)).not.toMatch(/^\.\./);
      expect(fs.existsSync(main)).toBe(true);
    });
  });

  test('the setup action has a post step that always runs, and it exists under dist/', () => {
    const { runs } = load('action.yml');
    expect(runs['post-if']).toBe('always()');
    expect(runs.main).toBe('dist/github/main.js');
    expect(runs.post).toBe('dist/github/post.js');
    expect(fs.existsSync(path.join(ROOT, runs.post!))).toBe(true);
  });

  test('github-token and job-id take GitHub expressions there, and only there', () => {
    const { inputs: yml } = load('action.yml');
    expect(yml['github-token'].default).toBe('${{ github.token }}');
    expect(yml['job-id'].default).toBe('${{ github.job }}-${{ strategy.job-index }}-${{ job.check_run_id }}');
    // The core default stays empty: outside GitHub the CI's variables derive the job id.
    expect(setupSettings(inputs()).jobId).toBe('');
  });
});
