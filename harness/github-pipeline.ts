// A GitHub Actions pipeline of the demo: N parallel jobs, each running the action's main step, the build action,
// and the post step, exactly the way the runner runs them (see github-runner.ts).
import * as fs from 'fs';
import * as path from 'path';
import { githubJobEnv, runStep, ROOT, type JobContext } from './github-runner';
import type { JobOutcome } from './demo-report';

export interface PipelineSpec {
  runId: string;
  project: string; // owner/repo
  workspace: string; // the checked-out repository
  context: string; // relative to the workspace
  targets: string[]; // one job per target, in parallel
  buildArgs: string[];
  endpoint: string;
  token: string;
  work: string;
  onProgress: (msg: string) => void;
}

async function job(spec: PipelineSpec, index: number, target: string): Promise<JobOutcome> {
  const temp = fs.mkdtempSync(path.join(spec.work, `gha-${spec.runId}-${index}-`));
  const eventPath = path.join(temp, 'event.json');
  fs.writeFileSync(eventPath, JSON.stringify({ repository: { id: 700001, default_branch: 'main', full_name: spec.project } }));
  const ctx: JobContext = {
    env: githubJobEnv({
      runId: spec.runId,
      job: 'image',
      repo: spec.project,
      repoId: '700001',
      eventPath,
      temp,
      home: path.join(spec.work, 'home-github'),
      workspace: spec.workspace
    }),
    expressions: { 'github.job': 'image', 'strategy.job-index': String(index), 'job.check_run_id': `${spec.runId}${index}`, 'github.token': '' },
    runnerTemp: temp,
    workspace: spec.workspace // as the runner runs a job's steps: in the checkout, with paths relative to it
  };
  const inputs = { endpoint: spec.endpoint, token: spec.token };
  const started = Date.now();
  const main = await runStep(path.join(ROOT, 'action.yml'), 'main', inputs, ctx);
  const env = { ...ctx, env: { ...ctx.env, ...main.env } };
  let build = null;
  if (!main.failed) {
    spec.onProgress(`github run ${spec.runId} job ${target}: building on ${main.outputs['docker-host']}`);
    build = await runStep(
      path.join(ROOT, 'build/action.yml'),
      'main',
      {
        context: spec.context,
        target,
        tags: `demo/${target}:${spec.runId}`,
        'build-args': spec.buildArgs.join('\n')
      },
      env
    );
  }
  // Each job's log stays in its runner temp dir (kept with --keep) for anyone who wants the detail.
  fs.writeFileSync(path.join(temp, 'job.log'), `${main.stdout}\n${build?.stdout ?? ''}`);
  const post = await runStep(path.join(ROOT, 'action.yml'), 'post', inputs, env, main.state);
  const ok = !main.failed && build !== null && !build.failed && !post.failed;
  return {
    ci: 'GitHub Actions',
    pipeline: `github run ${spec.runId}`,
    job: `image (${target})`,
    target,
    leaseId: main.outputs['lease-id'] ?? '',
    builder: main.outputs['docker-host'] ?? '',
    status: ok ? 'success' : 'failure',
    durationMs: build ? Math.round(Number(build.outputs.duration ?? 0) * 1000) : 0,
    totalSteps: Number(build?.outputs['total-steps'] ?? 0),
    cachedSteps: Number(build?.outputs['cached-steps'] ?? 0),
    wallMs: Date.now() - started,
    error: ok ? undefined : lastLines(`${main.stdout}\n${build?.stdout ?? ''}\n${post.stdout}`)
  };
}

function lastLines(s: string): string {
  return s
    .split('\n')
    .filter((l) => l.startsWith('::error::') || /error|failed/i.test(l))
    .slice(-5)
    .join('\n');
}

export async function runGithubPipeline(spec: PipelineSpec): Promise<JobOutcome[]> {
  spec.onProgress(`github run ${spec.runId}: ${spec.targets.length} parallel jobs`);
  return Promise.all(spec.targets.map((t, i) => job(spec, i, t)));
}
