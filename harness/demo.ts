// `buildcloud demo`: the whole product for real on one machine. The embedded control plane (with its registry and
// dockerd builders), a demo org with a bucket of minutes, and three pipelines of four parallel jobs building
// examples/app, with a code change between pipelines; then a report in the terminal and as an HTML page.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { orgUsagePath, pipelineUsagePath, type PipelineUsage, type UsageReport } from '../src/contract/http-api';
import { NORTH_STAR_GOAL } from '../src/contract/rules';
import { createOrgWithToken } from './control-plane';
import { pushBaseImage, startControlPlane, type DemoServer } from './demo-control-plane';
import { runGithubPipeline } from './github-pipeline';
import { gitlabPipelineKey, runGitlabPipeline } from './gitlab-pipeline';
import { runCircleciPipeline } from './circleci-pipeline';
import { ROOT } from './github-runner';
import { pipelineChecks, renderHtml, renderText, type DemoUsage, type JobOutcome } from './demo-report';
import { measureUntouched } from './demo-untouched';

export interface DemoOptions {
  reportFile: string;
  keep: boolean;
  log: (msg: string) => void;
}

const TARGETS = (process.env.BUILDCLOUD_DEMO_TARGETS || 'api,worker,web,migrations').split(',');
const ORG = 'demo';
const PROJECT = 'demo/app';
const WORKFLOW = '4f7238f8-bbeb-4428-912f-da28c816002f';

async function usageOf(server: DemoServer, token: string, pipelines: Record<string, string>): Promise<DemoUsage> {
  const get = async <T>(p: string): Promise<T> => {
    const r = await fetch(`${server.http}${p}`, { headers: { authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(`GET ${p}: HTTP ${r.status}`);
    return (await r.json()) as T;
  };
  const u = await get<UsageReport>(orgUsagePath(ORG));
  const pipelineMinutes: Record<string, number> = {};
  const pipelineSteps: DemoUsage['pipelineSteps'] = {};
  const cacheMisses: NonNullable<DemoUsage['cacheMisses']> = [];
  // The north star over the pipelines after the first: the first one starts from an empty org cache, where only
  // steps one parallel job finished before another began come from a cache (counted honestly, that is few).
  let warmBuilds = 0;
  let warmWithCache = 0;
  for (const [i, [name, key]] of Object.entries(pipelines).entries()) {
    const p = await get<PipelineUsage>(pipelineUsagePath(ORG, key));
    if (i > 0) {
      warmBuilds += p.builds;
      warmWithCache += p.buildsWithCache;
    }
    pipelineMinutes[name] = p.billedSeconds / 60;
    pipelineSteps[name] = { total: p.totalSteps, cached: p.cachedSteps, deduplicated: p.deduplicatedSteps ?? 0 };
    cacheMisses.push(...(p.cacheMisses ?? []));
  }
  return {
    minutesUsed: u.minutes.used,
    minutesLeft: u.minutes.left,
    minutesBought: u.minutes.bought,
    builds: u.builds.count,
    withCachedStepShare: u.builds.withCachedStepShare,
    warmWithCachedStepShare: warmBuilds ? warmWithCache / warmBuilds : 0,
    warmBuilds,
    avgCacheRatio: u.builds.avgCacheRatio,
    cachedSteps: u.builds.cachedSteps,
    deduplicatedSteps: u.builds.deduplicatedSteps ?? 0,
    pipelineMinutes,
    pipelineSteps,
    cacheMisses
  };
}

const changeText = (text: string, version: string) => text.replace(/version: [\w-]+/, `version: ${version}`);

function changeCode(workspace: string, version: number): void {
  const f = path.join(workspace, 'examples/app/src/app.txt');
  fs.writeFileSync(f, changeText(fs.readFileSync(f, 'utf8'), String(version)));
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const cli = path.join(ROOT, 'dist/cli.js');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'buildcloud-demo-'));
  o.log(`Starting the control plane (state in ${work}/state)`);
  const server = await startControlPlane(cli, path.join(work, 'state'), ['--warm-pool', '2', '--grace', '30s', '--idle-timeout', '5m']);
  let ok = false;
  try {
    const token = createOrgWithToken(cli, server.stateDir, ORG, 60, 'demo');
    o.log(`Org '${ORG}' with 60 build minutes; control plane at ${server.http} (gRPC ${server.grpc}), registry ${server.registry}`);
    const base = await pushBaseImage(server, token, PROJECT, work);
    o.log(`Base image ${base} pushed to the org registry`);

    const workspace = path.join(work, 'repo');
    fs.cpSync(path.join(ROOT, 'examples/app'), path.join(workspace, 'examples/app'), { recursive: true });
    // What the code change leaves untouched, measured by BuildKit on a control builder before the pipelines run.
    const untouched = await measureUntouched({
      grpc: server.grpc,
      token,
      project: PROJECT,
      appDir: path.join(workspace, 'examples/app'),
      changedFile: 'src/app.txt',
      change: (text, target) => changeText(text, `control-${target}`),
      targets: TARGETS,
      buildArgs: { BASE: base },
      work
    });
    o.log(`Control builds: steps a change of src/app.txt leaves untouched, per target: ${JSON.stringify(untouched)}`);
    const common = {
      project: PROJECT,
      workspace,
      context: 'examples/app',
      targets: TARGETS,
      buildArgs: [`BASE=${base}`],
      endpoint: server.http,
      token,
      work,
      onProgress: o.log
    };

    const jobs: JobOutcome[] = [];
    const pipelines: Record<string, string> = {};
    // One pipeline per CI, one org cache across them: each CI's project resolves to the same demo/app.
    const runs: Array<{ name: string; key: string; run: () => Promise<JobOutcome[]> }> = [
      { name: 'github run 5001', key: '700001/5001/1', run: () => runGithubPipeline({ ...common, runId: '5001' }) },
      { name: 'gitlab pipeline 7002', key: gitlabPipelineKey('7002'), run: () => runGitlabPipeline({ ...common, pipelineId: '7002' }) },
      { name: 'circleci workflow 4f7238f8', key: WORKFLOW, run: () => runCircleciPipeline({ ...common, workflowId: WORKFLOW }) }
    ];
    for (const [i, p] of runs.entries()) {
      if (i > 0) {
        changeCode(workspace, i + 1);
        o.log(`Code change: examples/app/src/app.txt now at version ${i + 1}`);
      }
      const results = await p.run();
      for (const r of results) if (i > 0) r.untouchedSteps = untouched[r.target];
      jobs.push(...results);
      pipelines[p.name] = p.key;
    }

    const usage = await usageOf(server, token, pipelines);
    // Each job's "why steps missed the cache", as its build record told the control plane (one build per job here).
    for (const j of jobs) j.cacheMiss = usage.cacheMisses?.find((m) => m.leaseId === j.leaseId)?.reason;
    const reused = pipelineChecks(jobs, usage).every((c) => c.ok);
    ok = jobs.every((j) => j.status === 'success') && usage.warmWithCachedStepShare >= NORTH_STAR_GOAL && reused;
    process.stdout.write(renderText(jobs, usage) + '\n');
    fs.writeFileSync(o.reportFile, renderHtml(jobs, usage, { generatedAt: new Date().toISOString(), ok }));
    o.log(`HTML report: ${o.reportFile}`);
    if (!ok) {
      o.log(
        'DEMO FAILED: a build failed, fewer than 80% of the builds after the first pipeline had a cached step, or a build rebuilt a step the change left untouched'
      );
    }
    return ok ? 0 : 1;
  } finally {
    o.log('Stopping the control plane (ending leases, destroying builders, stopping the registry)');
    await server.stop();
    if (!o.keep) fs.rmSync(work, { recursive: true, force: true });
    if (ok && !o.keep) fs.rmSync(server.logFile, { force: true });
    else o.log(`Control plane log: ${server.logFile}`);
  }
}
