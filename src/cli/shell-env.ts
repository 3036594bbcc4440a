// The shell flow leaves the shell as it found it. `eval "$(buildcloud setup)"` exports DOCKER_HOST, DOCKER_CONFIG,
// BUILDCLOUD_SESSION and the outputs; setup records what each of those variables was before (set to a value, or
// unset) in the session, and `eval "$(buildcloud report)"` prints the `export`/`unset` lines that put every one back,
// so the next `docker` talks to the engine it talked to before, not to a released builder through removed certs,
// and the same snippet runs again in the same shell.
import * as fs from 'fs';
import { RUNNER_DOCKER_VARS, runnerDockerVar } from '../core/runner-config';
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
 * it ran, so that report can print the lines that restore them. Call it only when setup's `export` lines go to a
 * shell (stdout): with --export-file or --json nobody evals report's output.
 */
export function rememberShell(session: Session, vars: Record<string, string>, env: NodeJS.ProcessEnv): void {
  const earlier = earlierSession(env);
  session.shellRestore = previousValues(Object.keys(vars), env, earlier?.shellRestore);
  saveSession(session);
}

/** The variables `eval "$(buildcloud setup)"` sets besides the runner's own (DOCKER_*, BUILDX_BUILDER). */
const SETUP_SHELL_VARS = [SESSION_ENV, ...Object.keys(outputsAsEnv(Object.fromEntries(SETUP_OUTPUTS.map((o) => [o.name, ''])))), 'BUILDX_BUILDER'];

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
  for (const name of RUNNER_DOCKER_VARS) {
    const before = env[runnerDockerVar(name)];
    if (before) env[name] = before;
    else delete env[name];
    delete env[runnerDockerVar(name)];
  }
  for (const name of SETUP_SHELL_VARS) delete env[name];
  return (
    `${SESSION_ENV} names a session that is gone (${file}): an earlier \`buildcloud report\` ran without restoring this shell. ` +
    `${RUNNER_DOCKER_VARS.join(', ')} are back to what they were before that setup; run report as eval "$(buildcloud report)" to restore the shell.`
  );
}
