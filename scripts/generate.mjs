// Generates action.yml and build/action.yml from the one input definition (src/core/inputs.ts).
// Run by scripts/build.mjs; CI rebuilds and fails if the committed files differ.
import { build } from 'esbuild';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import YAML from 'yaml';

const require = createRequire(import.meta.url);

export async function loadInputs() {
  const dir = mkdtempSync(join(tmpdir(), 'bc-gen-'));
  const out = join(dir, 'inputs.cjs');
  await build({ entryPoints: ['src/core/inputs.ts'], outfile: out, bundle: true, platform: 'node', format: 'cjs', logLevel: 'warning' });
  const mod = require(out);
  rmSync(dir, { recursive: true, force: true });
  return mod;
}

function inputsYaml(defs) {
  const o = {};
  for (const d of defs) {
    o[d.name] = { description: d.description + (d.options ? ` One of: ${d.options.join(', ')}.` : ''), required: false, default: d.githubDefault ?? d.default };
  }
  return o;
}

function outputsYaml(defs) {
  return Object.fromEntries(defs.map((d) => [d.name, { description: d.description }]));
}

const HEADER = '# Generated from src/core/inputs.ts by scripts/generate.mjs: edit that file, then npm run build.\n';

export async function generate() {
  const m = await loadInputs();
  const action = {
    name: 'Build Cloud for CI',
    description: 'Ephemeral remote builders per pipeline, an org-wide layer cache, and build minutes and cache ratios reported to metering.',
    author: 'Build Cloud',
    branding: { icon: 'cloud', color: 'blue' },
    inputs: inputsYaml(m.SETUP_INPUTS),
    outputs: outputsYaml(m.SETUP_OUTPUTS),
    runs: { using: 'node24', main: 'dist/github/main.js', post: 'dist/github/post.js', 'post-if': 'always()' }
  };
  const buildAction = {
    name: 'Build Cloud for CI: build',
    description: 'Build an image on the builder provisioned by the Build Cloud action, with the org-wide layer cache.',
    author: 'Build Cloud',
    branding: { icon: 'package', color: 'blue' },
    inputs: inputsYaml(m.BUILD_INPUTS),
    outputs: outputsYaml(m.BUILD_OUTPUTS),
    runs: { using: 'node24', main: '../dist/github/build.js' }
  };
  const opts = { lineWidth: 0 };
  writeFileSync('action.yml', HEADER + YAML.stringify(action, opts));
  mkdirSync('build', { recursive: true });
  writeFileSync('build/action.yml', HEADER + YAML.stringify(buildAction, opts));
}

if (import.meta.url === `file://${process.argv[1]}`) await generate();
