// The action's post step (post-if: always()): flush metering, release the lease, clean up, write the summary.
// Its own failures are warnings: the job's outcome is the user's build's.
// Loaded by post.ts when main saved a session. The whole @actions/core (job summary), @actions/github and the
// Octokit client load only when they are used.
import * as core from './workflow-commands';
import { fullCore } from './full-core';
import { loadSession } from '../core/session';
import { report } from '../core/report';
import { totalsOf } from '../core/summary';
import { restoreSpool, saveSpool } from './spool-carry';
import { errorMessage, getSpoolBase, log } from './state';

/** Reports and releases the session saved in `file`; every failure is a warning, never a throw. */
export async function postStep(file: string): Promise<void> {
  const spoolBase = getSpoolBase();
  // Earlier jobs' unsent records join this job's spool, so the report below sends them with its own.
  if (spoolBase) await restoreSpool(spoolBase);
  try {
    const session = loadSession(file);
    const r = await core.group('Build Cloud: report and release', () => report(session, { log: log() }));
    if (session.summary) await fullCore().summary.addRaw(r.markdown).write();
    const pr = session.identity.pullRequest;
    const ghToken = core.getInput('github-token');
    if (session.prComment && pr && ghToken && session.lease) {
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
        const { pipelineFigures, upsertPrComment } = require('./pr-comment') as typeof import('./pr-comment');
        // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
        const github = require('@actions/github') as typeof import('@actions/github');
        const base = session.meteringUrl.replace(/\/v1\/events$/, '');
        const own = totalsOf(r.builds);
        const figures = (await pipelineFigures(base, session.org, session.identity.pipelineKey, session.token)) ?? {
          builds: own.builds,
          failed: own.failed,
          buildsWithCache: own.withCache,
          totalSteps: own.totalSteps,
          cachedSteps: own.cachedSteps,
          billedSeconds: r.billedSeconds ?? undefined
        };
        const { owner, repo } = github.context.repo;
        const what = await upsertPrComment(
          { owner, repo, issueNumber: pr, token: ghToken, baseUrl: process.env.GITHUB_API_URL },
          { builds: 0, totalSteps: 0, cachedSteps: 0, ...figures, branch: session.identity.branch, runUrl: session.identity.runUrl }
        );
        core.info(`Build Cloud: pull request comment ${what}`);
      } catch (err) {
        core.warning(`Build Cloud: could not update the pull request comment: ${errorMessage(err)}`);
      }
    }
  } catch (err) {
    core.warning(`Build Cloud post step: ${errorMessage(err)}`);
  }
  if (spoolBase) await saveSpool(spoolBase);
}
