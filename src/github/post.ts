// The action's post step (post-if: always()): flush metering, release the lease, clean up, write the summary.
// Nothing to do without a session from main; the work is in post-step.ts, loaded only when there is some.
import * as core from './workflow-commands';
import { getSessionFile } from './state';
import { loadPostStep } from './load-steps';

export async function run(): Promise<void> {
  const file = getSessionFile();
  if (!file) {
    core.info('Build Cloud: setup did not get a builder; nothing to release.');
    return;
  }
  await loadPostStep().postStep(file);
}
