// The build steps a Dockerfile gives for a target, read from its text alone: what BuildKit's Dockerfile frontend
// would show as "[stage N/M] INSTR" vertices. Used when the progress stream shows none although the build ran
// (see stepsSolvedElsewhere in build-progress.ts). Pure: no file system, no daemon.
//
// Follows dockerfile2llb (BuildKit 0.8, the one in Docker Engine 20.10): a stage's steps are its ADD, COPY, RUN
// and WORKDIR; FROM is never a step (as in isStepName); only the target stage and the stages it reaches through
// `FROM <stage>`, `COPY --from=<stage|index>` and `RUN --mount=...,from=<stage|index>` are built; an unnamed stage
// is "stage-<index>", and a Dockerfile of one stage has no stage name in its step names.
import { createHash } from 'crypto';

export interface DockerfileStepOptions {
  target?: string;
  buildArgs?: Record<string, string>;
  platforms?: string[]; // a multi-platform build runs every step once per platform
}

export interface DockerfileStep {
  stage: string; // stage name, or stage-<index> for an unnamed one
  platform?: string; // only for multi-platform builds
  name: string; // as BuildKit names the vertex: "[build 2/3] COPY app.txt /app.txt"
  keyword: string; // ADD, COPY, RUN or WORKDIR
  rest: string; // the instruction's arguments as written (continuations joined), variables not expanded
  args: Record<string, string>; // the stage's ARGs in scope at this step, with the values the build gives them
  base: string; // the image the step's stage chain starts FROM (args expanded), 'scratch', or '' when unknown
}

interface Instruction {
  keyword: string; // upper case
  rest: string; // the arguments, continuation lines joined
}

interface Stage {
  index: number;
  name: string; // lower case; '' when unnamed
  base: string; // FROM's image or stage, args expanded
  from: string; // the whole FROM but its AS name (flags included), args expanded
  instructions: Instruction[];
  deps: Set<number>;
  refs: Map<Instruction, Ref[]>; // --from / mount from= of an instruction
}

interface Ref {
  ref: string;
  byIndex: boolean; // COPY --from=0 names the first stage; RUN --mount=from=0 an image called 0
}

const STEPS = new Set(['ADD', 'COPY', 'RUN', 'WORKDIR']);
// Image config only: no operation of a later step changes with them.
const METADATA = new Set(['CMD', 'ENTRYPOINT', 'EXPOSE', 'HEALTHCHECK', 'LABEL', 'MAINTAINER', 'ONBUILD', 'STOPSIGNAL', 'VOLUME']);

// A `# syntax=` directive naming another frontend than Docker's own Dockerfile frontend: its steps are unknown.
const DOCKERFILE_FRONTEND = /^(?:(?:docker\.io\/)?docker\/dockerfile(?:-upstream)?)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?$/;

function directives(lines: string[]): { escape: string; syntax: string } {
  let escape = '\\';
  let syntax = '';
  for (const line of lines) {
    const m = /^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$/.exec(line);
    if (!m) break; // directives end at the first line that is not one (a blank line, a comment, an instruction)
    const key = m[1].toLowerCase();
    if (key === 'escape' && (m[2] === '`' || m[2] === '\\')) escape = m[2];
    else if (key === 'syntax') syntax = m[2];
  }
  return { escape, syntax };
}

// Heredoc openers of `RUN <<EOF`, `COPY <<-"EOF" /dst`: the words whose end lines close them, in order.
function heredocs(text: string): { word: string; strip: boolean }[] {
  const out: { word: string; strip: boolean }[] = [];
  for (const m of text.matchAll(/<<(-?)(["']?)([A-Za-z_][A-Za-z0-9_]*)\2/g)) out.push({ word: m[3], strip: m[1] === '-' });
  return out;
}

export function parseInstructions(text: string): { instructions: Instruction[]; syntax: string } {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const { escape, syntax } = directives(lines);
  const out: Instruction[] = [];
  let i = 0;
  while (i < lines.length) {
    const first = lines[i++];
    if (/^\s*(#|$)/.test(first)) continue;
    let logical = '';
    let line = first;
    for (;;) {
      const trimmed = line.replace(/\s+$/, '');
      if (trimmed.endsWith(escape) && i <= lines.length) {
        logical += trimmed.slice(0, -1);
        // Comment and blank lines inside a continuation are dropped, as BuildKit's parser does.
        while (i < lines.length && /^\s*(#|$)/.test(lines[i])) i++;
        if (i >= lines.length) break;
        line = lines[i++];
        continue;
      }
      logical += line;
      break;
    }
    const m = /^\s*([A-Za-z]+)(?:\s+([\s\S]*))?$/.exec(logical);
    if (!m) continue;
    const keyword = m[1].toUpperCase();
    const rest = (m[2] ?? '').trim();
    if (keyword === 'RUN' || keyword === 'COPY' || keyword === 'ADD') {
      // Heredoc bodies are the instruction's, not instructions. Without a closing line it was no heredoc (a
      // frontend without heredocs, `<<` in a shell line): nothing is skipped then.
      for (const h of heredocs(rest)) {
        let end = i;
        while (end < lines.length && (h.strip ? lines[end].replace(/^\t+/, '') : lines[end]) !== h.word) end++;
        if (end < lines.length) i = end + 1;
      }
    }
    out.push({ keyword, rest });
  }
  return { instructions: out, syntax };
}

// ${VAR}, $VAR, ${VAR:-default}, ${VAR:+alt}; unknown variables expand to '' as in BuildKit.
export function expand(word: string, vars: Record<string, string>): string {
  return word.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g, (_all, braced, op, arg, bare) => {
    const name = braced ?? bare;
    const set = Object.prototype.hasOwnProperty.call(vars, name) && vars[name] !== '';
    if (op === '-') return set ? vars[name] : arg;
    if (op === '+') return set ? arg : '';
    return vars[name] ?? '';
  });
}

// `$NAME`, `${NAME}` and `${NAME:-word}`-style references, as a Dockerfile writes them.
const VARIABLE = /\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(?::?[-+?][^}]*)?\})/;
const VARIABLES = new RegExp(VARIABLE.source, 'g');

/**
 * Whether `shown` can be `written` with its variable references expanded: BuildKit shows a step's name with the
 * build arguments and ENV values in it (`RUN echo "7"` for `RUN echo "$V"`, measured on Docker Engine 20.10), while
 * the Dockerfile (and a RUN step's build-cache record) has the references. Each reference matches any text;
 * whitespace runs compare equal.
 */
export function sameExpanded(written: string, shown: string): boolean {
  const w = written.replace(/\s+/g, ' ').trim();
  const sh = shown.replace(/\s+/g, ' ').trim();
  if (w === sh) return true;
  if (!VARIABLE.test(w)) return false;
  const pattern = w
    .split(VARIABLES)
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('[\\s\\S]*?');
  return new RegExp(`^${pattern}$`).test(sh);
}

// The leading --flag[=value] options of COPY, ADD and RUN.
function flags(rest: string): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const tok of rest.split(/\s+/)) {
    const m = /^--([A-Za-z-]+)(?:=(.*))?$/.exec(tok);
    if (!m) break;
    out.push({ name: m[1].toLowerCase(), value: m[2] ?? '' });
  }
  return out;
}

function mountFrom(value: string): string | undefined {
  for (const field of value.split(',')) {
    const [k, v] = field.split('=');
    if (k.trim().toLowerCase() === 'from' && v) return v.trim().replace(/^["']|["']$/g, '');
  }
  return undefined;
}

/** The stages a Dockerfile's text declares, with the meta ARGs (those before the first FROM) its FROM lines expand with. */
interface StageSplit {
  stages: Array<{ name: string; base: string; from: string; instructions: Instruction[] }>; // name lower case, '' unnamed
  meta: Record<string, string>;
}

/**
 * Splits a Dockerfile into stages as BuildKit reads it: the meta ARGs before the first FROM valued by the build args,
 * else their defaults; each FROM's base image or stage and its whole FROM (flags included) expanded with them; every
 * later instruction in its stage. Null for a `# syntax=` naming another frontend, or a text with no FROM.
 */
function splitStages(text: string, buildArgs: Record<string, string>): StageSplit | null {
  const { instructions, syntax } = parseInstructions(text);
  if (syntax && !DOCKERFILE_FRONTEND.test(syntax.toLowerCase())) return null;
  const meta: Record<string, string> = {};
  const stages: StageSplit['stages'] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const all = ins.rest.split(/\s+/).filter(Boolean);
      const words = all.filter((w) => !w.startsWith('--'));
      const base = expand(words[0] ?? '', meta);
      const name = words.length >= 3 && words[1].toLowerCase() === 'as' ? words[2].toLowerCase() : '';
      const from = expand(
        all
          .filter((w) => w.startsWith('--'))
          .concat(base)
          .join(' '),
        meta
      );
      stages.push({ name, base, from, instructions: [] });
    } else if (stages.length === 0) {
      if (ins.keyword !== 'ARG') continue;
      for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
        const eq = decl.indexOf('=');
        const key = eq < 0 ? decl : decl.slice(0, eq);
        if (key in buildArgs) meta[key] = buildArgs[key];
        else if (eq >= 0) meta[key] = expand(decl.slice(eq + 1).replace(/^["']|["']$/g, ''), meta);
      }
    } else {
      stages[stages.length - 1].instructions.push(ins);
    }
  }
  return stages.length ? { stages, meta } : null;
}

/** What an instruction takes from another stage or an image: COPY/ADD --from, RUN --mount=...,from= (unexpanded). */
function instructionRefs(ins: Instruction): Ref[] {
  const refs: Ref[] = [];
  for (const f of flags(ins.rest)) {
    if (f.name === 'from' && (ins.keyword === 'COPY' || ins.keyword === 'ADD')) refs.push({ ref: f.value, byIndex: true });
    if (f.name === 'mount' && ins.keyword === 'RUN') {
      const from = mountFrom(f.value);
      if (from) refs.push({ ref: from, byIndex: false }); // a mount's from= is a stage name or an image, no index
    }
  }
  return refs;
}

/** The steps BuildKit would run for the target, in stage order; null when they cannot be known from the text. */
export function dockerfileSteps(text: string, opts: DockerfileStepOptions = {}): DockerfileStep[] | null {
  const buildArgs = opts.buildArgs ?? {};
  const split = splitStages(text, buildArgs);
  if (!split) return null; // not a Dockerfile BuildKit would build with its own frontend
  const { meta } = split;
  const stages: Stage[] = split.stages.map((st, index) => ({ ...st, index, deps: new Set(), refs: new Map() }));

  const find = ({ ref, byIndex }: Ref, from: number): Stage | undefined => {
    const r = expand(ref, meta).toLowerCase();
    if (byIndex && /^\d+$/.test(r)) return Number(r) < stages.length ? stages[Number(r)] : undefined;
    return stages.find((s) => s.name === r && s.index !== from);
  };
  // Images named by COPY --from / RUN --mount from: BuildKit adds each as a state of its own, which makes a
  // one-stage Dockerfile a multi-state one as far as step names go.
  const images = new Set<string>();
  const baseStage = new Map<number, Stage>();
  for (const s of stages) {
    const b = stages.slice(0, s.index).find((x) => x.name !== '' && x.name === s.base.toLowerCase());
    if (b) {
      s.deps.add(b.index);
      baseStage.set(s.index, b);
    }
    for (const ins of s.instructions) {
      const refs = instructionRefs(ins);
      s.refs.set(ins, refs);
      for (const r of refs) {
        const dep = find(r, s.index);
        if (dep) s.deps.add(dep.index);
        else images.add(expand(r.ref, meta));
      }
    }
  }

  let target: Stage | undefined = stages[stages.length - 1];
  if (opts.target) target = stages.find((s) => s.name === opts.target!.toLowerCase());
  if (!target) return null; // docker fails the build: "target stage ... could not be found"
  const reachable = new Set<number>();
  const visit = (s: Stage) => {
    if (reachable.has(s.index)) return;
    reachable.add(s.index);
    for (const d of s.deps) visit(stages[d]);
  };
  visit(target);

  // One vertex per distinct operation: a step that is the same operation on the same input as an earlier one (the
  // same RUN in two stages FROM one base) is one vertex, run and shown once (moby/buildkit#1417). A step's key is
  // its instruction over the key of the state it runs on; ENV, ARG, USER, SHELL change later operations, so they
  // are part of it too.
  const stageKeys = new Map<number, string>();
  const stepKeys = new Map<Instruction, string>();
  const hash = (s: string) => createHash('sha256').update(s).digest('hex');
  const keyOf = (s: Stage, path: Set<number>): string => {
    const known = stageKeys.get(s.index);
    if (known !== undefined) return known;
    if (path.has(s.index)) return `cycle ${s.index}`; // docker refuses it; any key will do
    path.add(s.index);
    const b = baseStage.get(s.index);
    let key = b ? keyOf(b, path) : hash(`FROM ${s.from}`);
    for (const ins of s.instructions) {
      if (METADATA.has(ins.keyword)) continue;
      const inputs = (s.refs.get(ins) ?? []).map((r) => {
        const dep = find(r, s.index);
        return dep ? keyOf(dep, path) : `image ${expand(r.ref, meta)}`;
      });
      key = hash(`${key}\n${ins.keyword} ${ins.rest}\n${inputs.join('\n')}`);
      if (STEPS.has(ins.keyword)) stepKeys.set(ins, key);
    }
    path.delete(s.index);
    stageKeys.set(s.index, key);
    return key;
  };
  for (const s of stages) keyOf(s, new Set());

  // The ARGs a stage declares, in scope from their declaration on, valued by the build args, else their default,
  // else the meta ARG of the same name (a bare `ARG X` in a stage takes the global value).
  const stageArgs = (s: Stage): Map<Instruction, Record<string, string>> => {
    const out = new Map<Instruction, Record<string, string>>();
    const scope: Record<string, string> = {};
    for (const ins of s.instructions) {
      if (ins.keyword === 'ARG') {
        for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
          const eq = decl.indexOf('=');
          const key = eq < 0 ? decl : decl.slice(0, eq);
          if (key in buildArgs) scope[key] = buildArgs[key];
          else if (eq >= 0) scope[key] = expand(decl.slice(eq + 1).replace(/^["']|["']$/g, ''), { ...meta, ...scope });
          else scope[key] = meta[key] ?? '';
        }
      }
      out.set(ins, { ...scope });
    }
    return out;
  };
  const named = stages.length + images.size > 1;
  const platforms = (opts.platforms ?? []).length > 1 ? opts.platforms! : [undefined];
  const out: DockerfileStep[] = [];
  for (const platform of platforms) {
    const shown = new Map<string, DockerfileStep>();
    for (const s of stages) {
      if (!reachable.has(s.index)) continue;
      const steps = s.instructions.filter((ins) => STEPS.has(ins.keyword));
      // FROM an image is step 1 of M in the names (FROM scratch and FROM <stage> are not), though never counted.
      const fromImage = s.base.toLowerCase() !== 'scratch' && !baseStage.has(s.index) ? 1 : 0;
      const total = steps.length + fromImage;
      const stage = s.name || `stage-${s.index}`;
      const prefix = [platform, named ? stage : undefined].filter(Boolean).join(' ');
      const argsAt = stageArgs(s);
      let root: Stage = s;
      for (let hops = 0; baseStage.has(root.index) && hops < stages.length; hops++) root = baseStage.get(root.index)!;
      steps.forEach((ins, k) => {
        const key = stepKeys.get(ins)!;
        const name = `[${prefix ? `${prefix} ` : ''}${k + 1 + fromImage}/${total}] ${ins.keyword} ${ins.rest}`;
        const step: DockerfileStep = {
          stage,
          ...(platform ? { platform } : {}),
          name,
          keyword: ins.keyword,
          rest: ins.rest,
          args: argsAt.get(ins) ?? {},
          base: root.base
        };
        const same = shown.get(key);
        // One vertex, shown under the name of the last stage that has it (its name is set once per step).
        if (same) return Object.assign(same, step);
        shown.set(key, step);
        out.push(step);
      });
    }
  }
  return out;
}

/**
 * The stages of a build worth a cache image of their own under the inline cache (issue 11, case 2): the named
 * stages the target reaches that a later reached stage copies from (`COPY --from`, `RUN --mount=from=`) or builds
 * on (`FROM <stage>`), leaving out those whose layers already ride in another exported image: the target's own
 * `FROM` chain (the final image carries it) and the `FROM` chain of each stage returned. In Dockerfile order;
 * lower-case names. [] for a single-stage Dockerfile, null when the text cannot be read as one (as dockerfileSteps).
 * Unnamed stages are left out: `--target` takes a stage name.
 */
export function cacheStages(text: string, opts: Pick<DockerfileStepOptions, 'target' | 'buildArgs'> = {}): string[] | null {
  const split = splitStages(text, opts.buildArgs ?? {});
  if (!split) return null;
  const stages = split.stages.map((st) => ({
    name: st.name,
    base: st.base.toLowerCase(),
    refs: st.instructions.flatMap((ins) => instructionRefs(ins).map((r) => expand(r.ref, split.meta).toLowerCase()))
  }));
  const index = (ref: string, before: number): number => {
    if (/^\d+$/.test(ref)) return Number(ref) < stages.length ? Number(ref) : -1;
    return stages.findIndex((s, i) => i < before && s.name !== '' && s.name === ref);
  };
  const target = opts.target ? stages.findIndex((s) => s.name === opts.target!.toLowerCase()) : stages.length - 1;
  if (target < 0) return null;
  const baseOf = (i: number): number => index(stages[i].base, i);
  const chain = (i: number): number[] => {
    const out: number[] = [];
    for (let b = baseOf(i); b >= 0 && !out.includes(b); b = baseOf(b)) out.push(b);
    return out;
  };
  // Reached from the target, and which of those a reached stage copies from or builds on.
  const reached = new Set<number>();
  const used = new Set<number>();
  const visit = (i: number): void => {
    if (reached.has(i)) return;
    reached.add(i);
    for (const d of [baseOf(i), ...stages[i].refs.map((r) => index(r, i))].filter((d) => d >= 0)) {
      used.add(d);
      visit(d);
    }
  };
  visit(target);
  const picked = [...used].filter((i) => i !== target && stages[i].name !== '' && !chain(target).includes(i)).sort((a, b) => a - b);
  return picked.filter((i) => !picked.some((j) => j !== i && chain(j).includes(i))).map((i) => stages[i].name);
}

/** The names of every ARG a Dockerfile declares, in any stage (`ARG a`, `ARG b=1 c`), as parseInstructions reads it. */
export function declaredArgs(text: string): Set<string> {
  const out = new Set<string>();
  for (const ins of parseInstructions(text).instructions) {
    if (ins.keyword !== 'ARG') continue;
    for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
      const name = /^[A-Za-z_][A-Za-z0-9_]*/.exec(decl)?.[0];
      if (name) out.add(name);
    }
  }
  return out;
}
