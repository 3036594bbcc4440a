// Points the runner's docker client at a lease's builder, and takes it all away again.
//
// Everything lives in one private directory: the lease's certs and a private DOCKER_CONFIG holding a copy of the
// user's config (so earlier `docker login`s keep working), the cache registry's credentials, the docker contexts
// and buildx's own state (buildx keeps it in $DOCKER_CONFIG/buildx). Matrix jobs on one machine therefore never
// see or remove each other's contexts, and the user's ~/.docker is never written.
import { createHash } from 'crypto';
import { promises as fsp } from 'fs';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { BuilderEndpointMsg, LeaseMsg } from '../contract/grpc';
import { buildxCreateArgs, contextCreateArgs, dockerEnv, runDocker, type BuildxDriver, type CommandResult, type ResolvedDocker } from './docker-cli';
import { contextStoreKnown, writeDockerContext } from './docker-context';

export interface RunnerEnv {
  DOCKER_CONFIG: string;
  DOCKER_BUILDKIT: '1';
  // Set for Docker Engine endpoints: later `docker build|push` steps talk to the builder directly (it runs no
  // containers: `load` puts the image into the runner's own engine for that).
  DOCKER_HOST?: string;
  DOCKER_TLS_VERIFY?: '1';
  DOCKER_CERT_PATH?: string;
  BUILDX_BUILDER?: string; // where buildx exists
}

// The runner's own docker settings, as the job had them before setup pointed DOCKER_* at the builder: `load`
// sends the built image to that engine. Setup records each one that is set as BUILDCLOUD_RUNNER_<NAME>.
export const RUNNER_DOCKER_VARS = ['DOCKER_HOST', 'DOCKER_TLS_VERIFY', 'DOCKER_CERT_PATH', 'DOCKER_CONTEXT', 'DOCKER_CONFIG'] as const;
export const runnerDockerVar = (name: string): string => `BUILDCLOUD_RUNNER_${name}`;

/**
 * BUILDCLOUD_RUNNER_<NAME> for each runner docker setting set in `env`, the job's environment before this setup.
 * In a job where setup already ran (BUILDCLOUD_SESSION set), DOCKER_* hold the builder's values: the record that
 * earlier setup made is carried over instead.
 */
export function runnerDockerRecord(env: NodeJS.ProcessEnv): Record<string, string> {
  const earlier = Boolean(env.BUILDCLOUD_SESSION);
  const out: Record<string, string> = {};
  for (const name of RUNNER_DOCKER_VARS) {
    const v = earlier ? env[runnerDockerVar(name)] : env[name];
    if (v) out[runnerDockerVar(name)] = v;
  }
  return out;
}

/**
 * Variables setup sets for the shell besides DOCKER_* that a user may have set before: recorded the same way
 * (BUILDCLOUD_RUNNER_<NAME>, only when set), so a shell whose report ran without `eval` gets them back too
 * (src/cli/shell-env.ts repairStaleShell). Not the runner's engine: `load` reads RUNNER_DOCKER_VARS only.
 */
export const RUNNER_SHELL_VARS = ['DOCKER_BUILDKIT', 'BUILDX_BUILDER'] as const;

/** runnerDockerRecord's rule for RUNNER_SHELL_VARS: BUILDCLOUD_RUNNER_<NAME> for each set before (the first) setup. */
export function runnerShellRecord(env: NodeJS.ProcessEnv): Record<string, string> {
  const earlier = Boolean(env.BUILDCLOUD_SESSION);
  const out: Record<string, string> = {};
  for (const name of RUNNER_SHELL_VARS) {
    const v = earlier ? env[runnerDockerVar(name)] : env[name];
    if (v) out[runnerDockerVar(name)] = v;
  }
  return out;
}

export interface RunnerConfig {
  name: string;
  dir: string; // 0700, removed by cleanupRunner
  certDir: string; // ca.pem, cert.pem, key.pem, each 0600
  dockerConfig: string;
  contextName: string; // '' for a BuildKit-only lease
  contexts: string[]; // every context made: contextName first, then one per further Docker endpoint
  buildxBuilder: string; // a remote-driver builder made here ('' when none): cleanup removes it
  builderName: string; // hand this to docker/build-push-action (`builder:`) or `--builder`
  driver: BuildxDriver;
  env: RunnerEnv;
  secrets: string[]; // to mask in logs
  warnings: string[];
}

export interface ConfigureOptions {
  tempRoot: string;
  docker: ResolvedDocker;
  userDockerConfig?: string; // default: $DOCKER_CONFIG, else ~/.docker
  run?: (file: string, args: string[], env: NodeJS.ProcessEnv) => Promise<CommandResult>;
}

export class RunnerConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunnerConfigError';
  }
}

const NAME_MAX = 60;

/**
 * A context/builder name from identity parts (provider, pipeline key, job id...): readable, valid for both
 * docker contexts and buildx builders, and unique per distinct input thanks to a short hash.
 */
export function runnerName(parts: string[]): string {
  const hash = createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 8);
  const slug = parts
    .join('-')
    .toLowerCase()
    .replace(/[^a-z0-9_.-]+/g, '-')
    .replace(/-{2,}/g, '-')
    .replace(/^[-_.]+|[-_.]+$/g, '')
    .slice(0, NAME_MAX - 12);
  return `bc-${slug ? `${slug}-` : ''}${hash}`;
}

function platformSlug(platform: string): string {
  return platform.replace(/[^a-zA-Z0-9]+/g, '-') || 'native';
}

function defaultUserConfig(): string {
  return process.env.DOCKER_CONFIG || path.join(os.homedir(), '.docker');
}

/** The fields of docker's config.json this file reads or writes; the rest is carried over as it is. */
interface DockerConfigFile {
  auths?: Record<string, unknown>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
  currentContext?: string;
  [field: string]: unknown;
}

async function readUserConfig(dir: string, warnings: string[]): Promise<DockerConfigFile> {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return {}; // no config yet: nobody logged in
  }
  try {
    const v: unknown = JSON.parse(text);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as DockerConfigFile;
  } catch {
    // fall through
  }
  warnings.push(`${file} is not valid JSON; earlier docker logins are not carried over to the builder's config.`);
  return {};
}

// The private config: the user's, minus what would break it here, plus the cache registry's login.
function privateConfig(user: DockerConfigFile, host: string, auth: string): DockerConfigFile {
  const cfg: DockerConfigFile = { ...user, auths: { ...(user.auths ?? {}), [host]: { auth } } };
  // Names a context of the user's store, which the private store does not have.
  delete cfg.currentContext;
  // With a credsStore or credHelpers, docker asks the helper first and never reads `auths`; an empty helper for
  // this host selects the file store (docker/cli configfile getConfiguredCredentialStore).
  if (cfg.credsStore || cfg.credHelpers) cfg.credHelpers = { ...(cfg.credHelpers ?? {}), [host]: '' };
  return cfg;
}

function must(r: CommandResult, what: string): void {
  if (r.code !== 0) throw new RunnerConfigError(`${what} failed: ${(r.stderr || r.stdout || r.error || `exit ${r.code}`).trim()}`);
}

function checkLease(lease: LeaseMsg): { kind: BuilderEndpointMsg['kind'] } {
  if (!lease.tls?.caPem || !lease.tls.certPem || !lease.tls.keyPem) {
    throw new RunnerConfigError(`Lease ${lease.id} carries no TLS material: only Provision's reply has it, so configure the runner from that reply.`);
  }
  if (lease.builders.length === 0) throw new RunnerConfigError(`Lease ${lease.id} has no builders.`);
  const kinds = new Set(lease.builders.map((b) => (b.kind === 'ENDPOINT_KIND_BUILDKIT' ? 'buildkit' : 'docker')));
  if (kinds.size > 1) throw new RunnerConfigError(`Lease ${lease.id} mixes Docker Engine and BuildKit endpoints; one kind per lease is supported.`);
  return { kind: lease.builders[0].kind };
}

export async function configureRunner(lease: LeaseMsg, name: string, opts: ConfigureOptions): Promise<RunnerConfig> {
  const { kind } = checkLease(lease);
  const run = opts.run ?? runDocker;
  const buildkit = kind === 'ENDPOINT_KIND_BUILDKIT';
  if (buildkit && !opts.docker.buildx) {
    throw new RunnerConfigError(
      `Lease ${lease.id} offers a BuildKit endpoint, which only buildx can drive, and ${opts.docker.path} has no buildx plugin. Install buildx, or use a control plane with Docker Engine builders.`
    );
  }
  const warnings: string[] = [];
  await fsp.mkdir(opts.tempRoot, { recursive: true });
  const dir = await fsp.mkdtemp(path.join(opts.tempRoot, 'buildcloud-'));
  try {
    await fsp.chmod(dir, 0o700);
    const certDir = path.join(dir, 'certs');
    const dockerConfig = path.join(dir, 'docker-config');
    await fsp.mkdir(certDir, { mode: 0o700 });
    await fsp.mkdir(dockerConfig, { mode: 0o700 });
    const tls = lease.tls!;
    for (const [file, pem] of [
      ['ca.pem', tls.caPem],
      ['cert.pem', tls.certPem],
      ['key.pem', tls.keyPem]
    ]) {
      await fsp.writeFile(path.join(certDir, file), pem, { mode: 0o600 });
    }

    const userDir = opts.userDockerConfig ?? defaultUserConfig();
    const user = await readUserConfig(userDir, warnings);
    // Log maskers match line by line, so the key's body lines are secrets of their own (not its BEGIN/END lines).
    const secrets = [tls.keyPem, ...tls.keyPem.split(/\r?\n/).filter((l) => l.trim() && !l.startsWith('-----'))];
    let cfgJson = { ...user };
    delete cfgJson.currentContext;
    const reg = lease.cache?.registry;
    if (reg?.host) {
      const auth = Buffer.from(`${reg.username}:${reg.password}`).toString('base64');
      cfgJson = privateConfig(user, reg.host, auth);
      if (reg.password) secrets.push(reg.password, auth);
    }
    await fsp.writeFile(path.join(dockerConfig, 'config.json'), JSON.stringify(cfgJson, null, 2), { mode: 0o600 });
    // docker finds CLI plugins (buildx) in $DOCKER_CONFIG/cli-plugins: keep a user-installed buildx reachable.
    const plugins = path.join(userDir, 'cli-plugins');
    if (fs.existsSync(plugins)) await fsp.symlink(plugins, path.join(dockerConfig, 'cli-plugins'));

    const env = dockerEnv(process.env, { DOCKER_CONFIG: dockerConfig, DOCKER_HOST: undefined });
    const contexts: string[] = [];
    let buildxBuilder = '';
    if (buildkit) {
      buildxBuilder = name;
      for (const args of buildxCreateArgs(name, lease.builders, certDir)) must(await run(opts.docker.path, args, env), `docker ${args.slice(0, 2).join(' ')}`);
    } else {
      // A client that reads the known store format gets its contexts written as files (docker-context.ts): no
      // process. Any other client makes them itself.
      const direct = contextStoreKnown(opts.docker.version);
      for (const [i, b] of lease.builders.entries()) {
        const ctx = i === 0 ? name : `${name}-${platformSlug(b.platform)}`;
        if (direct) await writeDockerContext(dockerConfig, ctx, b.address, certDir);
        else must(await run(opts.docker.path, contextCreateArgs(ctx, b.address, certDir), env), `docker context create ${ctx}`);
        contexts.push(ctx);
      }
    }
    const contextName = contexts[0] ?? '';
    // buildx lists every docker context as a builder of the docker driver, named after the context
    // (buildx builder/builder.go GetBuilders, store/storeutil GetNodeGroup): the context name is the builder name.
    const builderName = buildkit ? buildxBuilder : contextName;
    const runnerEnv: RunnerEnv = { DOCKER_CONFIG: dockerConfig, DOCKER_BUILDKIT: '1' };
    if (!buildkit) Object.assign(runnerEnv, { DOCKER_HOST: lease.builders[0].address, DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: certDir });
    if (opts.docker.buildx) runnerEnv.BUILDX_BUILDER = builderName;
    return {
      name,
      dir,
      certDir,
      dockerConfig,
      contextName,
      contexts,
      buildxBuilder,
      builderName,
      driver: buildkit ? 'remote' : 'docker',
      env: runnerEnv,
      secrets,
      warnings
    };
  } catch (err) {
    await fsp.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Removes the builder and the directory, and with it the contexts: they live in the private DOCKER_CONFIG inside it
 * (contexts/meta and contexts/tls), so removing the directory is `docker context rm` without a process. A buildx
 * remote-driver builder is still removed with `buildx rm`, buildx's own way. Never throws: problems come back as
 * warnings.
 */
export async function cleanupRunner(
  cfg: RunnerConfig,
  docker: ResolvedDocker,
  run: (file: string, args: string[], env: NodeJS.ProcessEnv) => Promise<CommandResult> = runDocker
): Promise<string[]> {
  const warnings: string[] = [];
  if (!fs.existsSync(cfg.dir)) return warnings; // already cleaned (post step run twice)
  const env = dockerEnv(process.env, { DOCKER_CONFIG: cfg.dockerConfig, DOCKER_HOST: undefined });
  const attempt = async (args: string[]) => {
    try {
      const r = await run(docker.path, args, env);
      if (r.code !== 0) warnings.push(`docker ${args.join(' ')} failed: ${(r.stderr || r.stdout || r.error || '').trim()}`);
    } catch (err) {
      warnings.push(`docker ${args.join(' ')} failed: ${(err as Error).message}`);
    }
  };
  // A docker-driver builder is its context (`buildx rm` refuses it): it goes with the directory.
  if (cfg.buildxBuilder) await attempt(['buildx', 'rm', cfg.buildxBuilder]);
  try {
    await fsp.rm(cfg.dir, { recursive: true, force: true });
  } catch (err) {
    warnings.push(`could not remove ${cfg.dir}: ${(err as Error).message}`);
  }
  return warnings;
}
