// The build action once its session and inputs are read (build.ts): build on the builder with the org cache.
import * as core from './workflow-commands';
import type { BuildSettings } from '../core/settings';
import { buildStep } from '../core/build-step';
import { redactor } from '../core/build-secrets';
import type { Session } from '../core/session';
import { errorMessage, log } from './state';

/** Builds with `settings` on `session`'s builder; failures become the step's error (core.setFailed), never a throw. */
export async function buildActionStep(session: Session, settings: BuildSettings): Promise<void> {
  try {
    // GitHub masks the secrets (build.ts registered them); the output is redacted here too, so a log copied elsewhere
    // (a step that tees it, an artifact) holds no value either.
    const redact = redactor(settings.secrets.map((s) => s.value));
    const r = await buildStep(session, settings, { log: log(), naming: 'action', io: { onLine: (l) => process.stdout.write(redact(l) + '\n') } });
    for (const [k, v] of Object.entries(r.outputs)) core.setOutput(k, v);
    if (r.run.failure?.kind === 'platform') {
      core.setFailed(redact(r.run.failure.message)); // the builder was lost: not the Dockerfile, nothing in its output to show
    } else if (r.run.status !== 'success') {
      core.setFailed(
        `docker build ${r.run.status === 'cancelled' ? 'was cancelled' : `failed (exit ${r.run.exitCode})`}: ${redact(r.run.outputTail.slice(-5).join(' | '))}`
      );
    } else if (r.pushError) {
      core.setFailed(redact(r.pushError));
    } else if (r.loadError) {
      core.setFailed(r.loadError);
    }
  } catch (err) {
    core.setFailed(errorMessage(err));
  }
}
