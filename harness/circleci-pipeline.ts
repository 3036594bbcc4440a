// A CircleCI workflow of the demo: the orb's `build` job once per target (parallel jobs of one workflow), compiled
// and run the way CircleCI runs it (circleci-runner.ts: parameters substituted at config time, each run step as
// `bash -eo pipefail`, $BASH_ENV sourced, `when: always` honoured).
import * as fs from 'fs';
import * as path from 'path';
import { context, loadOrb, runWorkflow, type Config } from './circleci-runner';
import { ROOT } from './github-runner';
import type { PipelineSpec } from './github-pipeline';
import type { JobOutcome } from './demo-report';

export async function runCircleciPipeline(spec: Omit<PipelineSpec, 'runId'> & { workflowId: string }): Promise<JobOutcome[]> {
  const cli = `${process.execPath} ${path.join(ROOT, 'dist/cli.js')}`;
  const [username, reponame] = spec.project.split('/');
  const config: Config = {
    version: 2.1,
    orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
    workflows: {
      images: {
        jobs: spec.targets.map((t) => ({
          'buildcloud/build': {
            name: `image-${t}`,
            context: 'buildcloud',
            cli,
            build_context: spec.context,
            target: t,
            tags: `demo/${t}:circleci`,
            build_args: spec.buildArgs.join('\n')
          }
        }))
      }
    }
  };
  spec.onProgress(`circleci workflow ${spec.workflowId.slice(0, 8)}: ${spec.targets.length} parallel jobs (orb)`);
  const started = Date.now();
  const work = fs.mkdtempSync(path.join(spec.work, 'circleci-'));
  const result = await runWorkflow(context(config, { orbs: { buildcloud: loadOrb() } }), 'images', {
    workRoot: work,
    workflowId: spec.workflowId,
    checkoutFrom: spec.workspace,
    projectUsername: username,
    projectReponame: reponame,
    branch: 'main',
    username: 'demo',
    contexts: { buildcloud: { BUILDCLOUD_ENDPOINT: spec.endpoint, BUILDCLOUD_TOKEN: spec.token } }
  });
  return spec.targets.map((t) => {
    const r = result[`image-${t}`];
    const j = r && r !== 'blocked' ? r : null;
    const e = j?.exported ?? {};
    return {
      ci: 'CircleCI',
      pipeline: `circleci workflow ${spec.workflowId.slice(0, 8)}`,
      job: `image-${t}`,
      target: t,
      leaseId: e.BUILDCLOUD_LEASE_ID ?? '',
      builder: e.BUILDCLOUD_DOCKER_HOST ?? '',
      status: j?.status === 'success' ? 'success' : 'failure',
      durationMs: Math.round(Number(e.BUILDCLOUD_DURATION ?? 0) * 1000),
      totalSteps: Number(e.BUILDCLOUD_TOTAL_STEPS ?? 0),
      cachedSteps: Number(e.BUILDCLOUD_CACHED_STEPS ?? 0),
      wallMs: Date.now() - started,
      error:
        j?.status === 'success'
          ? undefined
          : (j?.steps
              .filter((s) => s.status === 'failed')
              .map((s) => s.output.slice(-400))
              .join('\n') ?? 'blocked')
    };
  });
}
