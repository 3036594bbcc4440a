// The build action: build on the provisioned builder with the org cache. The session and the inputs are read
// here, before anything heavy loads; the work is in build-step.ts.
import * as core from './workflow-commands';
import { buildSettings, type BuildSettings } from '../core/settings';
import { loadSession, SESSION_ENV, type Session } from '../core/session';
import { errorMessage } from './state';
import { loadBuildStep } from './load-steps';

export async function run(): Promise<void> {
  let session: Session;
  let settings: BuildSettings;
  try {
    session = loadSession(process.env[SESSION_ENV]);
    settings = buildSettings((name) => core.getInput(name));
  } catch (err) {
    core.setFailed(errorMessage(err));
    return;
  }
  await loadBuildStep().buildActionStep(session, settings);
}
