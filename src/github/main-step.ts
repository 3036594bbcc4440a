// The action's main step once its inputs are known to be usable (main.ts checked them): provision the pipeline's
// builder and point this job's docker at it.
import * as core from './workflow-commands';
import { fullCore } from './full-core';
import type { SetupSettings } from '../core/settings';
import { defaultSpoolDir, setup } from '../core/setup';
import { errorMessage, log, setSessionFile, setSpoolBase } from './state';

/** Runs setup for `settings`; failures become the step's error (core.setFailed), never a throw. */
export async function mainStep(settings: SetupSettings): Promise<void> {
  try {
    if (settings.token) core.setSecret(settings.token);
    const spoolBase = defaultSpoolDir(process.env);
    // Records an earlier job carried through the Actions cache are restored by post, before its report sends the
    // spool: asking the cache means loading @actions/cache (0.2-0.6 s here), which main would pay before every build.
    setSpoolBase(spoolBase);
    const r = await core.group('Build Cloud: provision a remote builder', () =>
      setup(settings, {
        env: process.env,
        log: log(),
        mask: (s) => core.setSecret(s),
        githubOidc: (aud) => fullCore().getIDToken(aud),
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
