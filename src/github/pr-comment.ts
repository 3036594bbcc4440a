// One comment per pull request with the pipeline's minutes and cache ratio, found by its marker and updated in
// place by every job of the pipeline.
import { Octokit } from '@octokit/rest';
import { pipelineUsagePath, type PipelineUsage } from '../contract/http-api';
import { httpRequest, type HttpRequester } from '../core/http-request';
import { PR_COMMENT_MARKER, renderPrComment, type PipelineSummary } from '../core/summary';

export interface PrTarget {
  owner: string;
  repo: string;
  issueNumber: number;
  token: string;
  baseUrl?: string;
}

export async function upsertPrComment(
  t: PrTarget,
  p: PipelineSummary,
  octokit = new Octokit({ auth: t.token, baseUrl: t.baseUrl })
): Promise<'created' | 'updated'> {
  const body = renderPrComment(p);
  const comments = await octokit.paginate(octokit.rest.issues.listComments, { owner: t.owner, repo: t.repo, issue_number: t.issueNumber, per_page: 100 });
  const mine = comments.find((c) => typeof c.body === 'string' && c.body.includes(PR_COMMENT_MARKER));
  if (mine) {
    await octokit.rest.issues.updateComment({ owner: t.owner, repo: t.repo, comment_id: mine.id, body });
    return 'updated';
  }
  await octokit.rest.issues.createComment({ owner: t.owner, repo: t.repo, issue_number: t.issueNumber, body });
  return 'created';
}

// The pipeline's figures from the control plane (all its jobs), falling back to this job's own.
// node:http, not the global fetch (src/core/http-request.ts says why); @octokit keeps its own HTTP.
export async function pipelineFigures(
  httpBase: string,
  org: string,
  pipelineKey: string,
  token: string,
  request: HttpRequester = httpRequest
): Promise<Partial<PipelineSummary> | null> {
  try {
    const res = await request(`${httpBase}${pipelineUsagePath(org, pipelineKey)}`, {
      headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
      signal: AbortSignal.timeout(10_000)
    });
    if (res.status < 200 || res.status >= 300) return null;
    const u = JSON.parse(res.text) as PipelineUsage;
    return {
      builds: u.builds,
      failed: u.failed,
      buildsWithCache: u.buildsWithCache,
      totalSteps: u.totalSteps,
      cachedSteps: u.cachedSteps,
      billedSeconds: u.billedSeconds
    };
  } catch {
    return null;
  }
}
