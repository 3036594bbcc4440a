// The README's first command, for real: `buildcloud demo` runs three pipelines of four parallel jobs through the
// GitHub Action, the GitLab component and the CircleCI orb against the embedded control plane, and must end green.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, requireBinaries } from '../helpers/server';

test('npm run demo ends green, with the north star met and every untouched step reused', async () => {
  requireBinaries();
  const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bc-demo-')), 'report.html');
  const proc = spawn(process.execPath, [CLI, 'demo', '--report', report], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((resolve) => proc.on('close', resolve));
  if (code !== 0) throw new Error(`demo exited ${code}:\n${out.slice(-6000)}`);

  // Three pipelines, one per CI, four jobs each, every job on its pipeline's one builder.
  for (const ci of ['GitHub Actions', 'GitLab CI', 'CircleCI']) expect(out).toMatch(new RegExp(`\\(${ci}\\) — 4 jobs on 1 builder`));
  const builds = [...out.matchAll(/^\s+(ok|FAIL)\s.*cached (\d+)\/(\d+)(?:\s+\(untouched by the change: (\d+)\))?$/gm)];
  expect(builds).toHaveLength(12);
  expect(builds.every((m) => m[1] === 'ok')).toBe(true);
  for (const m of builds.filter((b) => b[4] !== undefined)) expect(Number(m[2])).toBeGreaterThanOrEqual(Number(m[4]));
  expect(builds.filter((m) => m[4] !== undefined)).toHaveLength(8);
  // The north star, on the eight builds after the first pipeline (which starts from an empty org cache).
  const share = /with at least one cached step: (\d+)% of the (\d+) after the first pipeline/.exec(out)!;
  expect(Number(share[2])).toBe(8);
  expect(Number(share[1])).toBeGreaterThanOrEqual(80);
  expect(fs.readFileSync(report, 'utf8')).toContain('id="kpi-north-star"');
  // Everything it started, it stopped.
  expect(out).toMatch(/Stopping the control plane/);
});
