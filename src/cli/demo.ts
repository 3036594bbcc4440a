// `buildcloud demo`: a thin operator command over the test harness (harness/demo.ts), loaded only when it runs. The
// runner CLI never registers it, so neither the harness nor the CI emulators ship in @buildcloud/ci.
import type { Command } from 'commander';
import * as path from 'path';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'Run the whole product on this machine: the embedded control plane, real builders and registry, and three pipelines of four parallel CI jobs; print a report and write it as HTML. Needs root and scripts/setup.sh.'
    )
    .option('--report <file>', 'where to write the HTML report', 'buildcloud-demo-report.html')
    .option('--keep', 'keep the temporary state and workspace for inspection', false)
    .action(async (o) => {
      const { runDemo } = await import('../../harness/demo');
      const log = (m: string) => process.stderr.write(`[demo] ${m}\n`);
      process.exitCode = await runDemo({ reportFile: path.resolve(o.report), keep: Boolean(o.keep), log });
    });
}
