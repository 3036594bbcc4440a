// Reading BuildKit's `--progress=plain` output into steps and cached steps: what the runner counts and reports for
// every build, and what the demo and the end-to-end tests measure. Pure (lines in, counts out; the Dockerfile comes
// in as text), so the parser is table-tested against recorded streams without a daemon. Running the build is build.ts.
import { dockerfileSteps, type DockerfileStepOptions } from './dockerfile-steps';

export interface BuildStep {
  id: number; // BuildKit's vertex number (#N); 0 for a step this client's stream never showed (stepsSolvedElsewhere)
  name: string; // e.g. "[build 2/3] RUN make"
  cached: boolean; // BuildKit printed CACHED for it in this build's own stream
  // 'deduplicated': this job's stream never showed it because another job's identical solve ran it (stepsSolvedElsewhere)
  status: 'cached' | 'done' | 'error' | 'canceled' | 'running' | 'deduplicated';
  durationMs?: number;
  error?: string;
}

export interface Progress {
  totalSteps: number;
  cachedSteps: number; // steps BuildKit reported CACHED in this build's stream, and only those
  deduplicatedSteps: number; // steps another job's build at the same time ran for this one (never counted as cached)
  steps: BuildStep[];
}

// "[stage N/M] INSTR", "[N/M] INSTR", "[ N/M] INSTR" (buildx pads), "[linux/arm64 stage N/M] INSTR".
const STEP = /^\[\s*(?:[^\s\]]+\s+){0,2}\d+\/\d+\]\s+([A-Za-z]+)/;

/**
 * Whether a vertex is a Dockerfile step. Internal vertices ([internal] load ..., [auth] ..., importing cache
 * manifest, exporting to image, exporting cache, resolve image config) are BuildKit's own work. FROM is left out
 * too: it resolves a base image rather than building a layer, and buildx reports a base image already present
 * as CACHED, which would make every build look like a cache hit.
 */
export function isStepName(name: string): boolean {
  const m = STEP.exec(name);
  return m !== null && m[1].toUpperCase() !== 'FROM';
}

/** Incremental reader of `--progress=plain` output, one line at a time, so a long log is never held whole. */
export class ProgressParser {
  private readonly byId = new Map<number, BuildStep>();

  push(line: string): void {
    const m = /^#(\d+) (.*)$/.exec(line.replace(/\r$/, ''));
    if (!m) return;
    const id = Number(m[1]);
    const rest = m[2].trim();
    const v = this.byId.get(id);
    if (!v) {
      // The first line of a vertex is its name; a vertex may be printed again later under the same number.
      this.byId.set(id, { id, name: rest, cached: false, status: 'running' });
      return;
    }
    if (rest === 'CACHED') {
      v.cached = true;
      v.status = 'cached';
    } else if (rest === 'CANCELED') {
      if (!v.cached) v.status = 'canceled';
    } else if (/^ERROR\b/.test(rest)) {
      v.status = 'error';
      v.error = rest.replace(/^ERROR:?\s*/, '');
    } else {
      const done = /^DONE (\d+(?:\.\d+)?)s$/.exec(rest);
      if (done) {
        v.durationMs = Math.round(Number(done[1]) * 1000);
        if (!v.cached) v.status = 'done';
      }
    }
  }

  /** Every vertex, internal ones included (e.g. "exporting cache to registry"). */
  vertices(): BuildStep[] {
    return [...this.byId.values()].map((v) => ({ ...v }));
  }

  /**
   * Vertices the client was told of but never printed. The client numbers every vertex of the solve as it first
   * hears of it and prints it once it starts, so a successful build leaves no number unprinted, except for
   * vertices that ran for another client (stepsSolvedElsewhere).
   */
  unseenVertices(): number {
    return this.byId.size ? Math.max(...this.byId.keys()) - this.byId.size : 0;
  }

  result(): Progress {
    const steps = [...this.byId.values()].filter((v) => isStepName(v.name)).sort((a, b) => a.id - b.id);
    return { totalSteps: steps.length, cachedSteps: steps.filter((s) => s.cached).length, deduplicatedSteps: 0, steps: steps.map((s) => ({ ...s })) };
  }
}

export function parseProgress(text: string): Progress {
  const p = new ProgressParser();
  for (const line of text.split('\n')) p.push(line);
  return p.result();
}

/**
 * The steps of a successful build whose stream shows none because another client's identical build solved them.
 *
 * BuildKit before 0.13 (Docker Engine 20.10 has 0.8) merges an edge into another job's when their cache keys match,
 * and the merged edge's progress reaches the other job only (moby/buildkit#4330, fixed by #4347). Two jobs building
 * the same thing at once on one builder: the vertices differ (each job's build context is its own session's), their
 * cache keys do not, so the second job's whole solve merges into the first one's. Its stream then shows its own
 * [internal] vertices and "exporting to image", no step at all, and numbers it never prints (the merged vertices),
 * though its image was built, by the other job. Those steps were neither built by this job nor served to it from a
 * cache: they are deduplicated (status 'deduplicated', cached false), whatever the cache import did (it may well
 * have failed with `not found`). Which steps they were is not in the stream (no name, no digest), so they come from
 * the Dockerfile; cachedSteps stays what the stream reported CACHED: none.
 *
 * Only then: a stream that shows any step is left as it is, and so is one without unprinted vertices (nothing ran
 * elsewhere) or a Dockerfile whose steps cannot be known (another frontend, a context that is not a directory).
 */
export function stepsSolvedElsewhere(parser: ProgressParser, dockerfile: string | null, opts: DockerfileStepOptions = {}): Progress | null {
  if (parser.result().totalSteps > 0 || parser.unseenVertices() === 0 || dockerfile === null) return null;
  const expected = dockerfileSteps(dockerfile, opts);
  if (!expected?.length) return null;
  const steps: BuildStep[] = expected.map((s) => ({ id: 0, name: s.name, cached: false, status: 'deduplicated' }));
  return { totalSteps: steps.length, cachedSteps: 0, deduplicatedSteps: steps.length, steps };
}
