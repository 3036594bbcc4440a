// The build step, CI-neutral: build on the session's builder with the org cache, record the result for the job's
// summary, and spool its usage record (written to disk before anything is sent).
import * as path from 'path';
import { readDockerfile, runBuild, type BuildResult as RunResult, type BuildIO } from './build';
import { encodeFingerprints, explainMiss, fingerprintsOf, FINGERPRINTS_LABEL, type Fingerprints } from './cache-miss';
import { baseDigests, hashSources, importedFingerprints, readFingerprints, registryAccess, type RegistryAccess } from './cache-miss-io';
import { declaredArgs, dockerfileSteps } from './dockerfile-steps';
import { cacheMissLine, type CacheMiss } from './summary';
import { MAX_RECORD_STRING } from '../contract/rules';

const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max - 1)}…` : s);
import { dockerEnv, parseKeyValueLines, runDocker, type BuildOptions } from './docker-cli';
import { imagesToLoad, loadImage, runnerEngineEnv, runnerEngineName, type LoadDeps, type LoadOutcome } from './load-image';
import { recordAndSend, type RecordSending } from './metering-send';
import type { RunnerConfig } from './runner-config';
import { nextBuildId, recordBuild, type Session } from './session';
import type { BuildSettings } from './settings';
import { entryNames, repeatedKeyWarnings, undeclaredArgWarnings } from './build-inputs';
import { shortSecretWarnings, withoutSecretInputs } from './build-secrets';
import type { BuildResult } from './summary';
import { buildCompletedEvent } from '../contract/metering-events';
import type { Log } from './setup';
import type { Identity } from './identity';
import { checkBuildPaths, type InputNaming } from './build-checks';
import { pushDone, pushErrorMessage, type PushOutcome } from './push-outcome';

/** The build's results as typed values: what `build --json` prints; `outputs` are the same as CI output strings. */
export interface BuildValues {
  digest: string;
  'image-id': string;
  'cache-ratio': number; // 0..1, 4 decimals
  'cached-steps': number;
  'deduplicated-steps': number;
  'total-steps': number;
  duration: number; // seconds, 2 decimals
  loaded: boolean;
  'push-status': PushOutcome['status'];
  'pushed-tags': string[];
  'push-error': string; // '' unless push-status is failed or refused: the job's error
}

/** The CI outputs of a build (strings, as every CI's outputs are): lists newline-separated. */
export function outputStrings(v: BuildValues): Record<string, string> {
  return Object.fromEntries(
    Object.entries(v).map(([k, x]) => [
      k,
      Array.isArray(x)
        ? x.join('\n')
        : typeof x === 'number' && k === 'cache-ratio'
          ? x.toFixed(4)
          : typeof x === 'number' && k === 'duration'
            ? x.toFixed(2)
            : String(x)
    ])
  );
}

export interface BuildStepResult {
  build: BuildResult;
  run: RunResult;
  outputs: Record<string, string>;
  values: BuildValues; // the outputs typed (numbers, booleans, lists)
  warnings: string[];
  // The build succeeded but its push failed or was refused (run.push): the job fails with this message, the build
  // stays a success in the job's record and in metering, with the push's own status.
  pushError?: string;
  // load: true after a successful build. A failed load is its own outcome: the build stays a success (in the
  // job's record and in metering), and the wrapper fails the step with loadError.
  load?: LoadOutcome;
  loadError?: string;
}

export function buildOptions(s: BuildSettings, session: Session): BuildOptions {
  return {
    context: path.resolve(s.context),
    file: s.file ? path.resolve(s.file) : undefined,
    tags: s.tags,
    buildArgs: parseKeyValueLines(s.buildArgs, 'build-args'),
    target: s.target || undefined,
    cacheScope: s.cacheScope || undefined,
    push: s.push,
    load: s.load,
    platforms: s.platforms,
    labels: parseKeyValueLines(s.labels, 'labels'),
    noCache: s.noCache,
    pull: s.pull,
    secretValues: s.secrets,
    secrets: s.secretFiles.map((f) => ({ id: f.id, src: f.path })),
    ssh: s.ssh,
    exportCache: session.cache && !session.identity.fork
  };
}

// With fallback: local there is no lease: the build runs on the runner's own Docker, without the org cache.
function localRunner(session: Session): RunnerConfig {
  return {
    name: 'local',
    dir: session.dir,
    certDir: '',
    dockerConfig: process.env.DOCKER_CONFIG || '',
    contextName: '',
    contexts: [],
    buildxBuilder: '',
    builderName: '',
    driver: 'docker',
    env: { DOCKER_BUILDKIT: '1' } as RunnerConfig['env'],
    secrets: [],
    warnings: []
  };
}

// Where the built image already is, when load has nothing left to do; null when it must be streamed over.
function loadedAlready(session: Session): string | null {
  if (!session.runner) return "the build ran on the runner's own Docker (fallback: local)";
  if (session.runner.driver === 'remote') return "buildx loaded it into the runner's Docker as part of the build";
  return null;
}

async function loadStep(session: Session, opts: BuildOptions, run: RunResult, deps: { log: Log; io?: BuildIO; load?: LoadDeps }): Promise<LoadOutcome> {
  const refs = imagesToLoad(opts.tags, run.imageId);
  const engine = runnerEngineName(session.env);
  const already = loadedAlready(session);
  if (already) {
    deps.log.info(`Build Cloud: load: ${already}`);
    return { loaded: true, refs, engine, durationMs: 0, bytes: 0, loadedLines: [] };
  }
  deps.log.info(`Build Cloud: loading ${refs.join(', ') || '(no image)'} from the builder into the runner's Docker engine at ${engine}`);
  const out = await loadImage(
    {
      docker: session.docker.path,
      refs,
      builderEnv: withoutSecretInputs(dockerEnv(process.env, { ...session.runner!.env })),
      runnerEnv: runnerEngineEnv(withoutSecretInputs(process.env), session.env),
      engine
    },
    { signal: deps.io?.signal, ...deps.load }
  );
  for (const l of out.loadedLines) deps.io?.onLine?.(l);
  return out.loaded ? checkLoadedTags(session, opts.tags, run.imageId, out) : out;
}

/**
 * Tags on a pipeline builder are shared by the pipeline's jobs (build.ts checks them after the build): another job
 * may still build the same tag between this build and its load, and the load then carries that job's image. What
 * the runner's engine holds under each tag must be this build's image; otherwise the load fails, saying so.
 */
async function checkLoadedTags(session: Session, tags: string[], imageId: string | undefined, out: LoadOutcome): Promise<LoadOutcome> {
  if (!imageId || tags.length === 0) return out;
  const env = runnerEngineEnv(withoutSecretInputs(process.env), session.env);
  const wrong: string[] = [];
  for (const t of tags) {
    const r = await runDocker(session.docker.path, ['image', 'inspect', '--format', '{{.Id}}', t], env);
    const id = r.stdout.trim();
    if (r.code === 0 && /^sha256:[0-9a-f]{64}$/.test(id) && id !== imageId) wrong.push(t);
  }
  if (wrong.length === 0) return out;
  return {
    ...out,
    loaded: false,
    error:
      `${wrong.map((t) => `'${t}'`).join(', ')} in the runner's Docker is another build's image: another job of this pipeline built the same tag on ` +
      `the shared builder between this build and its load (this build's image is ${imageId}). Give parallel jobs tags of their own, or set scope: job.`
  };
}

/**
 * The fingerprints of this build's steps (cache-miss.ts), when it uses the org cache: the label they travel in on the
 * exported image is added to `opts.labels`. Null (and no label) when the Dockerfile cannot be read as one.
 */
async function stepFingerprints(opts: BuildOptions, text: string | null, reg: RegistryAccess | null, key: Buffer | null): Promise<Fingerprints | null> {
  try {
    const steps = text === null ? null : dockerfileSteps(text, { target: opts.target, buildArgs: opts.buildArgs });
    if (!steps?.length) return null;
    const file = path
      .relative(opts.context, opts.file ?? path.join(opts.context, 'Dockerfile'))
      .split(path.sep)
      .join('/');
    const fp = fingerprintsOf(steps, await hashSources(opts.context, steps), {
      file,
      target: opts.target ?? '',
      baseDigests: await baseDigests(
        steps.map((s) => s.base),
        reg
      )
    });
    // Keyed with the project's key (cache-miss.ts): a control plane that gives none gets no label at all.
    if (opts.exportCache && key) opts.labels = { ...opts.labels, [FINGERPRINTS_LABEL]: encodeFingerprints(fp, key) };
    return fp;
  } catch {
    return null; // an explanation is a nicety: never a reason for the build to fail
  }
}

// The fingerprints of each image the build imports, read as soon as its stream announces the import: after the
// build's push the control plane promotes the upload to the imported tag itself.
function importReader(reg: RegistryAccess | null, io: BuildIO): { io: BuildIO; read: (ref: string) => Promise<Fingerprints | null> } {
  const started = new Map<string, Promise<Fingerprints | null>>();
  const read = (ref: string) => {
    if (!reg) return Promise.resolve(null);
    if (!started.has(ref))
      started.set(
        ref,
        readFingerprints(ref, reg).catch(() => null)
      );
    return started.get(ref)!;
  };
  const onLine = (l: string) => {
    const m = /^#\d+ importing cache manifest from (\S+)$/.exec(l);
    if (m) void read(m[1]);
    io.onLine?.(l);
  };
  return { io: { ...io, onLine }, read };
}

/**
 * A warning for each requested platform no builder of the lease runs natively: BuildKit builds it all the same, but
 * a step that runs a program (RUN) then needs emulation the builder may not have, and fails with "exec format error".
 * None when the lease has no builders (fallback: local) or the build names no platform.
 */
export function foreignPlatformWarnings(requested: string[], builders: string[]): string[] {
  if (!builders.length) return [];
  return requested
    .filter((p) => !builders.includes(p))
    .map(
      (p) =>
        `platform '${p}' is not one this job's builders run natively (${builders.join(', ')}): RUN steps need emulation for it and may fail with "exec format error"; ask setup for it (platforms: ${p}) to get a builder of that platform`
    );
}

/**
 * A miss because no imported ref existed, on a branch whose fallback was an assumed default branch (CircleCI names
 * none): the reason says so and how to name it, since the likely cause is a project whose default branch is not main.
 */
export function withDefaultBranchHint(
  miss: CacheMiss | undefined,
  id: Pick<Identity, 'branch' | 'defaultBranch' | 'defaultBranchAssumed'>
): CacheMiss | undefined {
  if (!miss || !id.defaultBranchAssumed || id.branch === id.defaultBranch || !miss.reason.startsWith('no cache yet')) return miss;
  return {
    ...miss,
    reason: `${miss.reason}; the default branch '${id.defaultBranch}' was assumed (CircleCI names none): set the orb's default_branch or BUILDCLOUD_DEFAULT_BRANCH`
  };
}

/** Why the build's first executed step missed the imported cache (cache-miss.ts explainMiss); undefined when moot. */
async function cacheMissOf(
  run: RunResult,
  fp: Fingerprints | null,
  read: (ref: string) => Promise<Fingerprints | null>,
  seeds: boolean,
  key: Buffer | null
): Promise<CacheMiss | undefined> {
  // The stage caches this run built and pushed just before its final build are its own, not what it imported from
  // earlier builds: they explain nothing (a first build would otherwise find its own stage image "another image").
  const own = new Set(run.stageRefs ?? []);
  const imports = (run.cacheImports ?? []).filter((i) => !own.has(i.ref));
  if (!fp || !imports.length) return undefined;
  const executed = run.steps.filter((s) => s.status === 'done' || s.status === 'error').map((s) => s.name);
  if (!executed.length) return undefined;
  const previous = key ? await importedFingerprints(imports, fp, read, key).catch(() => null) : null;
  return explainMiss(imports, fp, previous, executed, { label: run.cacheName, seeds }, key ?? undefined) ?? undefined;
}

export async function buildStep(
  session: Session,
  settings: BuildSettings,
  deps: { log: Log; io?: BuildIO; load?: LoadDeps; naming?: InputNaming }
): Promise<BuildStepResult> {
  // Before anything is recorded or run: a missing context or Dockerfile is the user's input error, not a failed build.
  await checkBuildPaths(settings, process.cwd(), deps.naming);
  const opts = buildOptions(settings, session);
  const dockerfile = await readDockerfile(opts); // null: a remote context, or none to read
  const declared = dockerfile === null ? null : declaredArgs(dockerfile);
  const names = entryNames(settings, declared);
  if (names) deps.log.info(`Build Cloud: ${names}`);
  if (declared) for (const w of undeclaredArgWarnings(settings.buildArgs, declared)) deps.log.warn(w);
  for (const w of [
    ...repeatedKeyWarnings('build-args', settings.buildArgs),
    ...repeatedKeyWarnings('labels', settings.labels),
    ...shortSecretWarnings(opts.secretValues ?? []),
    ...foreignPlatformWarnings(
      opts.platforms,
      (session.lease?.builders ?? []).map((b) => b.platform)
    )
  ])
    deps.log.warn(w);
  const buildId = nextBuildId(session);
  const lease = session.lease ?? { cache: null, builders: [] };
  const reg = session.lease?.cache && session.runner ? await registryAccess(session.runner.dockerConfig, session.lease.cache.registry?.host) : null;
  const fpKey = session.lease?.cache?.fingerprintKey ? Buffer.from(session.lease.cache.fingerprintKey, 'base64url') : null;
  const fp = session.lease?.cache && !opts.noCache ? await stepFingerprints(opts, dockerfile, reg, fpKey) : null;
  const imported = importReader(fp ? reg : null, deps.io ?? {});
  const run = await runBuild(opts, session.runner ?? localRunner(session), lease as never, session.docker, imported.io);
  const push = run.push ?? (run.status === 'success' ? pushDone(opts.push, opts.tags, run.pushed) : pushDone(false, [], []));
  const pushError = run.status === 'success' ? (pushErrorMessage(push, opts.push) ?? undefined) : undefined;
  const platform = opts.platforms.join(',') || session.lease?.builders[0]?.platform || 'local';
  const warnings = [...run.warnings];
  const cacheMiss = withDefaultBranchHint(
    run.status === 'cancelled' ? undefined : await cacheMissOf(run, fp, imported.read, Boolean(opts.exportCache), fpKey),
    session.identity
  );
  let sending: RecordSending | undefined;
  if (session.lease) {
    // Spooled before any load: the build's record is the build's outcome, whatever the load does after it. Then sent
    // while the load runs (bounded, metering-send.ts): a job cancelled before its report step loses nothing it built.
    try {
      sending = await recordAndSend(
        session,
        session.lease.id,
        buildCompletedEvent(session.org, {
          lease_id: session.lease.id,
          build_id: buildId,
          platform,
          status: run.status,
          duration_ms: Math.round(run.durationMs),
          total_steps: run.totalSteps,
          cached_steps: run.cachedSteps,
          deduplicated_steps: run.deduplicatedSteps,
          ...(cacheMiss ? { cache_miss: clip(cacheMissLine(cacheMiss), MAX_RECORD_STRING) } : {}),
          ...(run.digest ? { image_digest: run.digest } : {}),
          push_status: push.status,
          actor: session.identity.actor,
          provider: session.identity.provider,
          project: session.identity.project,
          pipeline_key: session.identity.pipelineKey,
          job_id: session.identity.jobId
        })
      );
    } catch (err) {
      warnings.push(`Build Cloud metering: could not spool the build record: ${(err as Error).message}`);
    }
  }
  // A push that did not go out fails the job already; a load would only add a second error (or, for a tag another job
  // took, carry that job's image).
  const load = settings.load && run.status === 'success' && !pushError ? await loadStep(session, opts, run, deps) : undefined;
  const build: BuildResult = {
    buildId,
    image: opts.tags[0] || (opts.target ? `target ${opts.target}` : undefined),
    platform,
    status: run.status,
    durationMs: run.durationMs,
    totalSteps: run.totalSteps,
    cachedSteps: run.cachedSteps,
    ...(run.deduplicatedSteps ? { deduplicatedSteps: run.deduplicatedSteps } : {}),
    ...(cacheMiss ? { cacheMiss } : {}),
    digest: run.digest,
    builderId: session.lease?.builders[0]?.builderId,
    ...(settings.load ? { loaded: Boolean(load?.loaded) } : {}),
    ...(push.status === 'failed' || push.status === 'refused' ? { pushStatus: push.status } : {})
  };
  recordBuild(session, build);
  if (sending) warnings.push(...(await sending.sent));
  for (const w of warnings) deps.log.warn(w);
  const values: BuildValues = {
    digest: run.digest ?? '',
    'image-id': run.imageId ?? '',
    'cache-ratio': Number(run.cacheRatio.toFixed(4)),
    'cached-steps': run.cachedSteps,
    'deduplicated-steps': run.deduplicatedSteps ?? 0,
    'total-steps': run.totalSteps,
    duration: Number((run.durationMs / 1000).toFixed(2)),
    loaded: Boolean(load?.loaded),
    'push-status': push.status,
    'pushed-tags': push.pushed,
    'push-error': pushError ?? ''
  };
  const outputs = outputStrings(values);
  const dedupNote = run.deduplicatedSteps ? `, ${run.deduplicatedSteps} deduplicated (run by another job's build at the same time)` : '';
  const pushNote = push.status === 'failed' ? ', push FAILED' : push.status === 'refused' ? ', push REFUSED' : '';
  const loadNote = !load ? '' : load.loaded ? `, loaded into the runner's Docker (${load.engine})` : ", NOT loaded into the runner's Docker";
  deps.log.info(
    `Build Cloud: build ${run.status} in ${outputs.duration} s, ${run.cachedSteps} of ${run.totalSteps} steps cached${dedupNote}${run.cacheExported ? ', org cache exported' : ''}${pushNote}${loadNote}`
  );
  if (cacheMiss) deps.log.info(`Build Cloud: why steps missed the cache: ${cacheMissLine(cacheMiss)}`);
  const loadError = load?.error
    ? `The build succeeded (and is recorded as a success), but its image was not loaded into the runner's Docker: ${load.error}`
    : undefined;
  return { build, run, outputs, values, warnings, ...(pushError ? { pushError } : {}), ...(load ? { load } : {}), ...(loadError ? { loadError } : {}) };
}
