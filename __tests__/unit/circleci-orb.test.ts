// The CircleCI orb: its sources in the orb development kit layout, the packed orb.yml, CircleCI's own schemas
// (@circleci/circleci-config-parser), shellcheck, orb-tools' review checks, parameters that agree with the one input
// definition (src/core/inputs.ts), and the scripts run the way CircleCI runs them against a stand-in CLI.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import YAML from 'yaml';
import { BUILD_INPUTS, SETUP_INPUTS, envName, type InputDef } from '../../src/core/inputs';
import {
  ConfigError,
  context,
  describeJob,
  expandJob,
  expandWorkflow,
  loadOrb,
  runJob,
  stepNamed,
  substitute,
  tmpRoot,
  busybox,
  imageHasBash,
  noBashPath,
  type Component,
  type Config,
  type Orb,
  type ParamDecl
} from '../../harness/circleci-runner';

const ROOT = path.resolve(__dirname, '../..');
const SRC = path.join(ROOT, 'plugins/circleci/src');
const PACKED = path.join(ROOT, 'plugins/circleci/orb.yml');
const PACK = path.join(ROOT, 'scripts/pack-orb.mjs');
const PARSER = '@circleci/circleci-config-parser';
const PARSER_INSTALL = 'npm install --save-dev @circleci/circleci-config-parser@0.10.0-alpha.3';

const readYaml = (f: string) => YAML.parse(fs.readFileSync(f, 'utf8'));
const ymlFiles = (kind: string) =>
  fs.existsSync(path.join(SRC, kind))
    ? fs
        .readdirSync(path.join(SRC, kind))
        .filter((f) => f.endsWith('.yml'))
        .sort()
    : [];
const source = (kind: string, name: string): Component => readYaml(path.join(SRC, kind, `${name}.yml`));
const scripts = () =>
  fs
    .readdirSync(path.join(SRC, 'scripts'))
    .filter((f) => f.endsWith('.sh'))
    .sort();
// The one script of all three commands: PARAM_STEP (setup | build | report) runs its step_<name>() function.
const SCRIPT = path.join(SRC, 'scripts/buildcloud.sh');
const STEPS = ['setup', 'build', 'report'];
const stepBody = (text: string, name: string) => {
  const m = text.match(new RegExp(`^step_${name}\\(\\) \\{\\n[\\s\\S]*?^\\}$`, 'm'));
  if (!m) throw new Error(`scripts/buildcloud.sh has no step_${name}() function`);
  return m[0];
};
// What one step runs: its own function and the shared code, without the other steps' functions.
const stepScript = (name: string) => {
  const text = fs.readFileSync(SCRIPT, 'utf8');
  return STEPS.filter((s) => s !== name).reduce((acc, s) => acc.replace(stepBody(text, s), ''), text);
};
const snake = (s: string) => s.replace(/-/g, '_');
const plain = (defs: InputDef[]) => defs.filter((d) => !d.only);
const PARAM_REF = /<<\s*parameters\./;

let orb: Orb;
beforeAll(() => {
  orb = loadOrb(PACKED);
});

function runSteps(c: Component): Array<{ name?: unknown; command?: unknown; environment?: Record<string, unknown>; when?: unknown } | string> {
  return ((c.steps as unknown[]) ?? []).filter((s) => s && typeof s === 'object' && 'run' in s).map((s) => (s as { run: never }).run);
}

// What an input of src/core/inputs.ts looks like as an orb parameter.
function expected(d: InputDef): ParamDecl {
  switch (d.type) {
    case 'boolean':
      return { type: 'boolean', default: d.default === 'true', description: d.description };
    case 'number':
      return { type: 'integer', default: Number(d.default), description: d.description };
    case 'enum':
      return { type: 'enum', enum: d.options, default: d.default, description: d.description };
    default:
      return { type: 'string', default: d.default, description: d.description };
  }
}

const TOKEN = { type: 'env_var_name', default: 'BUILDCLOUD_TOKEN' };
// CircleCI names the default branch in no variable (CI-REFERENCE §2.1), so the orb alone asks for it: the core reads
// BUILDCLOUD_DEFAULT_BRANCH there (src/core/identity.ts), and GitHub and GitLab know the branch themselves.
const DEFAULT_BRANCH = { type: 'string', default: '' };
const CLI_DEFAULT = 'npx --yes @buildcloud/ci@0.1.0';

describe('parameters agree with src/core/inputs.ts', () => {
  test('setup: every setup input but the GitHub-only ones, in order, plus default_branch and cli; token names a variable', () => {
    const params = source('commands', 'setup').parameters!;
    expect(Object.keys(params)).toEqual([...plain(SETUP_INPUTS).map((d) => snake(d.name)), 'default_branch', 'cli']);
    expect(params.default_branch).toMatchObject(DEFAULT_BRANCH);
    expect(params.default_branch.description).toMatch(/BUILDCLOUD_DEFAULT_BRANCH/);
    for (const d of plain(SETUP_INPUTS)) {
      if (d.name === 'token') expect(params.token).toMatchObject(TOKEN);
      else expect(params[snake(d.name)]).toEqual(expected(d));
    }
    expect(params.cli).toMatchObject({ type: 'string', default: CLI_DEFAULT });
  });

  test('build: every build input, in order, plus cli', () => {
    const params = source('commands', 'build').parameters!;
    expect(Object.keys(params)).toEqual([...plain(BUILD_INPUTS).map((d) => snake(d.name)), 'cli']);
    for (const d of plain(BUILD_INPUTS)) expect(params[snake(d.name)]).toEqual(expected(d));
  });

  test("the build job: setup's inputs and default_branch, build's (platforms once, context as build_context), summary_file, cli, executor", () => {
    const params = source('jobs', 'build').parameters!;
    // `context:` on a workflow job names the CircleCI contexts, so the job cannot have a parameter of that name.
    const rename = (n: string) => (n === 'context' ? 'build_context' : n);
    const names = (defs: InputDef[]) => defs.map((d) => rename(snake(d.name)));
    expect(Object.keys(params)).toEqual([
      ...names(plain(SETUP_INPUTS)),
      'default_branch',
      ...names(plain(BUILD_INPUTS).filter((d) => d.name !== 'platforms')),
      'summary_file',
      'cli',
      'executor'
    ]);
    expect(params.default_branch).toEqual(source('commands', 'setup').parameters!.default_branch);
    for (const d of [...plain(SETUP_INPUTS), ...plain(BUILD_INPUTS)]) {
      if (d.name === 'token' || (d.name === 'platforms' && BUILD_INPUTS.includes(d))) continue;
      const p = params[rename(snake(d.name))];
      const { description, ...rest } = expected(d);
      expect(p).toMatchObject(rest);
      expect(p.description!.startsWith(description!)).toBe(true);
    }
    expect(params.token).toMatchObject(TOKEN);
    expect(params.executor).toMatchObject({ type: 'executor', default: 'default' });
    // cli and summary_file mean the same in the job as in the commands it calls.
    expect(params.cli).toEqual(source('commands', 'setup').parameters!.cli);
    expect(params.summary_file.default).toBe(source('commands', 'report').parameters!.summary_file.default);
  });

  test('each script maps PARAM_<NAME> to the CLI input BUILDCLOUD_<NAME>, for every input and nothing else', () => {
    const mapped = (step: string) =>
      [...stepScript(step).matchAll(/^\s*bc_input (\w+) "\$\{PARAM_(\w+):-\}"$/gm)].map((m) => {
        expect(m[2]).toBe(m[1]);
        return `BUILDCLOUD_${m[1]}`;
      });
    expect(mapped('setup')).toEqual([
      ...plain(SETUP_INPUTS)
        .filter((d) => d.name !== 'token')
        .map((d) => envName(d.name)),
      'BUILDCLOUD_DEFAULT_BRANCH'
    ]);
    expect(mapped('build')).toEqual(plain(BUILD_INPUTS).map((d) => envName(d.name)));
    // The token goes by indirection: the parameter names the variable.
    expect(stepBody(fs.readFileSync(SCRIPT, 'utf8'), 'setup')).toContain('eval "BUILDCLOUD_TOKEN=\\${$bc_token_var:-}"');
  });
});

describe('orb development kit layout and orb-tools review checks', () => {
  test('layout: @orb.yml, the three commands, the build job, the default executor, examples and scripts', () => {
    expect(fs.existsSync(path.join(SRC, '@orb.yml'))).toBe(true);
    expect(ymlFiles('commands')).toEqual(['build.yml', 'report.yml', 'setup.yml']);
    expect(ymlFiles('jobs')).toEqual(['build.yml']);
    expect(ymlFiles('executors')).toEqual(['default.yml']);
    expect(scripts()).toEqual(['buildcloud.sh']);
    expect(readYaml(path.join(SRC, '@orb.yml')).version).toBe(2.1);
  });

  test('RC001/RC005/RC007: display.source_url and home_url set; the orb description is at least 64 characters', () => {
    const root = readYaml(path.join(SRC, '@orb.yml'));
    expect(root.display.source_url).toMatch(/^https:\/\//);
    expect(root.display.home_url).toMatch(/^https:\/\//);
    expect(root.description.trim().length).toBeGreaterThanOrEqual(64);
  });

  test('RC002: every job, command, executor and example has a description', () => {
    for (const kind of ['jobs', 'commands', 'executors', 'examples']) {
      for (const f of ymlFiles(kind)) expect([kind, f, typeof readYaml(path.join(SRC, kind, f)).description]).toEqual([kind, f, 'string']);
    }
  });

  test('RC003/RC004: examples exist, none has "example" in its file name; basic, parallel and own-docker-commands uses are shown', () => {
    const files = ymlFiles('examples');
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (const f of files) expect(f).not.toMatch(/example/i);
    const usages = files.map((f) => readYaml(path.join(SRC, 'examples', f)).usage as Config);
    const orbJobs = (u: Config, w: string) => (u.workflows?.[w]?.jobs ?? []).filter((j) => typeof j === 'object' && j && 'buildcloud/build' in j);
    // Parallel jobs of one workflow: two or more invocations of the build job without requires.
    expect(usages.some((u) => Object.keys(u.workflows ?? {}).some((w) => orbJobs(u, w).length >= 2))).toBe(true);
    // setup and report around the user's own docker commands, in a job of the user's.
    const own = usages.find((u) => Object.values(u.jobs ?? {}).some((j) => JSON.stringify(j.steps).includes('buildcloud/setup')));
    expect(own).toBeDefined();
    const steps = JSON.stringify(Object.values(own!.jobs!)[0].steps);
    expect(steps.indexOf('buildcloud/setup')).toBeLessThan(steps.indexOf('docker '));
    expect(steps.indexOf('docker ')).toBeLessThan(steps.indexOf('buildcloud/report'));
  });

  test('RC008/RC009: every run step is a map with a name, and a command over 64 characters is an <<include()>>', () => {
    for (const kind of ['jobs', 'commands']) {
      for (const f of ymlFiles(kind)) {
        for (const run of runSteps(readYaml(path.join(SRC, kind, f)))) {
          expect(typeof run).toBe('object');
          const r = run as { name?: unknown; command: string };
          expect([f, typeof r.name, String(r.name).length > 0]).toEqual([f, 'string', true]);
          if (r.command.length > 64) expect(r.command).toMatch(/^<<include\(scripts\/[a-z_]+\.sh\)>>$/);
        }
      }
    }
  });

  test('RC010: job, command and executor file names and their parameter keys are snake_case', () => {
    for (const kind of ['jobs', 'commands', 'executors']) {
      for (const f of ymlFiles(kind)) {
        expect(f).toMatch(/^[a-z][a-z0-9_]*\.yml$/);
        for (const k of Object.keys(readYaml(path.join(SRC, kind, f)).parameters ?? {})) expect(`${f}:${k}`).toMatch(/^[a-z0-9_.]+:[a-z][a-z0-9_]*$/);
      }
    }
  });

  test('every parameter has a type, a default and a description', () => {
    for (const kind of ['jobs', 'commands', 'executors']) {
      for (const f of ymlFiles(kind)) {
        for (const [k, p] of Object.entries((readYaml(path.join(SRC, kind, f)).parameters ?? {}) as Record<string, ParamDecl>)) {
          expect([f, k, typeof p.type, 'default' in p, typeof p.description]).toEqual([f, k, 'string', true, 'string']);
        }
      }
    }
  });

  test('parameters reach scripts only as PARAM_* environment values: never in a script or a command text', () => {
    for (const s of scripts()) expect([s, PARAM_REF.test(fs.readFileSync(path.join(SRC, 'scripts', s), 'utf8'))]).toEqual([s, false]);
    for (const kind of ['jobs', 'commands']) {
      for (const f of ymlFiles(kind)) {
        for (const run of runSteps(readYaml(path.join(SRC, kind, f)))) {
          const r = run as { command: string; environment?: Record<string, unknown>; shell?: string };
          expect(PARAM_REF.test(r.command)).toBe(false);
          expect(PARAM_REF.test(String(r.shell ?? ''))).toBe(false);
          for (const [k, v] of Object.entries(r.environment ?? {})) {
            expect(k).toMatch(/^PARAM_[A-Z0-9_]+$/);
            // The one fixed value: which step of scripts/buildcloud.sh the command runs, the command's own name.
            if (k === 'PARAM_STEP' && kind === 'commands') {
              expect(v).toBe(f.replace(/\.yml$/, ''));
              continue;
            }
            expect(String(v)).toMatch(/^<< parameters\.[a-z_]+ >>$/); // the whole value, nothing spliced around it
          }
        }
      }
    }
    // In the packed orb too: commands are the scripts, verbatim.
    for (const [name, c] of Object.entries(orb.commands!)) {
      for (const run of runSteps(c)) expect([name, PARAM_REF.test((run as { command: string }).command)]).toEqual([name, false]);
    }
  });

  test('each command passes every parameter as PARAM_<NAME>, and its script reads exactly those variables', () => {
    for (const name of ['setup', 'build', 'report']) {
      const c = source('commands', name);
      const [run] = runSteps(c) as Array<{ environment: Record<string, string>; command: string }>;
      expect(run.command).toBe('<<include(scripts/buildcloud.sh)>>');
      const envName = (p: string) => (p === 'token' ? 'PARAM_TOKEN_VAR' : `PARAM_${p.toUpperCase()}`);
      expect(run.environment).toEqual({
        PARAM_STEP: name,
        ...Object.fromEntries(Object.keys(c.parameters!).map((p) => [envName(p), `<< parameters.${p} >>`]))
      });
      const read = new Set([...stepScript(name).matchAll(/\bPARAM_[A-Z0-9_]+/g)].map((m) => m[0]));
      expect([...read].sort()).toEqual(Object.keys(run.environment).sort());
    }
  });

  test('report runs always; the job is checkout, setup, build, report, then stores the summary; it passes every parameter on', () => {
    expect((runSteps(source('commands', 'report'))[0] as { when: string }).when).toBe('always');
    const job = source('jobs', 'build');
    const steps = job.steps as Array<string | Record<string, Record<string, unknown>>>;
    expect(steps.map((s) => (typeof s === 'string' ? s : Object.keys(s)[0]))).toEqual(['checkout', 'setup', 'build', 'report', 'store_artifacts']);
    expect(steps[4]).toEqual({ store_artifacts: { path: '<< parameters.summary_file >>', destination: 'buildcloud-summary.md' } });
    expect(job.executor).toBe('<< parameters.executor >>');
    const text = JSON.stringify(steps);
    for (const p of Object.keys(job.parameters!)) if (p !== 'executor') expect([p, text.includes(`<< parameters.${p} >>`)]).toEqual([p, true]);
    // Each command invocation gives every parameter of that command: none silently falls back to its own default.
    for (const s of steps.slice(1, 4) as Array<Record<string, Record<string, unknown>>>) {
      const [cmd, args] = Object.entries(s)[0];
      expect([cmd, Object.keys(args).sort()]).toEqual([cmd, Object.keys(source('commands', cmd).parameters!).sort()]);
    }
  });
});

describe('scripts/pack-orb.mjs', () => {
  const pack = (...args: string[]) => spawnSync(process.execPath, [PACK, ...args], { cwd: ROOT, encoding: 'utf8' });

  test('the committed orb.yml is what packing the sources gives (--check)', () => {
    const r = pack('--check');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  test('deterministic: two packs are byte-identical; scripts are inlined verbatim as literal blocks', () => {
    const dir = tmpRoot('bc-pack-');
    try {
      expect(pack(SRC, path.join(dir, 'a.yml')).status).toBe(0);
      expect(pack(SRC, path.join(dir, 'b.yml')).status).toBe(0);
      const a = fs.readFileSync(path.join(dir, 'a.yml'), 'utf8');
      expect(fs.readFileSync(path.join(dir, 'b.yml'), 'utf8')).toBe(a);
      expect(a).toBe(fs.readFileSync(PACKED, 'utf8'));
      expect(a).toMatch(/^ {10}command: \|\n {12}#!\/bin\/sh\n/m);
      for (const name of ['setup', 'build', 'report']) {
        expect((runSteps(orb.commands![name])[0] as { command: string }).command).toBe(fs.readFileSync(SCRIPT, 'utf8'));
      }
      // Every source file is a key named by its file name.
      expect(Object.keys(orb.commands!)).toEqual(['build', 'report', 'setup']);
      expect(Object.keys(orb.examples!)).toEqual(ymlFiles('examples').map((f) => f.replace(/\.yml$/, '')));
      expect(orb).toMatchObject({ version: 2.1, display: readYaml(path.join(SRC, '@orb.yml')).display });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each([
    ['two includes in one value', 'command: <<include(s.sh)>> <<include(s.sh)>>', /multiple include statements/],
    ['an include inside a longer string', 'command: echo <<include(s.sh)>>', /entire string must be include statement/],
    ['a missing file', 'command: <<include(nope.sh)>>', /could not open .*nope\.sh for inclusion/],
    ['a path outside the sources', 'command: <<include(../s.sh)>>', /include outside the orb source/]
  ])('refuses %s, like circleci orb pack', (_what, line, message) => {
    const dir = tmpRoot('bc-pack-bad-');
    try {
      fs.mkdirSync(path.join(dir, 'src/commands'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'src/@orb.yml'), 'version: 2.1\n');
      fs.writeFileSync(path.join(dir, 'src/s.sh'), 'echo hi\n');
      fs.writeFileSync(path.join(dir, 's.sh'), 'echo hi\n');
      fs.writeFileSync(path.join(dir, 'src/commands/c.yml'), `steps:\n  - run:\n      name: c\n      ${line}\n`);
      const r = pack(path.join(dir, 'src'), path.join(dir, 'orb.yml'));
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(fs.existsSync(path.join(dir, 'orb.yml'))).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('refuses a directory without @orb.yml, and --check fails when orb.yml is stale', () => {
    const dir = tmpRoot('bc-pack-stale-');
    try {
      expect(pack(dir, path.join(dir, 'orb.yml')).stderr).toMatch(/@orb.yml file not found/);
      fs.writeFileSync(path.join(dir, 'orb.yml'), fs.readFileSync(PACKED, 'utf8').replace('version: 2.1', 'version: 2.1 # edited by hand'));
      const r = pack('--check', SRC, path.join(dir, 'orb.yml'));
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/does not match .*run node scripts\/pack-orb\.mjs/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// CircleCI's own schemas and parser. Not a dependency of the product: a devDependency of the tests.
// Required, not imported: a missing devDependency fails with the line to install it rather than at module load.
function parser(): typeof import('@circleci/circleci-config-parser') {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded here so that its absence names the fix
    return require(PARSER) as typeof import('@circleci/circleci-config-parser');
  } catch {
    throw new Error(`${PARSER} is not installed: ${PARSER_INSTALL} (CircleCI's JSON schemas and Validator, used to validate the packed orb).`);
  }
}

// The orb as CircleCI compiles it for use: each component's parameters replaced by their defaults. CircleCI's
// env vars are strings, so environment values are too (the schema allows only strings and numbers there).
function compiledWithDefaults(o: Orb): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const kind of ['commands', 'jobs', 'executors'] as const) {
    out[kind] = Object.fromEntries(
      Object.entries(o[kind] ?? {}).map(([name, c]) => {
        const defaults = Object.fromEntries(Object.entries(c.parameters ?? {}).map(([k, p]) => [k, p.default]));
        const { parameters, description: _d, ...body } = c;
        const compiled = substitute(body, defaults, { pipeline: {} }, `${kind}.${name}`) as Record<string, unknown>;
        const stringEnv = (n: unknown): unknown =>
          Array.isArray(n)
            ? n.map(stringEnv)
            : n && typeof n === 'object'
              ? Object.fromEntries(
                  Object.entries(n).map(([k, v]) => [
                    k,
                    k === 'environment' && v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([e, x]) => [e, String(x)])) : stringEnv(v)
                  ])
                )
              : n;
        return [name, { ...(stringEnv(compiled) as object), parameters }];
      })
    );
  }
  return out;
}

describe("CircleCI's config schema (@circleci/circleci-config-parser)", () => {
  const kinds = () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the parser's own dependency, loaded after parser() says whether it is there
    const { mapping } = require('@circleci/circleci-config-sdk') as typeof import('@circleci/circleci-config-sdk');
    return mapping;
  };

  test('commands, the job and their parameter lists validate as written', () => {
    const { Validator } = parser();
    const mapping = kinds();
    type Validate = typeof Validator.validateGenerable;
    const check = (type: Parameters<Validate>[0], value: unknown, sub?: Parameters<Validate>[2]) => {
      const r = Validator.validateGenerable(type, value, sub);
      return r === true ? true : JSON.stringify(r && r.errors, null, 1);
    };
    for (const [n, c] of Object.entries(orb.commands!)) {
      expect([n, check(mapping.GenerableType.REUSABLE_COMMAND, c)]).toEqual([n, true]);
      expect([n, check(mapping.GenerableType.CUSTOM_PARAMETERS_LIST, c.parameters, mapping.ParameterizedComponent.COMMAND)]).toEqual([n, true]);
    }
    for (const [n, j] of Object.entries(orb.jobs!)) {
      expect([n, check(mapping.GenerableType.JOB, j)]).toEqual([n, true]);
      expect([n, check(mapping.GenerableType.CUSTOM_PARAMETERS_LIST, j.parameters, mapping.ParameterizedComponent.JOB)]).toEqual([n, true]);
    }
    for (const [n, e] of Object.entries(orb.executors!)) {
      expect([n, check(mapping.GenerableType.CUSTOM_PARAMETERS_LIST, e.parameters, mapping.ParameterizedComponent.EXECUTOR)]).toEqual([n, true]);
    }
  });

  test('the orb compiled with its defaults parses as a config: jobs resolve their commands and executor', () => {
    const { parseConfig } = parser();
    const cfg = parseConfig({ ...compiledWithDefaults(orb), workflows: {} });
    expect(cfg.jobs.map((j: { name: string }) => j.name)).toEqual(['build']);
    expect(cfg.commands!.map((c: { name: string }) => c.name).sort()).toEqual(['build', 'report', 'setup']);
    expect(cfg.executors!.map((e: { name: string }) => e.name)).toEqual(['default']);
    const generated = YAML.parse(cfg.stringify());
    expect(generated.executors.default.docker[0].image).toBe('cimg/node:lts');
  });

  test('every example is a valid config against the orb, and CircleCI would compile each of its workflows', () => {
    const { parseConfig, parseOrbManifest } = parser();
    const params = (kind: 'commands' | 'jobs' | 'executors') => Object.fromEntries(Object.entries(orb[kind] ?? {}).map(([k, v]) => [k, v.parameters ?? {}]));
    const manifest = parseOrbManifest({ jobs: params('jobs'), commands: params('commands'), executors: params('executors') });
    for (const [name, ex] of Object.entries(orb.examples!)) {
      expect(typeof ex.description).toBe('string');
      // The parser needs a jobs map even when a config only uses the orb's jobs.
      const cfg = parseConfig({ jobs: {}, ...ex.usage }, { buildcloud: manifest });
      expect([name, cfg.workflows.length]).toEqual([name, Object.keys(ex.usage.workflows ?? {}).length]);
      // The parser checks structure, not arguments: the harness compiles each workflow (unknown parameters, types,
      // enums, required ones), as CircleCI does.
      const ctx = context(ex.usage, { orbs: { buildcloud: orb } });
      for (const w of Object.keys(ex.usage.workflows ?? {})) expect(expandWorkflow(ctx, w).length).toBeGreaterThan(0);
    }
  });

  test('examples/circleci/*.yml are valid configs that compile against the orb', () => {
    const { parseConfig, parseOrbManifest } = parser();
    const params = (kind: 'commands' | 'jobs' | 'executors') => Object.fromEntries(Object.entries(orb[kind] ?? {}).map(([k, v]) => [k, v.parameters ?? {}]));
    const manifest = parseOrbManifest({ jobs: params('jobs'), commands: params('commands'), executors: params('executors') });
    const dir = path.join(ROOT, 'examples/circleci');
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yml'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const config = readYaml(path.join(dir, f)) as Config;
      expect(config.orbs?.buildcloud).toMatch(/^buildcloud-dev\/buildcloud@\d/);
      expect(parseConfig({ jobs: {}, ...config }, { buildcloud: manifest }).workflows.length).toBeGreaterThan(0);
      const ctx = context(config, { orbs: { buildcloud: orb } });
      for (const w of Object.keys(config.workflows ?? {})) expect(expandWorkflow(ctx, w).length).toBeGreaterThan(0);
    }
  });

  test('validation is not vacuous: broken components are rejected', () => {
    const { Validator, parseConfig } = parser();
    const mapping = kinds();
    const setup = JSON.parse(JSON.stringify(orb.commands!.setup));
    setup.steps[0].run.when = 'sometimes';
    expect(Validator.validateGenerable(mapping.GenerableType.REUSABLE_COMMAND, setup)).not.toBe(true);
    const params = JSON.parse(JSON.stringify(orb.commands!.build.parameters));
    params.push.default = 'yes';
    expect(Validator.validateGenerable(mapping.GenerableType.CUSTOM_PARAMETERS_LIST, params, mapping.ParameterizedComponent.COMMAND)).not.toBe(true);
    const compiled = compiledWithDefaults(orb) as { jobs: Record<string, { steps: unknown[] }> };
    compiled.jobs.build.steps.push({ no_such_command: {} });
    expect(() => parseConfig({ ...compiled, workflows: {} })).toThrow();
  });
});

describe('shellcheck', () => {
  // POSIX sh (busybox ash on Alpine executors, where CircleCI runs steps with /bin/sh) and bash (its default elsewhere).
  test.each(['sh', 'bash'])('the orb scripts pass shellcheck --shell=%s', (shell) => {
    const v = spawnSync('shellcheck', ['--version'], { encoding: 'utf8' });
    if (v.status !== 0) throw new Error('shellcheck is not installed: apt-get install -y shellcheck (Debian 12 ships 0.9.0).');
    const files = scripts().map((s) => path.join(SRC, 'scripts', s));
    const r = spawnSync('shellcheck', [`--shell=${shell}`, '--severity=style', ...files], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  test('busybox sh, dash and bash parse them (sh -n)', () => {
    for (const sh of [[busybox(), 'sh'], ['dash'], ['bash']]) {
      const r = spawnSync(sh[0], [...sh.slice(1), '-n', SCRIPT], { encoding: 'utf8' });
      expect([sh.join(' '), r.status, r.stderr]).toEqual([sh.join(' '), 0, '']);
    }
  });
});

// The scripts, run by the harness the way CircleCI runs the orb, with a stand-in for the CLI that records what it
// was given (argv and BUILDCLOUD_* variables) and plays its part in $BASH_ENV. Twice: on an image with bash (CircleCI
// then runs steps with `/bin/bash -eo pipefail`, which sources $BASH_ENV) and on an Alpine image without it (steps run
// with `/bin/sh -eo pipefail`, busybox ash, which does not: the orb's steps source it themselves, a user's own steps
// do it with `. "$BASH_ENV"`).
describe.each([
  ['bash', 'cimg/node:lts', ['/bin/bash', '-eo', 'pipefail']],
  ['busybox sh (no bash in the image)', 'node:22-alpine', [busybox(), 'sh', '-eo', 'pipefail']]
])('the orb run the way CircleCI runs it, against a stand-in CLI, under %s', (_shell, image, shellArgv) => {
  let work: string;
  let stub: string;
  let record: string;
  const marker = () => path.join(work, `pwned-${Math.random().toString(36).slice(2)}`);
  const calls = (): Array<{ argv: string[]; env: Record<string, string> }> =>
    fs.existsSync(record)
      ? fs
          .readFileSync(record, 'utf8')
          .trim()
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l))
      : [];

  beforeAll(() => {
    work = tmpRoot('bc-orb-unit-');
    record = path.join(work, 'calls.jsonl');
    stub = path.join(work, 'fake-buildcloud.js');
    fs.writeFileSync(
      stub,
      `const fs = require('fs');
const argv = process.argv.slice(2);
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('BUILDCLOUD_') || k.startsWith('DOCKER_')));
fs.appendFileSync(process.env.STUB_RECORD, JSON.stringify({ argv, env }) + '\\n');
const flag = (f) => (argv.indexOf(f) >= 0 ? argv[argv.indexOf(f) + 1] : '');
if (argv[0] === 'setup') fs.appendFileSync(flag('--export-file'), "export DOCKER_HOST='tcp://127.0.0.1:9'\\nexport DOCKER_CONFIG='/tmp/bc-private'\\nexport BUILDCLOUD_SESSION='/tmp/bc-session.json'\\nexport BUILDCLOUD_LEASE_ID='lease-1'\\n");
if (argv[0] === 'build') { fs.appendFileSync(flag('--export-file'), "export BUILDCLOUD_CACHED_STEPS='3'\\n"); process.exit(Number(process.env.STUB_BUILD_EXIT || 0)); }
if (argv[0] === 'report' && flag('--summary-file')) { fs.mkdirSync(require('path').dirname(flag('--summary-file')), { recursive: true }); fs.writeFileSync(flag('--summary-file'), '## Build Cloud\\n'); }
`
    );
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
  beforeEach(() => fs.rmSync(record, { force: true }));

  const userConfig = (steps: unknown[], extra: Partial<Config> = {}): Config => ({
    version: 2.1,
    orbs: { buildcloud: orb },
    jobs: { image: { docker: [{ image, environment: { DOCKER_HOST: 'unix:///var/run/user-docker.sock', DOCKER_CERT_PATH: ODD_CERT_PATH } }], steps } },
    ...extra
  });
  // A job's own docker setting that setup saves and report puts back, through quotes, `$(...)` and a newline.
  const ODD_CERT_PATH = `/certs/it's "odd" $(touch /tmp/bc-odd-${process.pid})\nline 2`;
  const run = (cfg: Config, env: Record<string, string> = {}) => runJob(context(cfg), 'image', {}, { workRoot: work, env: { STUB_RECORD: record, ...env } });
  const cli = () => `node ${stub}`;

  test('tags, build_args and labels with quotes, $(...), backticks and newlines reach the CLI unchanged, and run nothing', async () => {
    const m = marker();
    const evil = `it's "quoted" $(touch ${m}) \`touch ${m}\`; touch ${m} && echo $HOME \\ end`;
    const values = {
      tags: `acme/app:ci\n${evil}`,
      build_args: `A=${evil}\nB=two words`,
      labels: `x.evil=${evil}\ny=<< parameters.tags >>`,
      target: `t$(touch ${m})`
    };
    // In a config, a literal "<< parameters." is written \<<; the orb's own substitution never reads a value again.
    const given = { ...values, labels: values.labels.replace('<<', '\\<<') };
    const r = await run(
      userConfig([{ 'buildcloud/setup': { cli: cli() } }, { 'buildcloud/build': { cli: cli(), ...given } }, { 'buildcloud/report': { cli: cli() } }])
    );
    expect(r.status).toBe('success');
    const build = calls().find((c) => c.argv[0] === 'build')!;
    expect(build.argv).toEqual(['build', '--export-file', r.bashEnvFile]);
    expect(build.env).toMatchObject({
      BUILDCLOUD_TAGS: values.tags,
      BUILDCLOUD_BUILD_ARGS: values.build_args,
      BUILDCLOUD_LABELS: values.labels,
      BUILDCLOUD_TARGET: values.target
    });
    // Later steps see what setup and build appended to $BASH_ENV.
    expect(build.env).toMatchObject({ DOCKER_HOST: 'tcp://127.0.0.1:9', BUILDCLOUD_SESSION: '/tmp/bc-session.json' });
    expect(fs.existsSync(m)).toBe(false);
  });

  test('the token parameter names a variable; its value goes to the CLI and never into the log', async () => {
    const token = `bc_secret_'"$(id)`;
    const r = await run(userConfig([{ 'buildcloud/setup': { cli: cli(), token: 'MY_ORG_TOKEN', endpoint: 'cp.example.com:7643' } }]), {
      MY_ORG_TOKEN: token,
      BUILDCLOUD_TOKEN: 'not-this-one'
    });
    expect(r.status).toBe('success');
    const [setup] = calls();
    expect(setup.argv).toEqual(['setup', '--export-file', r.bashEnvFile]);
    expect(setup.env).toMatchObject({
      BUILDCLOUD_TOKEN: token,
      BUILDCLOUD_ENDPOINT: 'cp.example.com:7643',
      BUILDCLOUD_SCOPE: 'pipeline',
      BUILDCLOUD_CACHE: 'true',
      BUILDCLOUD_PROVISION_TIMEOUT: '120'
    });
    expect(r.steps.map((s) => s.output).join('')).not.toContain('bc_secret');
    // CircleCI itself refuses a parameter value that is not a variable name.
    expect(() => expandJob(context(userConfig([{ 'buildcloud/setup': { token: 'A[$(id)]' } }])), 'image')).toThrow(
      /parameter 'token': expected an environment variable name/
    );
  });

  test("an empty parameter leaves a context's BUILDCLOUD_* variable in effect; a given one wins", async () => {
    await run(userConfig([{ 'buildcloud/setup': { cli: cli() } }]), { BUILDCLOUD_ENDPOINT: 'from-context:7643', BUILDCLOUD_ORG: 'acme' });
    expect(calls()[0].env).toMatchObject({ BUILDCLOUD_ENDPOINT: 'from-context:7643', BUILDCLOUD_ORG: 'acme', BUILDCLOUD_TOKEN: '' });
    fs.rmSync(record);
    await run(userConfig([{ 'buildcloud/setup': { cli: cli(), endpoint: 'param:1' } }]), { BUILDCLOUD_ENDPOINT: 'from-context:7643' });
    expect(calls()[0].env.BUILDCLOUD_ENDPOINT).toBe('param:1');
  });

  test('the default cli runs the pinned npm package through npx, as separate words', async () => {
    const bin = path.join(work, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    fs.writeFileSync(path.join(bin, 'npx'), `#!/bin/sh\nexec node ${stub} "$@"\n`, { mode: 0o755 });
    const r = await run(userConfig([{ 'buildcloud/setup': {} }]), { PATH: `${bin}:${imageHasBash(image) ? process.env.PATH : noBashPath()}` });
    expect(r.status).toBe('success');
    expect(calls()[0].argv).toEqual(['--yes', '@buildcloud/ci@0.1.0', 'setup', '--export-file', r.bashEnvFile]);
  });

  test("default_branch reaches the CLI as BUILDCLOUD_DEFAULT_BRANCH; empty, a context's variable stays; neither: a note says main", async () => {
    const r = await run(userConfig([{ 'buildcloud/setup': { cli: cli(), default_branch: 'master' } }]), { BUILDCLOUD_DEFAULT_BRANCH: 'develop' });
    expect(r.status).toBe('success');
    expect(calls()[0].env.BUILDCLOUD_DEFAULT_BRANCH).toBe('master');
    expect(stepNamed(r, 'Build Cloud setup').output).not.toMatch(/no default branch given/);
    fs.rmSync(record);
    await run(userConfig([{ 'buildcloud/setup': { cli: cli() } }]), { BUILDCLOUD_DEFAULT_BRANCH: 'develop' });
    expect(calls()[0].env.BUILDCLOUD_DEFAULT_BRANCH).toBe('develop');
    fs.rmSync(record);
    const none = await run(userConfig([{ 'buildcloud/setup': { cli: cli() } }]));
    expect(calls()[0].env.BUILDCLOUD_DEFAULT_BRANCH).toBeUndefined();
    expect(stepNamed(none, 'Build Cloud setup').output).toMatch(
      /no default branch given \(the default_branch parameter or BUILDCLOUD_DEFAULT_BRANCH\).*'main'/
    );
  });

  test('a cli parameter is split into words, never evaluated', async () => {
    const m = marker();
    const r = await run(userConfig([{ 'buildcloud/setup': { cli: `$(touch ${m}) ; touch ${m}` } }]));
    expect(r.status).toBe('failed');
    // bash: "No such file or directory"; busybox sh: "$(touch: not found".
    expect(stepNamed(r, 'Build Cloud setup').output).toMatch(/\$\(touch: (No such file or directory|not found)|command not found/);
    expect(fs.existsSync(m)).toBe(false);
  });

  test('the setup script checks the token variable name itself before reading it indirectly', () => {
    const m = marker();
    const r = spawnSync(shellArgv[0], [...shellArgv.slice(1), SCRIPT], {
      env: {
        PATH: process.env.PATH,
        HOME: work,
        BASH_ENV: path.join(work, 'unused-bash-env'),
        PARAM_STEP: 'setup',
        PARAM_TOKEN_VAR: `a[$(touch ${m})]`,
        PARAM_CLI: cli(),
        STUB_RECORD: record
      },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe']
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/invalid parameter 'token'/);
    expect(fs.existsSync(m)).toBe(false);
    expect(calls()).toEqual([]);
  });

  test("after a failed build the steps after it are skipped, report runs (when: always), and later steps get the job's docker back", async () => {
    const r = await run(
      userConfig([
        { 'buildcloud/setup': { cli: cli() } },
        { 'buildcloud/build': { cli: cli() } },
        { run: { name: 'Use the image', command: 'echo should not run' } },
        { 'buildcloud/report': { cli: cli() } },
        {
          run: {
            name: 'After report',
            when: 'always',
            // What a user's own step does on an executor without bash; with bash, sourcing the file again changes nothing.
            command:
              '. "$BASH_ENV"; echo "host=$DOCKER_HOST config=${DOCKER_CONFIG-unset} session=${BUILDCLOUD_SESSION-unset}"; echo "cert=[$DOCKER_CERT_PATH]"'
          }
        },
        { store_artifacts: { path: 'buildcloud/summary.md' } }
      ]),
      { STUB_BUILD_EXIT: '1' }
    );
    expect(r.status).toBe('failed');
    expect(r.steps.map((s) => [s.step.name, s.status])).toEqual([
      ['Build Cloud setup', 'success'],
      ['Build Cloud build', 'failed'],
      ['Use the image', 'skipped'],
      ['Build Cloud report', 'success'],
      ['After report', 'success'],
      ['store_artifacts', 'success']
    ]);
    expect(calls().map((c) => c.argv[0])).toEqual(['setup', 'build', 'report']);
    expect(calls()[2].argv).toEqual(['report', '--summary-file', 'buildcloud/summary.md']);
    expect(stepNamed(r, 'After report').output).toContain('host=unix:///var/run/user-docker.sock config=unset session=unset');
    expect(stepNamed(r, 'After report').output).toContain(`cert=[${ODD_CERT_PATH}]`);
    expect(fs.existsSync(`/tmp/bc-odd-${process.pid}`)).toBe(false);
    expect(r.exported.DOCKER_CERT_PATH).toBe(ODD_CERT_PATH);
    expect(r.artifacts).toEqual([expect.objectContaining({ destination: 'summary.md', files: [''] })]);
    expect(fs.readFileSync(r.artifacts[0].stored, 'utf8')).toBe('## Build Cloud\n');
  });
});

describe('the harness compiles config the way CircleCI does', () => {
  const tiny: Config = {
    version: 2.1,
    commands: {
      greet: {
        parameters: { to: { type: 'string', default: 'world' }, loud: { type: 'boolean', default: false }, extra: { type: 'steps', default: [] } },
        steps: [
          {
            run: { name: 'Greet << parameters.to >>', environment: { TO: '<< parameters.to >>', LOUD: '<< parameters.loud >>' }, command: 'echo "hello $TO"' }
          },
          { when: { condition: '<< parameters.loud >>', steps: [{ run: { name: 'Shout', command: 'echo HELLO' } }] } },
          { steps: '<< parameters.extra >>' }
        ]
      }
    },
    jobs: {
      j: {
        parameters: { who: { type: 'string' }, level: { type: 'enum', enum: ['a', 'b'], default: 'a' } },
        docker: [{ image: 'cimg/base:stable' }],
        environment: { LEVEL: '<< parameters.level >>' },
        steps: [{ greet: { to: '<< parameters.who >> \\<< parameters.who >>', loud: true, extra: [{ run: { name: 'Extra', command: 'true' } }] } }]
      }
    }
  };

  test('substitution, defaults, nested command parameters, when, steps parameters, escapes', () => {
    const job = expandJob(context(tiny), 'j', { who: '$(you)' });
    expect(job.environment).toEqual({ LEVEL: 'a' });
    // One pass: a value is inserted as text and never read for references again; \<< escapes one.
    expect(job.steps.map((s) => s.name)).toEqual(['Greet $(you) << parameters.who >>', 'Shout', 'Extra']);
    expect(job.steps[0]).toMatchObject({ type: 'run', environment: { TO: '$(you) << parameters.who >>', LOUD: 'true' }, origin: ['greet'] });
  });

  test('errors CircleCI gives: unknown or missing parameters, wrong types and enum values', () => {
    const ctx = context(tiny);
    expect(() => expandJob(ctx, 'j', {})).toThrow(/missing required parameter 'who'/);
    expect(() => expandJob(ctx, 'j', { who: 'x', nope: 1 })).toThrow(/unknown parameter 'nope'/);
    expect(() => expandJob(ctx, 'j', { who: 1 })).toThrow(/parameter 'who': expected a string/);
    expect(() => expandJob(ctx, 'j', { who: 'x', level: 'c' })).toThrow(/expected one of a, b/);
    expect(() => expandJob(ctx, 'nope')).toThrow(ConfigError);
  });

  test.each([
    ['cimg/node:lts', true],
    ['cimg/base:stable', true],
    [undefined, true], // machine executor
    ['alpine:3.20', false],
    ['node:22-alpine', false],
    ['docker:27-cli', false],
    ['busybox', false]
  ])('image %s has bash: %s', (image, bash) => expect(imageHasBash(image)).toBe(bash));

  test('default shell: bash where the image has it; else busybox sh, which does not source $BASH_ENV; shell: /bin/bash fails there', async () => {
    const work = tmpRoot('bc-harness-sh-');
    try {
      const steps = [
        { run: { name: 'export', command: 'echo "export FROM_STEP1=one" >> "$BASH_ENV"' } },
        { run: { name: 'which shell', command: 'echo "bash=${BASH_VERSION:-none} step1=${FROM_STEP1:-unset} $-"; command -v bash || echo no-bash' } },
        { run: { name: 'as bash', shell: '/bin/bash -eo pipefail', command: 'echo in bash' } }
      ];
      const job = (image: string): Config => ({ jobs: { j: { docker: [{ image }], steps } } });
      const withBash = await runJob(context(job('cimg/base:stable')), 'j', {}, { workRoot: work });
      expect(withBash.steps.map((s) => s.status)).toEqual(['success', 'success', 'success']);
      expect(withBash.steps[1].output).toMatch(/^bash=\d\S* step1=one \S*e\S*\n\/\S*bash\n$/);
      const alpine = await runJob(context(job('node:22-alpine')), 'j', {}, { workRoot: work });
      expect(alpine.steps.map((s) => [s.status, s.exitCode])).toEqual([
        ['success', 0],
        ['success', 0],
        ['failed', 127]
      ]);
      expect(alpine.steps[1].output).toMatch(/^bash=none step1=unset \S*e\S*\nno-bash\n$/);
      expect(alpine.steps[2].output).toMatch(/\/bin\/bash: not found/);
      expect(alpine.env.SHELL).toBe('/bin/sh');
      // A further step that sources the file sees the export.
      expect(alpine.exported.FROM_STEP1).toBe('one');
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });

  test('run time: $BASH_ENV carries exports to later steps; step env beats job env; on_fail and always after a failure', async () => {
    const work = tmpRoot('bc-harness-');
    try {
      const cfg: Config = {
        jobs: {
          j: {
            docker: [{ image: 'x', environment: { A: 'executor', B: 'executor' } }],
            environment: { B: 'job' },
            steps: [
              { run: { name: 'export', command: 'echo "export FROM_STEP1=\'v 1\'" >> "$BASH_ENV"; echo "$A $B $CIRCLE_JOB $CIRCLE_WORKFLOW_ID"' } },
              { run: { name: 'read', environment: { B: 'step' }, command: 'echo "[$FROM_STEP1] $B $-"' } },
              { run: { name: 'fail', command: 'false | true; echo unreachable' } }, // pipefail and -e
              { run: { name: 'skipped', command: 'echo no' } },
              { run: { name: 'on fail', when: 'on_fail', command: 'echo handled' } },
              { run: { name: 'always', when: 'always', command: 'pwd' } }
            ]
          }
        }
      };
      const r = await runJob(context(cfg), 'j', {}, { workRoot: work, jobName: 'unit', workflowId: 'wf-1' });
      expect(r.steps.map((s) => s.status)).toEqual(['success', 'success', 'failed', 'skipped', 'success', 'success']);
      expect(r.steps[0].output).toBe('executor job unit wf-1\n');
      expect(r.steps[1].output).toMatch(/^\[v 1\] step .*e.*\n$/); // -e is on
      expect(r.steps[2]).toMatchObject({ exitCode: 1, output: '' });
      expect(r.steps[5].output.trim()).toBe(path.join(r.home, 'project'));
      expect(r.exported.FROM_STEP1).toBe('v 1');
      expect(r.env).toMatchObject({ CIRCLECI: 'true', CI: 'true', CIRCLE_WORKFLOW_ID: 'wf-1', CIRCLE_JOB: 'unit', BASH_ENV: r.bashEnvFile });
      expect(describeJob(r)).toContain('--- fail: failed (1)');
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
});
