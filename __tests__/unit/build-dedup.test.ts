// build-dedup.ts: steps another build ran while this one waited, told from cache hits by the builder's records.
// The records below were read from a real builder (Docker Engine 20.10, `docker system df -v`) after two builds that
// share their first three steps: job x (started first) ran them; job y, started 2 s later, printed them CACHED.
import { describesRun, goTimeMs, parseBuildCache, runCommand, stepsRunConcurrently, type CacheRecord } from '../../src/core/build-dedup';
import { parseProgress, type Progress } from '../../src/core/build-progress';

// Creation times in seconds past 20:42 on the builder's clock, as the listing gave them.
const at = (sec: number) => Date.parse('2026-11-30T20:42:00Z') + Math.round(sec * 1000);
const rec = (id: string, parent: string, description: string, createdSec = 0, type = 'regular'): CacheRecord => ({
  id,
  parent,
  type,
  description,
  createdAtMs: at(createdSec)
});

// After both builds (ids shortened).
const AFTER: CacheRecord[] = [
  rec('xgea', 'nux6', 'mount / from exec /bin/sh -c echo x > /x', 44.836),
  rec('nux6', 'jzhl', 'mount / from exec /bin/sh -c echo two > /two', 44.393),
  rec('bbpm', '', 'fileop target', 35.607),
  rec('p1hi', 'nux6', 'mount / from exec /bin/sh -c echo y > /y', 44.837),
  rec('jzhl', 'bbpm', 'mount / from exec /bin/sh -c sleep 8 && echo one > /one', 43.995),
  rec('rrph', '', 'local source for context', 35.348, 'source.local')
];
// When y began (20:42:37.3): x had ADDed its rootfs (bbpm, 35.607) and was running `sleep 8`.
const Y_STARTED = at(37.3);

const Y_STREAM = [
  '#3 [internal] load build context',
  '#3 DONE 0.1s',
  '#4 [1/4] ADD rootfs.tar /',
  '#4 CACHED',
  '#5 [2/4] RUN sleep 8 && echo one > /one',
  '#5 CACHED',
  '#6 [3/4] RUN echo two > /two',
  '#6 CACHED',
  '#7 [4/4] RUN echo y > /y',
  '#7 DONE 0.4s'
].join('\n');

const statuses = (p: Progress) => p.steps.map((s) => `${s.name.split(' ')[0]}:${s.status}`);

describe('stepsRunConcurrently', () => {
  test('partial overlap: the steps job y waited for are deduplicated; the ADD that existed before y began stays cached', () => {
    const p = stepsRunConcurrently(parseProgress(Y_STREAM), Y_STARTED, AFTER);
    expect(statuses(p)).toEqual(['[1/4]:cached', '[2/4]:deduplicated', '[3/4]:deduplicated', '[4/4]:done']);
    expect(p).toMatchObject({ totalSteps: 4, cachedSteps: 1, deduplicatedSteps: 2 });
    expect(p.steps.filter((s) => s.status === 'deduplicated').every((s) => !s.cached)).toBe(true);
  });

  test('y started before x had ADDed anything: the ADD, reached through the chain, is deduplicated too', () => {
    const p = stepsRunConcurrently(parseProgress(Y_STREAM), at(35), AFTER);
    expect(p).toMatchObject({ cachedSteps: 0, deduplicatedSteps: 3 });
  });

  test('every record older than the build (sequential jobs on the builder): nothing changes', () => {
    const progress = parseProgress(Y_STREAM);
    const p = stepsRunConcurrently(progress, at(50), AFTER);
    expect(p).toBe(progress);
    expect(p.cachedSteps).toBe(3);
  });

  test('steps imported from the org cache (records named after the image history) stay cached', () => {
    // A fresh builder that imported the inline cache: records made during the build, none of them an exec's.
    const after = [
      rec('dmyx', '', 'ADD rootfs.tar / # buildkit', 40),
      rec('ozoo', 'dmyx', 'RUN /bin/sh -c sleep 8 && echo one > /one # buildkit', 40),
      rec('5zfz', 'ozoo', 'RUN /bin/sh -c echo two > /two # buildkit', 40),
      rec('2cy0', '5zfz', 'mount / from exec /bin/sh -c echo y > /y', 41)
    ];
    const p = stepsRunConcurrently(parseProgress(Y_STREAM), at(39), after);
    expect(p).toMatchObject({ cachedSteps: 3, deduplicatedSteps: 0 });
  });

  test('the same command on two parents, one of them older than the build: only the chain from a known record settles it', () => {
    const after = [...AFTER, rec('old1', 'zzzz', 'mount / from exec /bin/sh -c echo two > /two', 30)];
    const before = Y_STARTED;
    // Job y's stream up to `echo two`: `sleep 8` is known for sure (one record, new); `echo two` is not.
    const upToTwo = parseProgress(Y_STREAM.split('\n').slice(0, 8).join('\n'));
    expect(statuses(stepsRunConcurrently(upToTwo, before, after))).toEqual(['[1/4]:cached', '[2/4]:deduplicated', '[3/4]:cached']);
    // With y's own `echo y` step, whose one record's parent is the new `echo two` record, the chain settles it.
    const p = stepsRunConcurrently(parseProgress(Y_STREAM), before, after);
    expect(statuses(p)).toEqual(['[1/4]:cached', '[2/4]:deduplicated', '[3/4]:deduplicated', '[4/4]:done']);
  });

  test("a chain that is not the stage's (a COPY step whose parent record is an exec) is not followed", () => {
    const stream = ['#4 [1/3] COPY a.txt /a', '#4 CACHED', '#5 [2/3] RUN make', '#5 CACHED', '#6 [3/3] RUN echo y', '#6 DONE 0.1s'].join('\n');
    const after = [
      rec('r0', '', 'mount / from exec /bin/sh -c something else', 2),
      rec('r1', 'r0', 'mount / from exec /bin/sh -c make', 3),
      rec('r2', 'r1', 'mount / from exec /bin/sh -c echo y', 4)
    ];
    const p = stepsRunConcurrently(parseProgress(stream), at(1), after);
    expect(statuses(p)).toEqual(['[1/3]:cached', '[2/3]:deduplicated', '[3/3]:done']);
  });

  test('stages are followed apart: a named stage and the final one', () => {
    const stream = [
      '#4 [deps 1/2] COPY lock /lock',
      '#4 CACHED',
      '#5 [deps 2/2] RUN install',
      '#5 CACHED',
      '#6 [stage-1 1/2] COPY app /app',
      '#6 CACHED',
      '#7 [stage-1 2/2] RUN build',
      '#7 DONE 1.0s'
    ].join('\n');
    const after = [
      rec('d1', 'base', 'fileop target', 40),
      rec('d2', 'd1', 'mount / from exec /bin/sh -c install', 41),
      rec('f1', 'base', 'fileop target', 30),
      rec('f2', 'f1', 'mount / from exec /bin/sh -c build', 42),
      rec('base', '', 'pulled', 10)
    ];
    // deps' records were made during the build (another job ran them); the final stage's COPY was there before.
    const p = stepsRunConcurrently(parseProgress(stream), at(35), after);
    expect(statuses(p)).toEqual(['[deps:deduplicated', '[deps:deduplicated', '[stage-1:cached', '[stage-1:done']);
  });

  test('a build with no CACHED step is returned as it is', () => {
    const progress = parseProgress(['#4 [1/1] RUN a', '#4 DONE 0.1s'].join('\n'));
    expect(stepsRunConcurrently(progress, at(0), [rec('x', '', 'mount / from exec /bin/sh -c a', 5)])).toBe(progress);
  });

  test('a record whose creation time could not be read is no evidence: the step stays cached', () => {
    const after = AFTER.map((r) => ({ ...r, createdAtMs: NaN }));
    expect(stepsRunConcurrently(parseProgress(Y_STREAM), Y_STARTED, after).cachedSteps).toBe(3);
  });

  test("the builder's clock could not be read (NaN): nothing is moved", () => {
    expect(stepsRunConcurrently(parseProgress(Y_STREAM), NaN, AFTER).cachedSteps).toBe(3);
  });
});

describe('runCommand', () => {
  test.each([
    ['[2/4] RUN sleep 8 && echo one > /one', 'sleep 8 && echo one > /one'],
    ['[build 3/5] RUN echo "multi"     &&   echo  line > /m', 'echo "multi" && echo line > /m'],
    ['[5/7] RUN ["/bin/sh", "-c", "echo exec > /e"]', '/bin/sh -c echo exec > /e'],
    ['[6/7] RUN --mount=type=tmpfs,target=/t echo mounted > /mm', 'echo mounted > /mm'],
    ['[linux/arm64 stage-1 2/3] RUN --network=none --mount=type=cache,target=/c make', 'make'],
    ['[1/2] COPY a /a', null],
    ['[2/2] WORKDIR /work', null]
  ])('%s', (name, cmd) => {
    expect(runCommand(name)).toBe(cmd);
  });
});

describe('parseBuildCache', () => {
  test("reads docker system df -v's build cache list", () => {
    const out = JSON.stringify([
      { CacheType: 'regular', CreatedAt: '2026-11-30 20:42:44 +0000 UTC', Description: 'fileop target', ID: 'bbpm', Parent: '', InUse: 'false' },
      { CacheType: 'source.local', Description: 'local source for context', ID: 'rrph', Parent: '' }
    ]);
    expect(parseBuildCache(out)).toEqual([
      { id: 'bbpm', parent: '', type: 'regular', description: 'fileop target', createdAtMs: Date.parse('2026-11-30T20:42:44Z') },
      { id: 'rrph', parent: '', type: 'source.local', description: 'local source for context', createdAtMs: NaN }
    ]);
  });
  test('an empty builder prints null: no records', () => {
    expect(parseBuildCache('null\n')).toEqual([]);
  });
  test.each(['', 'not json', '{"ID":"x"}', '[{"Description":"no id"}]'])('%j is not a record list', (out) => {
    expect(parseBuildCache(out)).toBeNull();
  });
});

describe('goTimeMs', () => {
  test.each([
    ['2026-11-30 20:42:35.312493911 +0000 UTC', Date.parse('2026-11-30T20:42:35.312Z')],
    ['2026-11-30 21:42:35.5 +0100 CET', Date.parse('2026-11-30T20:42:35.500Z')],
    ['2026-11-30T20:46:57.20723293Z', Date.parse('2026-11-30T20:46:57.207Z')],
    ['2026-11-30T20:46:57Z', Date.parse('2026-11-30T20:46:57Z')]
  ])('%s', (s, ms) => {
    expect(goTimeMs(s)).toBe(ms);
  });
  test.each(['', 'yesterday', '30/11/2026 20:42'])('%j is NaN', (s) => {
    expect(goTimeMs(s)).toBeNaN();
  });
});

describe('describesRun', () => {
  const exec = (argv: string) => rec('r', '', `mount / from exec ${argv}`);
  test.each([
    ['/bin/sh -c sleep 5 && echo "$V" > /s', 'sleep 5 && echo "7" > /s', true],
    ['/bin/sh -c echo ${V} ${W:-x} > /s', 'echo 7 8 > /s', true],
    ['/bin/bash -eo pipefail -c make $TARGET', 'make all', true],
    ['/bin/sh -c echo two > /two', 'echo two > /two', true],
    ['/bin/sh -c echo exec > /e', '/bin/sh -c echo exec > /e', true], // the exec form: no shell words to skip
    ['/bin/sh -c echo "$V" > /s', 'echo "7" > /t', false],
    ['/bin/sh -c echo two > /two', 'echo three > /two', false],
    ['/bin/sh -c make', 'make install', false]
  ])('%s ~ %s: %s', (argv, cmd, same) => {
    expect(describesRun(exec(argv), cmd)).toBe(same);
  });
  test('a step using a build argument that another job ran while this one waited is deduplicated', () => {
    const stream = [
      '#4 [1/3] ADD rootfs.tar /',
      '#4 CACHED',
      '#5 [2/3] RUN sleep 5 && echo "7" > /s',
      '#5 CACHED',
      '#6 [3/3] RUN echo xb',
      '#6 DONE 0.1s'
    ].join('\n');
    const after = [
      rec('a', '', 'fileop target', 10),
      rec('b', 'a', 'mount / from exec /bin/sh -c sleep 5 && echo "$V" > /s', 30),
      rec('c', 'b', 'mount / from exec /bin/sh -c echo xb', 31)
    ];
    const p = stepsRunConcurrently(parseProgress(stream), at(20), after);
    expect(statuses(p)).toEqual(['[1/3]:cached', '[2/3]:deduplicated', '[3/3]:done']);
  });
});
