// The runner commands' grammar (`setup`, `build`, `report`) as data, read by both parsers: commander (ci.ts: help,
// errors, the operator's `buildcloud`) and `fastParse` here, which reads well-formed command lines without loading
// commander (about 7 ms of a CI job's start-up, issue 10). Anything fastParse is not sure of goes to commander, so
// help text and error messages have one source.
import { BUILD_INPUTS, SETUP_INPUTS, envName, type InputDef } from '../core/inputs';
import { SESSION_ENV } from '../core/session';
import type { Getter } from '../core/settings';

export interface FlagSpec {
  flags: string; // commander syntax: '--name <value>', '--name [bool]', '--name', '--no-name'
  description: string;
  default?: boolean;
}

export interface RunnerCommandSpec {
  description: string;
  options: FlagSpec[];
  inputs: InputDef[];
}

export type RunnerCommand = 'setup' | 'build' | 'report';

export const RUNNER_COMMANDS: Record<RunnerCommand, RunnerCommandSpec> = {
  setup: {
    description: "Provision the pipeline's remote builder and configure this job's docker client for it (run before building).",
    options: [
      { flags: '--export-file <file>', description: 'append `export NAME=value` lines for later steps (CircleCI: default $BASH_ENV; GitLab: source it)' },
      { flags: '--dotenv <file>', description: 'write the outputs as a dotenv file (GitLab artifacts:reports:dotenv)' },
      { flags: '--json', description: 'print the outputs as JSON on stdout', default: false }
    ],
    inputs: SETUP_INPUTS
  },
  build: {
    description: "Build an image on the job's builder with the org cache (after `buildcloud setup`).",
    options: [
      { flags: '--session <file>', description: `the session setup made (env ${SESSION_ENV})` },
      { flags: '--dotenv <file>', description: 'append the outputs (BUILDCLOUD_DIGEST, BUILDCLOUD_CACHE_RATIO, ...) as dotenv lines' },
      { flags: '--export-file <file>', description: 'append the outputs as `export` lines (CircleCI: default $BASH_ENV)' },
      { flags: '--json', description: 'print the outputs as JSON on stdout', default: false }
    ],
    inputs: BUILD_INPUTS
  },
  report: {
    description:
      'Send usage records, release the lease, remove local certs and contexts, and write the summary. Run always, also after a failed or cancelled build; its own problems are warnings.',
    options: [
      { flags: '--session <file>', description: `the session setup made (env ${SESSION_ENV})` },
      { flags: '--summary-file <file>', description: 'write the summary as markdown (CircleCI: store it as an artifact)' },
      { flags: '--metrics <file>', description: 'write an OpenMetrics report (GitLab artifacts:reports:metrics)' },
      { flags: '--dotenv <file>', description: 'write BUILDCLOUD_BUILD_MINUTES, BUILDCLOUD_CACHE_RATIO, ... as dotenv (GitLab artifacts:reports:dotenv)' },
      { flags: '--json', description: 'print the result as JSON on stdout', default: false }
    ],
    inputs: []
  }
};

/** An input's flag in commander syntax: booleans take an optional value (`--push`, `--push false`). */
export function inputFlag(d: InputDef): string {
  if (d.name === 'no-cache') return '--no-cache';
  return d.type === 'boolean' ? `--${d.name} [bool]` : `--${d.name} <value>`;
}

// Inputs with no flag: a secret's value on a command line is readable by every process of the runner (/proc/PID/cmdline)
// and lands in shell history and in CI logs that echo commands. They are read from their BUILDCLOUD_* variable only.
const ENV_ONLY = ['secrets'];

/** The inputs a CLI command takes as flags: GitHub-only ones (pr-comment, github-token) and `secrets` are left out. */
export function cliInputs(defs: InputDef[]): InputDef[] {
  return defs.filter((d) => d.only !== 'github' && !ENV_ONLY.includes(d.name));
}

export function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Reads an input the way every runner command does: its flag first (as commander or fastParse stored it, camelCased),
 * else its BUILDCLOUD_* variable. `--no-cache` is stored as `cache: false`.
 */
export function getter(opts: Record<string, unknown>, env: NodeJS.ProcessEnv): Getter {
  return (name) => {
    if (name === 'no-cache' && opts.cache === false) return 'true';
    const v = opts[camel(name)];
    if (v === true) return 'true';
    if (typeof v === 'string') return v;
    return env[envName(name)] ?? '';
  };
}

interface Flag {
  key: string; // commander's attribute name
  kind: 'value' | 'optional' | 'switch' | 'negate';
  choices?: string[];
}

function flagTable(spec: RunnerCommandSpec): Map<string, Flag> {
  const table = new Map<string, Flag>();
  const add = (flags: string, choices?: string[]) => {
    const [flag, arg] = flags.split(' ');
    const negate = flag.startsWith('--no-');
    const name = negate ? flag.slice(5) : flag.slice(2);
    const kind = negate ? 'negate' : arg?.startsWith('<') ? 'value' : arg?.startsWith('[') ? 'optional' : 'switch';
    table.set(flag, { key: camel(name), kind, choices });
  };
  for (const o of spec.options) add(o.flags);
  for (const d of cliInputs(spec.inputs)) add(inputFlag(d), d.options);
  return table;
}

/**
 * Parses `argv` (process.argv: node, script, command, flags...) the way commander would for a well-formed runner
 * command line, and returns null for anything else (no or another command, help, version, unknown flags, a bad
 * choice, positional arguments, `--`, a value that looks like a flag): the caller hands those to commander, whose
 * help and error messages are the CLI's. Option values as commander stores them: strings, true for bare switches
 * and optional-value flags, false for `--no-x` (true without it), and each spec's default (`--json`: false) when absent.
 */
export function fastParse(argv: string[]): { command: RunnerCommand; opts: Record<string, unknown> } | null {
  const [command, ...rest] = argv.slice(2);
  if (!Object.prototype.hasOwnProperty.call(RUNNER_COMMANDS, command)) return null;
  const spec = RUNNER_COMMANDS[command as RunnerCommand];
  const table = flagTable(spec);
  const opts: Record<string, unknown> = {};
  for (const o of spec.options) if (o.default !== undefined) opts[camel(o.flags.split(' ')[0].slice(2))] = o.default;
  for (const f of table.values()) if (f.kind === 'negate') opts[f.key] = true; // commander's default for `--no-x`
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--') || a === '--') return null;
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    const f = table.get(name);
    if (!f) return null;
    const inline = eq > 0 ? a.slice(eq + 1) : undefined;
    if (f.kind === 'switch' || f.kind === 'negate') {
      if (inline !== undefined) return null;
      opts[f.key] = f.kind === 'switch';
      continue;
    }
    let value: string | true;
    if (inline !== undefined) value = inline;
    else if (f.kind === 'value') {
      const next = rest[i + 1];
      if (next === undefined || next.startsWith('-')) return null;
      value = rest[++i];
    } else {
      const next = rest[i + 1];
      value = next !== undefined && !next.startsWith('-') ? rest[++i] : true;
    }
    if (f.choices && (typeof value !== 'string' || !f.choices.includes(value))) return null;
    opts[f.key] = value;
  }
  return { command: command as RunnerCommand, opts };
}
