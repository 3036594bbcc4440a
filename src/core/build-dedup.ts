// Telling a step served from the builder's cache apart from a step another job's build ran while this build waited.
//
// Jobs of one pipeline share one builder. When two builds on it need a step with the same cache key at the same time,
// BuildKit (0.8, Docker Engine 20.10, measured here) runs it once: the build that got there second waits until the
// first one's step is done and then reports the step as `CACHED` in its own stream, with nothing that says it waited.
// Measured: job y started 2 s after job x; x ran `RUN sleep 8` (8.4 s); y printed nothing for 7 s, then its first
// three steps as CACHED at once. Those steps came from no cache that existed when y began: they are deduplicated.
//
// The evidence is the builder's own build-cache records (`docker system df -v`: id, parent, description, creation
// time), read just after the build, and the builder's clock read just before it (`docker info`: SystemTime). A step's
// result is a record, created when the step's result is committed (measured: at the step's end); BuildKit describes a
// RUN step's record as `mount / from exec <argv joined by spaces>` and chains each step's record to the previous
// step's by `Parent` (COPY/ADD/WORKDIR records read `fileop target`). A step this build reported CACHED whose record
// was created after the build began was made during it, by another build, while this one waited: deduplicated, never
// cached. Creation times, not ids, are compared: a record read while its step was still being committed can show
// under another id then. Both times come from the builder's clock, so the runner's own clock plays no part.
// Pure: records and progress in, progress out (build.ts reads the records and the clock).
import type { BuildStep, Progress } from './build-progress';
import { sameExpanded } from './dockerfile-steps';

/** One build-cache record of a builder, as `docker system df -v --format '{{json .BuildCache}}'` lists it. */
export interface CacheRecord {
  id: string;
  parent: string; // '' for a chain's first record
  type: string; // 'regular' for a step's result; 'source.local', 'exec.cachemount', ... for the rest
  description: string;
  createdAtMs: number; // on the builder's clock; NaN when the listing gave no time it could read
}

/**
 * Reads `docker system df -v --format '{{json .BuildCache}}'` output (a JSON array; Docker 20.10 and 28 print the
 * fields ID, Parent, CacheType, Description and CreatedAt, the last as Go prints a time: `2026-11-30 20:42:35.3124939
 * +0000 UTC`; `null` for a builder without records). Returns null when the output is not
 * such an array (nothing printed included).
 */
export function parseBuildCache(out: string): CacheRecord[] | null {
  let raw: unknown;
  try {
    raw = JSON.parse(out);
  } catch {
    return null;
  }
  if (!Array.isArray(raw)) return raw === null ? [] : null;
  const records: CacheRecord[] = [];
  for (const r of raw as Array<Record<string, unknown>>) {
    if (!r || typeof r.ID !== 'string') return null;
    records.push({
      id: r.ID,
      parent: typeof r.Parent === 'string' ? r.Parent : '',
      type: typeof r.CacheType === 'string' ? r.CacheType : typeof r.Type === 'string' ? r.Type : '',
      description: typeof r.Description === 'string' ? r.Description : '',
      createdAtMs: typeof r.CreatedAt === 'string' ? goTimeMs(r.CreatedAt) : NaN
    });
  }
  return records;
}

/**
 * Milliseconds since the epoch of a time as Go's time.Time.String() prints it (`2006-01-02 15:04:05.999999999 -0700
 * MST`) or as RFC 3339 (`2026-11-30T20:46:57.20723293Z`, docker info's SystemTime); NaN for anything else.
 */
export function goTimeMs(s: string): number {
  const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?/.exec(s.trim());
  if (!m) return NaN;
  const zone = !m[4] || m[4] === 'Z' ? 'Z' : `${m[4].slice(0, 3)}:${m[4].slice(-2)}`;
  return Date.parse(`${m[1]}T${m[2]}.${(m[3] ?? '').padEnd(3, '0').slice(0, 3)}${zone}`);
}

const squash = (s: string): string => s.replace(/\s+/g, ' ').trim();

// "[stage 2/4] RUN ..." → the stage key ("stage", "" for the final unnamed stage, platform included) and N.
const POSITION = /^\[\s*((?:[^\s\]]+\s+){0,2})(\d+)\/\d+\]\s+(.*)$/s;

/**
 * The command a RUN step's record describes, from the step's vertex name: flags (`--mount=…`, `--network=…`) dropped,
 * the exec form's JSON array joined by spaces; null for any other instruction. Whitespace squashed.
 */
export function runCommand(stepName: string): string | null {
  const m = POSITION.exec(stepName);
  const instr = m ? m[3] : stepName;
  const run = /^RUN\s+(.*)$/is.exec(instr);
  if (!run) return null;
  let cmd = run[1].trim();
  while (/^--[a-z-]+(=\S*)?\s/i.test(cmd)) cmd = cmd.replace(/^--[a-z-]+(=\S*)?\s+/i, '');
  if (cmd.startsWith('[')) {
    try {
      const argv = JSON.parse(cmd) as unknown;
      if (Array.isArray(argv) && argv.every((a) => typeof a === 'string')) cmd = argv.join(' ');
    } catch {
      // not JSON: the shell form that happens to start with '['
    }
  }
  return squash(cmd);
}

/**
 * Whether `record` is the result of a RUN step running `cmd`. The record's argv starts with the step's shell (e.g.
 * "/bin/sh -c", a SHELL instruction's words) and holds the command as written (`echo "$V"`: the shell expands it when
 * the step runs); the step's name has BuildKit's expansion of the build arguments and ENV in it (`echo "7"`, measured
 * on Docker Engine 20.10). So the shell's words are skipped and each variable reference matches any text.
 */
export function describesRun(record: CacheRecord, cmd: string): boolean {
  const d = squash(record.description);
  if (!d.startsWith('mount / from exec ')) return false;
  const words = d.slice('mount / from exec '.length).split(' ');
  // The shell is at most a few words ("/bin/bash -eo pipefail -c"); the exec form has none.
  for (let k = 0; k <= Math.min(6, words.length - 1); k++) {
    if (sameExpanded(words.slice(k).join(' '), cmd)) return true;
  }
  return false;
}

/**
 * The steps of `progress` that another build ran while this one waited: reported CACHED, but their result's record
 * was created after the build began (`startedAtMs`, the builder's clock just before the build; `after`, the records
 * read just after it).
 *
 * A RUN step is matched to its records by command; when several records fit (the same command on different parents)
 * and any of them is older than the build, the step stays cached (no evidence it waited). From each RUN step whose
 * record is known (CACHED or run here), the `Parent` chain leads back through the earlier steps of its stage, one
 * record per step, which settles COPY, ADD and WORKDIR steps the same way. A stage whose chain cannot be followed
 * keeps what the stream said. Returns the progress with those steps' status 'deduplicated' (cached false) and the
 * counts redone; the same object when nothing changed.
 */
export function stepsRunConcurrently(progress: Progress, startedAtMs: number, after: CacheRecord[]): Progress {
  if (!progress.steps.some((s) => s.cached)) return progress;
  const byId = new Map(after.filter((r) => r.type === 'regular').map((r) => [r.id, r]));
  const records = [...byId.values()];
  const isNew = (r: CacheRecord) => r.createdAtMs > startedAtMs; // NaN on either side: no evidence, not new

  // Steps grouped by stage, in stage order.
  const stages = new Map<string, Array<{ step: BuildStep; n: number }>>();
  for (const step of progress.steps) {
    const m = POSITION.exec(step.name);
    if (!m) continue;
    const key = m[1].trim();
    const list = stages.get(key) ?? [];
    list.push({ step, n: Number(m[2]) });
    stages.set(key, list);
  }
  const concurrent = new Set<BuildStep>();
  for (const list of stages.values()) {
    list.sort((a, b) => a.n - b.n);
    for (let i = 0; i < list.length; i++) {
      const cmd = runCommand(list[i].step.name);
      if (cmd === null) continue;
      const candidates = records.filter((r) => describesRun(r, cmd));
      if (list[i].step.cached) {
        if (candidates.length && candidates.every(isNew)) concurrent.add(list[i].step);
      }
      if (candidates.length !== 1) continue; // the chain below is followed only from a record known for sure
      // Walk back: each parent is the result of the stage's previous step.
      let rec: CacheRecord | undefined = byId.get(candidates[0].parent);
      for (let j = i - 1; j >= 0 && rec; j--) {
        const prev = list[j].step;
        const prevCmd = runCommand(prev.name);
        if (prevCmd !== null ? !describesRun(rec, prevCmd) : squash(rec.description) !== 'fileop target') break; // the chain is not this stage's
        if (!isNew(rec)) break; // older than the build: this step and every earlier one were there before
        if (prev.cached) concurrent.add(prev);
        rec = byId.get(rec.parent);
      }
    }
  }
  if (!concurrent.size) return progress;
  const steps = progress.steps.map((s) => (concurrent.has(s) ? { ...s, cached: false, status: 'deduplicated' as const } : { ...s }));
  return {
    totalSteps: steps.length,
    cachedSteps: steps.filter((s) => s.cached).length,
    deduplicatedSteps: steps.filter((s) => s.status === 'deduplicated').length,
    steps
  };
}
