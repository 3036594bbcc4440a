// The runner CLI's heavy half (dist/runner-steps.js beside dist/runner.js): the steps with the core they drive,
// and commander for help, errors and whatever fastParse leaves to it (evaluated only then). Loaded by runner.ts
// once the command line and the first inputs are known to be usable (issue 10).
import { RUN_STEP } from './ci-steps';
import { reportError } from './errors';
import { asTyped, type RunnerCommand } from './runner-args';

const DESCRIPTION = "Build Cloud for CI jobs: provision the pipeline's remote builder, build with the org cache, report usage.";

/** Runs `command` with options as fastParse read them; resolves to the exit code (errors printed by reportError). */
export async function runStep(command: RunnerCommand, opts: Record<string, unknown>): Promise<number> {
  try {
    await RUN_STEP[command](opts);
    return process.exitCode ? Number(process.exitCode) : 0;
  } catch (err) {
    return reportError(asTyped(err, opts)); // "(from the context argument)" when that is what the user typed
  }
}

/** Parses and runs `argv` (process.argv shape) with commander: help, `--version`, errors; resolves to the exit code. */
export async function viaCommander(argv: string[]): Promise<number> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { Command, CommanderError } = require('commander') as typeof import('commander');
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { registerCi } = require('./ci') as typeof import('./ci');
  const p = new Command('buildcloud')
    .description(DESCRIPTION)
    .version(process.env.BUILDCLOUD_VERSION || '0.1.0')
    .showHelpAfterError()
    .exitOverride();
  registerCi(p);
  try {
    await p.parseAsync(argv);
    return process.exitCode ? Number(process.exitCode) : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    return reportError(err);
  }
}
