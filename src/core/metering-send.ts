// A build's usage record goes out when the build ends, not only at the report step (issue 14): a job cancelled or
// timed out after its build, whose report step never runs and whose home directory (the spool) is thrown away, must
// not lose what it already built. The record is spooled first (written and fsynced), then sent under a short
// deadline; what the endpoint does not answer for stays in the spool for the report step or a later job.
import type { CloudEvent } from '../contract/cloudevents';
import { MeteringSpool } from './metering-spool';
import { flushSpool, type FlushOptions, type FlushResult, type FlushableSpool } from './metering-client';

/**
 * The whole budget of a send at build end, in ms: a build is never held up longer than this by metering, however
 * the endpoint fails (down, hanging, resetting, 5xx, 429 with a long Retry-After).
 */
export const BUILD_END_DEADLINE_MS = 4_000;
/** One request's timeout at build end, in ms (a hanging endpoint gets one retry within the deadline). */
export const BUILD_END_REQUEST_TIMEOUT_MS = 2_500;

/** Where and as whom a build's record is sent: the session's fields of the same names. */
export interface SendTarget {
  spoolDir: string; // the org's spool directory
  meteringUrl: string; // '' when the session has no metering endpoint: spooled only
  token: string; // never logged
}

/** What recordAndSend started: `sent` settles (never rejects) to the send's warnings, [] when all went well. */
export interface RecordSending {
  sent: Promise<string[]>;
}

/**
 * The records of one lease in `spool`, as a spool of their own: a build-end send carries this job's records only
 * (its build, and an earlier build of the job whose send failed), never another job's backlog, so it stays short.
 */
export function leaseView(spool: MeteringSpool, leaseId: string): FlushableSpool {
  return {
    dir: spool.dir,
    pending: async () => (await spool.pending()).filter((e) => (e.data as { lease_id?: unknown } | undefined)?.lease_id === leaseId),
    ack: (ids) => spool.ack(ids)
  };
}

/**
 * Spools `event` (a record of lease `leaseId`) and resolves once it is on disk; then starts sending the lease's
 * records with BUILD_END_DEADLINE_MS, so the caller may do other work (the image load) while it goes out and await
 * `sent` at the end. Rejects only when the record could not be spooled (the caller warns: metering never fails a
 * build); a send's problems come back as warnings in `sent`. `opts` overrides the flush's options (tests).
 */
export async function recordAndSend(target: SendTarget, leaseId: string, event: CloudEvent<object>, opts: Partial<FlushOptions> = {}): Promise<RecordSending> {
  const spool = new MeteringSpool(target.spoolDir);
  await spool.add(event);
  if (!target.meteringUrl) return { sent: Promise.resolve([]) };
  const sent = flushSpool(leaseView(spool, leaseId), {
    endpoint: target.meteringUrl,
    token: target.token,
    deadlineMs: BUILD_END_DEADLINE_MS,
    requestTimeoutMs: BUILD_END_REQUEST_TIMEOUT_MS,
    baseDelayMs: 250,
    maxDelayMs: 1_000,
    ...opts
  }).then(
    (r: FlushResult) => r.warnings.map(atBuildEnd),
    (err: unknown) => [`Build Cloud metering: the build's record was not sent yet (${(err as Error).message}); it stays in the spool for the report step.`]
  );
  return { sent };
}

// The flush says "sent by a later flush"; at build end that later flush is the report step's (or a later job's).
function atBuildEnd(w: string): string {
  return w.replace('are sent by a later flush.', 'are sent by the report step, or by a later job on this runner.');
}
