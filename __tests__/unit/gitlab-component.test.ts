// The GitLab component (plugins/gitlab/templates/buildcloud.yml) and its classic twin against the one definition of
// the inputs (src/core/inputs.ts), and against the rules GitLab itself applies: structural $[[ inputs ]]
// interpolation that keeps the type of a whole-value placeholder, string-or-integer variables, extends merging.
import * as fs from 'fs';
import * as path from 'path';
import { parseAllDocuments } from 'yaml';
import { BUILD_INPUTS, BUILD_OUTPUTS, SETUP_INPUTS, SETUP_OUTPUTS, envName, type InputDef } from '../../src/core/inputs';
import { outputsAsEnv } from '../../src/cli/ci-output';

const ROOT = path.resolve(__dirname, '../..');
const COMPONENT = path.join(ROOT, 'plugins/gitlab/templates/buildcloud.yml');
const CLASSIC = path.join(ROOT, 'plugins/gitlab/classic/buildcloud.gitlab-ci.yml');
const README = path.join(ROOT, 'plugins/gitlab/README.md');

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

function loadDocs(file: string): Obj[] {
  const docs = parseAllDocuments(fs.readFileSync(file, 'utf8'), { merge: true });
  for (const d of docs) expect(d.errors).toEqual([]);
  return docs.map((d) => d.toJS({ maxAliasCount: 1000 }) as Obj);
}

const [header, body] = loadDocs(COMPONENT);
const [classic] = loadDocs(CLASSIC);
const spec = (header.spec as Obj).inputs as Record<string, Obj>;
const JOB_KEY = '$[[ inputs.job-name ]]';

// Inputs of the CLI the component exposes: GitHub-only ones left out; `platforms` is both a setup and a build input
// with one variable (BUILDCLOUD_PLATFORMS), so the component has one input, described as setup's.
const CLI_INPUTS: InputDef[] = [...SETUP_INPUTS, ...BUILD_INPUTS].filter((d, i, all) => d.only !== 'github' && all.findIndex((x) => x.name === d.name) === i);
const SETUP_NAMES = SETUP_INPUTS.filter((d) => d.only !== 'github').map((d) => d.name);
const OWN_INPUTS = ['job-name', 'stage', 'cli'];
const GLOBAL_KEYWORDS = [
  'default',
  'include',
  'stages',
  'variables',
  'workflow',
  'image',
  'services',
  'cache',
  'before_script',
  'after_script',
  'types',
  'spec'
];
const SCRIPT_KEYS = ['before_script', 'script', 'after_script'];

function typedDefault(d: InputDef): Json {
  if (d.type === 'boolean') return d.default === 'true';
  if (d.type === 'number') return Number(d.default);
  return d.default;
}

// ---- a small model of what GitLab does with the file ------------------------------------------------------------

const BLOCK = /\$\[\[\s*inputs\.([a-z0-9_-]+)\s*\]\]/g;

// Gitlab::Ci::Config::Interpolation::Template: a placeholder that is the whole string is replaced by the typed value;
// inside a longer string it is inserted as text. Keys are interpolated too.
function interpolate(node: Json, inputs: Record<string, Json>): Json {
  if (typeof node === 'string') {
    const whole = /^\$\[\[\s*inputs\.([a-z0-9_-]+)\s*\]\]$/.exec(node);
    const value = (name: string): Json => {
      if (!(name in inputs)) throw new Error(`unknown input ${name}`);
      return inputs[name];
    };
    if (whole) return value(whole[1]);
    return node.replace(BLOCK, (_, name: string) => String(value(name)));
  }
  if (Array.isArray(node)) return node.map((n) => interpolate(n, inputs));
  if (node && typeof node === 'object') {
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [String(interpolate(k, inputs)), interpolate(v, inputs)]));
  }
  return node;
}

function withDefaults(overrides: Record<string, Json> = {}): Record<string, Json> {
  return { ...Object.fromEntries(Object.entries(spec).map(([k, v]) => [k, v.default as Json])), ...overrides };
}

// `extends`: hashes merge deeply, the job's own keys win, anything else (arrays, scalars) is replaced.
function deepMerge(base: Json, own: Json): Json {
  if (base && own && typeof base === 'object' && typeof own === 'object' && !Array.isArray(base) && !Array.isArray(own)) {
    const out: Obj = { ...base };
    for (const [k, v] of Object.entries(own)) out[k] = k in out ? deepMerge(out[k], v) : v;
    return out;
  }
  return own;
}

function resolveJob(doc: Obj, name: string): Obj {
  const job = doc[name] as Obj;
  if (!job.extends) return job;
  const { extends: parent, ...own } = job;
  return deepMerge(resolveJob(doc, parent as string), own) as Obj;
}

// Every string in the document with the path that leads to it (keys included, marked with "#key").
function strings(node: Json, at: string[] = []): Array<{ path: string[]; value: string }> {
  if (typeof node === 'string') return [{ path: at, value: node }];
  if (Array.isArray(node)) return node.flatMap((n, i) => strings(n, [...at, String(i)]));
  if (node && typeof node === 'object') {
    return Object.entries(node).flatMap(([k, v]) => [{ path: [...at, `${k}#key`], value: k }, ...strings(v, [...at, k])]);
  }
  return [];
}

// Expansions a POSIX shell would perform outside double quotes ($NAME, ${...}, $(...), `...`): there, word splitting
// and globbing apply. Single-quoted text is literal; inside double quotes an expansion is one word.
function unquotedExpansions(line: string): string[] {
  const found: string[] = [];
  let quote: '' | "'" | '"' = '';
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = '';
      continue;
    }
    if (c === '\\') {
      i++;
      continue;
    }
    if (quote === '"') {
      if (c === '"') quote = '';
      continue;
    }
    if (c === "'" || c === '"') quote = c;
    else if (c === '`') {
      found.push('`');
      i = line.indexOf('`', i + 1) === -1 ? line.length : line.indexOf('`', i + 1);
    } else if (c === '$') found.push(/^\$(\{[^}]*\}?|\(|[A-Za-z_][A-Za-z0-9_]*|.)/.exec(line.slice(i))![0]);
  }
  return found;
}

function scriptLines(job: Obj): string[] {
  return SCRIPT_KEYS.flatMap((k) => (job[k] as string[] | undefined) ?? []);
}

// ---- the tests --------------------------------------------------------------------------------------------------

describe('spec:inputs', () => {
  test('has every CLI input of src/core/inputs.ts (GitHub-only ones left out), plus job-name, stage and cli', () => {
    expect(Object.keys(spec).sort()).toEqual([...CLI_INPUTS.map((d) => d.name), ...OWN_INPUTS].sort());
    expect(spec['pr-comment']).toBeUndefined();
    expect(spec['github-token']).toBeUndefined();
  });

  test.each(CLI_INPUTS.map((d) => [d.name, d] as const))('%s: same description, default and type', (name, d) => {
    const s = spec[name];
    expect(s.description).toBe(d.description);
    expect(s.default).toEqual(typedDefault(d));
    expect(s.type).toBe(d.type === 'boolean' ? 'boolean' : d.type === 'number' ? 'number' : 'string');
    if (d.type === 'enum') expect(s.options).toEqual(d.options);
    else expect(s.options).toBeUndefined();
  });

  test('every input has a description, a type and a default (all optional), and the defaults fit their options', () => {
    for (const [name, s] of Object.entries(spec)) {
      expect([name, typeof s.description, s.description === '']).toEqual([name, 'string', false]);
      expect(['string', 'boolean', 'number']).toContain(s.type);
      expect(s).toHaveProperty('default');
      if (s.options) expect(s.options).toContain(s.default);
    }
    expect(spec.cli.default).toBe('npx --yes @buildcloud/ci@0.1.0');
    expect(spec['job-name'].default).toBe('buildcloud-build');
    expect(spec.stage.default).toBe('build');
  });
});

describe('inputs reach the CLI through variables only', () => {
  const job = body[JOB_KEY] as Obj;
  const hidden = body['.buildcloud'] as Obj;

  test('no $[[ inputs ]] outside variables, id_tokens audience, stage and the job name; none in any script', () => {
    const allowed = (p: string[]) =>
      p.join('/') === `${JOB_KEY}#key` ||
      p.join('/') === `${JOB_KEY}/stage` ||
      (p.length === 3 && p[1] === 'variables') ||
      p.join('/').endsWith('id_tokens/BUILDCLOUD_ID_TOKEN/aud');
    const placed = strings(body).filter((s) => s.value.includes('$[['));
    expect(placed.length).toBeGreaterThan(30);
    for (const s of placed) expect([s.path.join('/'), allowed(s.path)]).toEqual([s.path.join('/'), true]);
    for (const j of [job, hidden]) for (const line of scriptLines(j)) expect(line).not.toMatch(/\$\[\[/);
  });

  test('each CLI input has its BUILDCLOUD_* variable holding only its placeholder, in the build job itself', () => {
    const vars = job.variables as Record<string, string>;
    for (const d of CLI_INPUTS) {
      expect([envName(d.name), vars[envName(d.name)]?.trim()]).toEqual([envName(d.name), `$[[ inputs.${d.name} ]]`]);
    }
    expect(vars.BUILDCLOUD_CLI).toBe('$[[ inputs.cli ]]');
    // Included once per image, the files merge and .buildcloud keeps the LAST include's values: the build job must
    // carry all of them, and its own id_tokens.
    expect(Object.keys(hidden.variables as Obj).every((k) => k in vars)).toBe(true);
    expect(job.id_tokens).toEqual({ BUILDCLOUD_ID_TOKEN: { aud: '$[[ inputs.oidc-audience ]]' } });
    expect(hidden.id_tokens).toEqual(job.id_tokens);
    expect(Object.keys(hidden.variables as Obj).sort()).toEqual(['BUILDCLOUD_CLI', 'BUILDCLOUD_GITLAB_DIR', ...SETUP_NAMES.map(envName)].sort());
  });

  test.each([
    ['the defaults', {}],
    [
      'every boolean flipped and other values',
      { cache: false, summary: false, push: true, load: true, 'no-cache': true, pull: true, 'provision-timeout': 30, scope: 'job' }
    ]
  ])('after GitLab interpolation (%s) every variable is a string or an integer, as GitLab requires', (_, overrides) => {
    const resolved = interpolate(body, withDefaults(overrides)) as Obj;
    for (const name of Object.keys(resolved)) {
      for (const [k, v] of Object.entries((resolved[name] as Obj).variables as Obj)) {
        // "variable definition must be either a string or a hash": a boolean there fails the whole pipeline.
        expect([k, typeof v === 'string' || Number.isInteger(v)]).toEqual([k, true]);
      }
    }
    const vars = resolveJob(resolved, 'buildcloud-build').variables as Obj;
    for (const [name, v] of Object.entries(withDefaults(overrides))) {
      if (!OWN_INPUTS.includes(name)) expect([name, String(vars[envName(name)]).trim()]).toEqual([name, String(v)]);
    }
  });

  test('scripts quote every expansion; only $BUILDCLOUD_CLI, a command line, is split into words', () => {
    for (const j of [job, hidden]) {
      for (const line of scriptLines(j)) {
        const bare = unquotedExpansions(line);
        if (bare.length) expect([line, bare]).toEqual([line, ['$BUILDCLOUD_CLI']]);
        if (bare.length) expect(line.startsWith('$BUILDCLOUD_CLI ')).toBe(true);
      }
    }
  });

  test('the scanner and the model catch what they are for', () => {
    const broken = interpolate({ j: { variables: { X: '$[[ inputs.push ]]' } } }, { push: true }) as Obj;
    expect(((broken.j as Obj).variables as Obj).X).toBe(true);
    expect(unquotedExpansions('$BUILDCLOUD_CLI build --tags $BUILDCLOUD_TAGS')).toEqual(['$BUILDCLOUD_CLI', '$BUILDCLOUD_TAGS']);
    expect(unquotedExpansions('echo "$A" \'$B\' $C ${D} $(e) `f` "x\\"y" $G')).toEqual(['$C', '${D}', '$(', '`', '$G']);
  });
});

describe('the jobs', () => {
  const resolved = interpolate(body, withDefaults()) as Obj;
  const build = resolveJob(resolved, 'buildcloud-build');

  test('no global keywords: only .buildcloud and the build job', () => {
    expect(Object.keys(body)).toEqual(['.buildcloud', JOB_KEY]);
    expect(Object.keys(classic)).toEqual(['.buildcloud', 'buildcloud-build']);
    for (const k of [...Object.keys(body), ...Object.keys(classic)]) expect(GLOBAL_KEYWORDS).not.toContain(k);
  });

  test('setup in before_script, build in script, report in after_script (a new shell: it sources the export file again)', () => {
    expect(build.stage).toBe('build');
    const before = build.before_script as string[];
    const after = build.after_script as string[];
    expect(before[0]).toMatch(/^\$BUILDCLOUD_CLI setup --export-file "\$BUILDCLOUD_GITLAB_DIR\/env\.sh" /);
    expect(before[1]).toBe('. "$BUILDCLOUD_GITLAB_DIR/env.sh"');
    expect(build.script).toEqual(['$BUILDCLOUD_CLI build --dotenv "$BUILDCLOUD_GITLAB_DIR/build.env"']);
    expect(after[0]).toContain('. "$BUILDCLOUD_GITLAB_DIR/env.sh"');
    expect(after[1]).toMatch(/^\$BUILDCLOUD_CLI report /);
    // Nothing lands in the project directory (the build context) before after_script.
    expect((build.variables as Obj).BUILDCLOUD_GITLAB_DIR).toBe('${CI_PROJECT_DIR}.tmp/buildcloud-${CI_JOB_ID}');
    for (const line of [...before, ...(build.script as string[])]) {
      for (const file of line.match(/--(?:export-file|dotenv|metrics|summary-file) (\S+)/g) ?? []) expect(file).toContain('$BUILDCLOUD_GITLAB_DIR/');
    }
    expect(build.artifacts).toEqual({
      when: 'always',
      paths: ['buildcloud-summary.md', 'buildcloud-metrics.txt'],
      reports: { dotenv: 'buildcloud.env', metrics: 'buildcloud-metrics.txt' }
    });
    expect(after.join('\n')).toContain('> buildcloud.env');
  });

  test('the dotenv report stays within GitLab limits and never sets a variable the CLI reads as an input', () => {
    // Report keys as src/cli/ci-steps.ts writes them (the `report --dotenv` block).
    const ci = fs.readFileSync(path.join(ROOT, 'src/cli/ci-steps.ts'), 'utf8');
    const reportKeys = [...ci.matchAll(/(BUILDCLOUD_[A-Z_]+): /g)].map((m) => m[1]);
    expect(reportKeys).toContain('BUILDCLOUD_BUILD_MINUTES');
    const names = (defs: { name: string }[]) => Object.keys(outputsAsEnv(Object.fromEntries(defs.map((d) => [d.name, '']))));
    const keys = new Set([...names(SETUP_OUTPUTS), ...names(BUILD_OUTPUTS), ...reportKeys]);
    // Self-managed GitLab accepts 20 dotenv variables by default.
    expect(keys.size).toBeLessThanOrEqual(20);
    // Dotenv variables outrank every other variable in later jobs: one named like an input would change them.
    const read = new Set([...CLI_INPUTS.map((d) => envName(d.name)), ...Object.keys(build.variables as Obj), 'BUILDCLOUD_SESSION', 'BUILDCLOUD_ID_TOKEN']);
    for (const k of keys) expect([k, read.has(k)]).toEqual([k, false]);
  });

  test('the classic template defines the same jobs, its variables holding the defaults', () => {
    // The component's boolean variables carry a leading space (see the file); values compare trimmed.
    const norm = (job: Obj): Obj => ({
      ...job,
      variables: Object.fromEntries(Object.entries(job.variables as Obj).map(([k, v]) => [k, String(v).trim()]))
    });
    for (const name of ['.buildcloud', 'buildcloud-build']) {
      expect(norm(resolveJob(classic, name))).toEqual(norm(resolveJob(resolved, name)));
    }
    expect(classic['buildcloud-build']).toHaveProperty('extends', '.buildcloud');
  });

  test('the README lists every input', () => {
    const readme = fs.readFileSync(README, 'utf8');
    for (const name of Object.keys(spec)) expect([name, readme.includes(`| \`${name}\` |`)]).toEqual([name, true]);
  });
});
