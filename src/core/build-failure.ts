// Why a build failed: the user's build (a step that exited non-zero, a Dockerfile or context the engine refused) or
// the platform (the builder went away under the build: its engine killed, crashed or out of memory). Pure: the
// docker client's output and the steps it showed in, a verdict out; table-tested against recorded client output
// (__tests__/fixtures/build-failure/).
//
// What a lost builder looks like from the runner (Docker Engine 20.10 client, through the builder's mTLS front):
// - killed mid-step: the step's last line is its own output, nothing closes it (no DONE, ERROR or CANCELED: the
//   engine that would have sent them is gone), and the client's last word is
//   "cannot write …/iid-N because server did not provide an image ID" (the session ended with no result);
// - gone before the build: "failed to dial gRPC: cannot connect to the Docker daemon …: connect: connection refused"
//   (the control plane saw the engine exit and closed the builder's front).
// A step that fails is always closed by the engine with "#N ERROR: <why>" (e.g. "executor failed running […]: exit
// code: 1"): that is the user's build, whatever else the stream says.
import { isStepName, type BuildStep } from './build-progress';

/** The phrase every platform failure of a build starts with (the server side and the tests assert it). */
export const BUILDER_LOST = 'the builder was lost during the build (a platform failure, not your Dockerfile)';

/** What the job should do about a lost builder. */
export const BUILDER_LOST_ADVICE = "rerun the job: its next run gets a new builder (the control plane ended this job's lease when the builder went away)";

/** A failed build's cause, as the job's error says it. */
export interface BuildFailure {
  // 'platform': the builder was lost (connection to its endpoint refused, reset or cut; the engine's session ended
  // with a step still running and no step error). 'build': anything else: a step exited non-zero, the Dockerfile or
  // the context was refused, or nothing showed the builder going away.
  kind: 'platform' | 'build';
  message: string; // the job's error, one line
  evidence: string; // the client's line (or step) the verdict rests on; '' when none stood out
  step?: string; // the failed step's name ('build'), or the step that was running when the builder went away
}

// The docker client's own words when its connection to the builder's endpoint is refused, reset or cut, or when the
// engine's session ends without a result. Matched only on the client's own lines, never on a step's output (a RUN
// step's curl may well print "Connection refused").
const CONNECTION_LOST: RegExp[] = [
  /connection reset by peer/i,
  /connect: connection refused/i,
  /cannot connect to the docker daemon/i,
  /error during connect/i,
  /error reading from server: (?:unexpected )?EOF/i,
  /transport is closing/i,
  /rpc error: code = Unavailable/i,
  /http2: server sent GOAWAY/i,
  /use of closed network connection/i,
  /broken pipe/i,
  /(?:^|: )(?:unexpected )?EOF$/,
  /server did not provide an image ID/i
];

/** Whether `line` is the client's own (not a vertex's line "#N …", nor the error summary "------"/" > …"). */
function clientLine(line: string): boolean {
  return line.trim() !== '' && !/^#\d+ /.test(line) && !/^-{6}$/.test(line.trim()) && !/^ > /.test(line);
}

/** The first connection-loss line of the client's own, or of a vertex's ERROR; null when there is none. */
function connectionLost(lines: string[], vertices: BuildStep[]): string | null {
  for (const v of vertices) if (v.status === 'error' && v.error && CONNECTION_LOST.some((re) => re.test(v.error!))) return v.error;
  for (const l of lines) if (clientLine(l) && CONNECTION_LOST.some((re) => re.test(l.trim()))) return l.trim();
  return null;
}

const clip = (s: string, max = 300) => (s.length > max ? `${s.slice(0, max - 1)}…` : s);

/**
 * Classifies a build the docker client ended with a non-zero exit (not a cancelled one). `lines`: the client's
 * output (the tail is enough: the client's last words and the steps' closing lines); `vertices`: every vertex the
 * stream showed (ProgressParser.vertices()); `exitCode`: the client's.
 *
 * A step that the engine closed with ERROR (not a connection error) is the user's build. Otherwise the builder was
 * lost when the client says its connection was refused, reset or cut, or when the stream ended with a step still
 * running and no error at all. Anything else stays the user's build: nothing showed the platform failing.
 */
export function classifyFailure(lines: string[], vertices: BuildStep[], exitCode: number | null): BuildFailure {
  const exit = `docker build failed (exit ${exitCode})`;
  const lost = connectionLost(lines, vertices);
  const failedStep = vertices.find((v) => v.status === 'error' && isStepName(v.name) && !(lost && v.error === lost));
  if (failedStep) {
    return {
      kind: 'build',
      message: `${exit}: step ${failedStep.name} failed: ${clip(failedStep.error ?? '')}`,
      evidence: failedStep.error ?? '',
      step: failedStep.name
    };
  }
  const running = vertices.filter((v) => v.status === 'running' && isStepName(v.name)).pop();
  const anyError = vertices.some((v) => v.status === 'error' && !/^importing cache manifest from /.test(v.name) && v.error !== lost);
  if (lost || (running && !anyError)) {
    const evidence = lost ?? `the stream ended with step ${running!.name} still running and no error`;
    const during = running ? ` (step ${running.name} was running)` : '';
    return { kind: 'platform', message: `${BUILDER_LOST}${during}: ${clip(evidence)}. What to do: ${BUILDER_LOST_ADVICE}.`, evidence, step: running?.name };
  }
  const last = [...lines].reverse().find(clientLine)?.trim() ?? '';
  return { kind: 'build', message: last ? `${exit}: ${clip(last)}` : exit, evidence: last };
}
