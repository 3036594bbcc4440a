// The build action: build on the provisioned builder with the org cache.
import * as core from '@actions/core';
import { buildSettings } from '../core/settings';
import { buildStep } from '../core/build-step';
import { loadSession, SESSION_ENV } from '../core/session';
import { errorMessage, log } from './state';

export async function run(): Promise<void> {
  try {
    const session = loadSession(process.env[SESSION_ENV]);
    const settings = buildSettings((name) => core.getInput(name));
    const r = await buildStep(session, settings, { log: log(), io: { onLine: (l) => process.stdout.write(l + '\n') } });
    for (const [k, v] of Object.entries(r.outputs)) core.setOutput(k, v);
    if (r.run.status !== 'success') {
      core.setFailed(`docker build ${r.run.status === 'cancelled' ? 'was cancelled' : `failed (exit ${r.run.exitCode})`}: ${r.run.outputTail.slice(-5).join(' | ')}`);
    } else if (r.loadError) {
      core.setFailed(r.loadError);
    }
  } catch (err) {
    core.setFailed(errorMessage(err));
  }
}
