// What `buildcloud setup | build | report` do once their command line is read (by commander or fastParse): the
// core for GitLab CI, CircleCI and any shell. Inputs are checked before the core loads, so a job missing one fails
// in Node's own start-up time; the core (docker client, gRPC client, metering) is required after that (issue 10).
import * as fs from 'fs';
import * as path from 'path';
import { buildSettings, setupSettings } from '../core/settings';
import { redactor } from '../core/build-secrets';
import { requireEndpoint } from '../core/endpoint';
import { detectProvider } from '../core/identity';
import { loadSession, SESSION_ENV, trustSessionCa } from '../core/session';
import { dotenvLines, exportLines, metricsReport, outputsAsEnv, reportValues, setupValues } from './ci-output';
import { CliError } from './errors';
import { getter } from './runner-args';

export type StepOptions = Record<string, unknown>;

const log = {
  info: (m: string) => process.stderr.write(`${m}\n`),
  warn: (m: string) => process.stderr.write(`warning: ${m}\n`),
  debug: (m: string) => (process.env.BUILDCLOUD_DEBUG ? process.stderr.write(`debug: ${m}\n`) : undefined)
};

function appendFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.appendFileSync(file, text, { mode: 0o600 });
}

function writeFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(file, text, { mode: 0o644 });
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** `buildcloud setup`: provisions, configures docker, writes the outputs where the flags say. Throws on failure. */
export async function runSetup(o: StepOptions): Promise<void> {
  const settings = setupSettings(getter(o, process.env));
  requireEndpoint(settings, process.env);
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy, as the core below (issue 10)
  const shell = require('./shell-env') as typeof import('./shell-env');
  const stale = shell.repairStaleShell(process.env);
  if (stale) log.warn(stale);
  // setup again without report: the earlier lease is released (as report would) rather than left billed until the
  // idle timeout; report's own lines (released, the summary) stay quiet, its problems are warnings.
  const earlier = await shell.releaseEarlierSession(process.env, async (s) => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy, as the core below (issue 10)
    const { report } = require('../core/report') as typeof import('../core/report');
    await report(s, { log: { ...log, info: log.debug } });
  });
  if (earlier) log.warn(earlier.warning);
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { setup } = require('../core/setup') as typeof import('../core/setup');
  const r = await setup(settings, { env: process.env, log, mask: () => undefined });
  const vars = { ...r.exportEnv, ...outputsAsEnv(r.outputs) };
  const exportFile = str(o.exportFile) || (detectProvider(process.env) === 'circleci' ? process.env.BASH_ENV : '');
  if (exportFile) appendFile(exportFile, exportLines(vars));
  if (o.dotenv) writeFile(str(o.dotenv), dotenvLines(outputsAsEnv(r.outputs)));
  // Typed (numbers, booleans, lists): docs/schemas/cli-setup.json; the env stays strings, as a shell reads it.
  if (o.json) process.stdout.write(JSON.stringify({ outputs: setupValues(r.outputs), env: r.exportEnv }) + '\n');
  log.info(`Build Cloud: builder ready at ${r.outputs['docker-host'] || 'the local docker (fallback)'}; session ${r.sessionFile}`);
  if (!exportFile && !o.json) {
    shell.rememberShell(r.session, vars, process.env, earlier?.shellRestore); // for `eval "$(buildcloud report)"` to restore the shell
    process.stdout.write(exportLines(vars));
  }
}

/** `buildcloud build`: builds on the session's builder; throws CliError (exit 1, or 130 when cancelled) on failure. */
export async function runBuild(o: StepOptions): Promise<void> {
  const session = loadSession(str(o.session) || process.env[SESSION_ENV]);
  trustSessionCa(session); // the CA setup trusted, for what build asks the control plane
  const settings = buildSettings(getter(o, process.env));
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { buildStep } = require('../core/build-step') as typeof import('../core/build-step');
  // No CI masks what the runner CLI prints (GitLab masks only its masked variables): secret values are redacted here.
  const redact = redactor(settings.secrets.map((s) => s.value));
  const r = await buildStep(session, settings, { log, io: { onLine: (l) => process.stderr.write(redact(l) + '\n') } });
  const vars = outputsAsEnv(r.outputs);
  if (o.dotenv) appendFile(str(o.dotenv), dotenvLines(vars));
  const exportFile = str(o.exportFile) || (detectProvider(process.env) === 'circleci' ? process.env.BASH_ENV : '');
  if (exportFile) appendFile(exportFile, exportLines(vars));
  // Typed (docs/schemas/cli-build.json); the dotenv and export lines above stay strings, as CI outputs are.
  if (o.json) process.stdout.write(JSON.stringify(r.values) + '\n');
  if (r.run.status !== 'success') {
    throw new CliError(
      r.run.status === 'cancelled' ? 'docker build was cancelled' : redact(r.run.failure?.message ?? `docker build failed (exit ${r.run.exitCode})`),
      r.run.status === 'cancelled' ? 130 : 1
    );
  }
  // The build succeeded but the push the user asked for did not go out: the job fails, saying which and why.
  if (r.pushError) throw new CliError(redact(r.pushError), 1);
  if (r.loadError) throw new CliError(r.loadError, 1);
}

/** `buildcloud report`: sends usage, releases the lease, writes the summary; its own problems are warnings. */
export async function runReport(o: StepOptions): Promise<void> {
  const file = str(o.session) || process.env[SESSION_ENV];
  if (!file || !fs.existsSync(file)) {
    log.info('Build Cloud: no session in this job (setup did not run or already reported); nothing to release.');
    return;
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { report } = require('../core/report') as typeof import('../core/report');
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
  const { totalsOf } = require('../core/summary') as typeof import('../core/summary');
  const session = loadSession(file);
  const r = await report(session, { log });
  const t = totalsOf(r.builds);
  const minutes = (r.billedSeconds ?? 0) / 60;
  const ratio = t.totalSteps ? t.cachedSteps / t.totalSteps : 0;
  if (o.summaryFile) writeFile(str(o.summaryFile), r.markdown);
  if (o.metrics) {
    writeFile(
      str(o.metrics),
      metricsReport({
        buildMinutes: minutes,
        builds: t.builds,
        totalSteps: t.totalSteps,
        cachedSteps: t.cachedSteps,
        deduplicatedSteps: t.deduplicatedSteps,
        cacheRatio: ratio,
        buildSeconds: t.durationMs / 1000
      })
    );
  }
  if (o.dotenv) {
    writeFile(
      str(o.dotenv),
      dotenvLines({
        BUILDCLOUD_LEASE_ID: session.lease?.id ?? '',
        BUILDCLOUD_BUILD_MINUTES: minutes.toFixed(2),
        BUILDCLOUD_BUILDS: String(t.builds),
        BUILDCLOUD_TOTAL_STEPS: String(t.totalSteps),
        BUILDCLOUD_CACHED_STEPS: String(t.cachedSteps),
        BUILDCLOUD_DEDUPLICATED_STEPS: String(t.deduplicatedSteps),
        BUILDCLOUD_CACHE_RATIO: ratio.toFixed(4)
      })
    );
  }
  if (o.json) {
    process.stdout.write(JSON.stringify(reportValues(r, ratio)) + '\n'); // docs/schemas/cli-report.json
  } else process.stderr.write(r.text + '\n');
  // Setup's export lines went to a shell: these put each variable back as it was before setup (src/cli/shell-env.ts).
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy, as the core above (issue 10)
  if (session.shellRestore && !o.json) process.stdout.write((require('./shell-env') as typeof import('./shell-env')).restoreLines(session.shellRestore));
}

export const RUN_STEP = { setup: runSetup, build: runBuild, report: runReport } as const;
