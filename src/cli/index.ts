// The `buildcloud` command. One error boundary: a known error prints its message and exits 1.
import { Command, CommanderError } from 'commander';
import { registerServe } from './serve';
import { registerAdmin } from './admin';
import { registerUsage } from './usage';
import { registerCi } from './ci';
import { registerDemo } from './demo';
import { reportError } from './errors';

export function program(): Command {
  const p = new Command('buildcloud')
    .description('Build Cloud for CI: ephemeral remote builders per pipeline, an org-wide layer cache, build-minute metering.')
    .version(process.env.BUILDCLOUD_VERSION || '0.1.0')
    .showHelpAfterError()
    .exitOverride();
  registerServe(p);
  registerAdmin(p);
  registerUsage(p);
  registerCi(p);
  registerDemo(p);
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
