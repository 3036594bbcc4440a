// The shell flow leaves the shell as it found it: what setup records, the lines report prints, and bash evaluating
// them (a variable with a value, one set but empty, one unset, values with quotes and newlines).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DOTENV_VALUE_MAX, dotenvLines, exportLines } from '../../src/cli/ci-output';
import { previousValues, releaseEarlierSession, rememberShell, repairStaleShell, restoreLines } from '../../src/cli/shell-env';
import { loadSession, saveSession, sessionFile, type Session } from '../../src/core/session';
import { runnerShellRecord } from '../../src/core/runner-config';

let work: string;
beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-shell-env-'));
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** Runs `script` in bash with exactly `env` and returns the variables named in `names` as bash has them after. */
function bashEnv(script: string, env: Record<string, string>, names: string[]): Record<string, string | null> {
  const dump = names.map((n) => `if [ -n "\${${n}+set}" ]; then printf '%s=%s\\0' ${n} "$${n}"; else printf '%s\\0' ${n}; fi`).join('\n');
  const r = spawnSync('bash', ['-c', `set -eu\n${script}\n${dump}`], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bash failed: ${r.stderr}`);
  const out: Record<string, string | null> = {};
  for (const entry of r.stdout.split('\0').filter(Boolean)) {
    const eq = entry.indexOf('=');
    if (eq < 0) out[entry] = null;
    else out[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return out;
}

const SETUP_VARS = {
  DOCKER_CONFIG: '/tmp/buildcloud-x/docker-config',
  DOCKER_BUILDKIT: '1',
  DOCKER_HOST: 'tcp://127.0.0.1:41234',
  DOCKER_TLS_VERIFY: '1',
  DOCKER_CERT_PATH: '/tmp/buildcloud-x/certs',
  BUILDCLOUD_RUNNER_DOCKER_HOST: "unix:///run/user's docker.sock",
  BUILDCLOUD_SESSION: '/tmp/buildcloud-x/session.json',
  BUILDCLOUD_BUILDER: 'buildcloud-abc',
  BUILDCLOUD_CACHE_FROM: 'reg/acme/app/cache:feature\nreg/acme/app/cache:main',
  BUILDCLOUD_LEASE_ID: 'lease-1'
};
const NAMES = Object.keys(SETUP_VARS);

describe('previousValues and restoreLines', () => {
  test('a value, an empty value and an unset variable are told apart', () => {
    const before = { DOCKER_HOST: "unix:///run/user's docker.sock", DOCKER_CERT_PATH: '', PATH: '/bin' };
    const record = previousValues(['DOCKER_HOST', 'DOCKER_CERT_PATH', 'DOCKER_CONFIG'], before);
    expect(record).toEqual({ DOCKER_HOST: "unix:///run/user's docker.sock", DOCKER_CERT_PATH: '', DOCKER_CONFIG: null });
    expect(restoreLines(record)).toBe("export DOCKER_HOST='unix:///run/user'\\''s docker.sock'\nexport DOCKER_CERT_PATH=''\nunset DOCKER_CONFIG\n");
  });

  test("an earlier setup's record wins for the names it has: report restores the shell as it was before the first setup", () => {
    const earlier = { DOCKER_HOST: null, DOCKER_CONFIG: '/home/dev/.docker', BUILDX_BUILDER: 'mine' };
    const now = { DOCKER_HOST: 'tcp://first-builder:2376', DOCKER_CONFIG: '/tmp/first/docker-config', BUILDCLOUD_LEASE_ID: 'first' };
    expect(previousValues(['DOCKER_HOST', 'DOCKER_CONFIG', 'BUILDCLOUD_LEASE_ID'], now, earlier)).toEqual({
      DOCKER_HOST: null,
      DOCKER_CONFIG: '/home/dev/.docker',
      BUILDX_BUILDER: 'mine',
      BUILDCLOUD_LEASE_ID: 'first'
    });
  });

  test('a name that is not a shell variable is refused, never printed into eval', () => {
    expect(() => restoreLines({ 'A;rm -rf /': null })).toThrow('not a variable name: A;rm -rf /');
  });

  test('bash: setup lines, then report lines, give back exactly the environment before', () => {
    const before = { DOCKER_HOST: 'unix:///var/run/docker.sock', DOCKER_CERT_PATH: '', DOCKER_CONFIG: "/home/o'neil/.docker", HOME: '/home/dev' };
    const restore = previousValues(NAMES, before);
    const names = [...NAMES, 'HOME'];
    const after = bashEnv(`eval "$(cat <<'EOF'\n${exportLines(SETUP_VARS)}EOF\n)"\neval "$(cat <<'EOF'\n${restoreLines(restore)}EOF\n)"`, before, names);
    expect(after).toEqual(bashEnv('', before, names));
    expect(after).toMatchObject({ DOCKER_HOST: 'unix:///var/run/docker.sock', DOCKER_CERT_PATH: '', DOCKER_TLS_VERIFY: null, BUILDCLOUD_SESSION: null });
  });
});

function session(dir: string, extra: Partial<Session> = {}): Session {
  fs.mkdirSync(dir, { recursive: true });
  return {
    version: 1,
    dir,
    identity: {} as Session['identity'],
    org: 'acme',
    endpoint: 'http://127.0.0.1:7644',
    token: 't',
    meteringUrl: '',
    spoolDir: path.join(dir, 'spool'),
    lease: null,
    runner: null,
    docker: {} as Session['docker'],
    env: {},
    fallback: false,
    cache: true,
    summary: true,
    prComment: false,
    startedAtMs: 0,
    ...extra
  };
}

describe('rememberShell: the record goes into the session', () => {
  test('a first setup records the shell as it is', () => {
    const s = session(path.join(work, 'first'));
    saveSession(s);
    rememberShell(s, { DOCKER_HOST: 'tcp://b:1', BUILDCLOUD_SESSION: sessionFile(s.dir) }, { DOCKER_HOST: 'unix:///mine.sock' });
    expect(loadSession(sessionFile(s.dir)).shellRestore).toEqual({ DOCKER_HOST: 'unix:///mine.sock', BUILDCLOUD_SESSION: null });
  });

  test('a second setup in the same shell (no report in between) carries the first record over', () => {
    const first = session(path.join(work, 'one'), { shellRestore: { DOCKER_HOST: null, BUILDCLOUD_SESSION: null } });
    saveSession(first);
    const second = session(path.join(work, 'two'));
    saveSession(second);
    const shellNow = { DOCKER_HOST: 'tcp://first:1', BUILDCLOUD_SESSION: sessionFile(first.dir) };
    rememberShell(second, { DOCKER_HOST: 'tcp://second:1', BUILDCLOUD_SESSION: sessionFile(second.dir) }, shellNow);
    expect(loadSession(sessionFile(second.dir)).shellRestore).toEqual({ DOCKER_HOST: null, BUILDCLOUD_SESSION: null });
  });
});

describe('repairStaleShell: report ran without eval', () => {
  test('DOCKER_* come back from BUILDCLOUD_RUNNER_*, the stale session and outputs go, and the warning says why', () => {
    const gone = path.join(work, 'gone', 'session.json');
    const env: NodeJS.ProcessEnv = {
      PATH: '/bin',
      BUILDCLOUD_SESSION: gone,
      DOCKER_HOST: 'tcp://127.0.0.1:41234',
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: '/tmp/gone/certs',
      DOCKER_CONFIG: '/tmp/gone/docker-config',
      DOCKER_BUILDKIT: '1',
      BUILDX_BUILDER: 'buildcloud-abc',
      BUILDCLOUD_RUNNER_DOCKER_HOST: 'unix:///var/run/docker.sock',
      BUILDCLOUD_RUNNER_DOCKER_CONFIG: '/home/dev/.docker',
      BUILDCLOUD_LEASE_ID: 'lease-1',
      BUILDCLOUD_DOCKER_HOST: 'tcp://127.0.0.1:41234',
      BUILDCLOUD_CACHE_TO: 'reg/acme/app/cache:main',
      BUILDCLOUD_TOKEN: 'kept'
    };
    expect(repairStaleShell(env)).toBe(
      `BUILDCLOUD_SESSION names a session that is gone (${gone}): an earlier \`buildcloud report\` ran without restoring this shell. ` +
        'DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_CONTEXT, DOCKER_CONFIG, DOCKER_BUILDKIT, BUILDX_BUILDER are back to what they were before that setup; ' +
        'run report as eval "$(buildcloud report)" to restore the shell.'
    );
    // DOCKER_BUILDKIT and BUILDX_BUILDER were setup's (no BUILDCLOUD_RUNNER_* for them): they go too.
    expect(env).toEqual({
      PATH: '/bin',
      DOCKER_HOST: 'unix:///var/run/docker.sock',
      DOCKER_CONFIG: '/home/dev/.docker',
      BUILDCLOUD_TOKEN: 'kept'
    });
  });

  test('DOCKER_BUILDKIT and BUILDX_BUILDER set before the first setup come back as they were', () => {
    const env: NodeJS.ProcessEnv = {
      BUILDCLOUD_SESSION: path.join(work, 'gone-too', 'session.json'),
      DOCKER_BUILDKIT: '1',
      BUILDX_BUILDER: 'buildcloud-abc',
      BUILDCLOUD_RUNNER_DOCKER_BUILDKIT: '0',
      BUILDCLOUD_RUNNER_BUILDX_BUILDER: 'mine'
    };
    expect(repairStaleShell(env)).toMatch(/^BUILDCLOUD_SESSION names a session that is gone/);
    expect(env).toEqual({ DOCKER_BUILDKIT: '0', BUILDX_BUILDER: 'mine' });
  });

  test('setup records DOCKER_BUILDKIT and BUILDX_BUILDER only when set, and carries the first record over', () => {
    expect(runnerShellRecord({ DOCKER_BUILDKIT: '0', PATH: '/bin' })).toEqual({ BUILDCLOUD_RUNNER_DOCKER_BUILDKIT: '0' });
    expect(runnerShellRecord({})).toEqual({});
    expect(runnerShellRecord({ BUILDCLOUD_SESSION: '/s', DOCKER_BUILDKIT: '1', BUILDX_BUILDER: 'b' })).toEqual({});
  });

  test('a clean shell, or a session that is still there, is left alone', () => {
    const s = session(path.join(work, 'alive'));
    const file = saveSession(s);
    const env = { BUILDCLOUD_SESSION: file, DOCKER_HOST: 'tcp://b:1' };
    expect(repairStaleShell(env)).toBe('');
    expect(env).toEqual({ BUILDCLOUD_SESSION: file, DOCKER_HOST: 'tcp://b:1' });
    const clean = { DOCKER_HOST: 'unix:///x.sock' };
    expect(repairStaleShell(clean)).toBe('');
    expect(clean).toEqual({ DOCKER_HOST: 'unix:///x.sock' });
  });
});

describe('releaseEarlierSession: setup twice without report', () => {
  test('the earlier session is ended (as report would), the shell is put back as it was before it, and one line says so', async () => {
    const first = session(path.join(work, 'leaked'), {
      lease: { id: 'lease-7' } as Session['lease'],
      shellRestore: { DOCKER_HOST: 'unix:///mine.sock', DOCKER_BUILDKIT: null, BUILDCLOUD_SESSION: null, BUILDCLOUD_LEASE_ID: null }
    });
    const file = saveSession(first);
    const env: NodeJS.ProcessEnv = {
      PATH: '/bin',
      DOCKER_HOST: 'tcp://first:1',
      DOCKER_BUILDKIT: '1',
      BUILDCLOUD_SESSION: file,
      BUILDCLOUD_LEASE_ID: 'lease-7'
    };
    const ended: Session[] = [];
    const r = await releaseEarlierSession(env, async (s) => {
      ended.push(s);
      fs.rmSync(s.dir, { recursive: true, force: true }); // what report does to its files
    });
    expect(ended.map((s) => s.lease?.id)).toEqual(['lease-7']);
    expect(r).toEqual({
      warning:
        `this shell still had a Build Cloud session that no report ended (lease lease-7, ${file}): released it and removed its files before this setup. ` +
        'End each build with eval "$(buildcloud report)".',
      shellRestore: first.shellRestore
    });
    expect(env).toEqual({ PATH: '/bin', DOCKER_HOST: 'unix:///mine.sock' });
    // The next session keeps the first setup's record: report restores the shell as it was before both.
    const second = session(path.join(work, 'after-leak'));
    saveSession(second);
    rememberShell(second, { DOCKER_HOST: 'tcp://second:1', DOCKER_BUILDKIT: '1', BUILDCLOUD_SESSION: sessionFile(second.dir) }, env, r?.shellRestore);
    expect(loadSession(sessionFile(second.dir)).shellRestore).toEqual(first.shellRestore);
  });

  test('a session set up with --export-file (no record of the shell): DOCKER_* come back from BUILDCLOUD_RUNNER_*', async () => {
    const file = saveSession(session(path.join(work, 'exported')));
    const env: NodeJS.ProcessEnv = { BUILDCLOUD_SESSION: file, DOCKER_HOST: 'tcp://first:1', BUILDCLOUD_RUNNER_DOCKER_HOST: 'unix:///mine.sock' };
    const r = await releaseEarlierSession(env, async () => undefined);
    expect(r?.warning).toMatch(/^this shell still had a Build Cloud session that no report ended \(a session on the local docker, /);
    expect(env).toEqual({ DOCKER_HOST: 'unix:///mine.sock' });
  });

  test('no session, or one already gone: nothing ended', async () => {
    const end = jest.fn();
    expect(await releaseEarlierSession({}, end)).toBeNull();
    expect(await releaseEarlierSession({ BUILDCLOUD_SESSION: path.join(work, 'nope', 'session.json') }, end)).toBeNull();
    expect(end).not.toHaveBeenCalled();
  });
});

describe('dotenvLines: values as GitLab reads them', () => {
  test('spaces and quotes are kept; lines are joined with commas; blanks at the ends and control characters go', () => {
    const push = `build succeeded; push of "registry.example.com/acme/app:1" failed: denied: it's not yours`;
    expect(
      dotenvLines({
        BUILDCLOUD_PUSH_ERROR: push,
        BUILDCLOUD_CACHE_FROM: 'reg/acme/app/cache:feature\nreg/acme/app/cache:main\n',
        BUILDCLOUD_NOTE: '  first line \r\n second\tline  ',
        BUILDCLOUD_EMPTY: ''
      })
    ).toBe(
      `BUILDCLOUD_PUSH_ERROR=${push}\n` +
        'BUILDCLOUD_CACHE_FROM=reg/acme/app/cache:feature,reg/acme/app/cache:main\n' +
        'BUILDCLOUD_NOTE=first line,second line\n' +
        'BUILDCLOUD_EMPTY=\n'
    );
  });

  test(`a value longer than ${DOTENV_VALUE_MAX} characters is cut, ending in …`, () => {
    const line = dotenvLines({ LONG: 'x'.repeat(5000) });
    expect(line).toBe(`LONG=${'x'.repeat(DOTENV_VALUE_MAX - 1)}…\n`);
  });

  test('a key GitLab would refuse is an error', () => {
    expect(() => dotenvLines({ 'BAD-KEY': 'v' })).toThrow('not a dotenv key: BAD-KEY');
  });
});

describe("the README recipe's control flow (a stub buildcloud; the e2e test runs it against serve)", () => {
  /** The recipe with a second build step after the first, and `buildcloud` a stub that logs each command. */
  function recipe(): string {
    const readme = fs.readFileSync(path.join(__dirname, '../../README.md'), 'utf8');
    const section = readme.split(/^## /m).find((s) => s.startsWith('Any other CI, or a shell'));
    const block = /```sh\n([\s\S]*?)```/.exec(section ?? '');
    if (!block) throw new Error('README.md: no ```sh block in "Any other CI, or a shell"');
    const step = /^(\s*)buildcloud build .*$/m;
    if (!step.test(block[1])) throw new Error(`the recipe has no buildcloud build line:\n${block[1]}`);
    return block[1].replace(step, (line, indent: string) => `${line}\n${indent}echo second-step >> "$LOG"`);
  }

  function stubBin(): string {
    const bin = fs.mkdtempSync(path.join(work, 'stub-'));
    const script = [
      '#!/bin/sh',
      'echo "$1" >> "$LOG"',
      'case "$1" in',
      '  setup) [ -z "$SETUP_FAILS" ] || exit 2; echo \'export BC_STUB_SESSION=1\' ;;',
      '  build) exit "${BUILD_EXIT:-0}" ;;',
      "  report) echo 'unset BC_STUB_SESSION' ;;",
      'esac'
    ].join('\n');
    fs.writeFileSync(path.join(bin, 'buildcloud'), script + '\n', { mode: 0o755 });
    return bin;
  }

  const run = (argv: string[], extra: Record<string, string>, input?: string) => {
    const bin = stubBin();
    const log = path.join(bin, 'log');
    const env = { PATH: `${bin}:${process.env.PATH}`, HOME: bin, LOG: log, ...extra };
    const r =
      input === undefined
        ? spawnSync(argv[0], [...argv.slice(1), recipe()], { env, encoding: 'utf8' })
        : spawnSync(argv[0], argv.slice(1), { env, input, encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout.trim(), log: fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n') : [] };
  };

  test.each([
    ['bash -e', ['bash', '-e', '-c']],
    ['bash', ['bash', '-c']],
    ['sh -e', ['sh', '-e', '-c']]
  ])('a CI script (%s): a failed build step ends the steps, report still runs, the script fails', (_name, argv) => {
    expect(run(argv, { BUILD_EXIT: '3' })).toEqual({ status: 1, stdout: '', log: ['setup', 'build', 'report'] });
    expect(run(argv, {})).toEqual({ status: 0, stdout: '', log: ['setup', 'build', 'second-step', 'report'] });
    // setup failing: no build, no report, and the script fails.
    expect(run(argv, { SETUP_FAILS: '1' })).toEqual({ status: 1, stdout: '', log: ['setup'] });
  });

  test('an interactive shell (bash -i): a failed build leaves it open, restored, with $? = 1', () => {
    const typed = `${recipe()}\necho "still here: $? \${BC_STUB_SESSION-unset}"\nexit 0\n`;
    expect(run(['bash', '--norc', '--noprofile', '-i'], { BUILD_EXIT: '3' }, typed)).toEqual({
      status: 0,
      stdout: 'still here: 1 unset',
      log: ['setup', 'build', 'report']
    });
  });
});
