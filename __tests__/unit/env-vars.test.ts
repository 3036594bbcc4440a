// An unknown BUILDCLOUD_* variable is warned about with the closest known name (issue 12: BUILDCLOUD_TAG=app:1 was
// ignored with exit 0), and the list of known variables is every one the code names.
import * as fs from 'fs';
import * as path from 'path';
import { closestName, editDistance } from '../../src/core/closest-name';
import { ENV_VARS, envVarsOf, isKnownEnvName, knownEnvNames, unknownEnvWarnings } from '../../src/core/env-vars';

const ROOT = path.resolve(__dirname, '../..');

describe('closestName', () => {
  test.each<[string, string, number]>([
    ['TAG', 'TAGS', 1],
    ['TGAS', 'TAGS', 1],
    ['NOCACHE', 'NO_CACHE', 1],
    ['BUILD_ARG', 'BUILD_ARGS', 1],
    ['', 'ABC', 3]
  ])('editDistance(%s, %s) = %d', (a, b, d) => expect(editDistance(a, b)).toBe(d));

  test('the closest within reach, else nothing; the shared prefix does not count', () => {
    const known = ['BUILDCLOUD_TAGS', 'BUILDCLOUD_TARGET', 'BUILDCLOUD_PUSH'];
    expect(closestName('BUILDCLOUD_TAG', known, 'BUILDCLOUD_')).toBe('BUILDCLOUD_TAGS');
    expect(closestName('BUILDCLOUD_TARGETS', known, 'BUILDCLOUD_')).toBe('BUILDCLOUD_TARGET');
    expect(closestName('BUILDCLOUD_X', known, 'BUILDCLOUD_')).toBeUndefined();
    expect(closestName('BUILDCLOUD_PULL', known, 'BUILDCLOUD_')).toBeUndefined(); // 2 edits on a 4-letter name: too far
  });
});

describe('unknown BUILDCLOUD_* variables', () => {
  test.each<[NodeJS.ProcessEnv, string[]]>([
    [{ BUILDCLOUD_TAG: 'app:1' }, ['BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?']],
    [{ BUILDCLOUD_BUILD_ARG: 'A=1' }, ['BUILDCLOUD_BUILD_ARG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_BUILD_ARGS?']],
    [{ BUILDCLOUD_NOCACHE: 'true' }, ['BUILDCLOUD_NOCACHE is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_NO_CACHE?']],
    [{ BUILDCLOUD_DOCKERFILE: 'x' }, ['BUILDCLOUD_DOCKERFILE is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_FILE?']],
    [{ BUILDCLOUD_PIPELINE: '7' }, ['BUILDCLOUD_PIPELINE is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_PIPELINE_ID?']],
    // a name cut short, too far by edits: the known name it starts (issue 12 F)
    [{ BUILDCLOUD_JOB: 'j1' }, ['BUILDCLOUD_JOB is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_JOB_ID?']],
    [{ BUILDCLOUD_STATEDIR: '/x' }, ['BUILDCLOUD_STATEDIR is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_STATE_DIR?']],
    [{ BUILDCLOUD_TOKNE: 'hunter2-secret' }, ['BUILDCLOUD_TOKNE is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TOKEN?']],
    [{ buildcloud_tags: 'app:1' }, ['buildcloud_tags is ignored: variable names are case-sensitive. Did you mean BUILDCLOUD_TAGS?']],
    [
      { BUILDCLOUD_WHATEVER_THIS_IS: '1' },
      ['BUILDCLOUD_WHATEVER_THIS_IS is not a Build Cloud variable and is ignored; buildcloud build --help lists the variables it reads.']
    ],
    [
      { BUILDCLOUD_TAG: '1', BUILDCLOUD_PUHS: '1', HOME: '/root' },
      [
        'BUILDCLOUD_PUHS is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_PUSH?',
        'BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?'
      ]
    ]
  ])('%j', (env, warnings) => {
    const out = unknownEnvWarnings(env, 'build');
    expect(out).toEqual(warnings);
    for (const v of Object.values(env)) if (v && v.length > 1) expect(out.join('\n')).not.toContain(v); // never a value
  });

  test.each([
    'BUILDCLOUD_TAGS',
    'BUILDCLOUD_SECRETS',
    'BUILDCLOUD_PR_COMMENT',
    'BUILDCLOUD_PROJECT',
    'BUILDCLOUD_BRANCH',
    'BUILDCLOUD_PIPELINE_ID',
    'BUILDCLOUD_JOB_ID',
    'BUILDCLOUD_DEFAULT_BRANCH',
    'BUILDCLOUD_SESSION',
    'BUILDCLOUD_SPOOL_DIR',
    'BUILDCLOUD_DOCKER',
    'BUILDCLOUD_CA_FILE',
    'BUILDCLOUD_ID_TOKEN',
    'BUILDCLOUD_RUNNER_DOCKER_HOST',
    'BUILDCLOUD_SAVED_DOCKER_CONFIG',
    'BUILDCLOUD_DIGEST', // outputs reach later jobs' environment (GitLab dotenv, CircleCI $BASH_ENV)
    'BUILDCLOUD_CACHE_RATIO',
    'BUILDCLOUD_BUILDER_PLATFORMS',
    'BUILDCLOUD_BUILD_MINUTES',
    'BUILDCLOUD_CLI',
    'BUILDCLOUD_GITLAB_DIR'
  ])('%s is known: no warning', (name) => {
    expect(unknownEnvWarnings({ [name]: 'x' }, 'setup')).toEqual([]);
  });

  test('a prefix alone is not a variable', () => {
    expect(isKnownEnvName('BUILDCLOUD_RUNNER_')).toBe(false);
    expect(isKnownEnvName('BUILDCLOUD_RUNNER_DOCKER_HOST')).toBe(true);
  });

  // Where the product reads or writes a variable: the runner core and CLI, the control plane, the plugins' scripts
  // and templates, the harness that runs the CIs. A name there that is not known would be warned about in every job.
  test('every BUILDCLOUD_* name in src/, plugins/ and harness/ is known', () => {
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(ts|ya?ml|sh|mjs|js)$/.test(e.name) && !p.endsWith('env-vars.ts')) files.push(p); // the list itself names mistakes
      }
    };
    for (const d of ['src', 'plugins', 'harness']) walk(path.join(ROOT, d));
    const unknown = new Set<string>();
    const prefixes = ENV_VARS.map((v) => v.name).filter((n) => n.endsWith('_'));
    for (const f of files) {
      for (const [name] of fs.readFileSync(f, 'utf8').matchAll(/BUILDCLOUD_[A-Z0-9_]*/g)) {
        if (name === 'BUILDCLOUD_') continue; // BUILDCLOUD_${...}: an input's name (inputs.ts envName)
        const ok = name.endsWith('_') ? prefixes.some((p) => name.startsWith(p)) : isKnownEnvName(name);
        if (!ok) unknown.add(`${name} (${path.relative(ROOT, f)})`);
      }
    }
    expect([...unknown]).toEqual([]);
  });

  test('setup --help lists the identity variables', () => {
    expect(envVarsOf('setup').map((v) => v.name)).toEqual(
      expect.arrayContaining(['BUILDCLOUD_PROJECT', 'BUILDCLOUD_BRANCH', 'BUILDCLOUD_PIPELINE_ID', 'BUILDCLOUD_DEFAULT_BRANCH', 'BUILDCLOUD_ID_TOKEN'])
    );
    expect(knownEnvNames()).toContain('BUILDCLOUD_JOB_ID'); // an input (job-id): its flag's help names it
  });

  test("the README's command line section lists every variable a command reads", () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const start = readme.indexOf('### Command line');
    expect(start).toBeGreaterThan(0);
    const section = readme.slice(start, readme.indexOf('\n## ', start));
    const missing = ENV_VARS.filter((v) => v.commands.length && !section.includes(v.name)).map((v) => v.name);
    expect(missing).toEqual([]);
  });
});
