// Which docker client, and the argv for it: table-driven, from inputs to argv, for both kinds of client.
import {
  buildArgs,
  buildxCreateArgs,
  contextCreateArgs,
  DockerNotUsableError,
  dockerEnv,
  isValidReference,
  parseKeyValueLines,
  pushesAfterBuild,
  resolveDocker,
  type BuildClient,
  type BuildOptions,
  type CacheRefs,
  type CommandResult,
  type Probe
} from '../../src/core/docker-cli';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dpkgVersion, pluginDirs, type ClientHost, type FileFacts } from '../../src/core/docker-client';
import { contextId, contextMeta, contextStoreKnown, removeDockerContext, writeDockerContext } from '../../src/core/docker-context';
import { InputError } from '../../src/core/settings';

// A fake machine: path → how its client answers. Anything else does not exist (ENOENT), like a real spawn.
interface FakeClient {
  version: string;
  buildx?: string; // `docker buildx version` output
  classicBuildKit?: boolean;
}
function fakeProbe(machine: Record<string, FakeClient>, calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = []): Probe {
  return async (file, args, env): Promise<CommandResult> => {
    calls.push({ file, args, env });
    const c = machine[file];
    if (!c) return { code: null, stdout: '', stderr: '', error: 'ENOENT' };
    if (args[0] === '--version') return { code: 0, stdout: `Docker version ${c.version}, build abc1234\n`, stderr: '' };
    if (args[0] === 'buildx')
      return c.buildx ? { code: 0, stdout: `${c.buildx}\n`, stderr: '' } : { code: 1, stdout: '', stderr: "docker: 'buildx' is not a docker command." };
    if (args[0] === 'build') {
      return c.classicBuildKit && env.DOCKER_BUILDKIT === '1'
        ? { code: 0, stdout: 'Usage:  docker build [OPTIONS] PATH | URL | -', stderr: '' }
        : { code: 1, stdout: '', stderr: 'ERROR: BuildKit is enabled but the buildx component is missing or broken.' };
    }
    return { code: 1, stdout: '', stderr: 'unexpected' };
  };
}

// The same machine's files: each client an executable file, and a buildx plugin file when any client has buildx
// (a plugin is the client's, found in the CLI's plugin directories; whether it runs is `buildx version`'s answer).
const exe = (ino: number): FileFacts => ({ dev: 1, ino, size: 1000 + ino, mtimeMs: 1_700_000_000_000, mode: 0o100755, uid: 0 });
function fakeHost(machine: Record<string, FakeClient>, files: Record<string, string> = {}, extra: Record<string, FileFacts> = {}): ClientHost {
  const stats: Record<string, FileFacts> = { ...extra };
  Object.keys(machine).forEach((p, i) => (stats[p] = exe(i + 1)));
  if (Object.values(machine).some((c) => c.buildx)) stats['/usr/libexec/docker/cli-plugins/docker-buildx'] = exe(99);
  return { stat: (p) => stats[p] ?? null, realpath: (p) => (stats[p] ? p : null), readFile: (p) => files[p] ?? null };
}
const on = (machine: Record<string, FakeClient>, calls?: { file: string; args: string[]; env: NodeJS.ProcessEnv }[]) =>
  [fakeProbe(machine, calls), { host: fakeHost(machine), cacheFile: '' }] as const;

const NEW_NO_BUILDX: FakeClient = { version: '28.2.2' };
const DEBIAN_2010: FakeClient = { version: '20.10.24+dfsg1', classicBuildKit: true };
const WITH_BUILDX: FakeClient = { version: '27.5.1', buildx: 'github.com/docker/buildx v0.20.1 abcdef0' };
const PATH = '/opt/t/local/bin:/opt/t/bin';

describe('resolveDocker', () => {
  test('prefers the 20.10 client over a newer one without buildx, and says why', async () => {
    const d = await resolveDocker({ PATH }, ...on({ '/opt/t/local/bin/docker': NEW_NO_BUILDX, '/opt/t/bin/docker': DEBIAN_2010 }));
    expect(d).toEqual({
      path: '/opt/t/bin/docker',
      version: '20.10.24+dfsg1',
      buildx: false,
      buildxVersion: '',
      reason:
        'using /opt/t/bin/docker 20.10.24+dfsg1 (no buildx; BuildKit via DOCKER_BUILDKIT=1) because /opt/t/local/bin/docker 28.2.2 has no buildx plugin and cannot build with BuildKit without it'
    });
  });

  test('a client with buildx wins even when it comes later in PATH', async () => {
    const d = await resolveDocker({ PATH }, ...on({ '/opt/t/local/bin/docker': DEBIAN_2010, '/opt/t/bin/docker': WITH_BUILDX }));
    expect(d).toMatchObject({ path: '/opt/t/bin/docker', buildx: true, buildxVersion: 'v0.20.1', version: '27.5.1' });
    expect(d.reason).toBe('using /opt/t/bin/docker 27.5.1 with buildx v0.20.1 because /opt/t/local/bin/docker 20.10.24+dfsg1 has no buildx plugin');
  });

  test('the first client with buildx is taken without probing further', async () => {
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const d = await resolveDocker({ PATH }, ...on({ '/opt/t/local/bin/docker': WITH_BUILDX, '/opt/t/bin/docker': DEBIAN_2010 }, calls));
    expect(d.reason).toBe('using /opt/t/local/bin/docker 27.5.1 with buildx v0.20.1');
    expect(calls.map((c) => c.file)).toEqual(['/opt/t/local/bin/docker', '/opt/t/local/bin/docker']);
  });

  test('BUILDCLOUD_DOCKER overrides the search', async () => {
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const d = await resolveDocker({ PATH, BUILDCLOUD_DOCKER: '/srv/docker' }, ...on({ '/srv/docker': DEBIAN_2010, '/opt/t/bin/docker': WITH_BUILDX }, calls));
    expect(d.path).toBe('/srv/docker');
    expect(d.reason).toBe('using /srv/docker (BUILDCLOUD_DOCKER) 20.10.24+dfsg1 (no buildx; BuildKit via DOCKER_BUILDKIT=1)');
    expect(new Set(calls.map((c) => c.file))).toEqual(new Set(['/srv/docker']));
  });

  test('probes run without DOCKER_CONTEXT; a client before 23.0 builds with BuildKit on its own, known from its version alone', async () => {
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const d = await resolveDocker({ PATH, DOCKER_CONTEXT: 'elsewhere' }, ...on({ '/opt/t/bin/docker': DEBIAN_2010 }, calls));
    expect(d).toMatchObject({ path: '/opt/t/bin/docker', buildx: false });
    expect(calls.map((c) => [c.file, ...c.args])).toEqual([['/opt/t/bin/docker', '--version']]);
    expect(calls.every((c) => c.env.DOCKER_CONTEXT === undefined)).toBe(true);
  });

  test('a version that does not parse is settled by `build --help` with DOCKER_BUILDKIT=1, as before', async () => {
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const odd: FakeClient = { version: 'dev', classicBuildKit: true };
    const d = await resolveDocker({ PATH }, ...on({ '/opt/t/bin/docker': odd }, calls));
    expect(d.reason).toBe('using /opt/t/bin/docker dev (no buildx; BuildKit via DOCKER_BUILDKIT=1)');
    const help = calls.find((c) => c.args[0] === 'build')!;
    expect(help.args).toEqual(['build', '--help']);
    expect(help.env.DOCKER_BUILDKIT).toBe('1');
  });

  test("this machine: a 28.x client first in PATH, Debian's 20.10 from dpkg: one process, the 28.x client's --version", async () => {
    const machine = { '/usr/local/bin/docker': NEW_NO_BUILDX, '/usr/bin/docker': DEBIAN_2010 };
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const status = [
      'Package: bash',
      'Status: install ok installed',
      'Version: 5.2.15-2+b7',
      '',
      'Package: docker.io',
      'Status: install ok installed',
      'Version: 20.10.24+dfsg1-1+deb12u1',
      'Description: Linux container runtime',
      ''
    ].join('\n');
    const files = { '/var/lib/dpkg/info/docker.io.list': '/.\n/usr\n/usr/bin\n/usr/bin/docker\n/usr/sbin/dockerd\n', '/var/lib/dpkg/status': status };
    const dpkgStatus = { ...exe(50), mtimeMs: exe(1).mtimeMs + 1000 };
    const host = fakeHost(machine, files, { '/var/lib/dpkg/status': dpkgStatus });
    const d = await resolveDocker({ PATH: '/usr/local/bin:/usr/bin' }, fakeProbe(machine, calls), { host, cacheFile: '' });
    expect(d.reason).toBe(
      'using /usr/bin/docker 20.10.24+dfsg1 (no buildx; BuildKit via DOCKER_BUILDKIT=1) because /usr/local/bin/docker 28.2.2 has no buildx plugin and cannot build with BuildKit without it'
    );
    expect(calls.map((c) => [c.file, ...c.args])).toEqual([['/usr/local/bin/docker', '--version']]);

    // A binary newer than dpkg's last write was put there by hand: its package no longer says what it is.
    const replaced = fakeHost(machine, files, { '/var/lib/dpkg/status': { ...dpkgStatus, mtimeMs: exe(1).mtimeMs - 1000 } });
    const calls2: typeof calls = [];
    await resolveDocker({ PATH: '/usr/local/bin:/usr/bin' }, fakeProbe(machine, calls2), { host: replaced, cacheFile: '' });
    expect(calls2.map((c) => [c.file, ...c.args])).toEqual([
      ['/usr/local/bin/docker', '--version'],
      ['/usr/bin/docker', '--version']
    ]);
  });

  test('a buildx plugin file: `buildx version` proves it runs; a client it does not run with is passed over', async () => {
    const calls: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
    const d = await resolveDocker({ PATH }, ...on({ '/opt/t/local/bin/docker': NEW_NO_BUILDX, '/opt/t/bin/docker': WITH_BUILDX }, calls));
    expect(d.reason).toBe(
      'using /opt/t/bin/docker 27.5.1 with buildx v0.20.1 because /opt/t/local/bin/docker 28.2.2 has no buildx plugin and cannot build with BuildKit without it'
    );
    expect(calls.filter((c) => c.args[0] === 'build')).toEqual([]);
  });

  test('no plugin file where the CLI looks, no client that builds on its own: each is asked `buildx version` before refusing', async () => {
    const machine = { '/opt/t/local/bin/docker': WITH_BUILDX };
    const host = fakeHost({ '/opt/t/local/bin/docker': NEW_NO_BUILDX }); // no plugin file in the known directories
    const d = await resolveDocker({ PATH }, fakeProbe(machine), { host, cacheFile: '' });
    expect(d).toMatchObject({ path: '/opt/t/local/bin/docker', buildx: true, buildxVersion: 'v0.20.1' });
  });

  test("the plugin directories, in the CLI's order: extra dirs of config.json, $DOCKER_CONFIG/cli-plugins, the system ones", () => {
    const host: ClientHost = {
      stat: () => null,
      realpath: () => null,
      readFile: (p) => (p === '/cfg/config.json' ? JSON.stringify({ cliPluginsExtraDirs: ['/opt/plugins', 'relative'] }) : null)
    };
    expect(pluginDirs({ DOCKER_CONFIG: '/cfg' }, host)).toEqual([
      '/opt/plugins',
      '/cfg/cli-plugins',
      '/usr/local/lib/docker/cli-plugins',
      '/usr/local/libexec/docker/cli-plugins',
      '/usr/lib/docker/cli-plugins',
      '/usr/libexec/docker/cli-plugins',
      '/home/linuxbrew/.linuxbrew/lib/docker/cli-plugins'
    ]);
    expect(pluginDirs({ HOME: '/home/u' }, host)[0]).toBe('/home/u/.docker/cli-plugins');
  });

  test.each([
    ['20.10.24+dfsg1-1+deb12u1', '20.10.24+dfsg1'],
    ['5:27.3.1-1~ubuntu.22.04~jammy', '27.3.1'],
    ['27.5.1+azure-1', '27.5.1+azure']
  ])("dpkg version %s is the client's %s", (pkgVersion, client) => {
    const files = {
      '/var/lib/dpkg/info/docker-ce-cli.list': '/usr/bin/docker\n',
      '/var/lib/dpkg/status': `Package: docker-ce-cli\nStatus: install ok installed\nVersion: ${pkgVersion}\n`
    };
    const host = fakeHost({ '/usr/bin/docker': DEBIAN_2010 }, files, { '/var/lib/dpkg/status': { ...exe(9), mtimeMs: Date.now() } });
    expect(dpkgVersion('/usr/bin/docker', host)).toBe(client);
  });

  test('answers are kept per binary in $RUNNER_TEMP: a second setup of the job starts no process; a changed binary is asked again', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-dc-'));
    try {
      const machine = { '/opt/t/local/bin/docker': NEW_NO_BUILDX, '/opt/t/bin/docker': WITH_BUILDX };
      const env = { PATH, RUNNER_TEMP: dir };
      const first: { file: string; args: string[]; env: NodeJS.ProcessEnv }[] = [];
      const a = await resolveDocker(env, fakeProbe(machine, first), { host: fakeHost(machine) });
      expect(first.length).toBeGreaterThan(0);
      const cacheFile = path.join(dir, 'buildcloud-docker-clients.json');
      expect(fs.statSync(cacheFile).mode & 0o777).toBe(0o600);
      const second: typeof first = [];
      expect(await resolveDocker(env, fakeProbe(machine, second), { host: fakeHost(machine) })).toEqual(a);
      expect(second).toEqual([]);
      // Another file at the same path (an upgrade): its answers are not reused.
      const upgraded = fakeHost(machine);
      const stat = upgraded.stat;
      upgraded.stat = (p) => (p === '/opt/t/bin/docker' ? { ...stat(p)!, mtimeMs: 1 } : stat(p));
      const third: typeof first = [];
      await resolveDocker(env, fakeProbe(machine, third), { host: upgraded });
      expect(third.map((c) => c.file)).toEqual(['/opt/t/bin/docker', '/opt/t/bin/docker']);
      // A cache file others could write is not believed.
      fs.chmodSync(cacheFile, 0o666);
      const fourth: typeof first = [];
      await resolveDocker(env, fakeProbe(machine, fourth), { host: fakeHost(machine) });
      expect(fourth.length).toBeGreaterThan(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each([
    [
      'only a newer client without buildx',
      { PATH },
      { '/opt/t/local/bin/docker': NEW_NO_BUILDX },
      /No usable docker client: \/opt\/t\/local\/bin\/docker 28\.2\.2 has no buildx plugin and cannot build with BuildKit without it\. Install the buildx plugin/
    ],
    [
      'no client at all',
      { PATH },
      {},
      /No docker client found \(looked for: \/opt\/t\/local\/bin\/docker, \/opt\/t\/bin\/docker, \/usr\/bin\/docker, \/usr\/local\/bin\/docker\)\..*docker\.io/
    ],
    [
      'BUILDCLOUD_DOCKER without buildx or BuildKit',
      { PATH, BUILDCLOUD_DOCKER: '/opt/t/local/bin/docker' },
      { '/opt/t/local/bin/docker': NEW_NO_BUILDX, '/opt/t/bin/docker': DEBIAN_2010 },
      /^BUILDCLOUD_DOCKER is '\/opt\/t\/local\/bin\/docker', which is not usable: \/opt\/t\/local\/bin\/docker 28\.2\.2 has no buildx plugin/
    ],
    [
      'BUILDCLOUD_DOCKER that does not run',
      { PATH, BUILDCLOUD_DOCKER: '/nope/docker' },
      { '/opt/t/bin/docker': DEBIAN_2010 },
      /BUILDCLOUD_DOCKER is '\/nope\/docker', which does not run as a docker client/
    ]
  ])('refuses: %s', async (_what, env, machine, message) => {
    const err = await resolveDocker(env, ...on(machine)).catch((e) => e);
    expect(err).toBeInstanceOf(DockerNotUsableError);
    expect(err.message).toMatch(message);
    expect(err.message).toMatch(/BUILDCLOUD_DOCKER/);
  });
});

const R1 = '127.0.0.1:5000/acme/acme/app/cache:feature-x';
const R2 = '127.0.0.1:5000/acme/acme/app/cache:main';
const CACHE: CacheRefs = { importRefs: [R1, R2], exportRef: R1 };
const FORK: CacheRefs = { importRefs: [R2], exportRef: '' };
const base = (o: Partial<BuildOptions> = {}): BuildOptions => ({
  context: '.',
  tags: ['registry.example.com/acme/app:1.2'],
  buildArgs: { VERSION: '1.2' },
  push: false,
  platforms: [],
  exportCache: true,
  ...o
});
const CLASSIC: BuildClient = { buildx: false, iidFile: '/t/iid' };
const BX_DOCKER: BuildClient = { buildx: true, builder: 'bc-ctx', driver: 'docker', metadataFile: '/t/meta.json' };
const BX_REMOTE: BuildClient = { buildx: true, builder: 'bc-bk', driver: 'remote', metadataFile: '/t/meta.json' };
const TAG = 'registry.example.com/acme/app:1.2';
const INLINE_HEAD = ['build', '--progress=plain', '--build-arg', 'BUILDKIT_INLINE_CACHE=1'];

describe('buildArgs', () => {
  test.each<[string, BuildOptions, CacheRefs, BuildClient, string[]]>([
    [
      '20.10: inline cache, imports in order, the export ref as an extra tag',
      base(),
      CACHE,
      CLASSIC,
      [...INLINE_HEAD, '--cache-from', R1, '--cache-from', R2, '--build-arg', 'VERSION=1.2', '--iidfile', '/t/iid', '-t', TAG, '-t', R1, '.']
    ],
    [
      '20.10: a fork imports but never exports',
      base(),
      FORK,
      CLASSIC,
      [...INLINE_HEAD, '--cache-from', R2, '--build-arg', 'VERSION=1.2', '--iidfile', '/t/iid', '-t', TAG, '.']
    ],
    [
      '20.10: export turned off',
      base({ exportCache: false }),
      CACHE,
      CLASSIC,
      [...INLINE_HEAD, '--cache-from', R1, '--cache-from', R2, '--build-arg', 'VERSION=1.2', '--iidfile', '/t/iid', '-t', TAG, '.']
    ],
    [
      '20.10: every option; no-cache skips the imports; our BUILDKIT_INLINE_CACHE wins',
      base({
        file: 'docker/Dockerfile',
        target: 'runtime',
        platforms: ['linux/amd64'],
        network: 'host',
        pull: true,
        noCache: true,
        labels: { 'org.opencontainers.image.source': 'https://x/y' },
        buildArgs: { BUILDKIT_INLINE_CACHE: '0', A: 'x=y, z' }
      }),
      CACHE,
      { buildx: false },
      [
        ...INLINE_HEAD,
        '-f',
        'docker/Dockerfile',
        '--target',
        'runtime',
        '--platform',
        'linux/amd64',
        '--network',
        'host',
        '--pull',
        '--no-cache',
        '--build-arg',
        'A=x=y, z',
        '--label',
        'org.opencontainers.image.source=https://x/y',
        '-t',
        TAG,
        '-t',
        R1,
        '.'
      ]
    ],
    ['20.10: no tags, nothing to export', base({ tags: [], buildArgs: {} }), FORK, { buildx: false }, [...INLINE_HEAD, '--cache-from', R2, '.']],
    [
      'buildx, docker driver (a context): inline cache, loaded, pushed afterwards',
      base({ push: true }),
      CACHE,
      BX_DOCKER,
      [
        'buildx',
        'build',
        '--builder',
        'bc-ctx',
        '--progress=plain',
        '--cache-from',
        `type=registry,ref=${R1}`,
        '--cache-from',
        `type=registry,ref=${R2}`,
        '--cache-to',
        'type=inline',
        '--build-arg',
        'VERSION=1.2',
        '--metadata-file',
        '/t/meta.json',
        '-t',
        TAG,
        '-t',
        R1,
        '--load',
        '.'
      ]
    ],
    [
      'buildx, remote driver: registry cache mode=max, pushed by buildx',
      base({ push: true }),
      CACHE,
      BX_REMOTE,
      [
        'buildx',
        'build',
        '--builder',
        'bc-bk',
        '--progress=plain',
        '--cache-from',
        `type=registry,ref=${R1}`,
        '--cache-from',
        `type=registry,ref=${R2}`,
        '--cache-to',
        `type=registry,ref=${R1},mode=max,ignore-error=true`,
        '--build-arg',
        'VERSION=1.2',
        '--metadata-file',
        '/t/meta.json',
        '-t',
        TAG,
        '--push',
        '.'
      ]
    ],
    [
      'buildx, remote driver, fork, not pushed: loaded',
      base(),
      FORK,
      BX_REMOTE,
      [
        'buildx',
        'build',
        '--builder',
        'bc-bk',
        '--progress=plain',
        '--cache-from',
        `type=registry,ref=${R2}`,
        '--build-arg',
        'VERSION=1.2',
        '--metadata-file',
        '/t/meta.json',
        '-t',
        TAG,
        '--load',
        '.'
      ]
    ],
    [
      'buildx, remote driver, no tags: the result stays in the builder',
      base({ tags: [], buildArgs: {} }),
      FORK,
      BX_REMOTE,
      ['buildx', 'build', '--builder', 'bc-bk', '--progress=plain', '--cache-from', `type=registry,ref=${R2}`, '--metadata-file', '/t/meta.json', '.']
    ],
    [
      'buildx, remote driver, two platforms',
      base({ push: true, platforms: ['linux/amd64', 'linux/arm64'], buildArgs: {} }),
      FORK,
      BX_REMOTE,
      [
        'buildx',
        'build',
        '--builder',
        'bc-bk',
        '--progress=plain',
        '--cache-from',
        `type=registry,ref=${R2}`,
        '--platform',
        'linux/amd64,linux/arm64',
        '--metadata-file',
        '/t/meta.json',
        '-t',
        TAG,
        '--push',
        '.'
      ]
    ],
    // load: a Docker Engine builder keeps the image and load-image.ts streams it over after the build: argv unchanged.
    [
      '20.10 with load: the same argv (the load is a step of its own)',
      base({ load: true }),
      FORK,
      CLASSIC,
      [...INLINE_HEAD, '--cache-from', R2, '--build-arg', 'VERSION=1.2', '--iidfile', '/t/iid', '-t', TAG, '.']
    ],
    [
      'buildx, remote driver, load without tags: buildx loads it',
      base({ load: true, tags: [], buildArgs: {} }),
      FORK,
      BX_REMOTE,
      ['buildx', 'build', '--builder', 'bc-bk', '--progress=plain', '--cache-from', `type=registry,ref=${R2}`, '--metadata-file', '/t/meta.json', '--load', '.']
    ],
    [
      'buildx, remote driver, push and load: both exporters',
      base({ load: true, push: true, buildArgs: {} }),
      FORK,
      BX_REMOTE,
      [
        'buildx',
        'build',
        '--builder',
        'bc-bk',
        '--progress=plain',
        '--cache-from',
        `type=registry,ref=${R2}`,
        '--metadata-file',
        '/t/meta.json',
        '-t',
        TAG,
        '--push',
        '--load',
        '.'
      ]
    ]
  ])('%s', (_what, opts, cache, client, argv) => {
    expect(buildArgs(opts, cache, client)).toEqual(argv);
  });

  test.each<[string, Partial<BuildOptions>, BuildClient, RegExp]>([
    ['a tag with capitals in the path', { tags: ['acme/App:1'] }, CLASSIC, /^Invalid input 'tags': 'acme\/App:1'\. Expected an image reference/],
    ['a tag that is a flag', { tags: ['--push'] }, CLASSIC, /Invalid input 'tags': '--push'/],
    ['an empty tag after the colon', { tags: ['acme/app:'] }, CLASSIC, /Invalid input 'tags'/],
    ['a platform without arch', { platforms: ['linux'] }, BX_REMOTE, /Invalid input 'platforms': 'linux'\. Expected os\/arch/],
    [
      'two platforms on the 20.10 path',
      { platforms: ['linux/amd64', 'linux/arm64'] },
      CLASSIC,
      /Invalid input 'platforms': 'linux\/amd64,linux\/arm64'\. A Docker Engine builder builds one platform per build/
    ],
    ['two platforms on a docker-driver builder', { platforms: ['linux/amd64', 'linux/arm64'], push: true }, BX_DOCKER, /one platform per build/],
    ['two platforms loaded locally', { platforms: ['linux/amd64', 'linux/arm64'] }, BX_REMOTE, /Invalid input 'push': a multi-platform image cannot be loaded/],
    [
      'load with two platforms, pushed too',
      { platforms: ['linux/amd64', 'linux/arm64'], push: true, load: true },
      BX_REMOTE,
      /^Invalid input 'load': a multi-platform image cannot be loaded into a local Docker; build one platform to load, or set push to true instead of load\.$/
    ],
    [
      'load with two platforms on a Docker Engine builder: load named first',
      { platforms: ['linux/amd64', 'linux/arm64'], load: true },
      CLASSIC,
      /^Invalid input 'load': a multi-platform image cannot be loaded/
    ],
    ['push without tags', { push: true, tags: [] }, CLASSIC, /Invalid input 'push': true needs at least one image in 'tags'/],
    ['a context that is a flag', { context: '--file=/etc/passwd' }, CLASSIC, /Invalid input 'context': '--file=\/etc\/passwd'\. It must not start with '-'/],
    ['an empty context', { context: ' ' }, CLASSIC, /Invalid input 'context': empty/],
    ['a file that is a flag', { file: '-' }, CLASSIC, /Invalid input 'file'/],
    ['a target with a space', { target: 'a b' }, CLASSIC, /Invalid input 'target': 'a b'/],
    ['a network BuildKit does not know', { network: 'bridge' }, CLASSIC, /Invalid input 'network': 'bridge'\. Expected one of: default, host, none/],
    ['a build-arg key with a space', { buildArgs: { 'A B': '1' } }, CLASSIC, /Invalid input 'build-args': key 'A B'/],
    ['an empty label key', { labels: { '': 'x' } }, CLASSIC, /Invalid input 'labels'/]
  ])('rejects %s, naming the input', (_what, o, client, message) => {
    let err: unknown;
    try {
      buildArgs(base(o), CACHE, client);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(message);
  });

  test("a bad cache ref from the control plane is a plain error, not the user's input", () => {
    expect(() => buildArgs(base(), { importRefs: ['NOT A REF'], exportRef: '' }, CLASSIC)).toThrow(/control plane returned an invalid cache ref 'NOT A REF'/);
  });

  test('a buildx build needs the builder and the metadata file', () => {
    expect(() => buildArgs(base(), CACHE, { buildx: true, metadataFile: '/m' })).toThrow(/builder name/);
    expect(() => buildArgs(base(), CACHE, { buildx: true, builder: 'b' })).toThrow(/metadata file/);
  });
});

describe('pushesAfterBuild', () => {
  test.each<[string, BuildOptions, CacheRefs, BuildClient, { ref: string; cache: boolean }[]]>([
    [
      '20.10, export and push: the cache first',
      base({ push: true }),
      CACHE,
      CLASSIC,
      [
        { ref: R1, cache: true },
        { ref: TAG, cache: false }
      ]
    ],
    ['20.10, export only', base(), CACHE, CLASSIC, [{ ref: R1, cache: true }]],
    ['20.10, fork, push', base({ push: true }), FORK, CLASSIC, [{ ref: TAG, cache: false }]],
    ['20.10, fork, no push', base(), FORK, CLASSIC, []],
    [
      'buildx docker driver behaves like 20.10',
      base({ push: true }),
      CACHE,
      BX_DOCKER,
      [
        { ref: R1, cache: true },
        { ref: TAG, cache: false }
      ]
    ],
    ['buildx remote pushes by itself', base({ push: true }), CACHE, BX_REMOTE, []]
  ])('%s', (_what, opts, cache, client, expected) => {
    expect(pushesAfterBuild(opts, cache, client)).toEqual(expected);
  });
});

describe('parseKeyValueLines', () => {
  test('KEY=VALUE lines; values keep = and commas; blank lines skipped', () => {
    expect(parseKeyValueLines(['A=1', '', '  B=x=y,z  ', 'C='], 'build-args')).toEqual({ A: '1', B: 'x=y,z', C: '' });
  });
  test.each(['NOVALUE', '=x', 'A B=1'])('%s is refused, naming the input and the entry, never its text', (line) => {
    expect(() => parseKeyValueLines(['OK=1', line], 'build-args')).toThrow(
      new InputError(`Invalid input 'build-args': entry 2 is not KEY=VALUE. Expected KEY=VALUE entries.`)
    );
  });
});

describe('isValidReference', () => {
  test.each([
    ['alpine', true],
    ['acme/app:1.0', true],
    ['127.0.0.1:5000/acme/acme/app/cache:main', true],
    ['localhost:5000/a', true],
    ['registry.example.com/team/sub/app', true],
    ['[::1]:5000/a:b', true],
    ['a__b/c--d/e.f:_tag', true],
    ['Acme/app', true], // "Acme" is read as a registry host, as distribution/reference does
    ['acme/App', false],
    ['Alpine', false],
    ['app:', false],
    ['app:-x', false],
    ['a//b', false],
    ['acme/app@sha256:' + 'a'.repeat(64), false],
    ['a/' + 'b'.repeat(260), false],
    ['', false]
  ])('%s → %s', (ref, ok) => {
    expect(isValidReference(ref)).toBe(ok);
  });
});

describe('contexts and builders', () => {
  test('docker context create with the lease certs', () => {
    expect(contextCreateArgs('bc-gh-1', 'tcp://127.0.0.1:40001', '/tmp/bc/certs')).toEqual([
      'context',
      'create',
      'bc-gh-1',
      '--description',
      'Build Cloud remote builder',
      '--docker',
      'host=tcp://127.0.0.1:40001,ca=/tmp/bc/certs/ca.pem,cert=/tmp/bc/certs/cert.pem,key=/tmp/bc/certs/key.pem'
    ]);
  });

  test('a cert path with a comma is CSV-quoted, as docker parses --docker as CSV', () => {
    const args = contextCreateArgs('bc-1', 'tcp://10.0.0.2:2376', '/tmp/a,b');
    expect(args[args.length - 1]).toBe('host=tcp://10.0.0.2:2376,"ca=/tmp/a,b/ca.pem","cert=/tmp/a,b/cert.pem","key=/tmp/a,b/key.pem"');
  });

  test.each([
    ['-bad', 'tcp://127.0.0.1:1', '/c', /Invalid docker context name '-bad'/],
    ['ok-name', 'unix:///var/run/docker.sock', '/c', /Invalid builder address/],
    ['ok-name', 'tcp://127.0.0.1:1', 'relative/certs', /must be an absolute path/]
  ])('refuses %s %s %s', (name, address, certDir, message) => {
    expect(() => contextCreateArgs(name, address, certDir)).toThrow(message);
  });

  test('buildx remote builder: one create, then one --append --node per further platform', () => {
    expect(
      buildxCreateArgs(
        'bc-bk',
        [
          { platform: 'linux/amd64', address: 'tcp://10.0.0.5:1234' },
          { platform: 'linux/arm64', address: 'tcp://10.0.0.6:1234' }
        ],
        '/tmp/bc/certs'
      )
    ).toEqual([
      [
        'buildx',
        'create',
        '--name',
        'bc-bk',
        '--node',
        'bc-bk0',
        '--driver',
        'remote',
        '--driver-opt',
        'cacert=/tmp/bc/certs/ca.pem',
        '--driver-opt',
        'cert=/tmp/bc/certs/cert.pem',
        '--driver-opt',
        'key=/tmp/bc/certs/key.pem',
        '--platform',
        'linux/amd64',
        'tcp://10.0.0.5:1234'
      ],
      [
        'buildx',
        'create',
        '--name',
        'bc-bk',
        '--append',
        '--node',
        'bc-bk1',
        '--driver-opt',
        'cacert=/tmp/bc/certs/ca.pem',
        '--driver-opt',
        'cert=/tmp/bc/certs/cert.pem',
        '--driver-opt',
        'key=/tmp/bc/certs/key.pem',
        '--platform',
        'linux/arm64',
        'tcp://10.0.0.6:1234'
      ]
    ]);
  });

  // What `docker context create` wrote on this machine, Debian's 20.10.24 and 28.2.2 alike (compared 2026-11-30):
  // the name's SHA-256 as the directory, this exact JSON, and copies of the three PEM files.
  test('the context store as docker writes it: meta.json byte for byte, the TLS files beside it', async () => {
    expect(contextId('bc-test-1')).toBe('46f93bdc431dadc2e0a652a2d22141ab3723203d6b23aa82909c31ed0e7c68df');
    expect(contextMeta('bc-test-1', 'tcp://127.0.0.1:2376')).toBe(
      '{"Name":"bc-test-1","Metadata":{"Description":"Build Cloud remote builder"},"Endpoints":{"docker":{"Host":"tcp://127.0.0.1:2376","SkipTLSVerify":false}}}'
    );
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-ctx-'));
    try {
      const certs = path.join(dir, 'certs');
      fs.mkdirSync(certs, { mode: 0o700 });
      for (const f of ['ca.pem', 'cert.pem', 'key.pem']) fs.writeFileSync(path.join(certs, f), `${f} body\n`, { mode: 0o600 });
      const cfg = path.join(dir, 'docker-config');
      fs.mkdirSync(cfg, { mode: 0o700 });
      await writeDockerContext(cfg, 'bc-test-1', 'tcp://127.0.0.1:2376', certs);
      const id = contextId('bc-test-1');
      const files = (fs.readdirSync(path.join(cfg, 'contexts'), { recursive: true }) as string[]).sort();
      expect(files).toEqual([
        'meta',
        `meta/${id}`,
        `meta/${id}/meta.json`,
        'tls',
        `tls/${id}`,
        `tls/${id}/docker`,
        `tls/${id}/docker/ca.pem`,
        `tls/${id}/docker/cert.pem`,
        `tls/${id}/docker/key.pem`
      ]);
      expect(fs.readFileSync(path.join(cfg, 'contexts', 'meta', id, 'meta.json'), 'utf8')).toBe(contextMeta('bc-test-1', 'tcp://127.0.0.1:2376'));
      for (const f of ['ca.pem', 'cert.pem', 'key.pem'])
        expect(fs.readFileSync(path.join(cfg, 'contexts', 'tls', id, 'docker', f), 'utf8')).toBe(`${f} body\n`);
      for (const f of files) expect(fs.statSync(path.join(cfg, 'contexts', f)).mode & 0o777).toBe(f.endsWith('.pem') || f.endsWith('.json') ? 0o600 : 0o700);
      // Written again (same name): replaced, not an error. Removed: both directories gone, the store itself kept.
      await writeDockerContext(cfg, 'bc-test-1', 'tcp://127.0.0.1:2377', certs);
      expect(JSON.parse(fs.readFileSync(path.join(cfg, 'contexts', 'meta', id, 'meta.json'), 'utf8')).Endpoints.docker.Host).toBe('tcp://127.0.0.1:2377');
      await removeDockerContext(cfg, 'bc-test-1');
      expect((fs.readdirSync(path.join(cfg, 'contexts'), { recursive: true }) as string[]).sort()).toEqual(['meta', 'tls']);
      await expect(writeDockerContext(cfg, '-bad', 'tcp://127.0.0.1:1', certs)).rejects.toThrow(/Invalid docker context name/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each([
    ['18.09.1', false],
    ['19.03.15', true],
    ['20.10.24+dfsg1', true],
    ['28.2.2', true],
    ['29.0.0', false],
    ['dev', false]
  ])('client %s: context written as files %s (otherwise `docker context create`)', (version, known) => {
    expect(contextStoreKnown(version)).toBe(known);
  });

  test('dockerEnv drops DOCKER_CONTEXT and unset keys', () => {
    expect(dockerEnv({ A: '1', DOCKER_CONTEXT: 'x', DOCKER_HOST: 'unix:///x' }, { DOCKER_HOST: undefined, B: '2' })).toEqual({ A: '1', B: '2' });
  });
});
