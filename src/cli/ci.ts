// `buildcloud setup | build | report` for commander: the grammar comes from runner-args.ts (one definition, also
// read by the runner's fastParse), the work from ci-steps.ts. Commander serves the operator's `buildcloud`, and the
// runner's help, errors and any command line fastParse hands over.
import { Command, Option } from 'commander';
import type { InputDef } from '../core/inputs';
import { envName } from '../core/inputs';
import { RUN_STEP } from './ci-steps';
import { RUNNER_COMMANDS, cliInputs, inputFlag, type RunnerCommand } from './runner-args';

export { getter } from './runner-args';

/** One flag per input (GitHub-only ones left out); booleans may be given bare (`--push`) or with a value (`--push false`). */
export function addInputs(cmd: Command, defs: InputDef[]): void {
  for (const d of cliInputs(defs)) {
    if (d.name === 'no-cache') {
      cmd.addOption(new Option('--no-cache', `${d.description} (env ${envName(d.name)})`));
      continue;
    }
    const o = new Option(inputFlag(d), `${d.description} (env ${envName(d.name)}; default ${JSON.stringify(d.default)})`);
    if (d.options) o.choices(d.options);
    cmd.addOption(o);
  }
}

/** Registers `setup`, `build` and `report` on `program`. */
export function registerCi(program: Command): void {
  for (const name of Object.keys(RUNNER_COMMANDS) as RunnerCommand[]) {
    const spec = RUNNER_COMMANDS[name];
    const cmd = program.command(name).description(spec.description);
    for (const o of spec.options) {
      if (o.default === undefined) cmd.option(o.flags, o.description);
      else cmd.option(o.flags, o.description, o.default);
    }
    addInputs(cmd, spec.inputs);
    cmd.action((o: Record<string, unknown>) => RUN_STEP[name](o));
  }
}
