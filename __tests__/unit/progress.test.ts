// parseProgress over real `--progress=plain` output. The fixtures were recorded on this project's own control plane
// (`buildcloud serve`, dockerd builders, the org-cache registry) with Debian's docker 20.10 client, building the
// busybox context of __tests__/helpers/busybox-context.ts with these Dockerfiles:
//
//   multistage-*, builder-pattern-*          chained-*
//     FROM scratch AS base                     FROM scratch AS base
//     ADD rootfs.tar /                         ADD rootfs.tar /
//     FROM base AS deps                        FROM base AS deps
//     RUN echo dependencies > /deps.txt ...    RUN echo dependencies > /deps.txt ...
//     FROM base AS build                       FROM deps AS app
//     COPY --from=deps /deps.txt /deps.txt     COPY app.txt /app.txt
//     COPY app.txt /app.txt                    RUN cat /deps.txt /app.txt > /built.txt ...
//     RUN cat /deps.txt /app.txt > ...
//     FROM base
//     COPY --from=build /built.txt /built.txt
//
// cold: first build, the cache import finds nothing. cached: the same build again on the same builder.
// app-changed: app.txt edited, same builder. imported-fresh-builder: a new pipeline's fresh builder importing the
// first one's inline cache. *-app-changed-fresh-builder: app.txt edited, on a fresh builder. The builder-pattern
// one shows the limit of inline cache: only the final image's layers travel, so the `deps` stage (not in the final
// image) is rebuilt even though nothing it depends on changed. run-failed: a RUN that exits non-zero.
// from-registry-image: FROM an image in the registry. cancelled: SIGINT to the client during a RUN.
// concurrent-identical-*: two jobs of one pipeline (two leases, one builder) running the same cold multistage build
// (inline cache, the cache-from and tag of runBuild) at the same moment; -solver is the client whose stream shows
// the steps, -deduplicated the other one (moby/buildkit#4330): see stepsSolvedElsewhere.
import * as fs from 'fs';
import * as path from 'path';
import { isStepName, parseProgress, ProgressParser, stepsSolvedElsewhere } from '../../src/core/build-progress';

const FIXTURES = path.join(__dirname, '../fixtures/progress');
const fixture = (name: string) => fs.readFileSync(path.join(FIXTURES, `${name}.txt`), 'utf8');

const parser = (text: string) => {
  const p = new ProgressParser();
  for (const l of text.split('\n')) p.push(l);
  return p;
};

const MULTISTAGE_DOCKERFILE = `FROM scratch AS base
ADD rootfs.tar /

FROM base AS deps
RUN echo dependencies > /deps.txt && sleep 1

FROM base AS build
COPY --from=deps /deps.txt /deps.txt
COPY app.txt /app.txt
RUN cat /deps.txt /app.txt > /built.txt && sleep 1

FROM base
COPY --from=build /built.txt /built.txt
`;

const MULTI = [
  '[base 1/1] ADD rootfs.tar /',
  '[deps 1/1] RUN echo dependencies > /deps.txt && sleep 1',
  '[build 1/3] COPY --from=deps /deps.txt /deps.txt',
  '[build 2/3] COPY app.txt /app.txt',
  '[build 3/3] RUN cat /deps.txt /app.txt > /built.txt && sleep 1',
  '[stage-3 1/1] COPY --from=build /built.txt /built.txt'
];

describe('parseProgress on recorded builds', () => {
  test.each([
    // fixture, total, cached, names of the cached steps
    ['multistage-cold', 6, 0, []],
    ['multistage-cached', 6, 6, MULTI],
    ['multistage-app-changed', 6, 3, [MULTI[0], MULTI[1], MULTI[2]]],
    ['multistage-imported-fresh-builder', 6, 6, MULTI],
    ['builder-pattern-app-changed-fresh-builder', 6, 1, [MULTI[0]]],
    ['chained-app-changed-fresh-builder', 4, 2, ['[base 1/1] ADD rootfs.tar /', '[deps 1/1] RUN echo dependencies > /deps.txt && sleep 1']],
    ['run-failed', 3, 1, ['[1/3] ADD rootfs.tar /']],
    ['from-registry-image', 3, 0, []],
    ['cancelled', 2, 1, ['[1/2] ADD rootfs.tar /']],
    ['concurrent-identical-solver', 6, 0, []],
    // What the stream shows: no step at all (stepsSolvedElsewhere gives the steps).
    ['concurrent-identical-deduplicated', 0, 0, []]
  ] as const)('%s: %i steps, %i cached', (name, total, cached, cachedNames) => {
    const p = parseProgress(fixture(name));
    expect(p.totalSteps).toBe(total);
    expect(p.cachedSteps).toBe(cached);
    expect(p.steps.filter((s) => s.cached).map((s) => s.name)).toEqual(cachedNames);
    // No internal vertex and no FROM is ever counted as a step.
    for (const s of p.steps) expect(s.name).not.toMatch(/^\[internal\]|^\[auth\]|importing cache|exporting|\] FROM /);
  });

  test('a cold multi-stage build lists every step with its duration, in vertex order', () => {
    const p = parseProgress(fixture('multistage-cold'));
    expect(p.steps.map((s) => s.name)).toEqual(MULTI);
    expect(p.steps.every((s) => s.status === 'done')).toBe(true);
    expect(p.steps.find((s) => s.name.startsWith('[deps'))!.durationMs).toBe(1300);
  });

  test('a vertex printed twice counts once', () => {
    const text = fixture('multistage-app-changed');
    expect(text.match(/^#4 \[base 1\/1\] ADD rootfs.tar \/$/gm)).toHaveLength(2);
    const p = parseProgress(text);
    expect(p.steps.filter((s) => s.id === 4)).toHaveLength(1);
  });

  test('the failed RUN carries its error; the steps before it keep their state', () => {
    const p = parseProgress(fixture('run-failed'));
    expect(p.steps.map((s) => s.status)).toEqual(['cached', 'done', 'error']);
    expect(p.steps[2].error).toMatch(/exit code: 1/);
  });

  test('a cancelled build marks the running step canceled', () => {
    const p = parseProgress(fixture('cancelled'));
    expect(p.steps.map((s) => s.status)).toEqual(['cached', 'canceled']);
  });

  test('an importing-cache error (nothing exported yet) is not a step error', () => {
    const text = fixture('multistage-cold');
    expect(text).toMatch(/#10 ERROR: .*not found/);
    expect(parseProgress(text).steps.some((s) => s.status === 'error')).toBe(false);
  });
});

describe('two identical builds at the same moment on one builder', () => {
  const solver = fixture('concurrent-identical-solver');
  const deduplicated = fixture('concurrent-identical-deduplicated');

  test('the deduplicated stream: a successful build with no step, no step name and no step digest', () => {
    const p = parser(deduplicated);
    expect(p.vertices().map((v) => v.name)).toEqual([
      '[internal] load build definition from Dockerfile',
      '[internal] load .dockerignore',
      '[auth] sharing credentials for 127.0.0.1:32839',
      'importing cache manifest from 127.0.0.1:32839/acme/acme/app/cache:main',
      '[internal] load build context',
      'exporting to image',
      'exporting cache'
    ]);
    // The same image as the other job's, written by this one's export.
    const image = /writing image (sha256:[0-9a-f]{64}) done/;
    expect(image.exec(deduplicated)?.[1]).toBe(image.exec(solver)?.[1]);
    // None of the other stream's step digests (the vertices differ per client; they were merged by cache key).
    const stepDigests = [...solver.matchAll(/^#([4-9]) (sha256:[0-9a-f]{64})$/gm)].map((m) => m[2]);
    expect(stepDigests).toHaveLength(6);
    for (const d of stepDigests) expect(deduplicated).not.toContain(d);
    // Six vertex numbers (#6..#11) the client was told of and never printed: the merged steps.
    expect(p.unseenVertices()).toBe(6);
    expect(parser(solver).unseenVertices()).toBe(0);
  });

  test('stepsSolvedElsewhere: the deduplicated job has the steps from the Dockerfile, all deduplicated, none cached', () => {
    // Its stream reported no step CACHED (its cache import found nothing: a cold project), so none is counted cached.
    expect(parseProgress(deduplicated).cachedSteps).toBe(0);
    const p = stepsSolvedElsewhere(parser(deduplicated), MULTISTAGE_DOCKERFILE);
    expect(p).toEqual({ totalSteps: 6, cachedSteps: 0, deduplicatedSteps: 6, steps: expect.any(Array) });
    expect(p!.steps.map((s) => s.name)).toEqual(MULTI);
    expect(p!.steps.every((s) => !s.cached && s.status === 'deduplicated' && s.id === 0)).toBe(true);
  });

  test('both jobs report the same total, and what they built adds up to one build', () => {
    const a = parseProgress(solver);
    const b = stepsSolvedElsewhere(parser(deduplicated), MULTISTAGE_DOCKERFILE)!;
    expect(b.totalSteps).toBe(a.totalSteps);
    // What each built itself: all of them for a, none for b (they were deduplicated, not cached).
    const ran = (p: typeof a) => p.totalSteps - p.cachedSteps - p.deduplicatedSteps;
    expect(ran(a) + ran(b)).toBe(a.totalSteps);
    expect(a.deduplicatedSteps + b.deduplicatedSteps).toBe(a.totalSteps);
  });

  test('stepsSolvedElsewhere leaves every stream that shows steps, or never heard of an unprinted vertex, alone', () => {
    for (const name of fs.readdirSync(FIXTURES).map((f) => f.replace(/\.txt$/, ''))) {
      if (name === 'concurrent-identical-deduplicated') continue;
      expect([name, stepsSolvedElsewhere(parser(fixture(name)), MULTISTAGE_DOCKERFILE)]).toEqual([name, null]);
    }
    // No step and nothing unprinted: a Dockerfile of FROM alone, or a stream that is no BuildKit output.
    const fromOnly = [
      '#1 [internal] load build definition from Dockerfile',
      '#1 DONE 0.0s',
      '#2 [internal] load metadata for docker.io/library/alpine:3.20',
      '#2 DONE 0.1s',
      '#3 exporting to image',
      '#3 DONE 0.0s'
    ].join('\n');
    expect(stepsSolvedElsewhere(parser(fromOnly), 'FROM alpine:3.20\n')).toBeNull();
    expect(stepsSolvedElsewhere(parser(''), MULTISTAGE_DOCKERFILE)).toBeNull();
  });

  test('stepsSolvedElsewhere without a Dockerfile it can read, or with one of another frontend, changes nothing', () => {
    expect(stepsSolvedElsewhere(parser(deduplicated), null)).toBeNull();
    expect(stepsSolvedElsewhere(parser(deduplicated), `# syntax=example.com/other-frontend\n${MULTISTAGE_DOCKERFILE}`)).toBeNull();
    expect(stepsSolvedElsewhere(parser(deduplicated), MULTISTAGE_DOCKERFILE, { target: 'no-such-stage' })).toBeNull();
  });

  test('the target and build args of the build decide the steps', () => {
    expect(stepsSolvedElsewhere(parser(deduplicated), MULTISTAGE_DOCKERFILE, { target: 'deps' })).toMatchObject({
      totalSteps: 2,
      cachedSteps: 0,
      deduplicatedSteps: 2
    });
  });
});

describe('vertex names', () => {
  // Shapes seen in buildx/BuildKit plain output besides the 20.10 client's: a padded unnamed stage
  // ("#6 [ 1/11] FROM ...", docker/buildx#1901), platform-prefixed vertices of multi-platform builds.
  test.each([
    ['[build 3/3] RUN make', true],
    ['[2/3] COPY . /src', true],
    ['[ 2/11] RUN apt-get update', true],
    ['[linux/arm64 build 2/4] RUN go mod download', true],
    ['[linux/amd64 2/2] COPY app /app', true],
    ['[stage-1 1/2] COPY app.txt /app.txt', true],
    ['[ 1/11] FROM docker.io/rocm/pytorch:rocm5.5@sha256:c859fa81', false],
    ['[base 1/2] FROM 127.0.0.1:5000/acme/base/busybox:1', false],
    ['[internal] load build definition from Dockerfile', false],
    ['[internal] load metadata for docker.io/library/alpine:3.20', false],
    ['[auth] sharing credentials for 127.0.0.1:39297', false],
    ['importing cache manifest from 127.0.0.1:5000/acme/app/cache:main', false],
    ['exporting to image', false],
    ['exporting cache', false],
    ['resolve image config for docker.io/docker/dockerfile:1', false]
  ])('%s → %s', (name, step) => {
    expect(isStepName(name)).toBe(step);
  });
});

describe('line handling', () => {
  test('buildx-style output: no sha256 lines, timestamps on logs, CRLF, ERROR: process ...', () => {
    const text = [
      '#5 [linux/amd64 build 1/2] COPY . /src',
      '#5 CACHED',
      '',
      '#6 [linux/amd64 build 2/2] RUN make',
      '#6 0.215 ERROR looks like a status but is a log line',
      '#6 0.300 DONE 9.9s (also a log line)',
      '#6 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2\r',
      ''
    ].join('\n');
    const p = parseProgress(text);
    expect(p.totalSteps).toBe(2);
    expect(p.cachedSteps).toBe(1);
    expect(p.steps[1]).toMatchObject({ status: 'error', error: 'process "/bin/sh -c make" did not complete successfully: exit code: 2' });
    expect(p.steps[1].durationMs).toBeUndefined();
  });

  test('the incremental parser gives what the whole-text parser gives', () => {
    const text = fixture('multistage-app-changed');
    const inc = new ProgressParser();
    for (const l of text.split('\n')) inc.push(l);
    expect(inc.result()).toEqual(parseProgress(text));
  });

  test('empty or unrelated text has no steps', () => {
    expect(parseProgress('')).toEqual({ totalSteps: 0, cachedSteps: 0, deduplicatedSteps: 0, steps: [] });
    expect(parseProgress('Sending build context to Docker daemon  2.048kB\nStep 1/2 : FROM scratch').totalSteps).toBe(0);
  });
});
