// What every benchmark's JSON says about the run: the machine it ran on and the commit it measured.
import { execFileSync } from 'child_process';
import * as os from 'os';
import * as fs from 'fs';
import * as path from 'path';

/** CPU count and model, memory (GiB), Node, kernel, and the load average (1, 5, 15 min) when the figures were taken. */
export function machine(): { cpus: number; model: string; memGiB: number; node: string; kernel: string; loadavg: number[] } {
  return {
    cpus: os.cpus().length,
    model: os.cpus()[0]?.model ?? 'unknown',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    kernel: os.release(),
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100)
  };
}

/**
 * The commit the benchmark measured: BENCH_COMMIT when set (a checkout without .git, e.g. from `git archive`), else
 * HEAD of `root`, with `+uncommitted` when any of `paths` differs from it; 'unknown' outside a git checkout.
 */
export function commitOf(root: string, paths: string[]): string {
  if (process.env.BENCH_COMMIT) return process.env.BENCH_COMMIT;
  try {
    const sha = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', ...paths], { cwd: root, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha}+uncommitted` : sha;
  } catch {
    return 'unknown';
  }
}

/** bench/results of the checkout the bench runs from (BUILDCLOUD_ROOT, set by scripts/run-ts.mjs; else the cwd's). */
export function resultsDir(): string {
  const dir = path.join(process.env.BUILDCLOUD_ROOT || process.cwd(), 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}
