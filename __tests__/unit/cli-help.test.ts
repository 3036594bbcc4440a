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
    ['build', ['BUILDCLOUD_SECRETS', 'BUILDCLOUD_DEFAULT_BRANCH', 'BUILDCLOUD_DOCKER', 'BUILDCLOUD_SESSION', 'BUILDCLOUD_RUNNER_*', 'BUILDCLOUD_DEBUG']],
    ['report', ['BUILDCLOUD_CA_FILE', 'BUILDCLOUD_SESSION', 'BUILDCLOUD_DEBUG']],
    ['serve', ['BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR', 'BUILDCLOUD_LOG_LEVEL']],
    ['admin', ['BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR']],
    ['usage', ['BUILDCLOUD_DEBUG', 'BUILDCLOUD_STATE_DIR', 'BUILDCLOUD_HTTP_ENDPOINT']]
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

  // The fast path (fastParse) and commander's (a docker-style short flag with its value attached goes there) both warn
  // before the step's own error: here, no session.
  test.each<[string, string[]]>([
    ['runner.js', ['build']],
    ['runner.js', ['build', '-tacme/app:1', '.']],
    ['cli.js', ['build', '--no-cache', 'false', '.']]
  ])('%s %j with BUILDCLOUD_TAG=acme/app:1 warns naming BUILDCLOUD_TAGS, never the value', (bundle, args) => {
    const { stderr, code } = run(bundle as 'cli.js', args, { BUILDCLOUD_TAG: 'acme/app:1' });
    expect(code).toBe(1);
    expect(stderr.split('\n')[0]).toBe('warning: BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?');
    expect(stderr).toContain('buildcloud: No Build Cloud session in this job');
    expect(stderr).not.toContain('acme/app:1');
  });
});
