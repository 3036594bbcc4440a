// Bundles the entry points into dist/ byte-reproducibly: no timestamps, no absolute paths, sorted inputs.
// - dist/runner.js: the runner CLI (setup, build, report), what @buildcloud/ci ships with dist/runner-steps.js;
//   no server, admin or demo code.
// - dist/cli.js: the operator's `buildcloud`, every command.
// - dist/github/{main,post,build}.js: the action's steps up to their first input check; dist/github/*-step.js: the
//   work of each; dist/github/actions-core.js: @actions/core (OIDC tokens, the job summary), on first use;
//   dist/github/spool-cache.js: @actions/cache, for carrying unsent usage records; dist/grpc-transport.js: the gRPC
//   client, for a gRPC endpoint only (the runner's and the action's steps both require it).
// Each small entry requires its heavy half at run time, only when it has work for it (issue 10: V8 compiles every
// byte of a script it loads, lazily evaluated or not).
// Minified, each with a sourcemap next to it; dist/licenses.txt lists every bundled package with its licence text.
// Everything is built into a temporary directory beside dist/ and renamed into place file by file, so a test
// running during a rebuild always finds every file (old or new), never a missing dist/.
import { build } from 'esbuild';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { generate } from './generate.mjs';

const entries = {
  cli: 'src/cli/index.ts',
  runner: 'src/cli/runner.ts',
  'runner-steps': 'src/cli/runner-steps.ts',
  'grpc-transport': 'src/core/grpc-transport.ts',
  'github/main': 'src/github/entries/main.ts',
  'github/post': 'src/github/entries/post.ts',
  'github/build': 'src/github/entries/build.ts',
  'github/main-step': 'src/github/main-step.ts',
  'github/post-step': 'src/github/post-step.ts',
  'github/build-step': 'src/github/build-step.ts',
  'github/actions-core': 'src/github/actions-core.ts',
  'github/spool-cache': 'src/github/spool-cache.ts'
};
const CLIS = new Set(['cli', 'runner']);
// What only the operator's dist/cli.js may bundle: the runner and the action run in every CI job.
const OPERATOR_ONLY = /^src\/(server|demo)\/|^harness\/|^src\/cli\/(serve|admin|usage|demo)\.ts$|node_modules\/(fastify|pino|better-sqlite3)\//;

// The seams between the halves: [importer, what it requires] → the bundle beside it that it requires at run time.
const APART = [
  ['src/github/load-steps.ts', './main-step', './main-step.js'],
  ['src/github/load-steps.ts', './post-step', './post-step.js'],
  ['src/github/load-steps.ts', './build-step', './build-step.js'],
  ['src/github/full-core.ts', './actions-core', './actions-core.js'],
  ['src/github/spool-carry.ts', './spool-cache', './spool-cache.js'],
  ['src/cli/runner.ts', './runner-steps', './runner-steps.js'],
  // @grpc/grpc-js and the protobuf runtime, for a gRPC endpoint only (an http(s):// one needs neither): one bundle,
  // dist/grpc-transport.js, for the runner's steps and (from dist/github/) the action's. The operator's CLI serves
  // gRPC anyway and keeps it inline.
  ['src/core/api-client.ts', './grpc-transport', './grpc-transport.js']
];
const apart = (entryName) => ({
  name: 'bundles-apart',
  setup(b) {
    b.onResolve({ filter: /^\.\/(main-step|post-step|build-step|actions-core|spool-cache|runner-steps|grpc-transport)$/ }, (args) => {
      if (entryName === 'cli' && args.path === './grpc-transport') return undefined;
      const hit = APART.find(([importer, spec]) => args.path === spec && args.importer.endsWith(importer.split('/').join(sep)));
      if (!hit) return undefined;
      const shared = hit[1] === './grpc-transport' && entryName.startsWith('github/');
      return { path: shared ? '../grpc-transport.js' : hit[2], external: true };
    });
  }
});

/** Builds every entry into `out` (a directory beside dist/, so sourcemap paths match); returns the metafiles. */
async function bundleAll(out) {
  const metas = [];
  for (const [name, entry] of Object.entries(entries)) {
    const r = await build({
      entryPoints: [entry],
      outfile: join(out, `${name}.js`),
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      // Native addon: loaded only by `serve`/`admin`, which run where `npm ci` built it.
      external: ['better-sqlite3'],
      plugins: [apart(name)],
      loader: { '.proto': 'text' },
      banner: { js: CLIS.has(name) ? '#!/usr/bin/env node' : '' },
      legalComments: 'none', // the notices are in dist/licenses.txt
      sourcemap: 'linked',
      sourcesContent: false, // the sources are in the repository at the commit that built them
      minify: true,
      // The control plane's libraries (fastify, pino) may read function names; the runner's and the action's do not.
      keepNames: name === 'cli',
      metafile: true,
      logLevel: 'warning',
      charset: 'utf8'
    });
    metas.push(r.metafile);
    if (name !== 'cli') {
      const stray = Object.keys(r.metafile.inputs).filter((i) => OPERATOR_ONLY.test(i));
      if (stray.length) throw new Error(`dist/${name}.js must not hold control-plane, admin or demo code, but bundles: ${stray.join(', ')}`);
    }
  }
  return metas;
}

// node_modules/<name> or node_modules/@scope/<name> (the last one in the path: nested copies are their own package).
function packageDirOf(input) {
  const parts = input.split('/');
  const i = parts.lastIndexOf('node_modules');
  if (i < 0) return null;
  const n = parts[i + 1]?.startsWith('@') ? 3 : 2;
  return parts.slice(0, i + n).join('/');
}

const LICENSE_FILE = /^(licen[cs]e|copying|notice)(\.(md|txt|markdown))?$/i;

/** The licence notices of every package any bundle holds, sorted by package directory: one deterministic text. */
export function licensesText(metas) {
  const dirs = new Set();
  for (const m of metas)
    for (const input of Object.keys(m.inputs)) {
      const d = packageDirOf(input);
      if (d) dirs.add(d);
    }
  const blocks = [];
  for (const d of [...dirs].sort()) {
    // A bundled subpath (node_modules/x/lib/y) can carry a package.json of its own; the package is its nearest one.
    const pkg = JSON.parse(readFileSync(join(d, 'package.json'), 'utf8'));
    const files = readdirSync(d)
      .filter((f) => LICENSE_FILE.test(f) && statSync(join(d, f)).isFile())
      .sort();
    const license = typeof pkg.license === 'string' ? pkg.license : (pkg.license?.type ?? (pkg.licenses ?? []).map((l) => l.type).join(' OR '));
    const texts = files.map((f) => readFileSync(join(d, f), 'utf8').replace(/\r\n/g, '\n').trim());
    blocks.push(
      [
        `${pkg.name}@${pkg.version}`,
        `License: ${license || 'UNKNOWN'}`,
        ...(texts.length ? texts : ['(the package ships no licence file; its package.json names the licence above)'])
      ].join('\n\n')
    );
  }
  return (
    `Third-party software bundled in dist/ (${blocks.length} packages), with each package's licence as it ships it.\n\n` +
    blocks.join('\n\n' + '-'.repeat(80) + '\n\n') +
    '\n'
  );
}

function filesUnder(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

await generate();

const tmp = mkdtempSync('.dist-build-');
try {
  const metas = await bundleAll(tmp);
  writeFileSync(join(tmp, 'licenses.txt'), licensesText(metas));
  const fresh = filesUnder(tmp);
  for (const f of fresh) {
    mkdirSync(dirname(join('dist', f)), { recursive: true });
    renameSync(join(tmp, f), join('dist', f));
  }
  const keep = new Set(fresh);
  for (const f of filesUnder('dist')) if (!keep.has(f)) rmSync(join('dist', f));
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
