// The runner CLI: `buildcloud setup | build | report`, what every GitLab and CircleCI job runs and what
// `@buildcloud/ci` ships (dist/runner.js). It never loads server, admin or demo code. This half reads a well-formed
// command line and checks the first inputs without loading commander, the core or the gRPC client: start-up is most
// of what a job failing on its inputs pays (issue 10). The rest is runner-steps.ts (dist/runner-steps.js).
import { buildSettings, setupSettings } from '../core/settings';
import { requireEndpoint } from '../core/endpoint';
import { preconnect } from '../core/preconnect';
import { loadSession, SESSION_ENV } from '../core/session';
import { reportError } from './errors';
import { envNotes, fastParse, getter, type RunnerCommand } from './runner-args';

/** The commands of the full CLI (dist/cli.js) that the runner CLI does not ship: they run where the control plane runs. */
export const OPERATOR_COMMANDS = ['serve', 'admin', 'usage', 'demo'];

/** What the runner CLI says to an operator command: where that command is, instead of a bare "unknown command". */
export function operatorCommandMessage(command: string): string {
  return (
    `buildcloud: '${command}' is an operator command of the full CLI (dist/cli.js), not of this runner CLI (setup, build, report ` +
    `for CI jobs): serve, admin, usage and demo run where the control plane runs. Run node dist/cli.js ${command} there, or put ` +
    `buildcloud on PATH with npm install --global . in a checkout.`
  );
}

function loadRunnerSteps(): typeof import('./runner-steps') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  return require('./runner-steps') as typeof import('./runner-steps');
}

/**
 * The checks each step makes before anything else (the steps make them again, at no cost): throws what they throw.
 * Returns setup's endpoint (the control plane it will call first); undefined for the other commands.
 */
export function checkInputs(command: RunnerCommand, opts: Record<string, unknown>, env: NodeJS.ProcessEnv): string | undefined {
  if (command === 'setup') return requireEndpoint(setupSettings(getter(opts, env)), env);
  if (command === 'build') {
    loadSession((typeof opts.session === 'string' && opts.session) || env[SESSION_ENV]);
    buildSettings(getter(opts, env));
  }
}

/** Runs the runner CLI on `argv` (process.argv shape); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (OPERATOR_COMMANDS.includes(argv[2])) {
    process.stderr.write(operatorCommandMessage(argv[2]) + '\n');
    return 1;
  }
  const parsed = fastParse(argv);
  if (!parsed) return loadRunnerSteps().viaCommander(argv);
  // Unknown BUILDCLOUD_* variables and flags overriding variables are said first (commander's path: ci.ts).
  const notes = envNotes(parsed.command, parsed.opts, process.env);
  if (notes.length) process.stderr.write(notes.join('\n') + '\n');
  let endpoint: string | undefined;
  try {
    endpoint = checkInputs(parsed.command, parsed.opts, process.env);
  } catch (err) {
    return reportError(err);
  }
  // setup's first request: its TLS handshake runs while the steps load (preconnect.ts).
  if (endpoint !== undefined && preconnect(endpoint)) {
    await new Promise((r) => setImmediate(r)); // one turn of the event loop: the connection opens and the handshake starts
  }
  return loadRunnerSteps().runStep(parsed.command, parsed.opts);
}

if (require.main === module) {
  main(process.argv).then((code) => process.exit(code));
}
