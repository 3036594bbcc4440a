// The `buildcloud` command. One error boundary: a known error prints its message and exits 1.
import { Command, CommanderError } from 'commander';
import { registerServe } from './serve';
import { registerAdmin } from './admin';
import { registerUsage } from './usage';
import { envHelp, registerCi } from './ci';
import { registerDemo } from './demo';
import { reportError } from './errors';
import { envWarningLines } from '../core/env-vars';

/** Help heading of the commands an operator runs where the control plane runs. */
export const HOST_GROUP = "Commands for the control plane's host (serve, admin, usage):";
const DEMO_GROUP = 'Try it all on one machine:';
const OPERATOR_COMMANDS = ['serve', 'admin', 'usage', 'demo'];

/** The operator's `buildcloud` command: every command, grouped in --help by where it runs. */
export function program(): Command {
  const p = new Command('buildcloud')
    .description('Build Cloud for CI: ephemeral remote builders per pipeline, an org-wide layer cache, build-minute metering.')
    .version(process.env.BUILDCLOUD_VERSION || '0.1.0')
    .showHelpAfterError()
    .exitOverride();
  // Grouped by where a command runs (issue 12): the operator's machine, a CI job, or one machine trying it all.
  p.commandsGroup(HOST_GROUP);
  registerServe(p);
  registerAdmin(p);
  registerUsage(p);
  registerCi(p);
  p.commandsGroup(DEMO_GROUP);
  registerDemo(p);
  for (const c of p.commands) {
    const name = c.name();
    if (name === 'serve' || name === 'admin' || name === 'usage' || name === 'demo') c.addHelpText('after', envHelp(name));
  }
  // The operator's commands warn about unknown BUILDCLOUD_* variables as setup does (the runner commands: ci.ts), before
  // they run: a misspelt BUILDCLOUD_STATE_DIR on `admin org list` would otherwise read ~/.buildcloud without a word.
  p.hook('preAction', (_program, action) => {
    let top = action;
    while (top.parent && top.parent !== p) top = top.parent;
    if (!OPERATOR_COMMANDS.includes(top.name())) return;
    const lines = envWarningLines(process.env, top.name());
    if (lines.length) process.stderr.write(lines.join('\n') + '\n');
  });
  return p;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return process.exitCode ? Number(process.exitCode) : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    // Our errors are named classes whose message says what to fix; a stack is for bugs (or BUILDCLOUD_DEBUG).
    return reportError(err);
  }
}

if (require.main === module) {
  main(process.argv).then((code) => {
    // `serve` keeps running until signalled; everything else ends here.
    if (code !== 0 || !process.env.BUILDCLOUD_SERVING) process.exit(code);
  });
}
