// `buildcloud setup | build | report`: the core for GitLab CI, CircleCI and any shell, with the same inputs as the
// GitHub Action (src/core/inputs.ts): each as a flag or a BUILDCLOUD_* variable, flags first.
import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import { BUILD_INPUTS, SETUP_INPUTS, envName, type InputDef } from '../core/inputs';
import { buildSettings, setupSettings, type Getter } from '../core/settings';
import { setup } from '../core/setup';
import { buildStep } from '../core/build-step';
import { report } from '../core/report';
import { loadSession, SESSION_ENV } from '../core/session';
import { totalsOf } from '../core/summary';
import { detectProvider } from '../core/identity';
import { dotenvLines, exportLines, metricsReport, outputsAsEnv } from './ci-output';
import { CliError } from './errors';

const log = {
  info: (m: string) => process.stderr.write(`${m}\n`),
  warn: (m: string) => process.stderr.write(`warning: ${m}\n`),
  debug: (m: string) => (process.env.BUILDCLOUD_DEBUG ? process.stderr.write(`debug: ${m}\n`) : undefined)
};

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

// One flag per input; booleans may be given bare (`--push`) or with a value (`--push false`).
export function addInputs(cmd: Command, defs: InputDef[]): void {
  for (const d of defs) {
    if (d.only === 'github') continue;
    if (d.name === 'no-cache') {
      cmd.addOption(new Option('--no-cache', `${d.description} (env ${envName(d.name)})`));
      continue;
    }
    const flag = d.type === 'boolean' ? `--${d.name} [bool]` : `--${d.name} <value>`;
    const o = new Option(flag, `${d.description} (env ${envName(d.name)}; default ${JSON.stringify(d.default)})`);
    if (d.options) o.choices(d.options);
    cmd.addOption(o);
  }
}

export function getter(opts: Record<string, unknown>, env: NodeJS.ProcessEnv): Getter {
  return (name) => {
    if (name === 'no-cache' && opts.cache === false) return 'true';
    const v = opts[camel(name)];
    if (v === true) return 'true';
    if (typeof v === 'string') return v;
    return env[envName(name)] ?? '';
  };
}

function appendFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.appendFileSync(file, text, { mode: 0o600 });
}

function writeFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(file, text, { mode: 0o644 });
}

export function registerCi(program: Command): void {
  const setupCmd = program
    .command('setup')
    .description("Provision the pipeline's remote builder and configure this job's docker client for it (run before building).")
    .option('--export-file <file>', 'append `export NAME=value` lines for later steps (CircleCI: default $BASH_ENV; GitLab: source it)')
    .option('--dotenv <file>', 'write the outputs as a dotenv file (GitLab artifacts:reports:dotenv)')
    .option('--json', 'print the outputs as JSON on stdout', false);
  addInputs(setupCmd, SETUP_INPUTS);
  setupCmd.action(async (o) => {
    const settings = setupSettings(getter(o, process.env));
    const r = await setup(settings, { env: process.env, log, mask: () => undefined });
    const vars = { ...r.exportEnv, ...outputsAsEnv(r.outputs) };
    const exportFile = o.exportFile || (detectProvider(process.env) === 'circleci' ? process.env.BASH_ENV : '');
    if (exportFile) appendFile(exportFile, exportLines(vars));
    if (o.dotenv) writeFile(o.dotenv, dotenvLines(outputsAsEnv(r.outputs)));
    if (o.json) process.stdout.write(JSON.stringify({ outputs: r.outputs, env: r.exportEnv }) + '\n');
    log.info(`Build Cloud: builder ready at ${r.outputs['docker-host'] || 'the local docker (fallback)'}; session ${r.sessionFile}`);
    if (!exportFile && !o.json) process.stdout.write(exportLines(vars));
  });

  const buildCmd = program
    .command('build')
    .description("Build an image on the job's builder with the org cache (after `buildcloud setup`).")
    .option('--session <file>', `the session setup made (env ${SESSION_ENV})`)
    .option('--dotenv <file>', 'append the outputs (BUILDCLOUD_DIGEST, BUILDCLOUD_CACHE_RATIO, ...) as dotenv lines')
    .option('--export-file <file>', 'append the outputs as `export` lines (CircleCI: default $BASH_ENV)')
    .option('--json', 'print the outputs as JSON on stdout', false);
  addInputs(buildCmd, BUILD_INPUTS);
  buildCmd.action(async (o) => {
    const session = loadSession(o.session || process.env[SESSION_ENV]);
    const settings = buildSettings(getter(o, process.env));
    const r = await buildStep(session, settings, { log, io: { onLine: (l) => process.stderr.write(l + '\n') } });
    const vars = outputsAsEnv(r.outputs);
    if (o.dotenv) appendFile(o.dotenv, dotenvLines(vars));
    const exportFile = o.exportFile || (detectProvider(process.env) === 'circleci' ? process.env.BASH_ENV : '');
    if (exportFile) appendFile(exportFile, exportLines(vars));
    if (o.json) process.stdout.write(JSON.stringify(r.outputs) + '\n');
    if (r.run.status !== 'success') {
      throw new CliError(`docker build ${r.run.status === 'cancelled' ? 'was cancelled' : `failed (exit ${r.run.exitCode})`}`, r.run.status === 'cancelled' ? 130 : 1);
    }
    if (r.loadError) throw new CliError(r.loadError, 1);
  });

  program
    .command('report')
    .description('Send usage records, release the lease, remove local certs and contexts, and write the summary. Run always, also after a failed or cancelled build; its own problems are warnings.')
    .option('--session <file>', `the session setup made (env ${SESSION_ENV})`)
    .option('--summary-file <file>', 'write the summary as markdown (CircleCI: store it as an artifact)')
    .option('--metrics <file>', 'write an OpenMetrics report (GitLab artifacts:reports:metrics)')
    .option('--dotenv <file>', 'write BUILDCLOUD_BUILD_MINUTES, BUILDCLOUD_CACHE_RATIO, ... as dotenv (GitLab artifacts:reports:dotenv)')
    .option('--json', 'print the result as JSON on stdout', false)
    .action(async (o) => {
      const file = o.session || process.env[SESSION_ENV];
      if (!file || !fs.existsSync(file)) {
        log.info('Build Cloud: no session in this job (setup did not run or already reported); nothing to release.');
        return;
      }
      const session = loadSession(file);
      const r = await report(session, { log });
      const t = totalsOf(r.builds);
      const minutes = (r.billedSeconds ?? 0) / 60;
      const ratio = t.totalSteps ? t.cachedSteps / t.totalSteps : 0;
      if (o.summaryFile) writeFile(o.summaryFile, r.markdown);
      if (o.metrics) {
        writeFile(o.metrics, metricsReport({ buildMinutes: minutes, builds: t.builds, totalSteps: t.totalSteps, cachedSteps: t.cachedSteps, cacheRatio: ratio, buildSeconds: t.durationMs / 1000 }));
      }
      if (o.dotenv) {
        writeFile(
          o.dotenv,
          dotenvLines({
            BUILDCLOUD_LEASE_ID: session.lease?.id ?? '',
            BUILDCLOUD_BUILD_MINUTES: minutes.toFixed(2),
            BUILDCLOUD_BUILDS: String(t.builds),
            BUILDCLOUD_TOTAL_STEPS: String(t.totalSteps),
            BUILDCLOUD_CACHED_STEPS: String(t.cachedSteps),
            BUILDCLOUD_CACHE_RATIO: ratio.toFixed(4)
          })
        );
      }
      if (o.json) process.stdout.write(JSON.stringify({ builds: r.builds, billedSeconds: r.billedSeconds, warnings: r.warnings, cacheRatio: ratio }) + '\n');
      else process.stderr.write(r.text + '\n');
    });
}
