// Every BUILDCLOUD_* variable the product reads or writes, besides each input's own (inputs.ts: BUILDCLOUD_<INPUT>).
// One list serves three purposes: an unknown BUILDCLOUD_* variable in a job's environment is warned about with the
// closest known name (`BUILDCLOUD_TAG` meant `BUILDCLOUD_TAGS`: silently ignored before, issue 12), each command's
// `--help` lists what it reads, and __tests__/unit/env-vars.test.ts fails when src/, plugins/ or harness/ name a
// variable missing here. Add a variable here when code starts reading it.
import { BUILD_INPUTS, BUILD_OUTPUTS, SETUP_INPUTS, SETUP_OUTPUTS, envName } from './inputs';
import { closestName } from './closest-name';

/** A command of the `buildcloud` CLI, as `--help` groups the variables it reads. */
export type EnvCommand = 'setup' | 'build' | 'report' | 'serve' | 'admin' | 'usage' | 'demo';

/** A BUILDCLOUD_* variable that is not an input's. `commands` empty: written by Build Cloud, or internal; never listed. */
export interface EnvVarDef {
  name: string;
  commands: EnvCommand[];
  description: string;
}

const RUNNER: EnvCommand[] = ['setup', 'build', 'report'];
const ALL: EnvCommand[] = ['setup', 'build', 'report', 'serve', 'admin', 'usage', 'demo'];

export const ENV_VARS: EnvVarDef[] = [
  { name: 'BUILDCLOUD_SECRETS', commands: ['build'], description: "the 'secrets' input (ID=VALUE per line): a variable only, never a flag" },
  {
    name: 'BUILDCLOUD_ID_TOKEN',
    commands: ['setup'],
    description: "the job's OIDC token to exchange when no token is given (GitLab: declare it under id_tokens:)"
  },
  { name: 'BUILDCLOUD_PROJECT', commands: ['setup'], description: 'identity outside GitHub, GitLab and CircleCI: the project (cache scope)' },
  { name: 'BUILDCLOUD_BRANCH', commands: ['setup'], description: 'identity outside the three CIs: the branch whose cache this build writes' },
  {
    name: 'BUILDCLOUD_DEFAULT_BRANCH',
    commands: ['setup', 'build'],
    description: "the default branch, whose cache other branches start from (CircleCI names none; elsewhere: the CI's own)"
  },
  {
    name: 'BUILDCLOUD_PIPELINE_ID',
    commands: ['setup'],
    description: 'identity outside the three CIs: jobs with the same pipeline id share one builder'
  },
  {
    name: 'BUILDCLOUD_CA_FILE',
    commands: ['setup', 'report', 'usage'],
    description: "PEM file of the control plane's private CA, trusted besides the system's"
  },
  { name: 'BUILDCLOUD_DOCKER', commands: ['setup', 'build'], description: 'path of the docker client to use (default: the first usable one on PATH)' },
  {
    name: 'BUILDCLOUD_CACHE_PROBE_TIMEOUT',
    commands: ['build'],
    description: 'seconds the org cache registry has to answer before a build; no answer: the build runs without the org cache (default 5)'
  },
  {
    name: 'BUILDCLOUD_CACHE_EXPORT_TIMEOUT',
    commands: ['build'],
    description: "seconds a push of the build's org cache export may take before it is stopped with a warning (default 600)"
  },
  {
    name: 'BUILDCLOUD_SPOOL_DIR',
    commands: ['setup'],
    description: 'where usage records wait until the metering endpoint acknowledges them (default ~/.cache/buildcloud/spool)'
  },
  { name: 'BUILDCLOUD_SESSION', commands: RUNNER, description: 'the session file setup wrote (set by setup for the later steps)' },
  {
    name: 'BUILDCLOUD_RUNNER_',
    commands: ['build'],
    description:
      "BUILDCLOUD_RUNNER_DOCKER_HOST, _TLS_VERIFY, _CERT_PATH, _CONTEXT, _CONFIG: the runner's own docker settings before setup (set by setup; load uses them)"
  },
  { name: 'BUILDCLOUD_DEBUG', commands: ALL, description: 'any value: print debug lines and the stack of every error' },
  { name: 'BUILDCLOUD_STATE_DIR', commands: ['serve', 'admin', 'usage'], description: "the control plane's state directory (default ~/.buildcloud)" },
  { name: 'BUILDCLOUD_LOG_LEVEL', commands: ['serve'], description: 'log level: fatal, error, warn, info (default), debug, trace' },
  { name: 'BUILDCLOUD_HTTP_ENDPOINT', commands: ['usage'], description: "the control plane's HTTP endpoint (as --endpoint)" },
  // Written by Build Cloud, or internal: known (never warned about), not listed in help.
  { name: 'BUILDCLOUD_VERSION', commands: [], description: 'the version --version prints (set by packaging)' },
  { name: 'BUILDCLOUD_SERVING', commands: [], description: "set by serve in its own process: keep running after the command's action" },
  { name: 'BUILDCLOUD_CLI', commands: [], description: 'the GitLab component: the command that runs the CLI' },
  { name: 'BUILDCLOUD_GITLAB_DIR', commands: [], description: "the GitLab component: the job's scratch directory" },
  { name: 'BUILDCLOUD_SAVED_', commands: [], description: 'the CircleCI orb: docker settings saved before setup' },
  { name: 'BUILDCLOUD_BUILDER_PLATFORMS', commands: [], description: "setup's platforms output" },
  { name: 'BUILDCLOUD_FALLBACK_USED', commands: [], description: "setup's fallback output" },
  { name: 'BUILDCLOUD_BUILD_MINUTES', commands: [], description: "report's minutes (dotenv)" },
  { name: 'BUILDCLOUD_BUILDS', commands: [], description: "report's builds (dotenv)" },
  { name: 'BUILDCLOUD_ROOT', commands: [], description: 'the test and demo harness: the checkout to run' },
  { name: 'BUILDCLOUD_DEMO_TARGETS', commands: [], description: 'the demo: the images to build' }
];

const PREFIX = 'BUILDCLOUD_';
// Names docker users reach for that are too far from ours for the edit distance to find.
const HINTS: Record<string, string> = { BUILDCLOUD_DOCKERFILE: 'BUILDCLOUD_FILE', BUILDCLOUD_DOCKER_FILE: 'BUILDCLOUD_FILE' };

/** Every known BUILDCLOUD_* name: the inputs', the outputs' (a later job's environment holds them), the list above. */
export function knownEnvNames(): string[] {
  const names = [...SETUP_INPUTS, ...BUILD_INPUTS, ...SETUP_OUTPUTS, ...BUILD_OUTPUTS].map((d) => envName(d.name));
  for (const v of ENV_VARS) if (!v.name.endsWith('_')) names.push(v.name);
  return [...new Set(names)];
}

/** True for a variable Build Cloud reads or writes; names ending in _ in ENV_VARS are prefixes (BUILDCLOUD_RUNNER_*). */
export function isKnownEnvName(name: string, known: readonly string[] = knownEnvNames()): boolean {
  return known.includes(name) || ENV_VARS.some((v) => v.name.endsWith('_') && name.startsWith(v.name) && name.length > v.name.length);
}

/**
 * One warning per BUILDCLOUD_* variable in `env` that Build Cloud does not read (it would be ignored without a word),
 * naming the closest known variable. Only names are printed, never a value (it may be a secret). `command` names
 * the help that lists the variables.
 */
export function unknownEnvWarnings(env: NodeJS.ProcessEnv, command: string): string[] {
  const known = knownEnvNames();
  const out: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.toUpperCase().startsWith(PREFIX) || isKnownEnvName(name, known)) continue;
    const upper = name.toUpperCase();
    if (isKnownEnvName(upper, known)) {
      out.push(`${name} is ignored: variable names are case-sensitive. Did you mean ${upper}?`);
      continue;
    }
    const guess = HINTS[upper] ?? closestName(upper, known, PREFIX);
    out.push(
      guess
        ? `${name} is not a Build Cloud variable and is ignored. Did you mean ${guess}?`
        : `${name} is not a Build Cloud variable and is ignored; buildcloud ${command} --help lists the variables it reads.`
    );
  }
  return out;
}

/**
 * The lines a command prints before it runs: `warning: ` and each of unknownEnvWarnings. Said once per job: by `setup`
 * of the runner commands (build and report see the same variables), and by each operator command (serve, admin,
 * usage, demo), where a misspelt BUILDCLOUD_STATE_DIR would otherwise read another state directory without a word.
 */
export function envWarningLines(env: NodeJS.ProcessEnv, command: string): string[] {
  return unknownEnvWarnings(env, command).map((w) => `warning: ${w}`);
}

/** The variables `command` reads besides its inputs', for its `--help`. */
export function envVarsOf(command: EnvCommand): EnvVarDef[] {
  return ENV_VARS.filter((v) => v.commands.includes(command));
}
