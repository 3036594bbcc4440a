// Runs a build on the leased builder: docker build or buildx with the lease's cache refs, then the pushes, cancelled
// cleanly when the CI cancels the job. Its progress is counted into steps and cached steps by build-progress.ts.
import { spawn } from 'child_process';
import { promises as fsp } from 'fs';
import * as path from 'path';
import type { LeaseMsg } from '../contract/grpc';
import { ProgressParser, stepsSolvedElsewhere, type BuildStep, type Progress } from './build-progress';
import { buildArgs, dockerEnv, pushesAfterBuild, type BuildClient, type BuildOptions, type CacheRefs, type ResolvedDocker } from './docker-cli';
import type { RunnerConfig } from './runner-config';
import type { CacheImport } from './cache-miss';
import { cacheImports, registryAccess } from './cache-miss-io';
import { buildCacheRefs, buildCacheScope, ciWorkspace, mergeStageProgress, stageCaches, uploadNonce, type StageCache } from './build-cache';
import { cacheStages } from './dockerfile-steps';
import { removeSecretFiles, secretFilePaths, withoutSecretInputs, writeSecretFiles } from './build-secrets';
import { goTimeMs, parseBuildCache, stepsRunConcurrently, type CacheRecord } from './build-dedup';
import { isRemoteContext } from './build-checks';
import { classifyFailure, type BuildFailure } from './build-failure';
import type { HttpRequester } from './http-request';
import { cacheExportTimedOut, cacheExportTimeoutMs, cacheProbeTimeoutMs, cacheUnavailableWarning, orgCacheUnavailable } from './build-cache-probe';
import { cacheLabel, coldCacheLine, coldCacheWatcher, pushDone, pushFailedInBuild, pushFailureReason, pushRefused, type PushOutcome } from './push-outcome';

export interface BuildResult {
  status: 'success' | 'failure' | 'cancelled';
  exitCode: number | null;
  durationMs: number; // build and pushes
  totalSteps: number;
  cachedSteps: number; // reported CACHED by BuildKit in this build's stream
  // Run for this build by another job's build on the shared builder while this one waited: the whole build merged
  // into an identical one (stepsSolvedElsewhere), or steps reported CACHED that were not in the builder's cache when
  // the build began (stepsRunConcurrently).
  deduplicatedSteps: number;
  cacheRatio: number; // cachedSteps / totalSteps, 0 when there are no steps
  // 'dockerfile': the stream showed no step because another job's identical build solved them; they are counted
  // from the Dockerfile, all deduplicated, none cached (stepsSolvedElsewhere).
  stepsFrom: 'progress' | 'dockerfile';
  digest?: string; // of the pushed image
  imageId?: string;
  steps: BuildStep[];
  cacheImports?: CacheImport[]; // the final build's cache imports, as its stream showed them (found or not)
  cacheExported: boolean;
  cacheScope?: string; // the build's cache scope ('' when the control plane has none)
  cacheName?: string; // the build's own cache as said to a user: "cache scope 'Dockerfile', branch 'main'"
  cacheRef?: string; // where its exported cache landed (the scope's tag, after promotion); '' when not exported
  stageRefs?: string[]; // the stage caches this run built and pushed before its final build (their promoted refs)
  pushed: string[]; // every ref pushed, the cache export included
  // The push of the user's tags, apart from the build: a build whose push failed or was refused has status 'success'
  // and push.status 'failed' | 'refused' (push-outcome.ts); the caller fails the job with pushErrorMessage.
  push?: PushOutcome; // absent (results made before the field): as pushDone says for the build's options
  outputTail: string[]; // the last lines of output, for an error message
  failure?: BuildFailure; // status 'failure': the user's build or the platform (a lost builder), and the job's error
  warnings: string[];
}

export interface BuildIO {
  onLine?: (line: string) => void;
  signal?: AbortSignal; // aborting cancels the build (SIGINT to docker, as Ctrl-C would)
  // Default true: SIGINT/SIGTERM to this process (a CI cancelling the job) cancel the build and runBuild returns
  // 'cancelled' instead of the process dying mid-build, so the caller can still report and release; the caller
  // then exits.
  trapSignals?: boolean;
  // The HTTP seam of the org cache's probe before the build (build-cache-probe.ts); node:http by default (tests).
  request?: HttpRequester;
}

// The Dockerfile of a build whose context is a local directory; null for a Git or HTTP context, or stdin.
export async function readDockerfile(opts: BuildOptions): Promise<string | null> {
  if (isRemoteContext(opts.context)) return null;
  const candidates = opts.file ? [path.resolve(opts.file)] : [path.join(opts.context, 'Dockerfile'), path.join(opts.context, 'dockerfile')];
  for (const f of candidates) {
    try {
      return await fsp.readFile(f, 'utf8');
    } catch {
      // the next name, as docker falls back to a lower-case dockerfile
    }
  }
  return null;
}

const TAIL = 60;
const KILL_AFTER_MS = 10_000;
let seq = 0;

interface Streamed {
  code: number | null;
  signal: NodeJS.Signals | null;
}

function stream(file: string, args: string[], env: NodeJS.ProcessEnv, onLine: (l: string) => void, signal: AbortSignal): Promise<Streamed> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return resolve({ code: null, signal: 'SIGINT' });
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const splitter = () => {
      let buf = '';
      return {
        data: (d: Buffer) => {
          buf += d.toString('utf8');
          const lines = buf.split('\n');
          buf = lines.pop()!;
          for (const l of lines) onLine(l);
        },
        end: () => buf && onLine(buf)
      };
    };
    const out = splitter();
    const err = splitter();
    child.stdout!.on('data', out.data);
    child.stderr!.on('data', err.data);
    let killer: NodeJS.Timeout | undefined;
    const abort = () => {
      child.kill('SIGINT'); // docker cancels the solve and exits within a second (measured: 0.9 s)
      killer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
    };
    signal.addEventListener('abort', abort, { once: true });
    child.on('error', (e) => {
      signal.removeEventListener('abort', abort);
      reject(e);
    });
    child.on('close', (code, sig) => {
      signal.removeEventListener('abort', abort);
      if (killer) clearTimeout(killer);
      out.end();
      err.end();
      resolve({ code, signal: sig });
    });
  });
}

async function capture(file: string, args: string[], env: NodeJS.ProcessEnv, signal: AbortSignal): Promise<{ code: number | null; out: string }> {
  let out = '';
  const r = await stream(file, args, env, (l) => (out += `${l}\n`), signal);
  return { code: r.code, out };
}
type Capture = (args: string[]) => Promise<{ code: number | null; out: string }>;

/** The builder's build-cache records now (`docker system df -v`); null when they cannot be read. */
async function buildCacheRecords(run: Capture): Promise<CacheRecord[] | null> {
  const r = await run(['system', 'df', '-v', '--format', '{{json .BuildCache}}']);
  return r.code === 0 ? parseBuildCache(r.out) : null;
}

/** The builder's clock now (`docker info`'s SystemTime), ms since the epoch; null when it cannot be read. */
async function builderNow(run: Capture): Promise<number | null> {
  const r = await run(['info', '--format', '{{json .SystemTime}}']);
  if (r.code !== 0) return null;
  let t: unknown;
  try {
    t = JSON.parse(r.out);
  } catch {
    return null;
  }
  const ms = typeof t === 'string' ? goTimeMs(t) : NaN;
  return Number.isFinite(ms) ? ms : null;
}

/**
 * Runs `build` after reading the builder's clock, reads the builder's build-cache records after it, and moves the
 * steps it reported CACHED that another build ran meanwhile to deduplicated (build-dedup.ts). When the records cannot be read, the progress stays as
 * the stream said and `unknown` is set, so the caller can say the split is not known.
 */
async function withConcurrentSteps<T>(
  run: Capture,
  build: () => Promise<T>,
  progress: (t: T) => Progress | null
): Promise<{ result: T; progress: Progress | null; unknown: boolean }> {
  const startedAt = await builderNow(run);
  const result = await build();
  const p = progress(result);
  if (!p || !p.steps.some((s) => s.cached)) return { result, progress: p, unknown: false };
  const after = startedAt === null ? null : await buildCacheRecords(run);
  if (startedAt === null || !after) return { result, progress: p, unknown: true };
  return { result, progress: stepsRunConcurrently(p, startedAt, after), unknown: false };
}

const SPLIT_UNKNOWN =
  "could not read the builder's clock or build cache (docker info, docker system df) to tell steps served from a cache from steps another job's build ran at the same time: they are counted as BuildKit reported them (CACHED)";

/** The user tags that, on the builder, no longer name `imageId` (another build took them). */
async function tagsTakenOver(tags: string[], imageId: string, run: Capture): Promise<string[]> {
  const taken: string[] = [];
  for (const t of tags) {
    const r = await run(['image', 'inspect', '--format', '{{.Id}}', t]);
    const id = r.out.trim();
    if (r.code === 0 && /^sha256:[0-9a-f]{64}$/.test(id) && id !== imageId) taken.push(t);
    // The builder's front refuses this lease a name it set once another lease's build took it (image-names.ts).
    else if (r.code !== 0 && /now names? another job's image/.test(r.out)) taken.push(t);
  }
  return taken;
}

/** Whether the push of `ref` that reported `digest` sent this build's image (`imageId` carries that repo digest). */
async function pushedImage(ref: string, digest: string, imageId: string, run: Capture): Promise<boolean> {
  const r = await run(['image', 'inspect', '--format', '{{json .RepoDigests}}', imageId]);
  const name = ref.replace(/:[\w][\w.-]{0,127}$/, '');
  try {
    return (JSON.parse(r.out) as string[]).includes(`${name}@${digest}`);
  } catch {
    return false;
  }
}

function tagTakenMessage(tags: string[], imageId: string): string {
  return (
    `Build Cloud: ${tags.map((t) => `'${t}'`).join(', ')} on the pipeline's shared builder now names another build's image: another job of ` +
    `this pipeline built the same tag at the same time. This build's image is ${imageId}; it was not pushed under that tag. ` +
    `Give parallel jobs tags of their own (e.g. with the job name), or set scope: job for a builder of the job's own.`
  );
}

/**
 * Builds one stage as its own target on the builder and pushes its cache image (build-cache.ts stageCaches).
 * Returns its progress, 'cancelled', or a warning: a stage cache that cannot be built or pushed never fails the
 * build (the build itself then shows the error where it has one).
 */
async function buildStageCache(
  st: StageCache,
  opts: BuildOptions,
  client: BuildClient,
  file: string,
  env: NodeJS.ProcessEnv,
  emit: (l: string) => void,
  signal: AbortSignal,
  warnings: string[]
): Promise<Progress | 'cancelled' | string> {
  const stageOpts: BuildOptions = { ...opts, target: st.stage, tags: [], push: false, load: false };
  const refs: CacheRefs = { importRefs: st.refs.importRefs, exportRef: st.refs.exportRef };
  const stageClient: BuildClient = { ...client, iidFile: undefined, metadataFile: client.metadataFile && `${client.metadataFile}.stage` };
  const parser = new ProgressParser();
  emit(`Build Cloud: building stage '${st.stage}' for its own cache image (${st.refs.promotedRef})`);
  const {
    result: built,
    progress,
    unknown
  } = await withConcurrentSteps(
    (a) => capture(file, a, env, signal),
    () =>
      stream(
        file,
        buildArgs(stageOpts, refs, stageClient),
        env,
        (l) => {
          parser.push(l);
          emit(l);
        },
        signal
      ),
    (b) => (b.code === 0 && !signal.aborted && !b.signal ? parser.result() : null)
  );
  if (signal.aborted || built.signal) return 'cancelled';
  if (built.code !== 0) return `could not build stage '${st.stage}' for its cache image (docker exited ${built.code}); later builds will rebuild it`;
  if (unknown) warnings.push(SPLIT_UNKNOWN);
  for (const { ref } of pushesAfterBuild(stageOpts, refs, stageClient)) {
    const limit = cacheExportTimeoutMs(process.env);
    const bounded = withTimeout(signal, limit);
    const r = await stream(file, ['push', ref], env, emit, bounded.signal).finally(bounded.clear);
    if (!signal.aborted && bounded.signal.aborted) return cacheExportTimedOut(ref, limit);
    if (signal.aborted || r.signal) return 'cancelled';
    if (r.code !== 0) return `could not export the cache of stage '${st.stage}' to ${ref} (docker push exited ${r.code}); later builds will rebuild it`;
  }
  return progress ?? parser.result();
}

/**
 * A signal that aborts with `parent` or after `ms` (0: never), and `clear` to stop its timer. A timer of our own:
 * AbortSignal.any over AbortSignal.timeout did not fire here (Node 20.20: a docker push outlived its 10 s limit).
 */
function withTimeout(parent: AbortSignal, ms: number): { signal: AbortSignal; clear: () => void } {
  const c = new AbortController();
  const onAbort = () => c.abort(parent.reason);
  if (parent.aborted) c.abort(parent.reason);
  else parent.addEventListener('abort', onAbort, { once: true });
  const timer = ms > 0 ? setTimeout(() => c.abort(new Error(`timed out after ${ms} ms`)), ms) : undefined;
  return {
    signal: c.signal,
    clear: () => {
      clearTimeout(timer);
      parent.removeEventListener('abort', onAbort);
    }
  };
}

/** buildx's --metadata-file: the fields read here are strings (digests); others may be objects. */
async function readJson(file: string): Promise<Record<string, string | undefined> | null> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, string | undefined>;
  } catch {
    return null;
  }
}

export async function runBuild(opts: BuildOptions, cfg: RunnerConfig, lease: LeaseMsg, docker: ResolvedDocker, io: BuildIO = {}): Promise<BuildResult> {
  const started = Date.now();
  const n = ++seq;
  const client: BuildClient = {
    buildx: docker.buildx,
    builder: cfg.builderName,
    driver: cfg.driver,
    metadataFile: path.join(cfg.dir, `metadata-${n}.json`),
    iidFile: path.join(cfg.dir, `iid-${n}`)
  };
  const refs = buildCacheRefs(lease.cache, buildCacheScope(opts, ciWorkspace(process.env, process.cwd()), process.cwd()), uploadNonce());
  // An org cache whose registry is down or slow is left out of the build, with one warning (build-cache-probe.ts).
  // A job's saved session holds no registry password: it is in the runner's docker config (runner-config.ts).
  const registry = lease.cache?.registry?.password ? lease.cache.registry : await registryAccess(cfg.dockerConfig, lease.cache?.registry?.host);
  const usesCache = refs.importRefs.length > 0 || refs.exportRef !== '';
  const cacheDown = registry && usesCache ? await orgCacheUnavailable(registry, cacheProbeTimeoutMs(process.env), io.request) : null;
  const exportLimitMs = cacheExportTimeoutMs(process.env); // read here: a bad value fails before anything runs
  const scoped = cacheDown ? { ...refs, importRefs: [], exportRef: '', repository: '' } : refs;
  // Under the inline cache, stages off the final image's chain get cache images of their own (build-cache.ts).
  const inline = !docker.buildx || cfg.driver !== 'remote';
  const stageText = inline && !opts.noCache && scoped.repository ? await readDockerfile(opts) : null;
  const stages = stageCaches(stageText === null ? null : cacheStages(stageText, opts), lease.cache, scoped, () => uploadNonce());
  const cache: CacheRefs = { importRefs: [...scoped.importRefs, ...stages.flatMap((s) => s.refs.importRefs)], exportRef: scoped.exportRef };
  const stageProgress: Progress[] = [];
  const stageRefs: string[] = []; // stage caches pushed by this run, before its final build
  const ownRef = scoped.promotedRef || cache.importRefs[0] || ''; // the build's own cache: what it imports first
  const cacheName = cacheLabel(scoped.scope, ownRef);
  // Secret values go to 0600 files in the runner's private dir, written inside the try below, removed in its finally.
  const secretFiles = secretFilePaths(cfg.dir, n, opts.secretValues ?? []);
  const argv = buildArgs({ ...opts, secrets: [...secretFiles.secrets, ...(opts.secrets ?? [])] }, cache, client); // bad input throws here, before anything runs

  const env = withoutSecretInputs(dockerEnv(process.env, { ...cfg.env }));
  const tail: string[] = [];
  const parser = new ProgressParser();
  const warnings: string[] = [...scoped.warnings, ...(cacheDown ? [cacheUnavailableWarning(registry!.host, cacheDown)] : [])];
  const pushed: string[] = [];
  let cacheExported = false;
  let digest: string | undefined;
  let solvedElsewhere: Progress | null = null;
  let concurrent: Progress | null = null; // the stream's progress with steps other builds ran meanwhile moved to deduplicated
  const emit = (line: string) => {
    tail.push(line);
    if (tail.length > TAIL) tail.shift();
    io.onLine?.(line);
  };

  const controller = new AbortController();
  const onAbort = () => controller.abort();
  io.signal?.addEventListener('abort', onAbort, { once: true });
  if (io.signal?.aborted) controller.abort();
  const trap = io.trapSignals !== false;
  if (trap) {
    process.on('SIGINT', onAbort);
    process.on('SIGTERM', onAbort);
  }
  const finish = (status: BuildResult['status'], exitCode: number | null, extra: Partial<BuildResult> = {}): BuildResult => {
    const p = mergeStageProgress([...stageProgress, solvedElsewhere ?? concurrent ?? parser.result()]);
    return {
      status,
      exitCode,
      durationMs: Date.now() - started,
      totalSteps: p.totalSteps,
      cachedSteps: p.cachedSteps,
      deduplicatedSteps: p.deduplicatedSteps,
      cacheRatio: p.totalSteps ? p.cachedSteps / p.totalSteps : 0,
      stepsFrom: solvedElsewhere ? 'dockerfile' : 'progress',
      digest,
      steps: p.steps,
      cacheImports: cacheImports(parser.vertices()),
      cacheExported,
      cacheScope: scoped.scope,
      cacheName,
      cacheRef: cacheExported ? scoped.promotedRef : '',
      stageRefs,
      pushed,
      push:
        status === 'success'
          ? pushDone(
              opts.push,
              opts.tags,
              pushed.filter((r) => opts.tags.includes(r))
            )
          : pushDone(false, [], []),
      outputTail: tail.slice(),
      warnings,
      ...extra
    };
  };

  try {
    await writeSecretFiles(opts.secretValues ?? [], secretFiles.files);
    if (opts.exportCache && cache.exportRef) {
      for (const st of stages) {
        const r = await buildStageCache(
          st,
          { ...opts, secrets: [...secretFiles.secrets, ...(opts.secrets ?? [])] },
          client,
          docker.path,
          env,
          emit,
          controller.signal,
          warnings
        );
        if (r === 'cancelled') return finish('cancelled', null);
        if (typeof r === 'string') warnings.push(r);
        else {
          stageProgress.push(r);
          stageRefs.push(st.refs.promotedRef);
        }
      }
    }
    // The context path is resolved by docker against our cwd, as in the user's own `docker build`.
    // A cold org cache is normal: BuildKit shows the import's `not found` as an ERROR, and we say what it means, once.
    const fallbacks = cache.importRefs.some((r) => r !== ownRef);
    const cold = coldCacheWatcher(ownRef, coldCacheLine(cacheName, Boolean(opts.exportCache && cache.exportRef), fallbacks), emit);
    const { result: built, ...split } = await withConcurrentSteps(
      (a) => capture(docker.path, a, env, controller.signal),
      () =>
        stream(
          docker.path,
          argv,
          env,
          (l) => {
            parser.push(l);
            emit(l);
            cold(l);
          },
          controller.signal
        ),
      (b) => (b.code === 0 && !controller.signal.aborted && !b.signal ? parser.result() : null)
    );
    if (split.unknown) warnings.push(SPLIT_UNKNOWN);
    else concurrent = split.progress;
    const progress = parser.result();
    const canceledStep = progress.steps.some((s) => s.status === 'canceled') && !progress.steps.some((s) => s.status === 'error');
    if (controller.signal.aborted || built.signal || (built.code !== 0 && canceledStep)) return finish('cancelled', built.code);
    if (built.code !== 0) {
      // buildx pushing itself (--push): every step ran and only the export to the registry failed.
      const pushFailed = opts.push && docker.buildx && cfg.driver === 'remote' ? pushFailedInBuild(parser.vertices(), opts.tags) : null;
      return pushFailed
        ? finish('success', built.code, { push: pushFailed })
        : finish('failure', built.code, { failure: classifyFailure(tail, parser.vertices(), built.code) });
    }
    if (progress.totalSteps === 0 && parser.unseenVertices() > 0) {
      solvedElsewhere = stepsSolvedElsewhere(parser, await readDockerfile(opts), { target: opts.target, buildArgs: opts.buildArgs, platforms: opts.platforms });
    }

    let imageId: string | undefined;
    if (docker.buildx) {
      const meta = await readJson(client.metadataFile!);
      imageId = meta?.['containerimage.config.digest'];
      if (opts.push && cfg.driver === 'remote') digest = meta?.['containerimage.digest'];
    } else {
      imageId = (await fsp.readFile(client.iidFile!, 'utf8').catch(() => '')).trim() || undefined;
    }

    // Names on a pipeline builder are shared by the pipeline's jobs, as on one Docker host: a job that built the same
    // tag at the same time may have taken it. Such a build succeeds with its push refused (the job fails, saying so)
    // rather than pushing (or letting later steps use) the other job's image under its tag; a push re-points the tag
    // at this build's image first and checks after it that this image is what went out.
    // The cache export (a name of this build's own) goes out first either way.
    const local = !docker.buildx || cfg.driver !== 'remote';
    let tagsChecked = false;
    const userPushed = () => pushed.filter((r) => opts.tags.includes(r));
    const tagsTaken = async (): Promise<string[]> => {
      if (tagsChecked || !local || !imageId) return [];
      tagsChecked = true;
      const taken = await tagsTakenOver(opts.tags, imageId, (a) => capture(docker.path, a, env, controller.signal));
      if (taken.length) emit(tagTakenMessage(taken, imageId));
      return taken;
    };
    for (const { ref, cache: isExport } of pushesAfterBuild(opts, cache, client)) {
      const taken = isExport ? [] : await tagsTaken();
      if (taken.length) return finish('success', built.code, { imageId, push: pushRefused(taken, userPushed()) });
      if (!isExport && local && imageId) await capture(docker.path, ['tag', imageId, ref], env, controller.signal);
      let out = '';
      // The org cache's push is bounded (a registry that stalls after the probe); the user's image's is not.
      const bounded = withTimeout(controller.signal, isExport ? exportLimitMs : 0);
      const r = await stream(
        docker.path,
        ['push', ref],
        env,
        (l) => {
          out += `${l}\n`;
          emit(l);
        },
        bounded.signal
      ).finally(bounded.clear);
      if (isExport && !controller.signal.aborted && bounded.signal.aborted) {
        warnings.push(cacheExportTimedOut(ref, exportLimitMs));
        continue;
      }
      if (controller.signal.aborted || r.signal) return finish('cancelled', r.code, { imageId });
      if (r.code !== 0) {
        // The org cache is an optimisation: failing to write it warns; failing to push the user's image fails.
        if (isExport) {
          warnings.push(`could not export the build cache to ${ref} (docker push exited ${r.code}); later builds will not reuse this one's layers`);
          continue;
        }
        return finish('success', built.code, {
          imageId,
          push: { status: 'failed', pushed: userPushed(), failed: [ref], reason: pushFailureReason(out, r.code) }
        });
      }
      const d = /digest: (sha256:[0-9a-f]{64})/.exec(out)?.[1];
      if (!isExport && local && imageId && d && !(await pushedImage(ref, d, imageId, (a) => capture(docker.path, a, env, controller.signal)))) {
        emit(tagTakenMessage([ref], imageId));
        return finish('success', built.code, { imageId, push: pushRefused([ref], userPushed()) });
      }
      pushed.push(ref);
      if (isExport) cacheExported = true;
      if (d && !isExport && !digest) digest = d;
    }
    const taken = await tagsTaken();
    if (taken.length) return finish('success', built.code, { imageId, push: pushRefused(taken, userPushed()) });
    if (docker.buildx && cfg.driver === 'remote' && opts.exportCache && cache.exportRef) {
      // ignore-error=true keeps a failed cache export from failing the build; its vertex still says ERROR.
      const failed = parser.vertices().find((v) => v.name.startsWith('exporting cache') && v.status === 'error');
      if (failed) warnings.push(`could not export the build cache to ${cache.exportRef}: ${failed.error}; later builds will not reuse this one's layers`);
      cacheExported = !failed;
    }
    return finish('success', built.code, { imageId });
  } finally {
    io.signal?.removeEventListener('abort', onAbort);
    if (trap) {
      process.off('SIGINT', onAbort);
      process.off('SIGTERM', onAbort);
    }
    await fsp.rm(client.metadataFile!, { force: true });
    await fsp.rm(`${client.metadataFile!}.stage`, { force: true });
    await fsp.rm(client.iidFile!, { force: true });
    await removeSecretFiles(secretFiles.files);
  }
}
