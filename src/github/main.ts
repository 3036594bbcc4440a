// The action's main step: provision the pipeline's builder and point this job's docker at it.
import * as core from '@actions/core';
import { setupSettings } from '../core/settings';
import { defaultSpoolDir, setup } from '../core/setup';
import { restoreSpool } from './spool-cache';
import { errorMessage, log, setSessionFile, setSpoolBase } from './state';

export async function run(): Promise<void> {
  try {
    const settings = setupSettings((name) => core.getInput(name));
    if (settings.token) core.setSecret(settings.token);
    const spoolBase = defaultSpoolDir(process.env);
    setSpoolBase(spoolBase);
    await restoreSpool(spoolBase);
    const r = await core.group('Build Cloud: provision a remote builder', () =>
      setup(settings, {
        env: process.env,
        log: log(),
        mask: (s) => core.setSecret(s),
        githubOidc: (aud) => core.getIDToken(aud),
        tempRoot: process.env.RUNNER_TEMP,
        spoolDir: spoolBase
      })
    );
    // Saved first: whatever happens next, post finds the session and releases the lease.
    setSessionFile(r.sessionFile);
    for (const [k, v] of Object.entries(r.exportEnv)) core.exportVariable(k, v);
    for (const [k, v] of Object.entries(r.outputs)) core.setOutput(k, v);
    core.info(`Build Cloud: docker now builds on ${r.outputs['docker-host'] || 'the runner (fallback)'}; builder name ${r.outputs.builder || '(none)'}`);
  } catch (err) {
    core.setFailed(errorMessage(err));
  }
}
