// `load: true`: the built image, from the builder into the runner's own Docker engine, as docker/build-push-action's
// `load` does. The builder's front admits image export (`docker save`) but no containers, so a job that wants to
// run its image does it on its own engine. `docker save` against the builder is streamed straight into
// `docker load` against the runner's engine: no temp file, both processes' exit codes checked, and an error names
// the side that failed. Argv and env builders are pure; the pipe takes a spawn function so tests can fake it.
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'child_process';
import { runDocker, type Probe } from './docker-cli';
import { RUNNER_DOCKER_VARS, runnerDockerVar } from './runner-config';

/** Where a docker client goes when no DOCKER_HOST, DOCKER_CONTEXT or current context says otherwise. */
export const DEFAULT_ENGINE = 'unix:///var/run/docker.sock';
const PING_TIMEOUT_MS = 20_000;
const KILL_AFTER_MS = 5_000;
const KEEP = 4096; // bytes of each process's stderr kept for the error message

export class LoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LoadError';
  }
}

/** The job's env with DOCKER_* as they were before setup (from its BUILDCLOUD_RUNNER_* record), unset if unset. */
export function runnerEngineEnv(base: NodeJS.ProcessEnv, record: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const name of RUNNER_DOCKER_VARS) {
    const v = record[runnerDockerVar(name)];
    if (v) env[name] = v;
    else delete env[name];
  }
  return env;
}

/** The runner's engine as a person would name it in an error message. */
export function runnerEngineName(record: Record<string, string | undefined>): string {
  const host = record[runnerDockerVar('DOCKER_HOST')];
  const ctx = record[runnerDockerVar('DOCKER_CONTEXT')];
  return host || (ctx ? `docker context ${ctx}` : DEFAULT_ENGINE);
}

/** Every tag of the build (the cache export ref is not one), or the image id when the build named none. */
export function imagesToLoad(tags: string[], imageId: string | undefined): string[] {
  if (tags.length) return [...tags];
  return imageId ? [imageId] : [];
}

export const pingArgs = (): string[] => ['version', '--format', '{{.Server.Version}}'];
export const saveArgs = (refs: string[]): string[] => ['save', ...refs];
export const loadArgs = (): string[] => ['load'];

export interface SideResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string; // the last KEEP bytes
  error?: string; // could not be started (ENOENT, EACCES)
  stoppedByUs?: boolean; // save, stopped because load had already failed or the step was cancelled
}

export interface PipeResult {
  save: SideResult;
  load: SideResult & { stdout: string };
  bytes: number; // streamed from save to load
  cancelled: boolean;
}

export type Spawn = (file: string, args: string[], options: SpawnOptions) => ChildProcess;

function tailOf(buf: string, d: Buffer): string {
  const s = buf + d.toString('utf8');
  return s.length > KEEP ? s.slice(-KEEP) : s;
}

/**
 * `docker save REFS` (builder env) | `docker load` (runner env). Resolves when both have ended. When load fails
 * first, save's end of the pipe is closed (it dies of SIGPIPE, or is killed after a grace) so it cannot block on a
 * full pipe; when load succeeds first, whatever save still writes is drained and save ends on its own.
 */
export function pipeSaveLoad(
  file: string,
  refs: string[],
  builderEnv: NodeJS.ProcessEnv,
  runnerEnv: NodeJS.ProcessEnv,
  opts: { spawn?: Spawn; signal?: AbortSignal } = {}
): Promise<PipeResult> {
  const sp = opts.spawn ?? (nodeSpawn as Spawn);
  return new Promise((resolve) => {
    const save: SideResult = { code: null, signal: null, stderr: '' };
    const load: SideResult & { stdout: string } = { code: null, signal: null, stderr: '', stdout: '' };
    let bytes = 0;
    let cancelled = false;
    let open = 2;
    let saveDone = false;
    let loadDone = false;
    let killer: NodeJS.Timeout | undefined;
    const saver = sp(file, saveArgs(refs), { env: builderEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    const loader = sp(file, loadArgs(), { env: runnerEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    const stopSave = () => {
      if (saveDone) return;
      save.stoppedByUs = true;
      saver.stdout?.unpipe();
      saver.stdout?.destroy();
      killer = setTimeout(() => saver.kill('SIGKILL'), KILL_AFTER_MS);
    };
    const abort = () => {
      cancelled = true;
      stopSave();
      if (!saveDone) saver.kill('SIGTERM'); // it may be waiting on the builder, not writing: no SIGPIPE then
      if (!loadDone) loader.kill('SIGTERM');
    };
    const ended = () => {
      if (--open > 0) return;
      if (killer) clearTimeout(killer);
      opts.signal?.removeEventListener('abort', abort);
      resolve({ save, load, bytes, cancelled });
    };
    const endSave = (code: number | null, signal: NodeJS.Signals | null, error?: string) => {
      if (saveDone) return;
      saveDone = true;
      Object.assign(save, { code, signal }, error ? { error } : {});
      // Load reads to the end of what it was given: an unfinished stream is its failure, reported with save's.
      if (error) loader.stdin?.end();
      ended();
    };
    const endLoad = (code: number | null, signal: NodeJS.Signals | null, error?: string) => {
      if (loadDone) return;
      loadDone = true;
      Object.assign(load, { code, signal }, error ? { error } : {});
      if (code === 0)
        saver.stdout?.resume(); // drain: save ends by itself
      else stopSave();
      ended();
    };
    saver.stdout!.on('data', (d: Buffer) => (bytes += d.length));
    saver.stdout!.pipe(loader.stdin!);
    // EPIPE when load has gone: load's own exit code and stderr say why.
    loader.stdin!.on('error', () => undefined);
    saver.stdout!.on('error', () => undefined);
    saver.stderr!.on('data', (d: Buffer) => (save.stderr = tailOf(save.stderr, d)));
    loader.stderr!.on('data', (d: Buffer) => (load.stderr = tailOf(load.stderr, d)));
    loader.stdout!.on('data', (d: Buffer) => (load.stdout = tailOf(load.stdout, d)));
    saver.on('error', (e: NodeJS.ErrnoException) => endSave(null, null, e.code || e.message));
    loader.on('error', (e: NodeJS.ErrnoException) => endLoad(null, null, e.code || e.message));
    saver.on('close', (code, signal) => endSave(code, signal));
    loader.on('close', (code, signal) => endLoad(code, signal));
    if (opts.signal?.aborted) abort();
    else opts.signal?.addEventListener('abort', abort, { once: true });
  });
}

function how(s: SideResult): string {
  if (s.error) return `could not run (${s.error})`;
  if (s.signal) return `was ended by ${s.signal}`;
  return `exited ${s.code}`;
}

function detail(stderr: string): string {
  const lines = stderr
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.length ? `: ${lines.slice(-3).join(' | ').replace(/\.$/, '')}` : '';
}

/** Which side failed and why, or null when both succeeded. Save's own failure comes first: it starves load. */
export function pipeFailure(r: PipeResult, refs: string[], engine: string): string | null {
  if (r.cancelled) return 'loading the image was cancelled';
  const saveFailed = r.save.code !== 0 && !r.save.stoppedByUs && r.save.signal !== 'SIGPIPE';
  if (saveFailed) return `docker ${saveArgs(refs).join(' ')} on the builder ${how(r.save)}${detail(r.save.stderr)}`;
  if (r.load.code !== 0) return `docker load into the runner's Docker engine at ${engine} ${how(r.load)}${detail(r.load.stderr)}`;
  if (r.save.code !== 0) return `docker ${saveArgs(refs).join(' ')} on the builder ${how(r.save)}${detail(r.save.stderr)}`;
  return null;
}

export interface LoadOutcome {
  loaded: boolean;
  refs: string[];
  engine: string;
  durationMs: number;
  bytes: number;
  loadedLines: string[]; // docker load's own report ("Loaded image: ...")
  error?: string; // says what to fix; the build itself is not part of it
}

export interface LoadDeps {
  probe?: Probe;
  spawn?: Spawn;
  signal?: AbortSignal;
  now?: () => number;
}

/**
 * Checks that the runner's engine answers (so a runner without Docker gets one clear error, not a broken pipe),
 * then streams the image into it. Never throws for what the engine or the builder did: the outcome says it.
 */
export async function loadImage(
  p: { docker: string; refs: string[]; builderEnv: NodeJS.ProcessEnv; runnerEnv: NodeJS.ProcessEnv; engine: string },
  deps: LoadDeps = {}
): Promise<LoadOutcome> {
  const now = deps.now ?? Date.now;
  const started = now();
  const base = { refs: p.refs, engine: p.engine, bytes: 0, loadedLines: [] as string[] };
  const fail = (error: string, extra: Partial<LoadOutcome> = {}): LoadOutcome => ({ ...base, loaded: false, durationMs: now() - started, error, ...extra });
  if (p.refs.length === 0) return fail('the build named no tag and reported no image id, so there is no image to load; set tags');
  const probe = deps.probe ?? ((f, a, e) => runDocker(f, a, e, PING_TIMEOUT_MS));
  const ping = await probe(p.docker, pingArgs(), p.runnerEnv);
  if (ping.code !== 0) {
    const why = detail(ping.stderr || ping.error || `exit ${ping.code}`).replace(/^: /, '') || `docker version ${ping.error ?? `exited ${ping.code}`}`;
    return fail(
      `load: true needs a Docker engine on this runner, and none answers at ${p.engine}: ${why}. ` +
        'Set push: true instead of load (and pull the image where it is needed), or run this job on a runner with a Docker engine ' +
        '(GitLab: a docker:dind service; CircleCI: a machine executor; GitHub: an ubuntu runner).'
    );
  }
  const r = await pipeSaveLoad(p.docker, p.refs, p.builderEnv, p.runnerEnv, { spawn: deps.spawn, signal: deps.signal });
  const loadedLines = r.load.stdout
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => /^Loaded image/.test(l));
  const failure = pipeFailure(r, p.refs, p.engine);
  if (failure) return fail(failure, { bytes: r.bytes, loadedLines });
  return { ...base, loaded: true, durationMs: now() - started, bytes: r.bytes, loadedLines };
}
