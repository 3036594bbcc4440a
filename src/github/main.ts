// The action's main step: provision the pipeline's builder and point this job's docker at it.
// The inputs are checked here, before anything heavy loads (issue 10); the work is in main-step.ts.
import * as core from './workflow-commands';
import { setupSettings, type SetupSettings } from '../core/settings';
import { requireEndpoint } from '../core/endpoint';
import { errorMessage } from './state';
import { loadSteps } from './load-steps';

export async function run(): Promise<void> {
  let settings: SetupSettings;
  try {
    settings = setupSettings((name) => core.getInput(name));
    requireEndpoint(settings, process.env);
  } catch (err) {
    core.setFailed(errorMessage(err));
    return;
  }
  await loadSteps().mainStep(settings);
}
