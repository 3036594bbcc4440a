// A GitLab CI pipeline of the demo: the Build Cloud component included once per target (parallel jobs of one
// stage), run by the real GitLab CI interpreter (gitlab-ci-local, shell executor) in a git checkout.
import * as fs from 'fs';
import * as path from 'path';
import { dotenvReport, initRepo, runGitlabCiLocal } from './gitlab-runner';
import { ROOT } from './github-runner';
import type { PipelineSpec } from './github-pipeline';
import type { JobOutcome } from './demo-report';

const PROJECT_ID = '4821';

export function gitlabPipelineKey(pipelineId: string): string {
  return `${PROJECT_ID}/${pipelineId}`;
}

function pipelineYaml(spec: Omit<PipelineSpec, 'runId'>): string {
  const includes = spec.targets
    .map(
      (t) => `  - local: plugins/gitlab/templates/buildcloud.yml
    inputs:
      job-name: image-${t}
      context: ${spec.context}
      target: ${t}
      tags: demo/${t}:$CI_PIPELINE_ID
      build-args: ${JSON.stringify(spec.buildArgs.join('\n'))}`
    )
    .join('\n');
  return `stages: [build]\ninclude:\n${includes}\n`;
}

export async function runGitlabPipeline(spec: Omit<PipelineSpec, 'runId'> & { pipelineId: string }): Promise<JobOutcome[]> {
  // A fresh checkout of the project as GitLab's runner would have it: the app, the component, the pipeline file.
  const repo = fs.mkdtempSync(path.join(spec.work, `gitlab-${spec.pipelineId}-`));
  fs.cpSync(path.join(spec.workspace, spec.context), path.join(repo, spec.context), { recursive: true });
  fs.cpSync(path.join(ROOT, 'plugins/gitlab/templates'), path.join(repo, 'plugins/gitlab/templates'), { recursive: true });
  fs.writeFileSync(path.join(repo, '.gitlab-ci.yml'), pipelineYaml(spec));
  initRepo(repo, `https://gitlab.example.com/${spec.project}.git`);
  spec.onProgress(`gitlab pipeline ${spec.pipelineId}: ${spec.targets.length} parallel jobs (gitlab-ci-local)`);
  const started = Date.now();
  const run = await runGitlabCiLocal(repo, {
    variables: {
      BUILDCLOUD_ENDPOINT: spec.endpoint,
      BUILDCLOUD_TOKEN: spec.token,
      CI_PROJECT_ID: PROJECT_ID,
      CI_PIPELINE_ID: spec.pipelineId,
      GITLAB_USER_LOGIN: 'demo'
    },
    inputs: { cli: `${process.execPath} ${path.join(ROOT, 'dist/cli.js')}` },
    predefined: ['CI_PROJECT_ID', 'CI_PIPELINE_ID', 'GITLAB_USER_LOGIN'],
    timeoutMs: 600_000
  });
  fs.writeFileSync(path.join(repo, 'pipeline.log'), run.output);
  return spec.targets.map((t) => {
    const job = `image-${t}`;
    let env: Record<string, string> = {};
    try {
      env = dotenvReport(repo, job);
    } catch {
      // no report: the job failed before after_script wrote it
    }
    const ok = run.results[job] === 'PASS';
    return {
      ci: 'GitLab CI',
      pipeline: `gitlab pipeline ${spec.pipelineId}`,
      job,
      target: t,
      leaseId: env.BUILDCLOUD_LEASE_ID ?? '',
      builder: env.BUILDCLOUD_DOCKER_HOST ?? '',
      status: ok ? 'success' : 'failure',
      durationMs: Math.round(Number(env.BUILDCLOUD_DURATION ?? 0) * 1000),
      totalSteps: Number(env.BUILDCLOUD_TOTAL_STEPS ?? 0),
      cachedSteps: Number(env.BUILDCLOUD_CACHED_STEPS ?? 0),
      wallMs: Date.now() - started,
      error: ok
        ? undefined
        : run
            .log(job)
            .filter((l) => /error|fail/i.test(l))
            .slice(-5)
            .join('\n') || `job ${run.results[job] ?? 'did not run'}`
    };
  });
}
