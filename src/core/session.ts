// What setup hands to later steps of the same job (build, report): one JSON file in the job's private dir
// (0600). Only its path travels through the CI's own channels (GitHub state and env, GitLab dotenv, $BASH_ENV).
import * as fs from 'fs';
import * as path from 'path';
import type { LeaseMsg } from '../contract/grpc';
import type { ResolvedDocker } from './docker-cli';
import type { Identity } from './identity';
import type { RunnerConfig } from './runner-config';
import type { BuildResult } from './summary';

export const SESSION_ENV = 'BUILDCLOUD_SESSION';

/** A variable's value before setup exported it: the value (empty is a value), or null when it was unset. */
export type ShellRestore = Record<string, string | null>;

export interface Session {
  version: 1;
  dir: string;
  identity: Identity;
  org: string;
  endpoint: string;
  token: string; // org token or access token: only in this 0600 file, never in logs or outputs
  meteringUrl: string;
  spoolDir: string;
  // The lease without its secrets (the key is in the cert dir, the registry password in DOCKER_CONFIG); null when
  // the build falls back to the runner's own Docker.
  lease: LeaseMsg | null;
  runner: RunnerConfig | null; // without secrets
  docker: ResolvedDocker;
  env: Record<string, string>; // what later steps need (DOCKER_HOST, DOCKER_CERT_PATH, DOCKER_CONFIG, ...)
  fallback: boolean;
  cache: boolean;
  summary: boolean;
  prComment: boolean;
  startedAtMs: number;
  // The private CA setup trusted for the control plane (BUILDCLOUD_CA_FILE, as an absolute path): report and build
  // trust it too when their own environment does not name one (trustSessionCa).
  caFile?: string;
  // Only when setup printed `export` lines for a shell to eval: what each of them was before, for report to put back
  // (src/cli/shell-env.ts).
  shellRestore?: ShellRestore;
}

/**
 * Trusts, in `env` (the process's, read by the control plane's clients), the private CA that setup trusted, when
 * `env` names none itself: a report step run without BUILDCLOUD_CA_FILE otherwise cannot verify the control plane
 * that gave the lease and cannot release it.
 */
export function trustSessionCa(s: Pick<Session, 'caFile'>, env: NodeJS.ProcessEnv = process.env): void {
  if (s.caFile && !env.BUILDCLOUD_CA_FILE) env.BUILDCLOUD_CA_FILE = s.caFile;
}

export class SessionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SessionError';
  }
}

export function sessionFile(dir: string): string {
  return path.join(dir, 'session.json');
}

// What goes to disk never holds the lease's private key or registry password: those live in their own 0600 files.
export function withoutSecrets(lease: LeaseMsg, runner: RunnerConfig): { lease: LeaseMsg; runner: RunnerConfig } {
  const cache = lease.cache ? { ...lease.cache, registry: lease.cache.registry ? { ...lease.cache.registry, password: '' } : null } : null;
  return { lease: { ...lease, tls: null, cache }, runner: { ...runner, secrets: [] } };
}

export function saveSession(s: Session): string {
  fs.mkdirSync(s.dir, { recursive: true, mode: 0o700 });
  const file = sessionFile(s.dir);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(s), { mode: 0o600 });
  fs.renameSync(tmp, file);
  return file;
}

export function loadSession(file: string | undefined): Session {
  if (!file)
    throw new SessionError(
      `No Build Cloud session in this job: ${SESSION_ENV} is not set. Run the setup step (the Build Cloud action, or buildcloud setup) earlier in the same job.`
    );
  let s: Session;
  try {
    s = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SessionError(`Cannot read the Build Cloud session ${file}: ${(err as Error).message}. Was it removed by an earlier report step?`);
  }
  if (s.version !== 1) throw new SessionError(`Unsupported session version in ${file}; setup and build must come from the same release.`);
  return s;
}

function buildsFile(s: Pick<Session, 'dir'>): string {
  return path.join(s.dir, 'builds.jsonl');
}

// Builds of this job, in order; one JSON line each (appends from separate processes do not interleave).
export function recordBuild(s: Pick<Session, 'dir'>, b: BuildResult): void {
  fs.appendFileSync(buildsFile(s), JSON.stringify(b) + '\n', { mode: 0o600 });
}

export function readBuilds(s: Pick<Session, 'dir'>): BuildResult[] {
  let text = '';
  try {
    text = fs.readFileSync(buildsFile(s), 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as BuildResult];
      } catch {
        return [];
      }
    });
}

export function nextBuildId(s: Pick<Session, 'dir' | 'identity'>): string {
  return `${s.identity.jobId}#${readBuilds(s).length + 1}`;
}
