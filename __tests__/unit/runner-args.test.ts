// The runner's fastParse reads a well-formed command line exactly as commander does (ci.ts registers the same
// grammar), and hands everything it is not sure of to commander. Issue 12: list flags accumulate, every boolean takes
// the same forms, docker build's spellings work, and a flag wins over its variable with a note saying so.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import { registerCi } from '../../src/cli/ci';
import { asTyped, buildArgEntry, dockerSecret, envNotes, fastParse, getter, normalizeArgs, oneEntry } from '../../src/cli/runner-args';
import { checkBuildPaths } from '../../src/core/build-checks';
import { InputError } from '../../src/core/input-error';
import { buildSettings, setupSettings } from '../../src/core/settings';

// The steps themselves are replaced: these tests see the options a step would get, through the real registration.
const mockSeen: { command: string; opts: Record<string, unknown> }[] = [];
jest.mock('../../src/cli/ci-steps', () => ({
  RUN_STEP: Object.fromEntries(
    ['setup', 'build', 'report'].map((c) => [c, async (o: Record<string, unknown>) => void mockSeen.push({ command: c, opts: { ...o } })])
  )
}));

/** Runs `args` through commander as `buildcloud` does; returns the step's options and what was written to stderr. */
async function viaCommander(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ command: string; opts: Record<string, unknown>; stderr: string }> {
  const p = new Command('buildcloud').exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  registerCi(p);
  mockSeen.length = 0;
  const saved = { ...process.env };
  let stderr = '';
  const spy = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((stderr += String(s)), true));
  try {
    for (const k of Object.keys(process.env)) if (k.startsWith('BUILDCLOUD_')) delete process.env[k];
    Object.assign(process.env, env);
    await p.parseAsync(args, { from: 'user' });
  } finally {
    spy.mockRestore();
    process.env = saved;
  }
  if (mockSeen.length !== 1) throw new Error('no command ran');
  return { ...mockSeen[0], stderr };
}

const fast = (args: string[]) => fastParse(['node', 'buildcloud', ...args]);

describe('a well-formed command line: the same options as commander', () => {
  test.each<[string[]]>([
    [['setup']],
    [['setup', '--endpoint', '127.0.0.1:7070', '--token', 't0k']],
    [['setup', '--endpoint=grpcs://cp.example:443', '--json']],
    [['setup', '--export-file', 'env.sh', '--dotenv', 'setup.env', '--scope', 'job', '--fallback', 'local']],
    [['setup', '--cache', '--summary', 'false']],
    [['setup', '--cache', 'false', '--platforms', 'linux/amd64,linux/arm64', '--provision-timeout', '5']],
    [['setup', '--cache', '--json']],
    [['setup', '--json=yes']],
    [['setup', '--json', 'false', '--cache=0']],
    [['setup', '--org', 'acme', '--org', 'other']], // a single-value flag: the last one wins
    [['setup', '--platforms', 'linux/amd64', '--platform', 'linux/arm64']],
    [['build', '--tags', 'acme/app:1', '--push', '--load', 'true', '--no-cache']],
    [['build', '--session', '/tmp/s.json', '--build-args', 'A=1\nB=2', '--pull']],
    [['build', '--file', 'Dockerfile.ci', '--target', 'test', '--dotenv', 'b.env', '--export-file', 'e.sh', '--json']],
    [['build', '--build-args', 'A=1', '--build-args', 'B=2']],
    [['build', '--build-arg', 'A=1', '--build-args', 'B=2\nC=3', '--build-arg', 'D=x\ny']],
    [['build', '-t', 'acme/app:1', '--tag', 'acme/app:2', '--tags', 'acme/app:3,acme/app:4', '.']],
    [['build', '-f', 'Dockerfile.ci', 'services/api']],
    [['build', '--push', '.']],
    [['build', '--push', 'false', '.']],
    [['build', '.', '--push=false', '--no-cache', 'false']],
    [['build', '--no-cache=0', '--pull', 'yes', '--load=FALSE']],
    [['build', '--platform', 'linux/amd64', '--platforms', 'linux/arm64', '--platform', 'linux/s390x']],
    [['build', '--secret', 'id=npm,src=package.json', '--secret-files', 'b=f', '--secret', 'type=file,id=c,source=README.md']], // --secret's file must exist
    [['build', '--label', 'a=1', '--labels', 'b=2', '--label', 'c=3']],
    [['build', '--ssh', 'default', '--ssh', 'k=/x']],
    [['build', '--context', 'app', 'app']], // the same context twice is one context
    [['report']],
    [['report', '--summary-file', 's.md', '--metrics', 'm.txt', '--dotenv', 'r.env', '--session', 'x.json']]
  ])('%j', async (args) => {
    const f = fast(args);
    expect(f).not.toBeNull();
    const { stderr, ...c } = await viaCommander(args);
    expect(f).toEqual(c);
    expect(stderr).toBe('');
  });
});

describe('left to commander (help, errors, anything unsure)', () => {
  test.each<[string[]]>([
    [[]],
    [['serve']],
    [['setup', '--help']],
    [['setup', '-h']],
    [['--version']],
    [['setup', '--bogus']],
    [['setup', '--scope', 'galaxy']], // not one of the choices
    [['setup', '--scope=galaxy']],
    [['setup', '--endpoint']], // no value
    [['setup', '--endpoint', '--json']], // a flag where the value should be
    [['setup', 'extra']],
    [['setup', '--', '--json']],
    [['setup', '--json=maybe']],
    [['setup', '--cache', 'maybe']],
    [['build', '--push=maybe']],
    [['build', '.', 'extra']],
    [['build', '-tacme/app:1']], // a short flag with its value attached: commander's
    [['build', '--secret', 'id=x,env=Y']],
    [['build', '--context', 'a', 'b']],
    [['build', '-']],
    [['build', '--pr-comment']], // GitHub-only input: not a CLI flag
    [['build', '--secrets', 'A=1']], // a secret's value never on a command line
    [['constructor']]
  ])('%j', (args) => {
    expect(fast(args)).toBeNull();
  });
});

describe('list flags accumulate, as docker build --build-arg does', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-args-'));
  fs.writeFileSync(path.join(dir, 'npmrc'), 'x');
  fs.writeFileSync(path.join(dir, 'key'), 'y');
  const npmrc = path.join(dir, 'npmrc');
  const key = path.join(dir, 'key');

  test.each<[string[], Partial<ReturnType<typeof buildSettings>>]>([
    [['--build-args', 'A=1', '--build-args', 'B=2'], { buildArgs: ['A=1', 'B=2'] }],
    [['--build-arg', 'A=1', '--build-arg', 'B=2'], { buildArgs: ['A=1', 'B=2'] }],
    [['--build-args', 'A=1\nB=2', '--build-arg', 'C=3'], { buildArgs: ['A=1', 'B=2', 'C=3'] }],
    // --build-arg is one entry, as in docker, even when its value spans lines
    [['--build-arg', 'MSG=line 1\nline 2', '--build-arg', 'Q="quoted"'], { buildArgs: ['MSG=line 1\nline 2', 'Q="quoted"'] }],
    [['-t', 'acme/app:1', '--tag', 'acme/app:2', '--tags', 'acme/app:3,acme/app:4'], { tags: ['acme/app:1', 'acme/app:2', 'acme/app:3', 'acme/app:4'] }],
    [['--labels', 'a=1', '--label', 'b=2'], { labels: ['a=1', 'b=2'] }],
    [['--platforms', 'linux/amd64', '--platform', 'linux/arm64'], { platforms: ['linux/amd64', 'linux/arm64'] }],
    [
      ['--secret-files', `npm=${npmrc}`, '--secret', `id=key,src=${key}`],
      {
        secretFiles: [
          { id: 'npm', path: npmrc },
          { id: 'key', path: key }
        ]
      }
    ],
    [['--ssh', `a=${key}`, '--ssh', `b=${npmrc}`], { ssh: [`a=${key}`, `b=${npmrc}`] }]
  ])('%j → %j (fastParse and commander)', async (args, want) => {
    const f = fast(['build', ...args]);
    const c = await viaCommander(['build', ...args]);
    expect(buildSettings(getter(f!.opts, {}))).toMatchObject(want);
    expect(buildSettings(getter(c.opts, {}))).toMatchObject(want);
  });

  test('setup --platforms accumulates too', () => {
    expect(setupSettings(getter(fast(['setup', '--platforms', 'linux/amd64', '--platform', 'linux/arm64'])!.opts, {})).platforms).toEqual([
      'linux/amd64',
      'linux/arm64'
    ]);
  });

  test('a --build-arg value that spans lines is passed as one quoted entry', () => {
    expect(oneEntry('A=1')).toBe('A=1');
    expect(oneEntry('MSG=a\n"b"')).toBe('"MSG=a\n""b"""');
  });
});

describe('every boolean takes the same forms', () => {
  const ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-ctx-')); // a word after a boolean flag is the context when it is a directory
  const forms: [string[], boolean][] = [
    [['--@'], true],
    [['--@', 'true'], true],
    [['--@', 'false'], false],
    [['--@=false'], false],
    [['--@=true'], true],
    [['--@', '0'], false],
    [['--@', 'yes'], true],
    [['--@', 'FALSE'], false]
  ];
  const build = ['push', 'load', 'pull', 'no-cache'] as const;
  const key = { push: 'push', load: 'load', pull: 'pull', 'no-cache': 'noCache' } as const;
  test.each(build.flatMap((name) => forms.map(([f, v]) => [name, f.map((a) => a.replace('@', name)), v] as const)))(
    'build --%s: %j → %s, with a context after it, on both paths',
    async (name, flags, value) => {
      const args = ['build', ...flags, ctx];
      const f = fast(args)!;
      const c = await viaCommander(args);
      expect(f.opts[key[name]]).toBe(value);
      expect(f.opts.context).toBe(ctx);
      expect(f).toEqual({ command: c.command, opts: c.opts });
      expect(buildSettings(getter(c.opts, {}))[key[name]]).toBe(value);
    }
  );

  test.each(forms.map(([f, v]) => [f.map((a) => a.replace('@', 'cache')), v] as const))('setup %j → cache %s', async (flags, value) => {
    const f = fast(['setup', ...flags])!;
    expect(f.opts.cache).toBe(value);
    expect(setupSettings(getter((await viaCommander(['setup', ...flags])).opts, {})).cache).toBe(value);
  });

  test('`--no-cache false` works (it failed with "too many arguments")', async () => {
    expect(buildSettings(getter((await viaCommander(['build', '--no-cache', 'false'])).opts, {})).noCache).toBe(false);
    expect(buildSettings(getter(fast(['build', '--no-cache', 'false'])!.opts, {})).noCache).toBe(false);
  });

  test.each<[string[], string]>([
    [['setup', '--cache', 'maybe'], '--cache'],
    [['setup', '--json=2'], '--json'],
    [['build', '--no-cache=maybe'], '--no-cache'],
    [['build', '--push=on', '.'], '--push']
  ])('%j: refused naming the flag and the accepted values', async (args, flag) => {
    expect(fast(args)).toBeNull();
    const value = args.find((a) => a.includes('=') || a === 'maybe')!.replace(/^.*=/, '');
    await expect(viaCommander(args)).rejects.toThrow(
      `error: option '${flag} [bool]' argument '${value}' is invalid. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no), or ${flag} alone for true.`
    );
  });

  test('a word after a boolean flag is its value only when it is a boolean word (build takes a context)', () => {
    expect(normalizeArgs('build', ['--push', '.', '--load', 'false', '--no-cache'])).toEqual(['--push=true', '.', '--load=false', '--no-cache=true']);
    expect(normalizeArgs('build', ['--target', '--push', '--push'])).toEqual(['--target', '--push', '--push=true']); // a value flag's value is never read
    expect(normalizeArgs('setup', ['--cache', 'maybe'])).toEqual(['--cache=maybe']);
  });
});

describe("docker build's spellings", () => {
  test('`buildcloud build -t acme/app:1 -f Dockerfile.ci --build-arg A=1 --platform linux/amd64 --target t --no-cache --pull --push --load .`', async () => {
    const args = [
      'build',
      '-t',
      'acme/app:1',
      '-f',
      'Dockerfile.ci',
      '--build-arg',
      'A=1',
      '--platform',
      'linux/amd64',
      '--target',
      't',
      '--no-cache',
      '--pull',
      '--push',
      '--load',
      '.'
    ];
    const want = {
      context: '.',
      file: 'Dockerfile.ci',
      tags: ['acme/app:1'],
      buildArgs: ['A=1'],
      platforms: ['linux/amd64'],
      target: 't',
      noCache: true,
      pull: true,
      push: true,
      load: true
    };
    expect(buildSettings(getter(fast(args)!.opts, {}))).toMatchObject(want);
    expect(buildSettings(getter((await viaCommander(args)).opts, {}))).toMatchObject(want);
  });

  test.each<[string, string]>([
    ['id=npm,src=package.json', 'npm=package.json'],
    [`id=npm,source=${path.resolve('README.md')}`, `npm=${path.resolve('README.md')}`],
    ['type=file,id=npm,src=README.md', 'npm=README.md']
  ])('--secret %s → secret-files entry %s', (spec, entry) => {
    expect(dockerSecret(spec)).toBe(entry);
  });

  test.each([['id=npm,env=NPM_TOKEN'], ['id=npm'], ['src=.npmrc'], ['id=npm,src=f,type=env'], ['id=npm,src=a,b']])(
    '--secret %s is refused without showing it',
    async (spec) => {
      const msg =
        "Invalid --secret: expected id=ID,src=FILE (docker build's file secret, passed on as the secret-files entry ID=FILE). A secret from a variable (env=) or an id alone has no flag: put ID=VALUE in BUILDCLOUD_SECRETS.";
      await expect(viaCommander(['build', '--secret', spec])).rejects.toThrow(msg);
      await viaCommander(['build', '--secret', spec]).catch((e: Error) => expect(e.message).not.toContain(spec));
    }
  );

  test('a positional context and a different --context: one message, naming both', async () => {
    await expect(viaCommander(['build', '--context', 'a', 'b'])).rejects.toThrow(
      "The context is given twice: 'b' as the argument and 'a' as --context. Give it once."
    );
  });

  test('two positional contexts: commander says so', async () => {
    await expect(viaCommander(['build', 'a', 'b'])).rejects.toThrow("error: too many arguments for 'build'. Expected 1 argument but got 2.");
  });
});

describe('a flag and its variable: the flag wins, and a note says so', () => {
  test.each<[string[], NodeJS.ProcessEnv, string[]]>([
    [
      ['build', '-t', 'acme/app:2'],
      { BUILDCLOUD_TAGS: 'acme/app:1' },
      ['note: --tags / -t / --tag and BUILDCLOUD_TAGS are both set, to different values: the flag wins and BUILDCLOUD_TAGS is ignored.']
    ],
    [['build', '--tags', 'acme/app:1'], { BUILDCLOUD_TAGS: 'acme/app:1' }, []], // the same value: nothing to say
    [['build', '--push'], { BUILDCLOUD_PUSH: ' true' }, []],
    [
      ['build', '--push=false'],
      { BUILDCLOUD_PUSH: 'true' },
      ['note: --push and BUILDCLOUD_PUSH are both set, to different values: the flag wins and BUILDCLOUD_PUSH is ignored.']
    ],
    [
      ['build', 'services/api'],
      { BUILDCLOUD_CONTEXT: '.' },
      ['note: --context / the context argument and BUILDCLOUD_CONTEXT are both set, to different values: the flag wins and BUILDCLOUD_CONTEXT is ignored.']
    ],
    [['build', '--push'], { BUILDCLOUD_TAGS: 'acme/app:1' }, []], // no flag for it: the variable is used
    [
      ['setup', '--token', 'flag-secret'],
      { BUILDCLOUD_TOKEN: 'env-secret' },
      ['note: --token and BUILDCLOUD_TOKEN are both set, to different values: the flag wins and BUILDCLOUD_TOKEN is ignored.']
    ]
  ])('%j with %j', async (args, env, notes) => {
    const f = fast(args)!;
    expect(envNotes(f.command, f.opts, env)).toEqual(notes);
    const c = await viaCommander(args, env);
    expect(c.stderr).toBe(notes.map((n) => n + '\n').join(''));
    expect(c.stderr).not.toMatch(/secret/);
  });

  test('the flag is what the step reads', () => {
    const f = fast(['build', '--tags', 'acme/app:2'])!;
    expect(buildSettings(getter(f.opts, { BUILDCLOUD_TAGS: 'acme/app:1' })).tags).toEqual(['acme/app:2']);
    expect(buildSettings(getter(fast(['build'])!.opts, { BUILDCLOUD_TAGS: 'acme/app:1' })).tags).toEqual(['acme/app:1']);
  });

  test('an unknown BUILDCLOUD_* variable is warned about by setup, on both paths, by name only', async () => {
    const env = { BUILDCLOUD_TAG: 'acme/app:1' };
    const want = ['warning: BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?'];
    expect(envNotes('setup', fast(['setup'])!.opts, env)).toEqual(want);
    const c = await viaCommander(['setup'], env);
    expect(c.stderr).toBe(want[0] + '\n');
  });

  test('build and report of the same job do not repeat it: setup said it once (issue 12 F)', async () => {
    const env = { BUILDCLOUD_TAG: 'acme/app:1', BUILDCLOUD_JOB: 'j1' };
    expect(envNotes('build', fast(['build'])!.opts, env)).toEqual([]);
    expect(envNotes('report', fast(['report'])!.opts, env)).toEqual([]);
    expect((await viaCommander(['build'], env)).stderr).toBe('');
    expect((await viaCommander(['report'], env)).stderr).toBe('');
    expect((await viaCommander(['setup'], env)).stderr).toBe(
      'warning: BUILDCLOUD_JOB is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_JOB_ID?\n' +
        'warning: BUILDCLOUD_TAG is not a Build Cloud variable and is ignored. Did you mean BUILDCLOUD_TAGS?\n'
    );
  });
});

// Issue 12, follow-up F: what a break-it run found in the grammar, each with the message the user now sees.
describe("a word after a boolean flag on build: the context only when it is a directory (docker's reading)", () => {
  const BOOL = 'true or false (also True, TRUE, 1, yes, False, FALSE, 0, no)';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-word-'));
  const sub = path.join(dir, 'sub');
  fs.mkdirSync(sub);

  test.each<[string[], string]>([
    [['build', '-t', 'a:1', '--push', 'bogus'], '--push'], // was "Build context 'bogus' not found (from --context …)"
    [['build', '--push', 'bogus', '.'], '--push'], // was "too many arguments for 'build'"
    [['build', '--no-cache', 'maybe', '.'], '--no-cache']
  ])('%j is refused naming %s and the accepted values', async (args, flag) => {
    expect(fast(args)).toBeNull();
    const word = args[args.indexOf(flag) + 1];
    await expect(viaCommander(args)).rejects.toThrow(
      `error: option '${flag} [bool]' argument '${word}' is invalid. Expected ${BOOL}, or ${flag} alone for true.`
    );
  });

  test('an existing directory after a boolean flag is the context, as docker reads it', async () => {
    const f = fast(['build', '--push', sub])!;
    expect(f.opts).toMatchObject({ push: true, context: sub });
    expect((await viaCommander(['build', '--push', sub])).opts).toMatchObject({ push: true, context: sub });
    expect(normalizeArgs('build', ['--push', 'https://github.com/acme/app.git'])).toEqual(['--push=true', 'https://github.com/acme/app.git']);
  });

  test('two contexts, one after a boolean flag: the message names the flag that took neither', async () => {
    const args = ['build', '--push', sub, '.'];
    expect(fast(args)).toBeNull();
    await expect(viaCommander(args)).rejects.toThrow(
      new InputError(
        `Too many arguments for 'build': '${sub}' and '.', and it takes one context. --push took neither: it takes ${BOOL}, or stands alone for true. ` +
          'Give one context: buildcloud build --push <context>.'
      )
    );
  });
});

describe('errors name what the user typed', () => {
  test('BUILDCLOUD_PUSH=maybe names the variable and the accepted forms', () => {
    expect(() => buildSettings(getter(fast(['build'])!.opts, { BUILDCLOUD_PUSH: 'maybe' }))).toThrow(
      new InputError("Invalid BUILDCLOUD_PUSH: 'maybe'. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no).")
    );
    expect(buildSettings(getter(fast(['build'])!.opts, { BUILDCLOUD_PUSH: 'yes', BUILDCLOUD_TAGS: 'a:1' })).push).toBe(true);
    expect(buildSettings(getter(fast(['build'])!.opts, { BUILDCLOUD_PUSH: 'no' })).push).toBe(false);
  });

  test("a flag's bad list entry names the flag and its docker spelling", () => {
    expect(() => buildSettings(getter(fast(['build', '--label', 'novalue'])!.opts, {}))).toThrow(
      /^Invalid --labels \/ --label: entry 1 \(line 1\) is not KEY=VALUE/
    );
  });

  test('--secret with a src that is not a file names --secret and its id, not secret-files or the path', async () => {
    const msg = 'Invalid --secret id=npm: its src is not a readable file. Expected id=ID,src=FILE of an existing file.';
    expect(fast(['build', '--secret', 'id=npm,src=/nope'])).toBeNull();
    await expect(viaCommander(['build', '--secret', 'id=npm,src=/nope'])).rejects.toThrow(new InputError(msg));
  });

  test('a bad positional context says "the context argument"', async () => {
    const err = await checkBuildPaths({ context: 'nope', file: '' }, os.tmpdir()).catch((e: unknown) => e);
    const opts = fast(['build', 'nope'])!.opts;
    expect((asTyped(err, opts) as Error).message).toBe("Build context 'nope' not found (from the context argument): pass an existing directory, e.g. '.'.");
    // given as --context, the message keeps naming the flag and its variable
    expect((asTyped(err, fast(['build', '--context', 'nope'])!.opts) as Error).message).toBe(
      "Build context 'nope' not found (from --context / BUILDCLOUD_CONTEXT): pass an existing directory, e.g. '.'."
    );
  });

  test("--build-arg NAME takes NAME's value from this environment, as docker does", async () => {
    expect(buildArgEntry('HTTP_PROXY', { HTTP_PROXY: 'http://proxy:3128' })).toBe('HTTP_PROXY=http://proxy:3128');
    expect(buildArgEntry('MSG', { MSG: 'a\nb' })).toBe('"MSG=a\nb"'); // one entry, as a value given inline
    expect(() => buildArgEntry('NOPE', {})).toThrow(
      new InputError("--build-arg NOPE passes NOPE's value from this environment, and NOPE is not set: export NOPE, or pass --build-arg NOPE=VALUE.")
    );
    process.env.BC_TEST_ARG = 'from-env';
    try {
      expect(buildSettings(getter(fast(['build', '--build-arg', 'BC_TEST_ARG'])!.opts, {})).buildArgs).toEqual(['BC_TEST_ARG=from-env']);
      expect(buildSettings(getter((await viaCommander(['build', '--build-arg', 'BC_TEST_ARG'])).opts, {})).buildArgs).toEqual(['BC_TEST_ARG=from-env']);
    } finally {
      delete process.env.BC_TEST_ARG;
    }
  });
});
