// The demo's "untouched by the change" figure, measured rather than read from the Dockerfile: a control build on a
// fresh builder of its own. Each target is built at the previous version, then again with the changed file; the
// steps BuildKit reports CACHED in that second build's own stream are the steps the change left untouched, the most
// any cache could have served. The expectation then owes nothing to the Dockerfile reader that counts merged builds
// (src/core/dockerfile-steps.ts), so a mistake there cannot hide behind an expectation made by the same code.
//
// The changed file gets a different content per target, so that no target's second build reuses the changed stage
// another target's second build just made: each measurement sees the change as a pipeline's first job would.
import * as fs from 'fs';
import * as path from 'path';
import { ApiClient } from '../src/core/api-client';
import { runBuild } from '../src/core/build';
import { resolveDocker, type BuildOptions } from '../src/core/docker-cli';
import { cleanupRunner, configureRunner } from '../src/core/runner-config';
import type { LeaseMsg } from '../src/contract/grpc';

export interface ControlBuildOptions {
  grpc: string; // the control plane's gRPC endpoint
  token: string;
  project: string;
  appDir: string; // the app's build context at the previous version (copied, never changed)
  changedFile: string; // relative to appDir, e.g. src/app.txt
  change: (text: string, target: string) => string; // the change, as the pipelines make it
  targets: string[];
  buildArgs: Record<string, string>;
  work: string; // a scratch directory
}

/**
 * Per target, the steps of its build that BuildKit served from the builder's own cache after the change: the steps
 * the change left untouched. Throws when a control build fails (the demo cannot judge its pipelines without it).
 */
export async function measureUntouched(o: ControlBuildOptions): Promise<Record<string, number>> {
  const ctx = path.join(o.work, 'control-app');
  fs.cpSync(o.appDir, ctx, { recursive: true });
  const api = new ApiClient({ endpoint: o.grpc, token: o.token });
  // A job-scoped lease of its own pipeline: a fresh builder that no demo job shares.
  const lease = await api.provision({
    org: '',
    pipelineKey: `demo/control/${Date.now()}`,
    jobId: 'control',
    platforms: [],
    scope: 'SCOPE_JOB',
    identity: { provider: 'local', project: o.project, branch: 'control', defaultBranch: 'main', fork: false, actor: 'demo', runUrl: '' }
  });
  const docker = await resolveDocker(process.env);
  const cfg = await configureRunner(lease, `buildcloud-demo-control-${process.pid}`, { tempRoot: o.work, docker });
  // No org cache: what is cached comes from this builder's own earlier builds only.
  const noCache = { ...lease, cache: null } as unknown as LeaseMsg;
  const build = async (target: string): Promise<number> => {
    const opts: BuildOptions = { context: ctx, tags: [], buildArgs: o.buildArgs, target, push: false, platforms: [], exportCache: false };
    const r = await runBuild(opts, cfg, noCache, docker, { trapSignals: false });
    if (r.status !== 'success' || r.stepsFrom !== 'progress') {
      throw new Error(`control build of ${target} ${r.status} (steps from ${r.stepsFrom}):\n${r.outputTail.join('\n')}`);
    }
    return r.cachedSteps;
  };
  try {
    const file = path.join(ctx, o.changedFile);
    const before = fs.readFileSync(file, 'utf8');
    const untouched: Record<string, number> = {};
    for (const t of o.targets) {
      fs.writeFileSync(file, before);
      await build(t);
      fs.writeFileSync(file, o.change(before, t));
      untouched[t] = await build(t);
    }
    return untouched;
  } finally {
    await cleanupRunner(cfg, docker).catch(() => undefined);
    await api.release(lease.id).catch(() => undefined);
    api.close();
  }
}
