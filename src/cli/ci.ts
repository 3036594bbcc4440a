// `buildcloud setup | build | report` for commander: the grammar comes from runner-args.ts (one definition, also
// read by the runner's fastParse), the work from ci-steps.ts. Commander serves the operator's `buildcloud`, and the
// runner's help, errors and any command line fastParse hands over.
import { Command, InvalidArgumentError, Option } from 'commander';
import type { InputDef } from '../core/inputs';
import { envName } from '../core/inputs';
import { envVarsOf, type EnvCommand } from '../core/env-vars';
import { parseBoolean } from '../core/settings';
import { RUN_STEP } from './ci-steps';
import {
  RUNNER_COMMANDS,
  aliasesOf,
  booleanFlagError,
  camel,
  asTyped,
  cliInputs,
  envNotes,
  inputFlag,
  normalizeArgs,
  splitFlags,
  withPositional,
  type RunnerCommand
} from './runner-args';

export { getter } from './runner-args';

/** The help heading of the commands a CI job runs (the runner CLI, dist/runner.js, has only these). */
export const CI_GROUP = 'Commands for a CI job (setup, build, report: the runner CLI, also @buildcloud/ci):';

// A flag stored under a key of our choosing: a docker spelling shares its input's key (`--tag` adds to `tags`, in
// command-line order with `--tags`), and `--no-cache` is an input of its own (`noCache`), not commander's negation
// of `--cache`, so that it takes a value like every boolean (`--no-cache false`).
class KeyedOption extends Option {
  constructor(
    flags: string,
    description: string,
    private readonly key: string
  ) {
    super(flags, description);
    this.negate = false;
  }

  override attributeName(): string {
    return this.key;
  }
}

function booleanOption(flags: string, description: string, key: string): Option {
  const long = splitFlags(flags).names.at(-1)!;
  return new KeyedOption(flags, description, key).argParser((v: string) => {
    const b = parseBoolean(v);
    if (b === undefined) throw new InvalidArgumentError(booleanFlagError(long));
    return b;
  });
}

function listOption(flags: string, description: string, key: string, transform?: (v: string) => string): Option {
  return new KeyedOption(flags, description, key).argParser((v: string, previous: string[] | undefined) => [...(previous ?? []), transform ? transform(v) : v]);
}

/**
 * One flag per input (GitHub-only ones and `secrets` left out), and the docker spellings of those inputs. Booleans
 * take `--push`, `--push false` or `--push=false`; list flags accumulate.
 */
export function addInputs(cmd: Command, defs: InputDef[]): void {
  for (const d of cliInputs(defs)) {
    const key = camel(d.name);
    const env = `env ${envName(d.name)}`;
    if (d.type === 'boolean') cmd.addOption(booleanOption(inputFlag(d), `${d.description} (${env}; default ${d.default})`, key));
    else if (d.type === 'list') cmd.addOption(listOption(inputFlag(d), `${d.description} Repeatable: each adds entries. (${env})`, key));
    else {
      const o = new KeyedOption(inputFlag(d), `${d.description} (${env}; default ${JSON.stringify(d.default)})`, key);
      if (d.options) o.choices(d.options);
      cmd.addOption(o);
    }
  }
  for (const a of aliasesOf(defs)) cmd.addOption(listOption(a.flags, `${a.description} (to ${a.input})`, camel(a.input), a.transform));
}

/** The `Environment variables:` section of `command`'s help: what it reads besides each option's own variable. */
export function envHelp(command: EnvCommand, inputs = false): string {
  const vars = envVarsOf(command);
  const width = Math.max(0, ...vars.map((v) => v.name.length + (v.name.endsWith('_') ? 1 : 0)));
  const lines = vars.map((v) => `  ${(v.name.endsWith('_') ? `${v.name}*` : v.name).padEnd(width)}  ${v.description}`);
  const head = inputs
    ? 'Environment variables (each input option above also reads its own, named there; a flag wins over its variable):'
    : 'Environment variables:';
  return lines.length ? `\n${head}\n${lines.join('\n')}\n` : '';
}

// Commander that reads the command line as fastParse does: boolean values inline before parsing (runner-args.ts).
class RunnerCommandParser extends Command {
  override parseOptions(args: string[]): { operands: string[]; unknown: string[] } {
    return super.parseOptions(normalizeArgs(this.name() as RunnerCommand, args));
  }
}

/** Warnings (unknown BUILDCLOUD_* variables) and notes (a flag overriding its variable), to stderr. */
export function printEnvNotes(command: RunnerCommand, opts: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  const notes = envNotes(command, opts, env);
  if (notes.length) process.stderr.write(notes.join('\n') + '\n');
}

/** Registers `setup`, `build` and `report` on `program`, under the CI_GROUP heading. */
export function registerCi(program: Command): void {
  program.commandsGroup(CI_GROUP);
  for (const name of Object.keys(RUNNER_COMMANDS) as RunnerCommand[]) {
    const spec = RUNNER_COMMANDS[name];
    const cmd = new RunnerCommandParser(name).description(spec.description);
    cmd.copyInheritedSettings(program);
    // A mistake gets its message and one line pointing at the help, not the 60 lines of the help itself.
    cmd.showHelpAfterError(`see buildcloud ${name} --help`);
    for (const o of spec.options) {
      const key = camel(splitFlags(o.flags).names[0].slice(2));
      if (splitFlags(o.flags).arg === '[bool]') {
        const opt = booleanOption(o.flags, o.description, key);
        cmd.addOption(o.default === undefined ? opt : opt.default(o.default));
      } else cmd.addOption(new KeyedOption(o.flags, o.description, key));
    }
    addInputs(cmd, spec.inputs);
    if (spec.argument) cmd.argument(`[${spec.argument.name}]`, spec.argument.description);
    cmd.addHelpText('after', envHelp(name, spec.inputs.length > 0));
    cmd.action((...args: unknown[]) => {
      const o = (spec.argument ? args[1] : args[0]) as Record<string, unknown>;
      if (spec.argument) withPositional(name, o, args[0] as string | undefined);
      printEnvNotes(name, o, process.env);
      return RUN_STEP[name](o).catch((err: unknown) => {
        throw asTyped(err, o);
      });
    });
    program.addCommand(cmd);
  }
}
