// Setup, CI-neutral: identity → credential → provision → configure the runner → session. The wrappers map
// their inputs to SetupSettings and the result back to their platform (outputs, env, state, dotenv, $BASH_ENV).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ApiClient, ControlPlaneError, EndpointError, backoffDelay } from './api-client';
import { AuthMissingError, chooseCredential } from './auth';
import { describeIdentity, identityFromEnv, localName, type Env, type Identity } from './identity';
import { gitFactsForLocalRun } from './identity-git';
import { resolveDocker, type ResolvedDocker } from './docker-cli';
import { cleanupRunner, configureRunner, runnerDockerRecord, runnerShellRecord } from './runner-config';
import { MeteringSpool } from './metering-spool';
import { flushSpool } from './metering-client';
import { saveSession, withoutSecrets, type Session } from './session';
import { requireEndpoint } from './endpoint';
import type { SetupSettings } from './settings';
import type { LeaseMsg } from '../contract/grpc';

export interface Log {
  info(msg: string): void;
  warn(msg: string): void;
  debug(msg: string): void;
}

export interface SetupDeps {
  env: Env;
  log: Log;
  mask: (secret: string) => void;
  githubOidc?: (audience: string) => Promise<string>; // core.getIDToken on GitHub
  tempRoot?: string; // RUNNER_TEMP, or the OS temp dir
  spoolDir?: string;
  now?: () => number;
}

export interface SetupResult {
  session: Session;
  sessionFile: string;
  outputs: Record<string, string>;
  exportEnv: Record<string, string>; // for later steps of the job
}

export { SetupError } from './endpoint';

export function defaultSpoolDir(env: Env): string {
  return env.BUILDCLOUD_SPOOL_DIR || path.join(env.HOME || os.homedir(), '.cache', 'buildcloud', 'spool');
}

export async function setup(settings: SetupSettings, deps: SetupDeps): Promise<SetupResult> {
  const { env, log } = deps;
  const now = deps.now ?? Date.now;
  // Outside the three CIs the git checkout names the project, branch and commit (a few ms of `git`, run side by side).
  const identity = identityFromEnv(env, undefined, { jobId: settings.jobId }, await gitFactsForLocalRun(env));
  const endpoint = requireEndpoint(settings, env);
  const api = new ApiClient({
    endpoint,
    onRetry: (r) => log.warn(`Build Cloud: ${r.method} failed (${r.error}); retrying in ${(r.delayMs / 1000).toFixed(1)} s (attempt ${r.attempt + 1})`)
  });
  try {
    // One spool per org: records of another org sent with this org's token would be rejected and dropped.
    const spoolFor = (org: string) => path.join(deps.spoolDir ?? defaultSpoolDir(env), org || 'unknown-org');
    let token = '';
    // The first request (ExchangeToken or Provision) goes out before anything else: the docker client is chosen while
    // the credential is found and the builders are provisioned (each a round trip), not before them (issue 10: it
    // cost every job a `docker --version` and the synchronous work of the choice before its first request). A
    // runner without a usable client still fails with that client's error first; a lease it took meanwhile is
    // released at once (billed the second it lived, as every lease is: per second, rounded up).
    const leased = (async () => {
      token = await credential(settings, identity, deps, api);
      api.setToken(token);
      return provisionWithin(api, settings, identity, settings.provisionTimeoutS * 1000, now, log);
    })();
    leased.catch(() => undefined); // awaited below, on every path
    await new Promise((r) => setImmediate(r)); // the request is on its way before the synchronous work below
    log.info(describeIdentity(identity));
    const dockerChoice = resolveDocker(env);
    dockerChoice.catch(() => undefined); // awaited below, on every path
    let chosen: ResolvedDocker | null = null;
    const chosenDocker = async (): Promise<ResolvedDocker> => {
      if (!chosen) {
        chosen = await dockerChoice;
        log.info(chosen.reason);
        const other = dockerPathWarning(env, chosen);
        if (other) log.warn(other);
      }
      return chosen;
    };

    let lease: LeaseMsg;
    try {
      lease = await leased.catch(async (err) => {
        await chosenDocker();
        throw err;
      });
    } catch (err) {
      // fallback: local covers a control plane that cannot serve now (down: nothing answers at its endpoint), and a job
      // CI gives no credential at all (a fork's pull request, a Dependabot run): it builds, and the warning says why it
      // built without Build Cloud. An endpoint where something else answers is a mistake to fix, not an outage.
      const down = err instanceof EndpointError ? !err.reachable : err instanceof ControlPlaneError && err.transient;
      const usable = down || err instanceof AuthMissingError;
      if (settings.fallback !== 'local' || !usable) throw err;
      log.warn(
        `Build Cloud: NO REMOTE BUILDER (${(err as Error).message}). fallback: local is set, so this job builds on the runner's own Docker, without the org cache.`
      );
      return finish(
        localSession(
          settings,
          identity,
          endpoint,
          token,
          spoolFor(settings.org),
          await chosenDocker(),
          now(),
          deps.tempRoot || env.RUNNER_TEMP || os.tmpdir(),
          env
        )
      );
    }
    let docker: ResolvedDocker;
    try {
      docker = await chosenDocker();
    } catch (err) {
      await api.release(lease.id).catch(() => undefined);
      throw err;
    }
    const b = lease.builders.map((x) => `${x.platform} ${x.builderId}${x.shared ? ' (shared with the pipeline)' : x.warm ? ' (warm)' : ' (cold start)'}`);
    log.info(`Build Cloud: lease ${lease.id} on ${b.join(', ')}`);
    // The control plane decides what this job may write (docs/security.md); say it when the answer is "nothing".
    if (settings.cache && lease.cache && !lease.cache.exportRef && lease.cache.readOnlyReason) {
      log.info(
        `Build Cloud: the org cache is read-only for this job (${lease.cache.readOnlyReason}): it imports ${lease.cache.importRefs.join(', ') || 'nothing'} and exports nothing.`
      );
    }
    let cfg: Awaited<ReturnType<typeof configureRunner>> | null = null;
    try {
      cfg = await configureRunner(lease, localName(identity), { tempRoot: deps.tempRoot || env.RUNNER_TEMP || os.tmpdir(), docker });
      for (const s of cfg.secrets) deps.mask(s);
      const stripped = withoutSecrets(
        settings.cache ? lease : { ...lease, cache: lease.cache ? { ...lease.cache, importRefs: [], exportRef: '' } : null },
        cfg
      );
      const session: Session = {
        version: 1,
        dir: cfg.dir,
        identity,
        org: lease.org,
        endpoint,
        token,
        meteringUrl: settings.meteringEndpoint || lease.meteringUrl,
        spoolDir: spoolFor(lease.org),
        lease: stripped.lease,
        runner: stripped.runner,
        docker,
        // Where `load` sends images: the runner's own engine, as DOCKER_* named it before this setup; and
        // DOCKER_BUILDKIT and BUILDX_BUILDER as they were, for a shell to get back (src/cli/shell-env.ts).
        env: { ...cfg.env, ...runnerDockerRecord(env), ...runnerShellRecord(env) } as Record<string, string>,
        fallback: false,
        cache: settings.cache,
        summary: settings.summary,
        prComment: settings.prComment,
        startedAtMs: now(),
        ...caFileOf(env)
      };
      const result = finish(session);
      // Records a dead earlier job could not send go out now: best effort, it never fails setup.
      await sendLeftovers(session, log).catch((err) => log.warn(`Build Cloud metering: could not send earlier records: ${(err as Error).message}`));
      return result;
    } catch (err) {
      // Nobody would release a lease this job cannot use: give it back now rather than at the idle timeout.
      if (cfg) await cleanupRunner(cfg, docker).catch(() => undefined);
      await api.release(lease.id).catch(() => undefined);
      throw err;
    }
  } finally {
    api.close();
  }
}

async function credential(settings: SetupSettings, identity: Identity, deps: SetupDeps, api: ApiClient): Promise<string> {
  const c = chooseCredential(identity, { token: settings.token, oidc: 'auto', audience: settings.oidcAudience }, deps.env, deps.githubOidc);
  if (c.kind === 'token') {
    deps.mask(c.token);
    return c.token;
  }
  const oidcToken = c.source.kind === 'github' ? await c.source.fetch(settings.oidcAudience) : c.source.value;
  deps.mask(oidcToken);
  const ex = await api.exchangeToken(oidcToken, settings.org);
  deps.mask(ex.accessToken);
  deps.log.info(`Build Cloud: OIDC token exchanged for an access token of org ${ex.org}`);
  return ex.accessToken;
}

// Transient failures (unavailable, at capacity, a control plane restarting) and rate limits (after the server's
// retry-after) are retried until the deadline; permanent ones, a wrong endpoint among them, surface at once.
async function provisionWithin(api: ApiClient, s: SetupSettings, id: Identity, budgetMs: number, now: () => number, log: Log): Promise<LeaseMsg> {
  const end = now() + budgetMs;
  let attempt = 0;
  for (;;) {
    const left = Math.max(1000, end - now());
    try {
      return await api.provision(
        {
          org: s.org,
          pipelineKey: id.pipelineKey,
          jobId: id.jobId,
          platforms: s.platforms,
          scope: s.scope === 'job' ? 'SCOPE_JOB' : 'SCOPE_PIPELINE',
          identity: {
            provider: id.provider,
            project: id.project,
            branch: id.branch,
            defaultBranch: id.defaultBranch,
            fork: id.fork,
            actor: id.actor,
            runUrl: id.runUrl
          }
        },
        // The whole budget left, not a slice of it: a cold builder on a busy host may take longer than any slice, and
        // a retry after a deadline would start the same wait over (the server ends the abandoned attempt's lease).
        { attempts: 1, deadlineMs: left }
      );
    } catch (err) {
      const waitable = err instanceof ControlPlaneError && (err.transient || err.rateLimited);
      if (!waitable || now() >= end) throw err;
      attempt++;
      const wait = err.retryAfterMs ?? backoffDelay(attempt, 500, 8000);
      // A retry-after beyond the budget is not waited for: the error says when to try again.
      if (err.retryAfterMs !== undefined && now() + wait > end) throw err;
      const delayMs = Math.min(wait, Math.max(0, end - now()));
      log.warn(`Build Cloud: Provision failed (${err.details || err.message}); retrying in ${(delayMs / 1000).toFixed(1)} s`);
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

function localSession(
  s: SetupSettings,
  identity: Identity,
  endpoint: string,
  token: string,
  spoolDir: string,
  docker: ResolvedDocker,
  startedAtMs: number,
  tempRoot: string,
  env: Env
): Session {
  const dir = fs.mkdtempSync(path.join(tempRoot, `${localName(identity)}-local-`));
  return {
    version: 1,
    dir,
    identity,
    org: s.org,
    endpoint,
    token,
    meteringUrl: s.meteringEndpoint,
    spoolDir,
    lease: null,
    runner: null,
    docker,
    env: { DOCKER_BUILDKIT: '1' },
    fallback: true,
    cache: false,
    summary: s.summary,
    prComment: s.prComment,
    startedAtMs,
    ...caFileOf(env)
  };
}

/** The first executable `name` in env.PATH, as a shell would run it; null when there is none. */
export function firstOnPath(env: Env, name: string): string | null {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      if (fs.statSync(file).isFile()) {
        fs.accessSync(file, fs.constants.X_OK);
        return file;
      }
    } catch {
      // not here: the next directory
    }
  }
  return null;
}

const realpath = (file: string): string => {
  try {
    return fs.realpathSync(file);
  } catch {
    return file;
  }
};

/**
 * When the `docker` a shell runs (the first on PATH) is not the client setup chose (e.g. /usr/local/bin/docker 28
 * without buildx ahead of /usr/bin/docker 20.10), the user's own `docker build` after setup fails ("Install the
 * buildx component") while setup's builds work: one warning line naming both and what to run instead. Setup does
 * not change PATH or define an alias: other programs in that directory would move with it, and report would have
 * one more thing to undo. '' when they are the same file, or no `docker` is on PATH.
 */
export function dockerPathWarning(env: Env, chosen: Pick<ResolvedDocker, 'path' | 'version' | 'buildx'>): string {
  const first = firstOnPath(env, 'docker');
  if (!first || realpath(first) === realpath(chosen.path)) return '';
  const how = env.BUILDCLOUD_DOCKER?.trim() ? 'BUILDCLOUD_DOCKER names' : 'setup chose';
  return (
    `Build Cloud: ${how} ${chosen.path} (${chosen.version}${chosen.buildx ? ', with buildx' : ''}), but \`docker\` in this shell runs ${first}: ` +
    `a \`docker build\` of your own may fail there (e.g. "Install the buildx component"). Build with buildcloud build, or run ${chosen.path} build (alias docker=${chosen.path} in an interactive shell).`
  );
}

/** BUILDCLOUD_CA_FILE as an absolute path, for the session (report may run in another directory). */
function caFileOf(env: Env): { caFile?: string } {
  const file = env.BUILDCLOUD_CA_FILE?.trim();
  return file ? { caFile: path.resolve(file) } : {};
}

function finish(session: Session): SetupResult {
  const file = saveSession(session);
  const l = session.lease;
  const outputs: Record<string, string> = {
    builder: session.runner?.builderName ?? '',
    'docker-host': session.env.DOCKER_HOST ?? '',
    'lease-id': l?.id ?? '',
    'cache-from': (l?.cache?.importRefs ?? []).join('\n'),
    'cache-to': l?.cache?.exportRef ?? '',
    platforms: (l?.builders ?? []).map((b) => b.platform).join(','),
    fallback: String(session.fallback)
  };
  return { session, sessionFile: file, outputs, exportEnv: { ...session.env, BUILDCLOUD_SESSION: file } };
}

export async function sendLeftovers(session: Pick<Session, 'spoolDir' | 'meteringUrl' | 'token'>, log: Log): Promise<void> {
  if (!session.meteringUrl) return;
  const spool = new MeteringSpool(session.spoolDir);
  if ((await spool.pending()).length === 0) return;
  const r = await flushSpool(spool, { endpoint: session.meteringUrl, token: session.token, deadlineMs: 10_000 });
  if (r.sent) log.info(`Build Cloud: sent ${r.sent} usage record${r.sent === 1 ? '' : 's'} left by earlier jobs`);
  for (const w of r.warnings) log.warn(w);
}
