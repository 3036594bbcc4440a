// Runs a TypeScript file (bench/, examples/) by bundling it with esbuild to a temp file first.
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';

const [entry, ...args] = process.argv.slice(2);
if (!entry) {
  console.error('usage: node scripts/run-ts.mjs FILE.ts [args...]');
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), 'bc-run-'));
const out = join(dir, 'main.cjs');
await build({
  entryPoints: [resolve(entry)],
  outfile: out,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  external: ['better-sqlite3'],
  loader: { '.proto': 'text' },
  logLevel: 'warning',
  nodePaths: [resolve('node_modules')]
});
const r = spawnSync(process.execPath, [out, ...args], { stdio: 'inherit', env: { ...process.env, BUILDCLOUD_ROOT: process.cwd() } });
rmSync(dir, { recursive: true, force: true });
process.exit(r.status ?? 1);
