// Multi-line values (issue 11, case 4) and secrets (case 5): the list parser held to csv-parse's output, each failure
// of the issue as a test, errors that name the input and the entry but never its text, the secret flags and files.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseListEntries, UnclosedQuoteError } from '../../src/core/list-entries';
import {
  entryNames,
  keyValueEntries,
  MULTI_LINE_FORM,
  secretEntries,
  secretFileEntries,
  sshEntries,
  undeclaredArgWarnings,
  repeatedKeyWarnings
} from '../../src/core/build-inputs';
import { declaredArgs } from '../../src/core/dockerfile-steps';
import { buildSettings } from '../../src/core/settings';
import { buildArgs, parseKeyValueLines, type BuildOptions } from '../../src/core/docker-cli';
import {
  redactor,
  removeSecretFiles,
  secretFilePaths,
  secretFragments,
  shortSecretWarnings,
  withoutSecretInputs,
  writeSecretFiles
} from '../../src/core/build-secrets';
import { errorOf } from '../helpers/input-error';

const PEM = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----';
const BASE64 = 'MIIBszCCAVmgAwIBAgIUXq3c7wF0mQ9uRk2n\nQ29tcGFueUNlcnRpZmljYXRlQXV0aG9yaXR5MB4X=';

describe('parseListEntries reads what docker/build-push-action reads', () => {
  // Expected values: csv-parse 7.0.3 with actions-toolkit's options (columns false, relaxQuotes, relaxColumnCount,
  // skipEmptyLines), fields joined with ',' and trimmed, run on each input. 600,000 random inputs of ", \n, \r\n or \r
  // (one kind per input), =, a, b, space and comma gave the same entries as csv-parse, and the same unclosed-quote errors.
  test.each([
    ['one per line', 'A=1\nB=2', ['A=1', 'B=2']],
    ['a quoted entry spans lines', `"PEM=${PEM}"`, [`PEM=${PEM}`]],
    ['a quoted base64 value ending in = stays one entry', `"B64=${BASE64}"\nX=1`, [`B64=${BASE64}`, 'X=1']],
    ['"" is a quote inside a quoted entry', '"a=he said ""hi"""', ['a=he said "hi"']],
    ['a quote inside an unquoted entry is a character', 'a=he said "hi"', ['a=he said "hi"']],
    ['text after a closing quote makes the entry literal', '"a=b"c', ['"a=b"c']],
    ['a space before the opening quote makes it literal', ' "a=b"', ['"a=b"']],
    ['commas are kept', 'a=x,y,z', ['a=x,y,z']],
    ['a quoted field after a comma loses its quotes, as in csv-parse', '"a=x,y",z', ['a=x,y,z']],
    ['CRLF lines', 'a=1\r\nb=2', ['a=1', 'b=2']],
    ['CR lines', 'a=1\rb=2', ['a=1', 'b=2']],
    ['CRLF inside a quoted value is kept', '"a=1"\r\n"b=\r\n2"', ['a=1', 'b=\r\n2']],
    ['blank lines and surrounding spaces', '\n\nA=1\n\n\nB = 2 \n', ['A=1', 'B = 2']],
    ['a commit message body with a blank line', '"msg=Fix\n\nCo-authored-by: X <x@y>"', ['msg=Fix\n\nCo-authored-by: X <x@y>']],
    ['an empty quoted entry is dropped', '""\na=1', ['a=1']]
  ])('%s', (_name, text, expected) => {
    expect(parseListEntries(text).map((e) => e.value)).toEqual(expected);
  });

  test('a mixed CRLF and LF input: every line break ends an unquoted entry (csv-parse would keep the first kind only)', () => {
    expect(parseListEntries('LIST=a,b\r\nVERSION=1.2\nEMPTY=').map((e) => e.value)).toEqual(['LIST=a,b', 'VERSION=1.2', 'EMPTY=']);
  });

  test('untrimmed (secrets): values keep their spaces; an empty entry is still dropped', () => {
    expect(parseListEntries('A= x \n\n"B=y\n"', false).map((e) => e.value)).toEqual(['A= x ', 'B=y\n']);
  });

  test('each entry knows the line it starts on', () => {
    expect(parseListEntries(`\nA=1\n"PEM=${PEM}"\nB=2`).map((e) => [e.value.slice(0, 3), e.line])).toEqual([
      ['A=1', 2],
      ['PEM', 3],
      ['B=2', 6]
    ]);
  });

  test('an unclosed quote names the entry and its line', () => {
    expect(() => parseListEntries('A=1\n"B=2\nC=3')).toThrow(new UnclosedQuoteError(2, 2));
    expect(() => parseListEntries('"a=1""')).toThrow(UnclosedQuoteError);
  });
});

describe('issue 11 case 4: build-args and labels with multi-line values', () => {
  test('a PEM value without quotes fails naming entry 2, not echoing a line of it', () => {
    const e = errorOf(() => buildSettings((n) => (n === 'build-args' ? `CERT=${PEM}` : '')));
    expect(e.message).toBe(
      `Invalid input 'build-args': entry 2 (line 2) is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit). ${MULTI_LINE_FORM}`
    );
    expect(e.message).not.toContain('AAAA');
    expect(e.message).not.toContain('BEGIN');
  });

  test('the same PEM value in quotes is one build-arg of three lines, reaching the argv intact', () => {
    const s = buildSettings((n) => (n === 'build-args' ? `"CERT=${PEM}"\nVERSION=1` : ''));
    expect(s.buildArgs).toEqual([`CERT=${PEM}`, 'VERSION=1']);
    expect(parseKeyValueLines(s.buildArgs, 'build-args')).toEqual({ CERT: PEM, VERSION: '1' });
  });

  test('a base64 continuation line ending in = is refused, not taken as a second build-arg', () => {
    const e = errorOf(() => keyValueEntries('build-args', `CERT=${BASE64}`));
    expect(e.message).toBe(
      `Invalid input 'build-args': entry 2 (line 2) reads as the last line of a multi-line (base64) value, not as a build argument of its own. ${MULTI_LINE_FORM}`
    );
    expect(e.message).not.toContain('Q29t');
    expect(keyValueEntries('build-args', `"CERT=${BASE64}"`)).toEqual([`CERT=${BASE64}`]);
    // Build arguments that merely look alike stay accepted: an underscore, one case only, or a first entry.
    expect(keyValueEntries('build-args', 'A=1\nHTTP_PROXY_FOR_THE_BUILD_ONLY=\nNPMREGISTRYMIRRORADDRESS2=')).toHaveLength(3);
  });

  test('labels with a commit message body: unquoted fails at the body line, quoted is one label', () => {
    const body = 'Fix the retry loop\n\nCo-authored-by: Ann <ann@example.com>';
    const e = errorOf(() => keyValueEntries('labels', `org.opencontainers.image.description=${body}`));
    expect(e.message).toBe(`Invalid input 'labels': entry 2 (line 3) is not KEY=VALUE (KEY without spaces, = or quotes). ${MULTI_LINE_FORM}`);
    expect(e.message).not.toContain('Ann');
    expect(keyValueEntries('labels', `"org.opencontainers.image.description=${body}"`)).toEqual([`org.opencontainers.image.description=${body}`]);
  });

  test('desc=Fix\\nretries=3 now: quoted, one label; unquoted, two (as in docker/build-push-action), and the log names both keys', () => {
    expect(keyValueEntries('labels', '"desc=Fix\nretries=3 now"')).toEqual(['desc=Fix\nretries=3 now']);
    const two = buildSettings((n) => (n === 'labels' ? 'desc=Fix\nretries=3 now' : ''));
    expect(two.labels).toEqual(['desc=Fix', 'retries=3 now']);
    expect(entryNames(two)).toBe('labels: desc, retries');
  });

  test('a quoted label gets no quote in its key; a broken quote is refused instead of keeping it', () => {
    expect(parseKeyValueLines(keyValueEntries('labels', '"org.example.note=a, b"'), 'labels')).toEqual({ 'org.example.note': 'a, b' });
    const e = errorOf(() => keyValueEntries('labels', '"org.example.note=a" trailing'));
    expect(e.message).toMatch(/^Invalid input 'labels': entry 1 \(line 1\) is not KEY=VALUE/);
  });

  test('an unclosed quote is refused naming the entry, not echoing it', () => {
    const e = errorOf(() => keyValueEntries('build-args', 'A=1\n"CERT=-----BEGIN\nAAAA'));
    expect(e.message).toBe(
      `Invalid input 'build-args': entry 2 (line 2) opens a double quote that is never closed. Expected the closing " at the end of the entry's last line, and "" for a quote inside it.`
    );
  });
});

describe('issue 11 case 5: secrets, secret-files and ssh', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-secrets-test-'));
    fs.writeFileSync(path.join(dir, 'token.txt'), 'x');
    fs.writeFileSync(path.join(dir, 'id_ed25519'), 'k');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('secrets: ID=VALUE, values untrimmed and multi-line in quotes', () => {
    expect(secretEntries('secrets', `NPM_TOKEN=abc \n"GIT_AUTH_TOKEN.github.com=${PEM}\n"`)).toEqual([
      { id: 'NPM_TOKEN', value: 'abc ' },
      { id: 'GIT_AUTH_TOKEN.github.com', value: `${PEM}\n` }
    ]);
  });

  test.each([
    ['no =', 'TOKEN=s3cr3t-value\ns3cr3t-value-line', 'entry 2 (line 2) is not ID=VALUE'],
    ['an empty value', 'TOKEN=', 'entry 1 (line 1) is not ID=VALUE'],
    ['an id with a space', 'MY TOKEN=s3cr3t-value', 'entry 1 (line 1) is not ID=VALUE'],
    ['an id twice', 'A=s3cr3t-value\nA=s3cr3t-value', 'entry 2 (line 2) repeats the id of an earlier entry']
  ])('secrets: %s is refused by entry number, the value never shown', (_n, text, what) => {
    const e = errorOf(() => secretEntries('secrets', text));
    expect(e.message).toContain(`Invalid input 'secrets': ${what}`);
    expect(e.message).not.toContain('s3cr3t');
  });

  test('secret-files: ID=PATH of an existing file, made absolute; a missing file or an id of secrets is refused', () => {
    const rel = path.relative(process.cwd(), path.join(dir, 'token.txt'));
    expect(secretFileEntries('secret-files', `NPM=${rel}`)).toEqual([{ id: 'NPM', path: path.join(dir, 'token.txt') }]);
    expect(errorOf(() => secretFileEntries('secret-files', `NPM=${dir}/missing`)).message).toBe(
      "Invalid input 'secret-files': entry 1 (line 1): its PATH is not a readable file. Expected ID=PATH of an existing file."
    );
    expect(errorOf(() => secretFileEntries('secret-files', `NPM=${rel}`, [{ id: 'NPM', value: 'v' }])).message).toContain('uses an id that');
  });

  test('ssh: default, an id, or ID=PATH[,PATH] (docker --ssh syntax), paths absolute and existing', () => {
    const key = path.join(dir, 'id_ed25519');
    expect(sshEntries('ssh', `default\ngithub=${key},${key}`)).toEqual(['default', `github=${key},${key}`]);
    expect(errorOf(() => sshEntries('ssh', 'default,github')).message).toMatch(/^Invalid input 'ssh': entry 1 \(line 1\) is not default, ID or ID=PATH/);
    expect(errorOf(() => sshEntries('ssh', `k=${dir}/nope`)).message).toContain('a PATH in it does not exist');
  });

  test('buildSettings reads all three; entryNames shows ids, never values', () => {
    const get = (n: string) => ({ secrets: 'NPM_TOKEN=s3cr3t', 'secret-files': `F=${path.join(dir, 'token.txt')}`, ssh: 'default' })[n] ?? '';
    const s = buildSettings(get);
    expect(s.secrets).toEqual([{ id: 'NPM_TOKEN', value: 's3cr3t' }]);
    expect(entryNames(s)).toBe('secrets: NPM_TOKEN; secret-files: F; ssh: default');
  });
});

describe('secret flags, files and redaction', () => {
  const base: BuildOptions = { context: '.', tags: [], buildArgs: {}, push: false, platforms: [], exportCache: false };
  const refs = { importRefs: [], exportRef: '' };

  test('--secret id=ID,src=FILE and --ssh SPEC; a value never reaches the argv; a path with a comma is CSV-quoted', () => {
    const argv = buildArgs(
      {
        ...base,
        secrets: [
          { id: 'A', src: '/run/bc/secret-1-0' },
          { id: 'B', src: '/odd,dir/f"x' }
        ],
        secretValues: [{ id: 'C', value: 's3cr3t' }],
        ssh: ['default', 'gh=/k1,/k2']
      },
      refs,
      { buildx: false }
    );
    expect(argv.join(' ')).not.toContain('s3cr3t');
    const flags = argv.flatMap((a, i) => (a === '--secret' || a === '--ssh' ? [[a, argv[i + 1]]] : []));
    expect(flags).toEqual([
      ['--secret', 'id=A,src=/run/bc/secret-1-0'],
      ['--secret', 'id=B,"src=/odd,dir/f""x"'],
      ['--ssh', 'default'],
      ['--ssh', 'gh=/k1,/k2']
    ]);
  });

  test('an id docker would misread is refused', () => {
    expect(() => buildArgs({ ...base, secrets: [{ id: 'a,b', src: '/f' }] }, refs, { buildx: false })).toThrow(/Invalid input 'secrets': entry 1/);
  });

  test('secret files: 0600, exclusive, removed; a failed write leaves none behind', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-secret-files-'));
    try {
      const { secrets, files } = secretFilePaths(dir, 3, [{ id: 'A' }, { id: 'B' }]);
      expect(secrets).toEqual([
        { id: 'A', src: path.join(dir, 'secret-3-0') },
        { id: 'B', src: path.join(dir, 'secret-3-1') }
      ]);
      await writeSecretFiles([{ value: `${PEM}\n` }, { value: 'b' }], files);
      expect(fs.readFileSync(files[0], 'utf8')).toBe(`${PEM}\n`);
      expect(fs.statSync(files[0]).mode & 0o777).toBe(0o600);
      await expect(writeSecretFiles([{ value: 'x' }], [files[1]])).rejects.toThrow(/EEXIST/);
      expect(fs.existsSync(files[1])).toBe(false);
      await removeSecretFiles(files);
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('redaction hides each value and each line of a multi-line one; short lines stay', () => {
    const redact = redactor(['tok3n', PEM, 'ab']);
    expect(redact('#5 0.2 tok3n and AAAA')).toBe('#5 0.2 *** and ***');
    expect(redact('-----END CERTIFICATE----- ab')).toBe('*** ab');
    expect(secretFragments(['ab\ncd'])).toEqual(['ab\ncd']); // the whole value; its two-character lines are left
    expect(redactor([])('unchanged')).toBe('unchanged');
  });

  test('docker gets no variable holding the secrets input', () => {
    expect(withoutSecretInputs({ PATH: '/bin', BUILDCLOUD_SECRETS: 'A=1', INPUT_SECRETS: 'A=1' })).toEqual({ PATH: '/bin' });
  });
});

describe('build-args the Dockerfile declares no ARG for (a line of an unquoted multi-line value reads as one)', () => {
  const dockerfile = 'FROM scratch AS base\nARG A\nARG B=1 C\nFROM base\narg lower=x\nARG LONG=a \\\n  D=2\n';
  test('declaredArgs reads every ARG of every stage, several per line, continuation lines joined', () => {
    expect([...declaredArgs(dockerfile)].sort()).toEqual(['A', 'B', 'C', 'D', 'LONG', 'lower']);
  });
  test("the issue's base64 tail: never shown, and warned about by entry number only", () => {
    const args = ['A=abc', 'ZGVmZ2hp='];
    const declared = declaredArgs(dockerfile);
    const shown = entryNames({ buildArgs: args, labels: [], secrets: [], secretFiles: [], ssh: [] }, declared);
    expect(shown).toBe('build-args: A, entry 2 (no such ARG)');
    expect(shown).not.toContain('ZGVmZ2hp');
    const warnings = undeclaredArgWarnings(args, declared);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /^Build Cloud: build-args entry 2 names no ARG of the Dockerfile, so the build ignores it\. If it is a line of the previous value/
    );
    expect(warnings.join('')).not.toContain('ZGVmZ2hp');
  });
  test("Docker's predefined ARGs need no declaration; without the Dockerfile nothing is second-guessed", () => {
    expect(undeclaredArgWarnings(['HTTP_PROXY=http://p:3128', 'BUILDKIT_INLINE_CACHE=1', 'A=1'], declaredArgs(dockerfile))).toEqual([]);
    expect(entryNames({ buildArgs: ['X=1'], labels: [], secrets: [], secretFiles: [], ssh: [] }, null)).toBe('build-args: X');
  });
});

test('a key set twice is warned about by entry numbers (docker keeps the last), never by the key', () => {
  expect(repeatedKeyWarnings('build-args', ['A=1', 'B=2', 'A=x', 'A=y'])).toEqual([
    'Build Cloud: build-args entries 1, 3, 4 set the same key; the build keeps the last (entry 4).'
  ]);
  expect(repeatedKeyWarnings('labels', ['a=1', 'b=2'])).toEqual([]);
});

describe('shortSecretWarnings', () => {
  test('a short secret is named with its length, never its value; a long one, or lines under 3 characters, are not', () => {
    const w = shortSecretWarnings([
      { id: 'word', value: 'build' },
      { id: 'token', value: 'ghp_0123456789abcdefghij' },
      { id: 'pem', value: '-----BEGIN KEY-----\nAAAAbbbbCCCCdddd\nxyzw\n}\n-----END KEY-----' },
      { id: 'tiny', value: '}' }
    ]);
    expect(w).toHaveLength(2);
    expect(w[0]).toContain("secret 'word' holds a value of only 5 characters");
    expect(w[1]).toContain("secret 'pem' holds a value line of only 4 characters");
    for (const line of w) {
      expect(line).not.toContain('build');
      expect(line).not.toContain('xyzw');
    }
  });
});
