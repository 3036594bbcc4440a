// Report, CI-neutral, run always (after success, failure or cancel): release the lease, record the job, flush
// metering, undo the runner config, and render the summary. Nothing here fails the job: every problem becomes a
// warning, because the user's build already has its own outcome.
import * as fs from 'fs';
import { ApiClient, untrustedCertificate } from './api-client';
import { MeteringSpool } from './metering-spool';
import { flushSpool, type FlushResult } from './metering-client';
import { cleanupRunner } from './runner-config';
import { readBuilds, trustSessionCa, type Session } from './session';
import { renderSummary, renderText, totalsOf, type BuildResult, type JobSummary } from './summary';
import { jobCompletedEvent } from '../contract/metering-events';
import type { Log } from './setup';

export interface ReportDeps {
  log: Log;
  now?: () => number;
  meteringDeadlineMs?: number;
}

export interface ReportResult {
  builds: BuildResult[];
  billedSeconds: number | null;
  flush: FlushResult | null;
  warnings: string[];
  summary: JobSummary;
  markdown: string;
  text: string;
}

export async function report(session: Session, deps: ReportDeps): Promise<ReportResult> {
  const now = deps.now ?? Date.now;
  const warnings: string[] = [];
  trustSessionCa(session); // the CA setup trusted, when this step's environment names none
  const builds = readBuilds(session);
  const lease = session.lease;
  let billedSeconds: number | null = null;
  // Undoing the runner config needs nothing the control plane says, and nothing below reads the directory again
  // (the builds are read): it runs alongside the release and the flush. With contexts written as files it starts
  // no process for a Docker Engine lease (runner-config.ts cleanupRunner).
  const cleanup: Promise<string[]> = session.runner
    ? cleanupRunner(session.runner, session.docker).catch((err) => [`Build Cloud cleanup: ${(err as Error).message}`])
    : Promise.resolve([]);

  if (lease) {
    const spool = new MeteringSpool(session.spoolDir);
    try {
      await spool.add(
        jobCompletedEvent(session.org, {
          lease_id: lease.id,
          job_id: session.identity.jobId,
          wall_seconds: Math.max(0, Math.round((now() - lease.createdAtMs) / 1000)),
          builds: builds.length,
          actor: session.identity.actor,
          provider: session.identity.provider,
          project: session.identity.project,
          pipeline_key: session.identity.pipelineKey
        })
      );
    } catch (err) {
      warnings.push(`Build Cloud metering: could not spool the job record: ${(err as Error).message}`);
    }
  }

  // The release (gRPC) and the metering flush (HTTP) need nothing of each other: the endpoint takes a lease's records
  // before or after it ends, and both carry the job's own token. They run side by side; their warnings keep the
  // order they had when the flush waited for the release.
  const releaseWarnings: string[] = [];
  let sharedAtRelease: boolean | null = null;
  const released: Promise<void> = lease
    ? releaseLease(session, lease, deps, releaseWarnings).then((r) => {
        billedSeconds = r.billedSeconds;
        sharedAtRelease = r.shared;
      })
    : Promise.resolve();
  const flushing: Promise<FlushResult | null> =
    lease && session.meteringUrl
      ? flushSpool(new MeteringSpool(session.spoolDir), {
          endpoint: session.meteringUrl,
          token: session.token,
          deadlineMs: deps.meteringDeadlineMs ?? 30_000
        })
      : Promise.resolve(null);
  await released;
  const flush = await flushing;
  warnings.push(...releaseWarnings, ...(flush?.warnings ?? []));

  warnings.push(...(await cleanup));
  try {
    fs.rmSync(session.dir, { recursive: true, force: true });
  } catch (err) {
    warnings.push(`Build Cloud cleanup: could not remove ${session.dir}: ${(err as Error).message}`);
  }
  for (const w of warnings) deps.log.warn(w);

  const t = totalsOf(builds);
  const summary: JobSummary = {
    builds,
    leaseId: lease?.id,
    builderShared: lease ? (sharedAtRelease ?? false) || lease.builders.some((b) => b.shared) : undefined,
    builderWarm: lease ? lease.builders.every((b) => b.warm || b.shared) : undefined,
    jobWallMs: lease ? now() - lease.createdAtMs : undefined,
    billedSeconds: billedSeconds ?? undefined,
    pipeline: { totalSteps: t.totalSteps, cachedSteps: t.cachedSteps, deduplicatedSteps: t.deduplicatedSteps },
    runUrl: session.identity.runUrl || undefined,
    warnings: session.fallback ? ["No remote builder: this job built on the runner's own Docker (fallback: local).", ...warnings] : warnings
  };
  return { builds, billedSeconds, flush, warnings, summary, markdown: renderSummary(summary), text: renderText(summary) };
}

/**
 * Releases the lease. Returns the seconds billed and whether another lease shared a builder with it meanwhile (as the
 * control plane says at release; a job that provisioned first learns here that later jobs joined it), or nulls when
 * the release failed (a warning says why).
 */
async function releaseLease(
  session: Session,
  lease: NonNullable<Session['lease']>,
  deps: ReportDeps,
  warnings: string[]
): Promise<{ billedSeconds: number | null; shared: boolean | null }> {
  const api = new ApiClient({ endpoint: session.endpoint, token: session.token, attempts: 4, deadlineMs: 15_000 });
  try {
    const released = await api.release(lease.id);
    deps.log.info(`Build Cloud: released lease ${lease.id} (${released.billedSeconds} s billed)`);
    // The control plane ended it before the job did (e.g. the org's bucket ran out): say why, in the job.
    if (released.endReason && released.endReason !== 'released') {
      warnings.push(`Build Cloud: lease ${lease.id} had already ended: ${released.endMessage || released.endReason}`);
    }
    return { billedSeconds: released.billedSeconds, shared: released.builders.some((b) => b.shared) };
  } catch (err) {
    const message = (err as Error).message;
    warnings.push(
      untrustedCertificate(message)
        ? `Build Cloud: could not release lease ${lease.id}: the control plane's certificate is not trusted here (${message}); the control plane ends it after ${lease.idleTimeoutS} s without activity. Set BUILDCLOUD_CA_FILE to the PEM file of its CA for report, as for setup.`
        : `Build Cloud: could not release lease ${lease.id} (${message}); the control plane ends it after ${lease.idleTimeoutS} s without activity.`
    );
    return { billedSeconds: null, shared: null };
  } finally {
    api.close();
  }
}
