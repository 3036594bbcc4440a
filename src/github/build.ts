// The build action: build on the provisioned builder with the org cache. The session and the inputs are read
// here, before anything heavy loads; the work is in build-step.ts.
import * as core from './workflow-commands';
import { buildSettings, type BuildSettings } from '../core/settings';
import { loadSession, SESSION_ENV, type Session } from '../core/session';
import { errorMessage } from './state';
import { secretFragments } from '../core/build-secrets';
import { loadBuildStep } from './load-steps';

export async function run(): Promise<void> {
  let session: Session;
  let settings: BuildSettings;
  try {
    session = loadSession(process.env[SESSION_ENV]);
    // secrets untrimmed, as docker/build-push-action reads them (trimWhitespace: false): a value's last newline may matter.
    settings = buildSettings((name) => (name === 'secrets' ? process.env.INPUT_SECRETS || '' : core.getInput(name)));
    // Masked before anything else is written: every value, and each line of a multi-line one (GitHub masks per line).
    for (const f of secretFragments(settings.secrets.map((s) => s.value))) core.setSecret(f);
  } catch (err) {
    core.setFailed(errorMessage(err));
    return;
  }
  await loadBuildStep().buildActionStep(session, settings);
}
