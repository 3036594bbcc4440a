// The action's main step: provision the pipeline's builder and point this job's docker at it.
// The inputs are checked here, before anything heavy loads (issue 10); the work is in main-step.ts.
import * as core from './workflow-commands';
import { setupSettings, type SetupSettings } from '../core/settings';
import { requireEndpoint } from '../core/endpoint';
import { preconnect } from '../core/preconnect';
import { errorMessage } from './state';
import { loadMainStep } from './load-steps';

export async function run(): Promise<void> {
  let settings: SetupSettings;
  let connecting = false;
  try {
    settings = setupSettings((name) => core.getInput(name));
    // The first request's TLS handshake runs while the step loads (preconnect.ts).
    connecting = preconnect(requireEndpoint(settings, process.env));
  } catch (err) {
    core.setFailed(errorMessage(err));
    return;
  }
  if (connecting) await new Promise((r) => setImmediate(r)); // one turn of the event loop: the handshake starts
  await loadMainStep().mainStep(settings);
}
