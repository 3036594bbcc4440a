// What each reliability scenario (issue 14, __tests__/reliability/) reports for docs/reliability.md: what was
// injected, what was checked, and the figures the test measured. scripts/reliability-report.mjs joins these files
// with Jest's JSON results (pass or fail per test), so the table says what the last run showed, not what was meant.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The directory scenario files go to: BUILDCLOUD_RELIABILITY_DIR, else .ci/reliability under the repository. */
export const RELIABILITY_DIR = process.env.BUILDCLOUD_RELIABILITY_DIR || path.join(__dirname, '..', '..', '.ci', 'reliability');

/** One scenario's report. Figures are counts and durations the test measured (names say their units). */
export interface ScenarioReport {
  scenario: string; // short title, unique across the suite, e.g. "metering endpoint answers 500"
  injected: string; // the fault or load, as done by the test
  checked: string; // what the test asserted
  figures: Record<string, number | string | boolean>; // e.g. { recordsSent: 3, recordsAccepted: 3, duplicates: 0, leftovers: 0 }
}

/**
 * Writes `r` to RELIABILITY_DIR as <slug>.json with the current Jest test's full name (the report looks its result
 * up by that name). Call it from inside the test, after the measurements and before the assertions, so a failing
 * test still leaves its figures. Throws when called outside a test.
 */
export function reportScenario(r: ScenarioReport): void {
  const test = expect.getState().currentTestName;
  if (!test) throw new Error('reportScenario: call it from inside a test');
  const slug = r.scenario
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
  fs.mkdirSync(RELIABILITY_DIR, { recursive: true });
  fs.writeFileSync(path.join(RELIABILITY_DIR, `${slug}.json`), JSON.stringify({ ...r, test, file: expect.getState().testPath }, null, 2) + '\n');
}
