// The built CLIs (run `node scripts/build.mjs` first): `--help` groups the commands by where they run, each
// command's help lists the variables it reads, and the runner's fast path and commander's path both warn about an
// unknown BUILDCLOUD_* variable (issue 12).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const DIST = path.resolve(__dirname, '../../dist');
const HOST = "Commands for the control plane's host (serve, admin, usage):";
const CI = 'Commands for a CI job (setup, build, report: the runner CLI, also @buildcloud/ci):';

function run(bundle: 'cli.js' | 'runner.js', args: string[], env: NodeJS.ProcessEnv = {}) {
  const file = path.join(DIST, bundle);
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run node scripts/build.mjs first`);
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BUILDCLOUD_')));
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-help-'));
  const r = spawnSync(process.execPath, [file, ...args], { cwd, env: { ...clean, ...env }, encoding: 'utf8', timeout: 30000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// "  name  description" lines of a help section, names only.
function section(help: string, heading: string): string[] {
  const start = help.indexOf(heading);
  if (start < 0) return [];
  const body = help.slice(start + heading.length).split('\n\n')[0];
  return body
    .split('\n')
    .filter((l) => /^ {2}\S/.test(l))
    .map((l) => l.trim().split(/\s+/)[0]);
}

describe('buildcloud --help (dist/cli.js)', () => {
  test('commands grouped by where they run', () => {
    const { stdout, code } = run('cli.js', ['--help']);
    expect(code).toBe(0);
    expect(section(stdout, HOST)).toEqual(['serve', 'admin', 'usage']);
    expect(section(stdout, CI)).toEqual(['setup', 'build', 'report']);
    expect(stdout.indexOf(HOST)).toBeLessThan(stdout.indexOf(CI));
  });

  test.each<[string, string[]]>([
    [
      'setup',
      [
        'BUILDCLOUD_ID_TOKEN',
        'BUILDCLOUD_PROJECT',
        'BUILDCLOUD_BRANCH',
        'BUILDCLOUD_DEFAULT_BRANCH',
        'BUILDCLOUD_PIPELINE_ID',
        'BUILDCLOUD_CA_FILE',
        'BUILDCLOUD_DOCKER',
        'BUILDCLOUD_SPOOL_DIR',
        'BUILDCLOUD_SESSION',
        'BUILDCLOUD_DEBUG'
      ]
    ],
    [
      'build',
      [
        'BUILDCLOUD_SECRETS',
        'BUILDCLOUD_DEFAULT_BRANCH',
        'BUILDCLOUD_DOCKER',
        'BUILDCLOUD_CACHE_PROBE_TIMEOUT',
        'BUILDCLOUD_CACHE_EXPORT_TIMEOUT',
        'BUILDCLOUD_SESSION',
        'BUILDCLOUD_RUNNER_*',
        'BUILDCLOUD_DEBUG'
      ]
    ],
    ['report', ['BUILDCLOUD_CA_FILE', 'BUILDCLOUD_SESSION', 'BUILDCLOUD_DEBUG']],
    ['serve', ['BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR', 'BUILDCLOUD_LOG_LEVEL']],
    ['admin', ['BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR']],
    ['usage', ['BUILDCLOUD_CA_FILE', 'BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR', 'BUILDCLOUD_HTTP_ENDPOINT']]
  ])('%s --help lists the variables it reads', (command, vars) => {
    const { stdout } = run('cli.js', [command, '--help']);
    const heading = ['setup', 'build'].includes(command)
      ? 'Environment variables (each input option above also reads its own, named there; a flag wins over its variable):'
      : 'Environment variables:';
    expect(section(stdout, heading)).toEqual(vars);
  });
});

describe('the runner CLI (dist/runner.js)', () => {
  test('--help: the CI job group, no serve or admin', () => {
    const { stdout, code } = run('runner.js', ['--help']);
    expect(code).toBe(0);
    expect(section(stdout, CI)).toEqual(['setup', 'build', 'report']);
    expect(stdout).not.toContain(HOST);
    expect(stdout).not.toMatch(/\n {2}(serve|admin|usage)\b/);
  });

  test("build --help: docker's spellings, the context argument, the booleans' form and the variables", () => {
    const { stdout } = run('runner.js', ['build', '--help']);
    expect(stdout).toContain('Usage: buildcloud build [options] [context]');
    for (const flag of [
      '-t, --tag <name>',
      '-f, --file <value>',
      '--build-arg <KEY=VALUE>',
      '--label <KEY=VALUE>',
      '--platform <os/arch>',
      '--secret <id=ID,src=FILE>',
      '--no-cache [bool]',
      '--push [bool]',
      '--pull [bool]',
      '--load [bool]'
    ])
      expect(stdout).toContain(flag);
    expect(stdout.replace(/\s+/g, ' ')).toContain('Repeatable: each adds entries. (env BUILDCLOUD_BUILD_ARGS)');
    expect(section(stdout, 'Environment variables (each input option above also reads its own, named there; a flag wins over its variable):')).toContain(
      'BUILDCLOUD_SECRETS'
    );
  });

  test('setup --help lists the identity variables', () => {
    const { stdout } = run('runner.js', ['setup', '--help']);
    expect(stdout).toMatch(/\n {2}BUILDCLOUD_PROJECT +identity outside GitHub, GitLab and CircleCI: the project \(cache scope\)\n/);
    expect(stdout).toMatch(/\n {2}BUILDCLOUD_PIPELINE_ID +identity outside the three CIs: jobs with the same pipeline id share one builder\n/);
  });

  // The fast path (fastParse) and commander's (`--` goes there) both warn, in setup only, before setup's own error:
  // here, no endpoint. Build and report of the same job see the same variables and do not repeat it (issue 12 F).
  test.each<[string, string[]]>([
    ['runner.js', ['setup']],
    ['runner.js', ['setup', '--']],
    ['cli.js', ['setup', '--cache', 'false']]
  ])('%s %j with BUILDCLOUD_TAG=acme/app:1 warns naming BUILDCLOUD_TAGS, never the value', (bundle, args) => {
    const { stderr, code } = run(bundle as 'cli.js', args, { BUILDCLOUD_TAG: 'acme/app:1' });
    expect(code).toBe(1);
    expect(stderr.split('\n')[0]).toBe('warning: BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?');
    expect(stderr).toContain("buildcloud: Missing input 'endpoint'");
    expect(stderr).not.toContain('acme/app:1');
  });

  test.each<[string, string[]]>([
    ['runner.js', ['build']],
    ['runner.js', ['build', '-tacme/app:1', '.']],
    ['cli.js', ['build', '--no-cache', 'false', '.']],
    ['runner.js', ['report']]
  ])('%s %j with BUILDCLOUD_TAG set: no warning (setup said it)', (bundle, args) => {
    const { stderr } = run(bundle as 'cli.js', args, { BUILDCLOUD_TAG: 'acme/app:1' });
    expect(stderr).not.toContain('warning:');
  });
});

// Issue 12, follow-up F (a break-it run), through the built CLIs.
describe('the break-it run', () => {
  test.each<[string, string[]]>([
    ['cli.js', ['admin', 'org', 'list']],
    ['cli.js', ['usage', '--org', 'acme']]
  ])("the operator's %s %j warns about a misspelt variable too", (bundle, args) => {
    const state = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-state-'));
    const { stderr } = run(bundle as 'cli.js', args, { BUILDCLOUD_STATEDIR: '/x', BUILDCLOUD_STATE_DIR: state });
    expect(stderr.split('\n')[0]).toBe('warning: BUILDCLOUD_STATEDIR is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_STATE_DIR?');
  });

  test.each<['cli.js' | 'runner.js']>([['cli.js'], ['runner.js']])('%s setup --cache maybe: the error and a one-line hint, not the help', (bundle) => {
    const { stderr, stdout, code } = run(bundle, ['setup', '--cache', 'maybe']);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toBe(
      "error: option '--cache [bool]' argument 'maybe' is invalid. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no), or --cache alone for true.\n" +
        'see buildcloud setup --help\n'
    );
  });

  test.each<['cli.js' | 'runner.js']>([['cli.js'], ['runner.js']])('%s build -t a:1 --push bogus names --push, not a missing context', (bundle) => {
    const { stderr, code } = run(bundle, ['build', '-t', 'a:1', '--push', 'bogus']);
    expect(code).toBe(1);
    expect(stderr).toBe(
      "error: option '--push [bool]' argument 'bogus' is invalid. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no), or --push alone for true.\n" +
        'see buildcloud build --help\n'
    );
  });

  test.each([['usage'], ['serve'], ['admin']])('the runner CLI asked for %s says where that command is', (command) => {
    const { stderr, code } = run('runner.js', [command]);
    expect(code).toBe(1);
    expect(stderr).toBe(
      `buildcloud: '${command}' is an operator command of the full CLI (dist/cli.js), not of this runner CLI (setup, build, report for CI jobs): ` +
        `serve, admin, usage and demo run where the control plane runs. Run node dist/cli.js ${command} there, or put buildcloud on PATH with ` +
        'npm install --global . in a checkout.\n'
    );
  });

  // A session file is all build reads before its own checks (the context's and the inputs'): no control plane needed.
  test.each<['cli.js' | 'runner.js']>([['cli.js'], ['runner.js']])('%s build: errors name what the user typed', (bundle) => {
    const session = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bc-session-')), 'session.json');
    fs.writeFileSync(session, '{"version":1}');
    const positional = run(bundle, ['build', 'nope'], { BUILDCLOUD_SESSION: session });
    expect(positional.stderr).toBe("buildcloud: Build context 'nope' not found (from the context argument): pass an existing directory, e.g. '.'.\n");
    const variable = run(bundle, ['build'], { BUILDCLOUD_SESSION: session, BUILDCLOUD_PUSH: 'maybe' });
    expect(variable.stderr).toBe("buildcloud: Invalid BUILDCLOUD_PUSH: 'maybe'. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no).\n");
    const secret = run(bundle, ['build', '--secret', 'id=npm,src=/nope', '.'], { BUILDCLOUD_SESSION: session });
    expect(secret.stderr).toBe('buildcloud: Invalid --secret id=npm: its src is not a readable file. Expected id=ID,src=FILE of an existing file.\n');
    const arg = run(bundle, ['build', '--build-arg', 'BC_UNSET_ARG', '.'], { BUILDCLOUD_SESSION: session });
    expect(arg.stderr).toBe(
      "buildcloud: --build-arg BC_UNSET_ARG passes BC_UNSET_ARG's value from this environment, and BC_UNSET_ARG is not set: export BC_UNSET_ARG, or pass --build-arg BC_UNSET_ARG=VALUE.\n"
    );
    for (const r of [positional, variable, secret, arg]) expect(r.code).toBe(1);
  });
});
