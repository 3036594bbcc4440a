// The shell flow leaves the shell as it found it. `eval "$(buildcloud setup)"` exports DOCKER_HOST, DOCKER_CONFIG,
// BUILDCLOUD_SESSION and the outputs; setup records what each of those variables was before (set to a value, or
// unset) in the session, and `eval "$(buildcloud report)"` prints the `export`/`unset` lines that put every one back,
// so the next `docker` talks to the engine it talked to before, not to a released builder through removed certs,
// and the same snippet runs again in the same shell.
import * as fs from 'fs';
import { RUNNER_DOCKER_VARS, RUNNER_SHELL_VARS, runnerDockerVar } from '../core/runner-config';
import { loadSession, saveSession, SESSION_ENV, type Session, type ShellRestore } from '../core/session';
import { SETUP_OUTPUTS } from '../core/inputs';
import { outputsAsEnv, shellQuote } from './ci-output';

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * What each of `names` was in `env` before setup: its value, or null when unset (an empty value is a value). When
 * this job's shell already ran setup (`earlier`, the record that setup made), a name it recorded keeps that record:
 * report then restores the shell as it was before the first setup, not the first setup's builder.
 */
export function previousValues(names: string[], env: NodeJS.ProcessEnv, earlier?: ShellRestore): ShellRestore {
  const out: ShellRestore = {};
  for (const name of [...Object.keys(earlier ?? {}), ...names]) {
    if (name in out) continue;
    if (earlier && Object.prototype.hasOwnProperty.call(earlier, name)) out[name] = earlier[name];
    else out[name] = env[name] ?? null;
  }
  return out;
}

/** POSIX shell lines that restore the record: `export NAME='value'` for a value, `unset NAME` for an unset variable. */
export function restoreLines(record: ShellRestore): string {
  const lines = Object.entries(record).map(([name, value]) => {
    if (!NAME.test(name)) throw new Error(`not a variable name: ${name}`);
    return value === null ? `unset ${name}` : `export ${name}=${shellQuote(value)}`;
  });
  return lines.length ? `${lines.join('\n')}\n` : '';
}

/** The session of an earlier setup in this shell, when its file is still there (setup ran twice without report). */
function earlierSession(env: NodeJS.ProcessEnv): Session | null {
  const file = env[SESSION_ENV];
  if (!file || !fs.existsSync(file)) return null;
  try {
    return loadSession(file);
  } catch {
    return null;
  }
}

/**
 * Records, in the session setup just saved, what the variables it hands to the shell (`vars`) were in `env` before
 * it ran, so that report can print the lines that restore them (`earlier`: the record of a setup this shell ran
 * before, whose session releaseEarlierSession ended; else the one in the session BUILDCLOUD_SESSION names). Call it only when setup's `export` lines go to a
 * shell (stdout): with --export-file or --json nobody evals report's output.
 */
export function rememberShell(session: Session, vars: Record<string, string>, env: NodeJS.ProcessEnv, earlier?: ShellRestore): void {
  session.shellRestore = previousValues(Object.keys(vars), env, earlier ?? earlierSession(env)?.shellRestore);
  saveSession(session);
}

/** The variables `eval "$(buildcloud setup)"` sets besides the runner's own (DOCKER_*, BUILDX_BUILDER). */
const SETUP_SHELL_VARS = [SESSION_ENV, ...Object.keys(outputsAsEnv(Object.fromEntries(SETUP_OUTPUTS.map((o) => [o.name, '']))))];

/**
 * A shell where an earlier `buildcloud report` ran without `eval` still points DOCKER_* at a released builder and a
 * removed config (BUILDCLOUD_SESSION names a file that is gone): setup would then read docker's plugins from the
 * removed directory and blame a missing buildx. The values before that setup are known (it kept them as
 * BUILDCLOUD_RUNNER_*): they are put back in `env` before setup reads it, and the warning says how to avoid it.
 * Returns the warning, or '' when the shell is clean.
 */
export function repairStaleShell(env: NodeJS.ProcessEnv): string {
  const file = env[SESSION_ENV];
  if (!file || fs.existsSync(file)) return '';
  restoreFromRunnerRecord(env);
  return (
    `${SESSION_ENV} names a session that is gone (${file}): an earlier \`buildcloud report\` ran without restoring this shell. ` +
    `${[...RUNNER_DOCKER_VARS, ...RUNNER_SHELL_VARS].join(', ')} are back to what they were before that setup; run report as eval "$(buildcloud report)" to restore the shell.`
  );
}

/** DOCKER_* (and DOCKER_BUILDKIT, BUILDX_BUILDER) back from setup's BUILDCLOUD_RUNNER_* record; setup's own variables go. */
function restoreFromRunnerRecord(env: NodeJS.ProcessEnv): void {
  for (const name of [...RUNNER_DOCKER_VARS, ...RUNNER_SHELL_VARS]) {
    const before = env[runnerDockerVar(name)];
    if (before) env[name] = before;
    else delete env[name];
    delete env[runnerDockerVar(name)];
  }
  for (const name of SETUP_SHELL_VARS) delete env[name];
}

/** What releaseEarlierSession did: the warning line, and the first setup's record of the shell (if it made one). */
export interface EarlierSession {
  warning: string;
  shellRestore?: ShellRestore;
}

/**
 * setup run again in a shell whose earlier session no report ended (BUILDCLOUD_SESSION names a session file that is
 * still there): that lease would stay active, and billed, until the idle timeout, its key in the session directory.
 * Ends it as report would (`end`: release the lease, remove its files), then puts `env` back as it was before that
 * setup (its record of the shell, else BUILDCLOUD_RUNNER_*), so this setup starts from the shell as it was. Returns
 * the one-line warning and the first setup's record (which the new session keeps), or null when there is none.
 */
export async function releaseEarlierSession(env: NodeJS.ProcessEnv, end: (s: Session) => Promise<unknown>): Promise<EarlierSession | null> {
  const earlier = earlierSession(env);
  if (!earlier) return null;
  const file = env[SESSION_ENV];
  await end(earlier);
  // The record covers every variable that setup exported (BUILDCLOUD_RUNNER_*, the session, the outputs); a session
  // set up with --export-file has none, and BUILDCLOUD_RUNNER_* say what DOCKER_* were.
  if (earlier.shellRestore) {
    for (const [name, value] of Object.entries(earlier.shellRestore)) {
      if (value === null) delete env[name];
      else env[name] = value;
    }
  } else restoreFromRunnerRecord(env);
  const what = earlier.lease ? `lease ${earlier.lease.id}` : 'a session on the local docker';
  return {
    warning: `this shell still had a Build Cloud session that no report ended (${what}, ${file}): released it and removed its files before this setup. End each build with eval "$(buildcloud report)".`,
    shellRestore: earlier.shellRestore
  };
}
