// dockerfileSteps: the "[stage N/M] INSTR" steps BuildKit shows for a Dockerfile and target, from the text alone.
// The names of the recorded fixtures (__tests__/fixtures/progress, Dockerfiles in progress.test.ts) are the
// reference: for every fixture whose stream shows all steps, the counted steps are the recorded ones, by name.
import * as fs from 'fs';
import * as path from 'path';
import { dockerfileSteps, parseInstructions, type DockerfileStepOptions } from '../../src/core/dockerfile-steps';
import { parseProgress } from '../../src/core/build-progress';

const FIXTURES = path.join(__dirname, '../fixtures/progress');
const fixture = (name: string) => fs.readFileSync(path.join(FIXTURES, `${name}.txt`), 'utf8');

const MULTISTAGE = `FROM scratch AS base
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
const CHAINED = `FROM scratch AS base
ADD rootfs.tar /

FROM base AS deps
RUN echo dependencies > /deps.txt && sleep 1

FROM deps AS app
COPY app.txt /app.txt
RUN cat /deps.txt /app.txt > /built.txt && sleep 1
CMD ["cat", "/built.txt"]
`;
const FROM_REGISTRY = `FROM 127.0.0.1:40403/acme/base/busybox:1 AS base
RUN echo one > /one.txt

FROM base
COPY app.txt /app.txt
RUN cat /one.txt /app.txt
`;
const RUN_FAILED = 'FROM scratch\nADD rootfs.tar /\nRUN echo preparing > /p.txt\nRUN echo about to fail && ls /nope && exit 3\n';
const CANCELLED = 'FROM scratch\nADD rootfs.tar /\nRUN echo start && sleep 30 && echo end\n';

const names = (text: string, opts?: DockerfileStepOptions) => dockerfileSteps(text, opts)?.map((s) => s.name) ?? null;

describe('the recorded builds: the same steps, by name, as their progress shows', () => {
  test.each([
    ['multistage-cold', MULTISTAGE],
    ['builder-pattern-app-changed-fresh-builder', MULTISTAGE],
    ['concurrent-identical-solver', MULTISTAGE],
    ['chained-app-changed-fresh-builder', CHAINED],
    ['from-registry-image', FROM_REGISTRY],
    ['run-failed', RUN_FAILED],
    ['cancelled', CANCELLED]
  ])('%s', (name, dockerfile) => {
    expect(names(dockerfile)).toEqual(parseProgress(fixture(name)).steps.map((s) => s.name));
  });
});

describe('which steps a target builds', () => {
  // FROM x AS y chains: a <- b <- c, d apart, e copying from c and d.
  const CHAIN = `FROM scratch AS a
ADD rootfs.tar /
FROM a AS b
RUN echo b
FROM b AS c
RUN echo c1
RUN echo c2
FROM scratch AS d
COPY d.txt /d.txt
FROM a AS e
COPY --from=c /x /x
COPY --from=d /d.txt /d.txt
`;
  const FLAVOURS = 'ARG FLAVOUR=slim\nFROM scratch AS slim\nADD s /s\nFROM scratch AS full\nADD f1 /f1\nADD f2 /f2\nFROM ${FLAVOUR}\nRUN echo done\n';
  // Cases marked (real) were checked against the steps Docker Engine 20.10 (BuildKit 0.8) showed building them.
  test.each([
    // what, dockerfile, options, steps
    [
      'one stage from scratch',
      'FROM scratch\nADD rootfs.tar /\nRUN echo one\nCOPY app.txt /app.txt\n',
      {},
      ['[1/3] ADD rootfs.tar /', '[2/3] RUN echo one', '[3/3] COPY app.txt /app.txt']
    ],
    ['FROM an image is 1 of M in the names, never a step', 'FROM alpine:3.20\nRUN apk add curl\n', {}, ['[2/2] RUN apk add curl']],
    ['FROM alone: no step', 'FROM alpine:3.20\nCMD ["sh"]\n', {}, []],
    [
      'a chain and a side stage, last stage',
      CHAIN,
      {},
      [
        '[a 1/1] ADD rootfs.tar /',
        '[b 1/1] RUN echo b',
        '[c 1/2] RUN echo c1',
        '[c 2/2] RUN echo c2',
        '[d 1/1] COPY d.txt /d.txt',
        '[e 1/2] COPY --from=c /x /x',
        '[e 2/2] COPY --from=d /d.txt /d.txt'
      ]
    ],
    ['target c: its FROM chain only', CHAIN, { target: 'c' }, ['[a 1/1] ADD rootfs.tar /', '[b 1/1] RUN echo b', '[c 1/2] RUN echo c1', '[c 2/2] RUN echo c2']],
    ['target b (real)', CHAIN, { target: 'b' }, ['[a 1/1] ADD rootfs.tar /', '[b 1/1] RUN echo b']],
    ['target d: a stage of its own', CHAIN, { target: 'd' }, ['[d 1/1] COPY d.txt /d.txt']],
    ['target given in another case', CHAIN, { target: 'A' }, ['[a 1/1] ADD rootfs.tar /']],
    [
      'a stage the target does not reach is not built',
      `${MULTISTAGE}FROM build AS test\nRUN make test\n`,
      { target: 'build' },
      [
        '[base 1/1] ADD rootfs.tar /',
        '[deps 1/1] RUN echo dependencies > /deps.txt && sleep 1',
        '[build 1/3] COPY --from=deps /deps.txt /deps.txt',
        '[build 2/3] COPY app.txt /app.txt',
        '[build 3/3] RUN cat /deps.txt /app.txt > /built.txt && sleep 1'
      ]
    ],
    [
      'lower-case keywords, upper-case AS names and target (real)',
      'from scratch as Base\nadd rootfs.tar /\nfrom base as Final\nrun echo hi\nfrom base as other\nrun echo other\n',
      { target: 'FINAL' },
      ['[base 1/1] ADD rootfs.tar /', '[final 1/1] RUN echo hi']
    ],
    [
      'COPY --from a stage index, RUN --mount from a stage name (real)',
      'FROM scratch\nADD rootfs.tar /\nFROM scratch AS two\nADD app.txt /b\nFROM scratch AS unused\nADD app.txt /u\nFROM scratch\nCOPY --from=0 / /\nRUN --mount=type=bind,from=two,target=/m cat /m/b\n',
      {},
      [
        '[stage-0 1/1] ADD rootfs.tar /',
        '[two 1/1] ADD app.txt /b',
        '[stage-3 1/2] COPY --from=0 / /',
        '[stage-3 2/2] RUN --mount=type=bind,from=two,target=/m cat /m/b'
      ]
    ],
    [
      'a mount from=0 is an image called 0, not stage 0',
      'FROM scratch AS a\nADD a /a\nFROM scratch\nRUN --mount=from=0,target=/m true\n',
      {},
      ['[stage-1 1/1] RUN --mount=from=0,target=/m true']
    ],
    [
      'COPY --from an image: a state of its own, so the one stage is named',
      'FROM scratch\nCOPY --from=busybox:1 /bin/busybox /busybox\n',
      {},
      ['[stage-0 1/1] COPY --from=busybox:1 /bin/busybox /busybox']
    ],
    ['an ARG before FROM picks the stage', FLAVOURS, {}, ['[slim 1/1] ADD s /s', '[stage-2 1/1] RUN echo done']],
    [
      'a build-arg overrides its default (real)',
      FLAVOURS,
      { buildArgs: { FLAVOUR: 'full' } },
      ['[full 1/2] ADD f1 /f1', '[full 2/2] ADD f2 /f2', '[stage-2 1/1] RUN echo done']
    ],
    [
      'WORKDIR is a step (a mkdir); ENV, ARG, USER, LABEL, EXPOSE, CMD are not (real)',
      'FROM alpine\nARG V=1\nENV A=b\nWORKDIR /src\nUSER nobody\nLABEL x=y\nEXPOSE 80\nCOPY . .\nHEALTHCHECK CMD true\nENTRYPOINT ["a"]\n',
      {},
      ['[2/3] WORKDIR /src', '[3/3] COPY . .']
    ],
    [
      'the same operation on the same input in two stages is one vertex, named by the last (real)',
      'FROM scratch AS base\nADD rootfs.tar /\nFROM base AS x\nRUN make\nFROM base AS y\nRUN make\nFROM scratch\nCOPY --from=x /o /x\nCOPY --from=y /o /y\n',
      {},
      ['[base 1/1] ADD rootfs.tar /', '[y 1/1] RUN make', '[stage-3 1/2] COPY --from=x /o /x', '[stage-3 2/2] COPY --from=y /o /y']
    ],
    [
      '...but not after an ENV that differs (real)',
      'FROM scratch AS base\nADD rootfs.tar /\nFROM base AS x\nRUN make\nFROM base AS y\nENV CC=clang\nRUN make\nFROM scratch\nCOPY --from=x /o /x\nCOPY --from=y /o /y\n',
      {},
      ['[base 1/1] ADD rootfs.tar /', '[x 1/1] RUN make', '[y 1/1] RUN make', '[stage-3 1/2] COPY --from=x /o /x', '[stage-3 2/2] COPY --from=y /o /y']
    ],
    [
      'two platforms: every step once per platform',
      'FROM scratch\nADD rootfs.tar /\nRUN echo one\n',
      { platforms: ['linux/amd64', 'linux/arm64'] },
      ['[linux/amd64 1/2] ADD rootfs.tar /', '[linux/amd64 2/2] RUN echo one', '[linux/arm64 1/2] ADD rootfs.tar /', '[linux/arm64 2/2] RUN echo one']
    ],
    ['one platform: no prefix', 'FROM scratch\nADD rootfs.tar /\n', { platforms: ['linux/amd64'] }, ['[1/1] ADD rootfs.tar /']]
  ] as [string, string, DockerfileStepOptions, string[]][])('%s', (_what, text, opts, expected) => {
    expect(names(text, opts)).toEqual(expected);
  });
});

describe('reading the text', () => {
  test.each([
    [
      'continuation lines, with a comment and a blank line inside, are one instruction (real)',
      'FROM scratch\nRUN echo a \\\n  # a comment\n\n  && echo b\nADD x /x\n',
      ['[1/2] RUN echo a   && echo b', '[2/2] ADD x /x']
    ],
    [
      'the escape directive',
      '# escape=`\nFROM scratch\nRUN echo a `\n  && echo b\nCOPY c:\\src c:\\dst\n',
      ['[1/2] RUN echo a   && echo b', '[2/2] COPY c:\\src c:\\dst']
    ],
    [
      'a heredoc body is not instructions',
      '# syntax=docker/dockerfile:1\nFROM scratch\nRUN <<EOF\nRUN not a step\nCOPY neither\nEOF\nCOPY <<-"END" /f\n\tADD no\n\tEND\nADD y /y\n',
      ['[1/3] RUN <<EOF', '[2/3] COPY <<-"END" /f', '[3/3] ADD y /y']
    ],
    [
      '`<<` without a closing line is no heredoc',
      'FROM scratch\nRUN echo $((1<<EIGHT))\nRUN echo after\n',
      ['[1/2] RUN echo $((1<<EIGHT))', '[2/2] RUN echo after']
    ],
    [
      'CRLF, a byte order mark, indented instructions, comments',
      '\uFEFF# comment\r\nFROM scratch\r\n  RUN echo one\r\n# RUN echo commented out\r\n',
      ['[1/1] RUN echo one']
    ]
  ])('%s', (_what, text, expected) => {
    expect(names(text)).toEqual(expected);
  });

  test('parseInstructions keeps ONBUILD apart: its RUN is no step of this stage', () => {
    expect(parseInstructions('FROM scratch\nONBUILD RUN echo later\n').instructions.map((i) => i.keyword)).toEqual(['FROM', 'ONBUILD']);
    expect(names('FROM scratch\nONBUILD RUN echo later\n')).toEqual([]);
  });
});

describe('when the steps cannot be known', () => {
  test.each([
    ['another frontend', '# syntax=tonistiigi/pack\nFROM scratch\nRUN x\n', {}],
    ['no FROM', 'RUN echo\n', {}],
    ['an unknown target', MULTISTAGE, { target: 'nope' }]
  ] as [string, string, DockerfileStepOptions][])('%s → null', (_what, text, opts) => {
    expect(dockerfileSteps(text, opts)).toBeNull();
  });

  test.each([
    'docker/dockerfile:1',
    'docker/dockerfile:1.4-labs',
    'docker.io/docker/dockerfile:1',
    'docker/dockerfile-upstream:master',
    `docker/dockerfile:1@sha256:${'a'.repeat(64)}`
  ])("Docker's own frontend %s is counted", (syntax) => {
    expect(names(`# syntax=${syntax}\nFROM scratch\nRUN x\n`)).toEqual(['[1/1] RUN x']);
  });
});
