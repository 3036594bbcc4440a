// Bundles the entry points into dist/ byte-reproducibly: no timestamps, no absolute paths, sorted inputs.
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { generate } from './generate.mjs';

const entries = {
  cli: 'src/cli/index.ts',
  'github/main': 'src/github/entries/main.ts',
  'github/post': 'src/github/entries/post.ts',
  'github/build': 'src/github/entries/build.ts'
};

await generate();

rmSync('dist', { recursive: true, force: true });
for (const [name, entry] of Object.entries(entries)) {
  await build({
    entryPoints: [entry],
    outfile: `dist/${name}.js`,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    // Native addon: loaded only by `serve`/`admin`, which run where `npm ci` built it.
    external: ['better-sqlite3'],
    loader: { '.proto': 'text' },
    banner: { js: name === 'cli' ? '#!/usr/bin/env node' : '' },
    legalComments: 'none',
    sourcemap: false,
    minify: false,
    logLevel: 'warning',
    charset: 'utf8'
  });
}
