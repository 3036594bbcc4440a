// Why a step missed the cache (cache-miss.ts, cache-miss-io.ts): the fingerprints of a build's steps, the label they
import { withDefaultBranchHint } from '../../src/core/build-step';
// travel in, and the comparison that names the first executed step and what changed in it, for each kind of change.
import * as fs from 'fs';
import { inflateRawSync } from 'zlib';
import * as os from 'os';
import * as path from 'path';
import {
  decodeFingerprints,
  encodeFingerprints,
  explainMiss,
  fingerprintsOf,
  FINGERPRINTS_LABEL,
  MAX_LABEL_BYTES,
  keyFingerprints,
  keyedDigest,
  shortDigest,
  type CacheImport
} from '../../src/core/cache-miss';
import { cacheImports, copySources, hashSources, importedFingerprints, readFingerprints, registryAccess } from '../../src/core/cache-miss-io';
import { dockerfileSteps, type DockerfileStepOptions } from '../../src/core/dockerfile-steps';
import { ProgressParser } from '../../src/core/build-progress';
import { cacheMissLine } from '../../src/core/summary';
import type { HttpReply, HttpRequester } from '../../src/core/http-request';

const DOCKERFILE = `ARG BASE=reg.example:5000/acme/base:1
FROM \${BASE} AS deps
ARG TOKEN_NAME
COPY deps.txt /opt/deps.txt
RUN install-deps /opt/deps.txt

FROM deps AS build
COPY src/ /opt/src/
RUN make
`;

let ctx: string;
beforeEach(() => {
  ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-miss-'));
  fs.mkdirSync(path.join(ctx, 'src'));
  fs.writeFileSync(path.join(ctx, 'deps.txt'), 'left-pad 1\n');
  fs.writeFileSync(path.join(ctx, 'src/app.txt'), 'version: 1\n');
  fs.writeFileSync(path.join(ctx, 'src/routes.txt'), 'GET /\n');
});
afterEach(() => fs.rmSync(ctx, { recursive: true, force: true }));

async function fingerprints(text = DOCKERFILE, opts: DockerfileStepOptions = {}, baseDigests: Record<string, string> = {}) {
  const steps = dockerfileSteps(text, opts)!;
  return fingerprintsOf(steps, await hashSources(ctx, steps), { file: 'Dockerfile', target: opts.target ?? '', baseDigests });
}

// A project's fingerprint key (CacheRefs.fingerprint_key), as the control plane would give it.
const KEY = Buffer.alloc(32, 7);
const FOUND: CacheImport[] = [{ ref: 'reg.example:5000/acme/app/cache:main', found: true }];
const STEP = {
  depsCopy: '[deps 2/3] COPY deps.txt /opt/deps.txt',
  depsRun: '[deps 3/3] RUN install-deps /opt/deps.txt',
  srcCopy: '[build 1/2] COPY src/ /opt/src/',
  make: '[build 2/2] RUN make'
};

describe('explainMiss names the first executed step and what changed in it', () => {
  test('a COPY source changed: the step and the file', async () => {
    const before = await fingerprints();
    fs.writeFileSync(path.join(ctx, 'src/app.txt'), 'version: 2\n');
    const miss = explainMiss(FOUND, await fingerprints(), before, [STEP.make, STEP.srcCopy]);
    expect(miss).toEqual({ step: STEP.srcCopy, reason: 'content of src/app.txt changed', laterSteps: 1 });
    expect(cacheMissLine(miss!)).toBe('[build 1/2] COPY src/ /opt/src/: content of src/app.txt changed (+1 later step rebuilt)');
  });

  test('files added to and removed from a copied directory', async () => {
    const before = await fingerprints();
    fs.writeFileSync(path.join(ctx, 'src/new.txt'), 'x');
    fs.rmSync(path.join(ctx, 'src/routes.txt'));
    expect(explainMiss(FOUND, await fingerprints(), before, [STEP.srcCopy, STEP.make])!.reason).toBe('src/new.txt added; src/routes.txt removed');
  });

  test('a build argument changed: named, its value never shown', async () => {
    const before = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'old-secret-value' } });
    const now = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'new-secret-value' } });
    const miss = explainMiss(FOUND, now, before, [STEP.depsRun, STEP.srcCopy, STEP.make])!;
    expect(miss).toEqual({ step: STEP.depsRun, reason: 'build argument TOKEN_NAME changed', laterSteps: 2 });
    // Neither value is anywhere in what is shown or stored.
    const stored = JSON.stringify([now, before, encodeFingerprints(now, KEY)]) + cacheMissLine(miss);
    expect(stored).not.toMatch(/secret-value/);
  });

  test('an argument a COPY does not name does not reach it (only RUN gets every ARG in scope)', async () => {
    const before = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'a' } });
    const now = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'b' } });
    expect(before.steps.find((s) => s.n === STEP.depsCopy)!.a).toEqual({});
    expect(now.steps.find((s) => s.n === STEP.depsRun)!.a.TOKEN_NAME).not.toBe(before.steps.find((s) => s.n === STEP.depsRun)!.a.TOKEN_NAME);
  });

  test('the base image digest changed', async () => {
    const base = 'reg.example:5000/acme/base:1';
    const before = await fingerprints(DOCKERFILE, {}, { [base]: 'sha256:' + 'a'.repeat(64) });
    const now = await fingerprints(DOCKERFILE, {}, { [base]: 'sha256:' + 'b'.repeat(64) });
    const miss = explainMiss(FOUND, now, before, [STEP.depsCopy, STEP.depsRun, STEP.srcCopy, STEP.make])!;
    expect(miss.step).toBe(STEP.depsCopy);
    expect(miss.reason).toBe(`base image changed (${base}@sha256:${'a'.repeat(64)} → ${base}@sha256:${'b'.repeat(64)})`);
    expect(miss.laterSteps).toBe(3);
  });

  test('another base image (a build argument of the FROM line)', async () => {
    const before = await fingerprints();
    const now = await fingerprints(DOCKERFILE, { buildArgs: { BASE: 'reg.example:5000/acme/base:2' } });
    expect(explainMiss(FOUND, now, before, [STEP.depsCopy])!.reason).toMatch(
      /^base image changed \(reg.example:5000\/acme\/base:1 → reg.example:5000\/acme\/base:2\)$/
    );
  });

  test('the instruction text changed', async () => {
    const before = await fingerprints();
    const edited = DOCKERFILE.replace('RUN make', 'RUN make all');
    const miss = explainMiss(FOUND, await fingerprints(edited), before, ['[build 2/2] RUN make all'])!;
    expect(miss).toEqual({
      step: '[build 2/2] RUN make all',
      reason: 'new step, or its instruction text changed (no such step in the cached build)',
      laterSteps: 0
    });
  });

  test('the same instruction renumbered by an inserted step is still compared', async () => {
    const before = await fingerprints();
    fs.writeFileSync(path.join(ctx, 'src/app.txt'), 'version: 3\n');
    const inserted = DOCKERFILE.replace('COPY src/', 'WORKDIR /opt\nCOPY src/');
    const miss = explainMiss(FOUND, await fingerprints(inserted), before, ['[build 2/3] COPY src/ /opt/src/'])!;
    expect(miss.reason).toBe('content of src/app.txt changed');
  });

  test('a cold cache: not found in the import, said plainly as no cache yet that this build seeds', async () => {
    const fp = await fingerprints();
    const imports = cacheImports(
      parse(['#4 importing cache manifest from reg.example:5000/acme/app/cache:main', '#4 ERROR: reg.example:5000/acme/app/cache:main: not found'])
    );
    expect(imports).toEqual([{ ref: 'reg.example:5000/acme/app/cache:main', found: false, error: 'reg.example:5000/acme/app/cache:main: not found' }]);
    expect(explainMiss(imports, fp, null, [STEP.depsCopy, STEP.depsRun])).toEqual({
      step: STEP.depsCopy,
      reason: 'no cache yet; this build will seed it (not found: reg.example:5000/acme/app/cache:main)',
      laterSteps: 1
    });
    // With the build's own cache named (build.ts cacheName), and for a build that does not export (a fork).
    expect(explainMiss(imports, fp, null, [STEP.depsCopy], { label: "cache scope 'Dockerfile', branch 'main'", seeds: true })?.reason).toBe(
      "no cache yet for cache scope 'Dockerfile', branch 'main'; this build will seed it (not found: reg.example:5000/acme/app/cache:main)"
    );
    expect(explainMiss(imports, fp, null, [STEP.depsCopy], { label: "cache scope 'Dockerfile', branch 'pr-1'", seeds: false })?.reason).toBe(
      "no cache yet for cache scope 'Dockerfile', branch 'pr-1'; this build does not write the org cache, so it will not seed it (not found: reg.example:5000/acme/app/cache:main)"
    );
  });

  test('an import that failed otherwise than not found is no cold cache: named as it is', async () => {
    const fp = await fingerprints();
    const imports = [{ ref: 'r:main', found: false, error: 'r:main: unexpected status code 403 Forbidden' }];
    expect(explainMiss(imports, fp, null, [STEP.depsCopy])?.reason).toBe('the org cache could not be read: r:main (unexpected status code 403 Forbidden)');
  });

  test('the cache ref held another image: no fingerprints, or those of another Dockerfile or target', async () => {
    const fp = await fingerprints();
    expect(explainMiss(FOUND, fp, null, [STEP.depsCopy])!.reason).toBe(
      'the cache ref reg.example:5000/acme/app/cache:main held another image (no Build Cloud step fingerprints)'
    );
    const other = { ...fp, file: 'worker/Dockerfile', target: 'worker' };
    expect(explainMiss(FOUND, fp, other, [STEP.depsCopy])!.reason).toBe(
      'the cache ref reg.example:5000/acme/app/cache:main held another image (worker/Dockerfile, target worker)'
    );
  });

  test('nothing to explain: no import, or no executed step', async () => {
    const fp = await fingerprints();
    expect(explainMiss([], fp, fp, [STEP.make])).toBeNull();
    expect(explainMiss(FOUND, fp, fp, [])).toBeNull();
  });

  test('a step whose own inputs are unchanged names the earlier step that changed (it came from elsewhere)', async () => {
    const before = await fingerprints();
    fs.writeFileSync(path.join(ctx, 'src/app.txt'), 'version: 2\n');
    // COPY src/ came from this builder's cache of another job's build: only RUN make ran here.
    expect(explainMiss(FOUND, await fingerprints(), before, [STEP.make])).toEqual({
      step: STEP.make,
      reason: `an earlier step changed: ${STEP.srcCopy}: content of src/app.txt changed`,
      laterSteps: 0
    });
  });

  test('inputs unchanged: said so, not guessed', async () => {
    const fp = await fingerprints();
    expect(explainMiss(FOUND, fp, fp, [STEP.make])!.reason).toBe('its inputs are unchanged: the imported cache did not hold this step');
  });
});

function parse(lines: string[]) {
  const p = new ProgressParser();
  for (const l of lines) p.push(l);
  return p.vertices();
}

describe('sources and the label', () => {
  test('copySources: flags, JSON form and destination; nothing for --from, heredocs and URLs', () => {
    const step = (rest: string, keyword = 'COPY') => ({ stage: 's', name: 'n', keyword, rest, args: { DIR: 'lib' }, base: '' });
    expect(copySources(step('--chown=1:1 a.txt $DIR/ /dst/'))).toEqual(['a.txt', 'lib/']);
    expect(copySources(step('["a b.txt", "c", "/dst"]'))).toEqual(['a b.txt', 'c']);
    expect(copySources(step('--from=deps /x /y'))).toEqual([]);
    expect(copySources(step('<<EOF /x'))).toEqual([]);
    expect(copySources(step('https://example.com/f.tgz /x', 'ADD'))).toEqual([]);
    expect(copySources(step('make', 'RUN'))).toEqual([]);
  });

  test('hashSources: wildcards in the last element; a file per entry', async () => {
    fs.writeFileSync(path.join(ctx, 'a.json'), '{}');
    fs.writeFileSync(path.join(ctx, 'b.json'), '[]');
    const steps = dockerfileSteps('FROM scratch\nCOPY *.json /cfg/\n')!;
    const d = await hashSources(ctx, steps);
    expect(Object.keys(d.files[steps[0].name])).toEqual(['a.json', 'b.json']);
    expect(d.sources[steps[0].name]['*.json']).toMatch(/^[0-9a-f]{16}$/);
  });

  test('the label round-trips (keyed); too many files drop the per-file digests, never the step', async () => {
    const fp = await fingerprints();
    expect(decodeFingerprints(encodeFingerprints(fp, KEY))).toEqual(keyFingerprints(fp, KEY));
    const big = {
      ...fp,
      steps: fp.steps.map((s) => ({ ...s, f: Object.fromEntries(Array.from({ length: 3000 }, (_, i) => [`src/f${i}-${'x'.repeat(20)}`, 'a'.repeat(16)])) }))
    };
    const label = encodeFingerprints(big, KEY);
    expect(label.length).toBeLessThanOrEqual(MAX_LABEL_BYTES);
    expect(decodeFingerprints(label)!.steps.map((s) => [s.n, s.f])).toEqual(fp.steps.map((s) => [keyedDigest(KEY, s.n), undefined]));
    expect(decodeFingerprints('not a label')).toBeNull();
    expect(decodeFingerprints(undefined)).toBeNull();
  });
});

describe('reading the imported image', () => {
  const reg = { host: '127.0.0.1:5000', username: 'lease-1', password: 'pw' };
  const configDigest = 'sha256:' + 'c'.repeat(64);
  const fake = (label: string | undefined, seen: string[]): HttpRequester =>
    (async (url, init) => {
      seen.push(`${init.method} ${url} ${init.headers?.authorization}`);
      const reply = (status: number, body: unknown): HttpReply => ({ status, headers: {}, text: JSON.stringify(body) });
      if (url.endsWith('/manifests/main')) return reply(200, { schemaVersion: 2, config: { digest: configDigest } });
      if (url.endsWith(`/blobs/${configDigest}`)) return reply(200, { config: { Labels: label ? { [FINGERPRINTS_LABEL]: label } : {} } });
      return reply(404, {});
    }) as HttpRequester;

  test('the label of the config of the manifest, with the lease credentials, over http on loopback', async () => {
    const fp = await fingerprints();
    const seen: string[] = [];
    expect(await readFingerprints('127.0.0.1:5000/acme/app/cache:main', reg, fake(encodeFingerprints(fp, KEY), seen))).toEqual(keyFingerprints(fp, KEY));
    const basic = `Basic ${Buffer.from('lease-1:pw').toString('base64')}`;
    expect(seen).toEqual([
      `GET http://127.0.0.1:5000/v2/acme/app/cache/manifests/main ${basic}`,
      `GET http://127.0.0.1:5000/v2/acme/app/cache/blobs/${configDigest} ${basic}`
    ]);
    // Another registry's ref is never sent the lease's credentials.
    expect(await readFingerprints('other.example/acme/app:main', reg, fake(encodeFingerprints(fp, KEY), seen))).toBeNull();
    expect(seen).toHaveLength(2);
  });

  test('no label, or a missing image: null; the matching import wins over the first', async () => {
    const fp = await fingerprints();
    expect(await readFingerprints('127.0.0.1:5000/acme/app/cache:main', reg, fake(undefined, []))).toBeNull();
    expect(await readFingerprints('127.0.0.1:5000/acme/app/cache:gone', reg, fake('x', []))).toBeNull();
    const imports = [{ ref: '127.0.0.1:5000/acme/app/cache:main', found: true }];
    const read = (ref: string) => readFingerprints(ref, reg, fake(encodeFingerprints(fp, KEY), []));
    expect(await importedFingerprints(imports, fp, read, KEY)).toEqual(keyFingerprints(fp, KEY));
    // A stage cache image (its label names its stage as target) loses to the build's own when both are found.
    const stage = keyFingerprints({ ...fp, target: 'deps' }, KEY);
    const both = [
      { ref: 'r/stage:main', found: true },
      { ref: 'r/final:main', found: true },
      { ref: 'r/gone:main', found: false }
    ];
    const keyed = keyFingerprints(fp, KEY);
    const byRef = async (ref: string) => (ref === 'r/stage:main' ? stage : ref === 'r/final:main' ? keyed : null);
    expect(await importedFingerprints(both, fp, byRef, KEY)).toEqual(keyed);
  });

  test("registryAccess reads the lease's login from the runner's docker config", async () => {
    const auth = Buffer.from('lease-1:pw').toString('base64');
    fs.writeFileSync(path.join(ctx, 'config.json'), JSON.stringify({ auths: { '127.0.0.1:5000': { auth } } }));
    expect(await registryAccess(ctx, '127.0.0.1:5000')).toEqual(reg);
    expect(await registryAccess(ctx, 'elsewhere:5000')).toBeNull();
    expect(await registryAccess('', '127.0.0.1:5000')).toBeNull();
  });
});

describe('keyed labels: what an image that leaves the org cache says of its build', () => {
  test('nothing readable: no step, file, argument name or value, instruction or base in the label', async () => {
    const fp = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: '1234' } });
    const json = inflated(encodeFingerprints(fp, KEY));
    for (const plain of ['TOKEN_NAME', '1234', 'src/', 'app.txt', 'RUN', 'COPY', 'Dockerfile', 'build']) expect(json).not.toContain(plain);
    // The unkeyed digest of an argument (what a v1 label held) is not there either.
    expect(json).not.toContain(shortDigest('TOKEN_NAME=1234'));
    expect(JSON.parse(json).v).toBe(2);
  });

  test('with the key, a later build names what changed in its own words; another key sees another image', async () => {
    const before = keyFingerprints(await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'a' } }), KEY);
    const now = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'b' } });
    expect(explainMiss(FOUND, now, before, [STEP.depsRun, STEP.srcCopy, STEP.make], {}, KEY)).toEqual({
      step: STEP.depsRun,
      reason: 'build argument TOKEN_NAME changed',
      laterSteps: 2
    });
    fs.writeFileSync(path.join(ctx, 'src', 'app.txt'), 'v2 of the app\n');
    const edited = await fingerprints(DOCKERFILE, { buildArgs: { TOKEN_NAME: 'a' } });
    expect(explainMiss(FOUND, edited, before, [STEP.srcCopy, STEP.make], {}, KEY)!.reason).toBe('content of src/app.txt changed');
    const otherKey = Buffer.alloc(32, 9);
    expect(explainMiss(FOUND, edited, before, [STEP.srcCopy, STEP.make], {}, otherKey)!.reason).toMatch(/held another image \(another Dockerfile or target\)$/);
  });

  test("a removed file is counted, not named (only the cached build knew its name); a base change names today's base", async () => {
    const before = await fingerprints();
    fs.rmSync(path.join(ctx, 'src', 'routes.txt'));
    const now = await fingerprints();
    expect(explainMiss(FOUND, now, keyFingerprints(before, KEY), [STEP.srcCopy, STEP.make], {}, KEY)!.reason).toBe('1 file of the cached build removed');
    fs.writeFileSync(path.join(ctx, 'src', 'routes.txt'), 'routes\n');
  });
});

describe('steps whose names BuildKit shows with build arguments expanded', () => {
  const TEXT = 'FROM scratch\nARG V\nRUN echo "$V" > /v && sleep 1\nRUN echo done > /d\n';
  test('the first rebuilt step is the one that uses the argument, named as the Dockerfile writes it (no value)', async () => {
    const before = keyFingerprints(await fingerprints(TEXT, { buildArgs: { V: '1' } }), KEY);
    const now = await fingerprints(TEXT, { buildArgs: { V: '2' } });
    const executed = ['[1/2] RUN echo "2" > /v && sleep 1', '[2/2] RUN echo done > /d'];
    const miss = explainMiss(FOUND, now, before, executed, {}, KEY)!;
    expect(miss).toEqual({ step: '[1/2] RUN echo "$V" > /v && sleep 1', reason: 'build argument V changed', laterSteps: 1 });
    expect(cacheMissLine(miss)).not.toContain('"2"');
  });
  test('a step that matches no Dockerfile step is shown without its text', async () => {
    const now = await fingerprints(TEXT, { buildArgs: { V: '2' } });
    const miss = explainMiss(FOUND, now, null, ['[9/9] RUN curl -H "token: s3cr3t" x'], {}, KEY)!;
    expect(miss.step).toBe('[9/9] RUN …');
  });
});

function inflated(label: string): string {
  return inflateRawSync(Buffer.from(label, 'base64url')).toString('utf8');
}

test('a long step name is cut in the line, never the reason', () => {
  const step = `[1/2] RUN ${'x'.repeat(300)}`;
  const line = cacheMissLine({ step, reason: 'build argument VERSION changed', laterSteps: 1 });
  expect(line).toMatch(/^\[1\/2\] RUN x{69}…: build argument VERSION changed \(\+1 later step rebuilt\)$/);
});

describe('the default-branch hint (CircleCI names no default branch)', () => {
  const missing = { step: '[1/2] RUN make', reason: 'no cache yet; this build will seed it (not found: r:feature-x and 1 more)', laterSteps: 1 };
  test("a miss for want of any ref, on a branch whose fallback was an assumed 'main', says so and how to fix it", () => {
    const m = withDefaultBranchHint(missing, { branch: 'feature-x', defaultBranch: 'main', defaultBranchAssumed: true });
    expect(m?.reason).toBe(
      "no cache yet; this build will seed it (not found: r:feature-x and 1 more); the default branch 'main' was assumed (CircleCI names none): set the orb's default_branch or BUILDCLOUD_DEFAULT_BRANCH"
    );
  });
  test.each([
    ['the default branch was named', { branch: 'feature-x', defaultBranch: 'master' }],
    ['on the default branch itself', { branch: 'main', defaultBranch: 'main', defaultBranchAssumed: true }]
  ])('no hint when %s', (_what, id) => {
    expect(withDefaultBranchHint(missing, id)).toBe(missing);
  });
  test('no hint for another kind of miss', () => {
    const other = { ...missing, reason: 'content of app.txt changed' };
    expect(withDefaultBranchHint(other, { branch: 'f', defaultBranch: 'main', defaultBranchAssumed: true })).toBe(other);
  });
});
