// The import-boundary check (.dependency-cruiser.cjs, run by .ci/run) catches the arrows that must never exist: a copy
// of src/ gets one bad import per rule, and the checker must name each, while the untouched copy passes.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '../..');
const DEPCRUISE = path.join(ROOT, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');

interface Violation {
  rule: string;
  from: string;
  to: string;
}

// Cruises `dir`/src (and harness/ when present) with the project's rules and the output CI reads (`err`: one
// "error <rule>: <from> → <to>" line per violation, exit status non-zero on any).
function cruise(dir: string): { status: number | null; violations: Violation[]; output: string } {
  const targets = ['src', ...(fs.existsSync(path.join(dir, 'harness')) ? ['harness'] : [])];
  const r = spawnSync(process.execPath, [DEPCRUISE, ...targets, '--config', '.dependency-cruiser.cjs', '--output-type', 'err'], {
    cwd: dir,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024
  });
  const output = `${r.stdout}${r.stderr}`;
  const violations = [...output.matchAll(/^\s*error (\S+): (\S+) → (\S+)$/gm)].map((m) => ({ rule: m[1], from: m[2], to: m[3] }));
  return { status: r.status, violations, output };
}

let work: string;

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-boundaries-'));
  fs.cpSync(path.join(ROOT, 'src'), path.join(work, 'src'), { recursive: true });
  if (fs.existsSync(path.join(ROOT, 'harness'))) fs.cpSync(path.join(ROOT, 'harness'), path.join(work, 'harness'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, '.dependency-cruiser.cjs'), path.join(work, '.dependency-cruiser.cjs'));
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

test('the tree as it is passes', () => {
  const r = cruise(work);
  expect(r.violations.map((v) => `${v.rule}: ${v.from} -> ${v.to}`)).toEqual([]);
  expect(r.output).toMatch(/no dependency violations found/);
  expect(r.status).toBe(0);
});

// [file to add, its import, the rule that must catch it]
const BAD: Array<[string, string, string]> = [
  ['src/core/injected-bad.ts', '../server/validate', 'core-not-to-server'],
  ['src/core/injected-github.ts', '../github/state', 'core-not-to-github'],
  ['src/core/injected-cli.ts', '../cli/errors', 'core-not-to-cli'],
  ['src/github/injected-bad.ts', '../server/config', 'github-not-to-server'],
  ['src/server/injected-bad.ts', '../github/state', 'server-not-to-github'],
  ['src/cli/runner-injected.ts', '../server/config', 'runner-cli-not-to-server'],
  ['src/cli/ci-injected.ts', '../server/config', 'runner-cli-not-to-server'],
  ['src/contract/injected-bad.ts', '../core/backoff', 'contract-is-a-leaf']
];

test('an injected bad import fails the check and is named, one per forbidden arrow', () => {
  for (const [file, spec] of BAD) {
    // A type-only import is an arrow too: the runner must not stand on a type of the server either.
    fs.writeFileSync(path.join(work, file), `import type * as bad from '${spec}';\nexport type Bad = typeof bad;\n`);
  }
  // And a detour: a runner CLI file importing a harmless-looking module of its own that imports the server.
  fs.writeFileSync(path.join(work, 'src/cli/detour.ts'), `export { defaultStateDir } from '../server/config';\n`);
  fs.writeFileSync(path.join(work, 'src/cli/runner-detour.ts'), `export * from './detour';\n`);
  try {
    const r = cruise(work);
    expect(r.status).not.toBe(0);
    const found = r.violations.map((v) => `${v.rule} ${v.from}`);
    for (const [file, , rule] of BAD) expect(found).toContain(`${rule} ${file}`);
    expect(found).toContain('runner-not-reaching-server src/cli/runner-detour.ts');
  } finally {
    for (const [file] of BAD) fs.rmSync(path.join(work, file), { force: true });
    fs.rmSync(path.join(work, 'src/cli/detour.ts'), { force: true });
    fs.rmSync(path.join(work, 'src/cli/runner-detour.ts'), { force: true });
  }
});
