// Packs the CircleCI orb's sources (plugins/circleci/src, the orb development kit layout) into one orb.yml, the way
// `circleci orb pack` does; the circleci CLI cannot be installed offline. @orb.yml is the root; every
// commands|jobs|executors|examples/NAME.yml becomes the key NAME under its folder's key; a scalar that is exactly
// `<<include(path)>>` (path relative to the source root) is replaced by that file's text as a literal block scalar.
// Like the circleci CLI, an include must be the whole value, one per value, and a missing file is an error.
// Output is deterministic (sorted file names, fixed key order, "\n" line ends); `--check` fails when the committed
// file differs, so CI can prove orb.yml matches its sources.
//
//   node scripts/pack-orb.mjs [--check] [SRC_DIR] [OUT_FILE]
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_SRC = join(ROOT, 'plugins/circleci/src');
const DEFAULT_OUT = join(ROOT, 'plugins/circleci/orb.yml');
const COMPONENTS = ['commands', 'executors', 'jobs', 'examples'];
const INCLUDE = /<<\s*include\(([^)]*)\)\s*>>/g;

export class PackError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PackError';
  }
}

const rel = (p) => relative(process.cwd(), p) || '.';

function parseYaml(file) {
  const doc = YAML.parseDocument(readFileSync(file, 'utf8').replace(/\r\n/g, '\n'), { prettyErrors: true });
  if (doc.errors.length) throw new PackError(`${rel(file)}: ${doc.errors[0].message}`);
  return doc;
}

// Replaces include statements in every scalar below `node`, in place.
function inlineIncludes(node, srcDir, file) {
  YAML.visit(node, {
    Scalar(_key, scalar) {
      if (typeof scalar.value !== 'string' || !scalar.value.includes('include(')) return;
      const matches = [...scalar.value.matchAll(INCLUDE)];
      if (matches.length === 0) return;
      if (matches.length > 1) throw new PackError(`${rel(file)}: multiple include statements: '${scalar.value}'`);
      if (matches[0][0] !== scalar.value.trim()) throw new PackError(`${rel(file)}: entire string must be include statement: '${scalar.value}'`);
      const target = resolve(srcDir, matches[0][1].trim());
      if (target !== srcDir && !target.startsWith(srcDir + sep)) throw new PackError(`${rel(file)}: include outside the orb source: '${matches[0][1]}'`);
      if (!existsSync(target) || !statSync(target).isFile()) throw new PackError(`${rel(file)}: could not open ${rel(target)} for inclusion`);
      const text = readFileSync(target, 'utf8').replace(/\r\n/g, '\n');
      const out = new YAML.Scalar(text);
      out.type = YAML.Scalar.BLOCK_LITERAL;
      return out;
    }
  });
}

// A key with a blank line before it, so the packed file reads like its sources.
function spaced(key) {
  const k = new YAML.Scalar(key);
  k.spaceBefore = true;
  return k;
}

/** The packed orb as text. Throws PackError naming the file for anything circleci orb pack would refuse. */
export function packOrb(srcDir = DEFAULT_SRC) {
  srcDir = resolve(srcDir);
  const rootFile = join(srcDir, '@orb.yml');
  if (!existsSync(rootFile)) throw new PackError(`@orb.yml file not found in ${rel(srcDir)}, are you sure this is the Orb root?`);
  const out = parseYaml(rootFile);
  if (!YAML.isMap(out.contents)) throw new PackError(`${rel(rootFile)}: expected a mapping at the top level`);
  inlineIncludes(out.contents, srcDir, rootFile);

  for (const kind of COMPONENTS) {
    const dir = join(srcDir, kind);
    if (!existsSync(dir)) continue;
    const files = readdirSync(dir)
      .filter((f) => /\.ya?ml$/.test(f) && statSync(join(dir, f)).isFile())
      .sort();
    if (files.length === 0) continue;
    let section = out.contents.get(kind, true);
    if (!section) {
      section = new YAML.YAMLMap();
      out.contents.items.push(new YAML.Pair(spaced(kind), section));
    }
    for (const f of files) {
      const name = f.replace(/\.ya?ml$/, '');
      if (section.has(name)) throw new PackError(`${rel(join(dir, f))}: ${kind}.${name} is defined twice`);
      const doc = parseYaml(join(dir, f));
      if (!YAML.isMap(doc.contents)) throw new PackError(`${rel(join(dir, f))}: expected a mapping`);
      inlineIncludes(doc.contents, srcDir, join(dir, f));
      section.items.push(new YAML.Pair(section.items.length ? spaced(name) : new YAML.Scalar(name), doc.contents));
    }
  }
  out.commentBefore = ' Packed from plugins/circleci/src by scripts/pack-orb.mjs: edit the sources, then run it again.';
  return out.toString({ lineWidth: 0, indent: 2 });
}

function main(argv) {
  const check = argv.includes('--check');
  const [src = DEFAULT_SRC, outFile = DEFAULT_OUT] = argv.filter((a) => a !== '--check');
  let text;
  try {
    text = packOrb(src);
  } catch (err) {
    if (!(err instanceof PackError)) throw err;
    process.stderr.write(`pack-orb: ${err.message}\n`);
    return 1;
  }
  if (check) {
    const current = existsSync(outFile) ? readFileSync(outFile, 'utf8') : '';
    if (current !== text) {
      process.stderr.write(`pack-orb: ${rel(outFile)} does not match ${rel(src)}: run node scripts/pack-orb.mjs and commit it.\n`);
      return 1;
    }
    process.stdout.write(`pack-orb: ${rel(outFile)} matches ${rel(src)}\n`);
    return 0;
  }
  writeFileSync(outFile, text);
  process.stdout.write(`pack-orb: wrote ${rel(outFile)} (${text.length} bytes)\n`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
