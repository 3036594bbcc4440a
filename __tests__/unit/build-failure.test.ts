// A failed build's cause: the platform (the builder was lost) or the user's build, from the docker client's real
// output (fixtures recorded by killing a builder's dockerd: __tests__/fixtures/build-failure/README.md).
import * as fs from 'fs';
import * as path from 'path';
import { BUILDER_LOST, classifyFailure } from '../../src/core/build-failure';
import { ProgressParser } from '../../src/core/build-progress';

const FIXTURES = path.join(__dirname, '..', 'fixtures');
const read = (f: string) => fs.readFileSync(path.join(FIXTURES, f), 'utf8');

function classify(text: string, exitCode: number | null = 1) {
  const lines = text.split('\n');
  const p = new ProgressParser();
  for (const l of lines) p.push(l);
  return classifyFailure(lines, p.vertices(), exitCode);
}

describe('classifyFailure on recorded client output', () => {
  test('builder dockerd killed mid-step: platform, names the running step and what to do', () => {
    const f = classify(read('build-failure/builder-killed-mid-step.txt'));
    expect(f.kind).toBe('platform');
    expect(f.message.startsWith(BUILDER_LOST)).toBe(true);
    expect(f.message).toContain('rerun the job: its next run gets a new builder');
    expect(f.step).toBe('[2/2] RUN echo start && sleep 30 && echo end');
    expect(f.evidence).toMatch(/server did not provide an image ID/);
  });

  test('builder gone before the build: connection refused on its endpoint is platform', () => {
    const f = classify(read('build-failure/builder-gone-before-build.txt'));
    expect(f).toMatchObject({ kind: 'platform', step: undefined });
    expect(f.evidence).toMatch(/connect: connection refused/);
    expect(f.message).toBe(`${BUILDER_LOST}: ${f.evidence}. What to do: ${f.message.split('What to do: ')[1]}`);
  });

  test('a RUN step that exits non-zero is the build, with the step and the engine error', () => {
    const f = classify(read('progress/run-failed.txt'));
    expect(f.kind).toBe('build');
    expect(f.step).toBe('[3/3] RUN echo about to fail && ls /nope && exit 3');
    expect(f.message).toBe(
      'docker build failed (exit 1): step [3/3] RUN echo about to fail && ls /nope && exit 3 failed: executor failed running [/bin/sh -c echo about to fail && ls /nope && exit 3]: exit code: 1'
    );
    expect(f.message).not.toContain(BUILDER_LOST);
  });
});

describe('classifyFailure: what decides', () => {
  const stepRunning = ['#5 [2/2] RUN curl http://svc', '#5 sha256:f358c98e5d3f4641a32769f120a6d9d560417244fccb8a4015b4acf818540597'];
  test.each([
    [
      'a step whose output says connection refused, then fails',
      [...stepRunning, '#5 0.3 curl: (7) connect: connection refused', '#5 ERROR: executor failed running [/bin/sh -c curl http://svc]: exit code: 7'],
      'build'
    ],
    ['a step whose output says connection refused, cut off with no error', [...stepRunning, '#5 0.3 curl: (7) connect: connection refused'], 'platform'],
    ['the client says reset by peer', [...stepRunning, 'error: read tcp 127.0.0.1:40000->127.0.0.1:39347: read: connection reset by peer'], 'platform'],
    ['the engine closes a step with a transport error', [...stepRunning, '#5 ERROR: rpc error: code = Unavailable desc = transport is closing'], 'platform'],
    ['a session that ends with EOF', ['#4 [1/2] ADD rootfs.tar /', '#4 DONE 0.6s', 'failed to solve: error reading from server: EOF'], 'platform'],
    [
      'a Dockerfile the frontend refuses',
      ['failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: unknown instruction: FOO'],
      'build'
    ],
    ['a context that does not exist', ['unable to prepare context: path "nope" not found'], 'build'],
    ['nothing at all', [], 'build'],
    // The cold-cache import error is BuildKit's ERROR on an internal vertex, not a failure of either kind.
    [
      'a cold cache import, then a step cut off',
      ['#6 importing cache manifest from 127.0.0.1:5000/acme/cache:main', '#6 ERROR: 127.0.0.1:5000/acme/cache:main: not found', ...stepRunning],
      'platform'
    ]
  ])('%s', (_what, lines, kind) => {
    const f = classify((lines as string[]).join('\n'));
    expect(f.kind).toBe(kind);
    expect(f.message.includes(BUILDER_LOST)).toBe(kind === 'platform');
  });

  test('a build failure with no step names the client line and the exit code', () => {
    expect(classify('unable to prepare context: path "nope" not found', 125).message).toBe(
      'docker build failed (exit 125): unable to prepare context: path "nope" not found'
    );
    expect(classify('', 1).message).toBe('docker build failed (exit 1)');
  });
});
