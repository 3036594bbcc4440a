// The runner commands' grammar (`setup`, `build`, `report`) as data, read by both parsers: commander (ci.ts: help,
// errors, the operator's `buildcloud`) and `fastParse` here, which reads well-formed command lines without loading
// commander (about 7 ms of a CI job's start-up, issue 10). Anything fastParse is not sure of goes to commander, so
// help text and error messages have one source.
//
// The grammar (issue 12): list flags accumulate (`--build-args A=1 --build-args B=2` keeps both, as docker's
// `--build-arg` does); every boolean takes `--push`, `--push true|false` and `--push=false`; docker build's own
// spellings work (`-t`, `--tag`, `-f`, `--build-arg`, `--label`, `--platform`, `--secret id=ID,src=FILE`, a
// positional context); a flag wins over its BUILDCLOUD_* variable, and a note says so when both are set.
import * as fs from 'fs';
import * as path from 'path';
import { BUILD_INPUTS, SETUP_INPUTS, envName, type InputDef } from '../core/inputs';
import { SESSION_ENV } from '../core/session';
import { BOOLEAN_FORMS, InputError, parseBoolean, type Getter } from '../core/settings';
import { envWarningLines } from '../core/env-vars';
import { isRemoteContext } from '../core/build-checks';

/** A flag of a runner command that is not an input. `[bool]` flags take the same forms as boolean inputs. */
export interface FlagSpec {
  flags: string; // commander syntax: '--name <value>' or '--name [bool]'
  description: string;
  default?: boolean;
}

/** One runner command: its flags, its inputs (each a flag and a BUILDCLOUD_* variable) and its positional argument. */
export interface RunnerCommandSpec {
  description: string;
  options: FlagSpec[];
  inputs: InputDef[];
  argument?: { name: string; input: string; description: string }; // stored as that input's flag
}

export type RunnerCommand = 'setup' | 'build' | 'report';

const JSON_FLAG = (what: string): FlagSpec => ({ flags: '--json [bool]', description: `print ${what} as JSON on stdout`, default: false });

export const RUNNER_COMMANDS: Record<RunnerCommand, RunnerCommandSpec> = {
  setup: {
    description: "Provision the pipeline's remote builder and configure this job's docker client for it (run before building).",
    options: [
      { flags: '--export-file <file>', description: 'append `export NAME=value` lines for later steps (CircleCI: default $BASH_ENV; GitLab: source it)' },
      { flags: '--dotenv <file>', description: 'write the outputs as a dotenv file (GitLab artifacts:reports:dotenv)' },
      JSON_FLAG('the outputs')
    ],
    inputs: SETUP_INPUTS
  },
  build: {
    description: "Build an image on the job's builder with the org cache (after `buildcloud setup`).",
    options: [
      { flags: '--session <file>', description: `the session setup made (env ${SESSION_ENV})` },
      { flags: '--dotenv <file>', description: 'append the outputs (BUILDCLOUD_DIGEST, BUILDCLOUD_CACHE_RATIO, ...) as dotenv lines' },
      { flags: '--export-file <file>', description: 'append the outputs as `export` lines (CircleCI: default $BASH_ENV)' },
      JSON_FLAG('the outputs')
    ],
    inputs: BUILD_INPUTS,
    argument: { name: 'context', input: 'context', description: "build context directory, as docker build's PATH (the same as --context)" }
  },
  report: {
    description:
      'Send usage records, release the lease, remove local certs and contexts, and write the summary. Run always, also after a failed or cancelled build; its own problems are warnings.',
    options: [
      { flags: '--session <file>', description: `the session setup made (env ${SESSION_ENV})` },
      { flags: '--summary-file <file>', description: 'write the summary as markdown (CircleCI: store it as an artifact)' },
      { flags: '--metrics <file>', description: 'write an OpenMetrics report (GitLab artifacts:reports:metrics)' },
      { flags: '--dotenv <file>', description: 'write BUILDCLOUD_BUILD_MINUTES, BUILDCLOUD_CACHE_RATIO, ... as dotenv (GitLab artifacts:reports:dotenv)' },
      JSON_FLAG('the result')
    ],
    inputs: []
  }
};

/** An input's flag in commander syntax: booleans take an optional value (`--push`, `--push false`); `-f` is docker's. */
export function inputFlag(d: InputDef): string {
  if (d.type === 'boolean') return `--${d.name} [bool]`;
  if (d.name === 'file') return '-f, --file <value>';
  return `--${d.name} <value>`;
}

// Inputs with no flag: a secret's value on a command line is readable by every process of the runner (/proc/PID/cmdline)
// and lands in shell history and in CI logs that echo commands. They are read from their BUILDCLOUD_* variable only.
const ENV_ONLY = ['secrets'];

/** The inputs a CLI command takes as flags: GitHub-only ones (pr-comment, github-token) and `secrets` are left out. */
export function cliInputs(defs: InputDef[]): InputDef[] {
  return defs.filter((d) => d.only !== 'github' && !ENV_ONLY.includes(d.name));
}

/** `build-args` → `buildArgs`: the key under which both parsers store a flag's value. */
export function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** A docker build spelling of an input's flag: its values go to that input, in command-line order with its own. */
export interface AliasSpec {
  flags: string;
  input: string;
  description: string;
  transform?: (value: string) => string; // one flag value → the input's text for it
}

/**
 * `--build-arg` and `--label` take one entry each, as docker does, even when its value spans lines: such a value
 * becomes one double-quoted entry ("" for a quote inside), the form the input reads (list-entries.ts).
 */
export function oneEntry(value: string): string {
  return /[\r\n]/.test(value) || value.startsWith('"') ? `"${value.replace(/"/g, '""')}"` : value;
}

/**
 * docker build's `--secret id=ID,src=FILE` (also `source=`, `type=file`) as the secret-files entry `ID=FILE`. Other
 * forms (`env=VAR`, an id alone) have no secret-files equivalent: a value from a variable goes in BUILDCLOUD_SECRETS.
 * Throws InputError, never showing the text (it may hold something that was not meant as a path).
 */
export function dockerSecret(spec: string): string {
  const fields = new Map<string, string>();
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    fields.set(eq > 0 ? part.slice(0, eq).trim() : part.trim(), eq > 0 ? part.slice(eq + 1) : '');
  }
  const id = fields.get('id');
  const src = fields.get('src') ?? fields.get('source');
  const others = [...fields.keys()].filter((k) => !['id', 'src', 'source', 'type'].includes(k));
  if (!id || !src || (fields.get('type') ?? 'file') !== 'file' || others.length) {
    throw new InputError(
      `Invalid --secret: expected id=ID,src=FILE (docker build's file secret, passed on as the secret-files entry ID=FILE). A secret from a variable (env=) or an id alone has no flag: put ID=VALUE in BUILDCLOUD_SECRETS.`
    );
  }
  if (!isReadableFile(path.resolve(src))) {
    throw new InputError(`Invalid --secret id=${id}: its src is not a readable file. Expected id=ID,src=FILE of an existing file.`);
  }
  return `${id}=${src}`;
}

function isReadableFile(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.R_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * docker build's `--build-arg`: `KEY=VALUE` as one entry (oneEntry), or `NAME` alone for NAME's value in this
 * process's environment, as docker takes it. Throws InputError naming NAME when it is unset (never showing a value).
 */
export function buildArgEntry(value: string, env: NodeJS.ProcessEnv = process.env): string {
  if (value.includes('=')) return oneEntry(value);
  const name = value.trim();
  if (!ENV_NAME.test(name)) {
    throw new InputError(`Invalid --build-arg '${name}': expected KEY=VALUE, or NAME alone (letters, digits, _) to pass NAME's value from this environment.`);
  }
  const v = env[name];
  if (v === undefined) {
    throw new InputError(
      `--build-arg ${name} passes ${name}'s value from this environment, and ${name} is not set: export ${name}, or pass --build-arg ${name}=VALUE.`
    );
  }
  return oneEntry(`${name}=${v}`);
}

export const ALIASES: AliasSpec[] = [
  { flags: '-t, --tag <name>', input: 'tags', description: "docker build's spelling of --tags: one tag; repeatable" },
  {
    flags: '--build-arg <KEY=VALUE>',
    input: 'build-args',
    description: "one build argument, its value may span lines (NAME alone: NAME's value from this environment); repeatable",
    transform: buildArgEntry
  },
  { flags: '--label <KEY=VALUE>', input: 'labels', description: 'one label, its value may span lines; repeatable', transform: oneEntry },
  { flags: '--platform <os/arch>', input: 'platforms', description: "docker build's spelling of --platforms; repeatable" },
  {
    flags: '--secret <id=ID,src=FILE>',
    input: 'secret-files',
    description: "docker build's file secret, as the secret-files entry ID=FILE; repeatable",
    transform: dockerSecret
  }
];

/** The docker spellings of the inputs in `defs` (those whose input the command takes as a flag). */
export function aliasesOf(defs: InputDef[]): AliasSpec[] {
  const names = cliInputs(defs).map((d) => d.name);
  return ALIASES.filter((a) => names.includes(a.input));
}

interface Flag {
  key: string; // where both parsers store the value (commander's attribute name)
  kind: 'value' | 'list' | 'bool';
  choices?: string[];
  transform?: (value: string) => string;
}

/** `-t, --tag <name>` → ['-t', '--tag'], and the argument part. */
export function splitFlags(flags: string): { names: string[]; arg: string } {
  const [names, arg = ''] = flags.split(/ (?=[<[])/);
  return { names: names.split(/,\s*/), arg };
}

const tables = new Map<RunnerCommand, Map<string, Flag>>();

function flagTable(command: RunnerCommand): Map<string, Flag> {
  const cached = tables.get(command);
  if (cached) return cached;
  const spec = RUNNER_COMMANDS[command];
  const table = new Map<string, Flag>();
  const add = (flags: string, key: string, list: boolean, choices?: string[], transform?: (v: string) => string) => {
    const { names, arg } = splitFlags(flags);
    const kind = arg === '[bool]' ? 'bool' : list ? 'list' : 'value';
    for (const n of names) table.set(n, { key, kind, choices, transform });
  };
  for (const o of spec.options) add(o.flags, camel(splitFlags(o.flags).names[0].slice(2)), false);
  for (const d of cliInputs(spec.inputs)) add(inputFlag(d), camel(d.name), d.type === 'list', d.options);
  for (const a of aliasesOf(spec.inputs)) add(a.flags, camel(a.input), true, undefined, a.transform);
  tables.set(command, table);
  return table;
}

/** Whether `word` names a local directory (docker's reading of a word after a boolean flag: the context). */
export function isDirectory(word: string): boolean {
  try {
    return fs.statSync(word).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The command line with every boolean flag's value written inline (`--push` → `--push=true`, `--push false` →
 * `--push=false`), so neither parser can take a positional argument for a flag's value: `build --push .` builds `.`.
 * A word after a boolean flag is its value when it is a boolean word, or when the command takes no positional
 * argument; for `build`, a word that is not a boolean word is the context only when it is an existing directory (or
 * a remote context: a URL), as docker reads `docker build --push dir`, else the flag's value, refused naming the flag
 * and what it takes (`build --push bogus`). Values of other flags are passed over unread. Throws InputError when a
 * boolean flag left a word as the context and there is a second one (`build --push sub .`), naming that flag.
 */
export function normalizeArgs(command: RunnerCommand, args: string[], isDir: (word: string) => boolean = isDirectory): string[] {
  const table = flagTable(command);
  const positional = Boolean(RUNNER_COMMANDS[command].argument);
  const out: string[] = [];
  const words: string[] = []; // the positional arguments, as both parsers will see them
  let unknownFlag = false;
  let leftBy: string | undefined; // a boolean flag followed by a word it did not take
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--') {
      out.push(...args.slice(i));
      break;
    }
    const f = a.startsWith('-') && !a.includes('=') ? table.get(a) : undefined;
    if (!f) {
      out.push(a);
      if (!a.startsWith('-')) words.push(a);
      else if (!a.includes('=') || !table.has(a.slice(0, a.indexOf('=')))) unknownFlag = true;
    } else if (f.kind !== 'bool') out.push(a, ...(i + 1 < args.length ? [args[++i]] : []));
    else {
      const next = args[i + 1];
      const word = next !== undefined && !next.startsWith('-');
      const isValue = word && (parseBoolean(next) !== undefined || !positional || !(isDir(next) || isRemoteContext(next)));
      if (word && !isValue) leftBy ??= a;
      out.push(`${a}=${isValue ? args[++i] : 'true'}`);
    }
  }
  if (positional && leftBy && words.length > 1 && !unknownFlag) {
    const name = RUNNER_COMMANDS[command].argument!.name;
    throw new InputError(
      `Too many arguments for '${command}': ${words.map((w) => `'${w}'`).join(' and ')}, and it takes one ${name}. ${leftBy} took neither: ` +
        `it takes ${BOOLEAN_FORMS}, or stands alone for true. Give one ${name}: buildcloud ${command} ${leftBy} <${name}>.`
    );
  }
  return out;
}

/** The message of a boolean flag's bad value: names the flag and the accepted values. */
export function booleanFlagError(flag: string): string {
  return `Expected ${BOOLEAN_FORMS}, or ${flag} alone for true.`;
}

/** Where withPositional marks that the context came from the positional argument (so errors can say so). */
export const FROM_ARGUMENT = 'contextArgument';

/** Puts the positional context into `opts.context`; throws InputError when --context says otherwise. */
export function withPositional(command: RunnerCommand, opts: Record<string, unknown>, value: string | undefined): void {
  const arg = RUNNER_COMMANDS[command].argument;
  if (!arg || value === undefined) return;
  const key = camel(arg.input);
  const flag = opts[key];
  if (typeof flag === 'string' && flag !== value) {
    throw new InputError(`The ${arg.name} is given twice: '${value}' as the argument and '${flag}' as --${arg.input}. Give it once.`);
  }
  opts[key] = value;
  if (typeof flag !== 'string') opts[FROM_ARGUMENT] = true;
}

/**
 * A step's error as the user should read it: when the context came from the positional argument, the build step's
 * "(from --context / BUILDCLOUD_CONTEXT)" says "(from the context argument)", the spelling the user typed. Any other
 * error is returned as it is.
 */
export function asTyped(err: unknown, opts: Record<string, unknown>): unknown {
  if (!(err instanceof InputError) || opts[FROM_ARGUMENT] !== true) return err;
  const out = new InputError(err.message.replace(/\(from --context \/ BUILDCLOUD_CONTEXT\)/g, '(from the context argument)'));
  out.stack = err.stack;
  return out;
}

/**
 * Reads an input the way every runner command does: its flag first (as commander or fastParse stored it, camelCased:
 * a string, a boolean, or a list flag's values joined by newlines), else its BUILDCLOUD_* variable.
 */
export function getter(opts: Record<string, unknown>, env: NodeJS.ProcessEnv): Getter {
  const get: Getter = (name) => {
    const v = opts[camel(name)];
    if (typeof v === 'boolean') return String(v);
    if (Array.isArray(v)) return v.join('\n');
    if (typeof v === 'string') return v;
    return env[envName(name)] ?? '';
  };
  // How the user gave it, for errors: `--push` (with its docker spellings), `the context argument`, `BUILDCLOUD_PUSH`.
  get.source = (name) => {
    if (opts[camel(name)] !== undefined) {
      if (name === 'context' && opts[FROM_ARGUMENT] === true) return 'the context argument';
      const aliases = ALIASES.filter((a) => a.input === name).map((a) => splitFlags(a.flags).names.at(-1)!);
      return [`--${name}`, ...aliases].join(' / ');
    }
    return env[envName(name)] ? envName(name) : undefined;
  };
  return get;
}

/**
 * What the command should say before it runs: for setup, a warning for each unknown BUILDCLOUD_* variable (with the
 * closest known name), and for every command a note for each input given both as a flag and, differently, as its variable (the flag wins).
 * Names only, never a value.
 */
export function envNotes(command: RunnerCommand, opts: Record<string, unknown>, env: NodeJS.ProcessEnv): string[] {
  // Unknown variables once per job: setup's (build and report of the same job see the same environment).
  const out = command === 'setup' ? envWarningLines(env, command) : [];
  const spec = RUNNER_COMMANDS[command];
  const fromFlags = getter(opts, {});
  for (const d of cliInputs(spec.inputs)) {
    const variable = envName(d.name);
    const fromEnv = (env[variable] ?? '').trim();
    if (opts[camel(d.name)] === undefined || !fromEnv) continue;
    const given = fromFlags(d.name).trim();
    if (d.type === 'boolean' ? parseBoolean(given) === parseBoolean(fromEnv) : given === fromEnv) continue;
    const spellings = [
      `--${d.name}`,
      ...aliasesOf(spec.inputs)
        .filter((a) => a.input === d.name)
        .flatMap((a) => splitFlags(a.flags).names)
    ];
    if (spec.argument?.input === d.name) spellings.push(`the ${spec.argument.name} argument`);
    out.push(`note: ${spellings.join(' / ')} and ${variable} are both set, to different values: the flag wins and ${variable} is ignored.`);
  }
  return out;
}

/**
 * Parses `argv` (process.argv: node, script, command, flags...) the way commander would for a well-formed runner
 * command line, and returns null for anything else (no or another command, help, version, unknown flags, a bad
 * choice or boolean, a second positional argument, `--`, a value that looks like a flag, a short flag with its value
 * attached): the caller hands those to commander, whose help and error messages are the CLI's. Option values as
 * commander stores them: strings, booleans, arrays for list flags, and each spec's default (`--json`: false).
 */
export function fastParse(argv: string[]): { command: RunnerCommand; opts: Record<string, unknown> } | null {
  const [command, ...raw] = argv.slice(2);
  if (!Object.prototype.hasOwnProperty.call(RUNNER_COMMANDS, command)) return null;
  const name = command as RunnerCommand;
  const spec = RUNNER_COMMANDS[name];
  const table = flagTable(name);
  let rest: string[];
  try {
    rest = normalizeArgs(name, raw);
  } catch {
    return null; // commander says why
  }
  const opts: Record<string, unknown> = {};
  for (const o of spec.options) if (o.default !== undefined) opts[camel(splitFlags(o.flags).names[0].slice(2))] = o.default;
  let positional: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--' || a === '-') return null;
    if (!a.startsWith('-')) {
      if (!spec.argument || positional !== undefined) return null;
      positional = a;
      continue;
    }
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const f = table.get(eq > 0 ? a.slice(0, eq) : a);
    if (!f) return null;
    let value: string;
    if (eq > 0) value = a.slice(eq + 1);
    else {
      const next = rest[i + 1];
      if (f.kind === 'bool' || next === undefined || next.startsWith('-')) return null;
      value = rest[++i];
    }
    if (f.kind === 'bool') {
      const b = parseBoolean(value);
      if (b === undefined) return null;
      opts[f.key] = b;
    } else if (f.choices && !f.choices.includes(value)) return null;
    else if (f.kind === 'list') {
      try {
        opts[f.key] = [...((opts[f.key] as string[] | undefined) ?? []), f.transform ? f.transform(value) : value];
      } catch {
        return null;
      }
    } else opts[f.key] = value;
  }
  try {
    withPositional(name, opts, positional);
  } catch {
    return null;
  }
  return { command: name, opts };
}
