// The shell flow leaves the shell as it found it: what setup records, the lines report prints, and bash evaluating
// them (a variable with a value, one set but empty, one unset, values with quotes and newlines).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { exportLines } from '../../src/cli/ci-output';
import { previousValues, rememberShell, repairStaleShell, restoreLines } from '../../src/cli/shell-env';
import { loadSession, saveSession, sessionFile, type Session } from '../../src/core/session';

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
        'DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_CONTEXT, DOCKER_CONFIG are back to what they were before that setup; ' +
        'run report as eval "$(buildcloud report)" to restore the shell.'
    );
    expect(env).toEqual({
      PATH: '/bin',
      DOCKER_HOST: 'unix:///var/run/docker.sock',
      DOCKER_CONFIG: '/home/dev/.docker',
      DOCKER_BUILDKIT: '1',
      BUILDCLOUD_TOKEN: 'kept'
    });
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
