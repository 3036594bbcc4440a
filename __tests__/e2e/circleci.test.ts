// The CircleCI orb for real: the packed plugins/circleci/orb.yml, compiled and run the way CircleCI runs it
// (harness/circleci-runner.ts: `<< parameters >>` substitution, `bash -eo pipefail` steps, $BASH_ENV,
// `when: always`, artifacts, CIRCLE_* variables), with the bundled CLI (`node dist/cli.js`, the orb's `cli`
// parameter) against the real control plane, real dockerd builders and the org-cache registry.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { adminSetup, startServer, TestClient, waitFor, CLI, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import {
  context,
  describeJob,
  loadOrb,
  runWorkflow,
  stepNamed,
  tmpRoot,
  type Config,
  type JobResult,
  type Orb,
  type WorkflowResult
} from '../../harness/circleci-runner';
import type { UsageReport } from '../../src/contract/http-api';

const CLI_CMD = `node ${CLI}`;
const DOCKERFILE = [
  'RUN echo "deps v1" > /deps.txt && sleep 1',
  'RUN cat /deps.txt > /layer2.txt',
  'COPY app.txt /app.txt',
  'ARG PAYLOAD=none',
  `RUN printf '%s' "$PAYLOAD" > /payload.txt && cat /app.txt /deps.txt > /built.txt`
].join('\n');

let server: ServerProcess;
let token: string;
let orb: Orb;
let work: string;
let repo: string; // what `checkout` copies into each job's working directory
const timings: Record<string, unknown> = {}; // measured here; the report quotes them

async function usage(): Promise<UsageReport> {
  const res = await fetch(`${server.info.http}/v1/orgs/acme/usage`, { headers: { authorization: `Bearer ${token}` } });
  return (await res.json()) as UsageReport;
}

async function lease(id: string) {
  const c = new TestClient(server.info.grpc, token);
  try {
    return await c.get(id);
  } finally {
    c.close();
  }
}

// A project whose `buildcloud` context holds the endpoint and the org token, as the examples recommend.
function run(
  config: Config,
  workflow: string,
  opts: { workflowId: string; checkoutFrom?: string; branch?: string; projectReponame?: string }
): Promise<WorkflowResult> {
  return runWorkflow(context(config, { orbs: { buildcloud: orb } }), workflow, {
    workRoot: work,
    workflowId: opts.workflowId,
    checkoutFrom: opts.checkoutFrom ?? repo,
    branch: opts.branch,
    projectReponame: opts.projectReponame,
    contexts: { buildcloud: { BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token } }
  });
}

// The builder a lease ran on, and whether its dockerd still runs (the control plane names the process after it).
async function builderOf(leaseId: string): Promise<string> {
  const b = (await lease(leaseId)).builders[0]?.builderId;
  if (!b) throw new Error(`lease ${leaseId} has no builder`);
  return b;
}
function dockerdAlive(builderId: string): boolean {
  return spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .stdout.split('\n')
    .some((l) => l.includes('dockerd') && l.includes(builderId));
}

function job(r: WorkflowResult, name: string): JobResult {
  const j = r[name];
  if (j === 'blocked' || !j) throw new Error(`job ${name} did not run`);
  return j;
}

function expectSuccess(j: JobResult): void {
  if (j.status !== 'success') throw new Error(`job ${j.name} failed:\n${describeJob(j)}`);
}

const summaryOf = (j: JobResult) => {
  const a = j.artifacts.find((x) => x.destination === 'buildcloud-summary.md');
  expect(a?.stored).toBeTruthy();
  return fs.readFileSync(a!.stored, 'utf8');
};

beforeAll(async () => {
  orb = loadOrb();
  work = tmpRoot('bc-circleci-');
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '1']);
  token = adminSetup(server.stateDir, 'acme', 120);
  repo = path.join(work, 'repo');
  await makeBusyboxContext(repo, DOCKERFILE);
  fs.writeFileSync(path.join(repo, 'app.txt'), 'app v1\n');
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
  console.log(`circleci e2e timings (ms): ${JSON.stringify(timings)}`);
});

describe('the orb against the real control plane, run the way CircleCI runs it', () => {
  let first: { api: JobResult; worker: JobResult };

  test("parallel jobs of one workflow running the orb's build job share one builder", async () => {
    const cfg: Config = {
      version: 2.1,
      orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
      workflows: {
        images: {
          jobs: ['api', 'worker'].map((name) => ({
            'buildcloud/build': { name, context: 'buildcloud', cli: CLI_CMD, tags: `acme/${name}:ci`, build_args: `PAYLOAD=${name}` }
          }))
        }
      }
    };
    const t = Date.now();
    const r = await run(cfg, 'images', { workflowId: 'a1b2c3d4-0000-4000-8000-000000000001' });
    timings.parallelWorkflow = Date.now() - t;
    first = { api: job(r, 'api'), worker: job(r, 'worker') };
    for (const j of Object.values(first)) expectSuccess(j);
    const { api, worker } = first;
    expect(api.steps.map((s) => s.step.name)).toEqual(['checkout', 'Build Cloud setup', 'Build Cloud build', 'Build Cloud report', 'store_artifacts']);
    // Both ran at once...
    expect(api.startedAt).toBeLessThan(worker.endedAt);
    expect(worker.startedAt).toBeLessThan(api.endedAt);
    // ...on the same builder, each with its own lease and local names.
    expect(api.exported.BUILDCLOUD_DOCKER_HOST).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(worker.exported.BUILDCLOUD_DOCKER_HOST).toBe(api.exported.BUILDCLOUD_DOCKER_HOST);
    expect(worker.exported.BUILDCLOUD_LEASE_ID).not.toBe(api.exported.BUILDCLOUD_LEASE_ID);
    expect(worker.exported.BUILDCLOUD_BUILDER).not.toBe(api.exported.BUILDCLOUD_BUILDER);
    expect(api.exported.BUILDCLOUD_CACHE_TO).toBe(`${server.info.registry}/acme/acme/widget-api/cache:main`);
    expect(api.exported.BUILDCLOUD_FALLBACK_USED).toBe('false');
    // Each job's last step differs (PAYLOAD); the steps before it are the same, and on the shared builder the job that
    // comes second finds them built already. (Two jobs building the very same thing at the same moment is another
    // story: BuildKit runs it once and only one job's progress shows the steps; the other reports 0 of 0.)
    const totals = [api, worker].map((j) => Number(j.exported.BUILDCLOUD_TOTAL_STEPS));
    expect(Math.max(...totals)).toBe(5);
    timings.parallelSteps = totals;
    timings.parallelCachedSteps = [api, worker].map((j) => Number(j.exported.BUILDCLOUD_CACHED_STEPS));
    expect(Math.max(...(timings.parallelCachedSteps as number[]))).toBeGreaterThan(0);
    for (const j of [api, worker]) {
      expect(Number(j.exported.BUILDCLOUD_TOTAL_STEPS)).toBeGreaterThanOrEqual(1);
      expect(j.exported.BUILDCLOUD_IMAGE_ID).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(Number(j.exported.BUILDCLOUD_DURATION)).toBeGreaterThan(0);
      // report handed the job its own docker back: nothing points at the released builder any more.
      expect(j.exported.DOCKER_HOST).toBeUndefined();
      expect(j.exported.DOCKER_CERT_PATH).toBeUndefined();
      expect(j.exported.BUILDCLOUD_SESSION).toBeUndefined();
      expect(stepNamed(j, 'Build Cloud report').output).toMatch(/released lease/);
      // The summary artifact carries this job's numbers.
      const summary = summaryOf(j);
      expect(summary).toMatch(/^## Build Cloud/);
      expect(summary).toMatch(new RegExp(`\\(${j.exported.BUILDCLOUD_CACHED_STEPS} of ${j.exported.BUILDCLOUD_TOTAL_STEPS} steps? cached\\)`));
      expect(summary).toContain(j.exported.BUILDCLOUD_LEASE_ID);
      expect(summary).toContain(`acme/${j.name}:ci`);
    }
    // The token came from the context through the token parameter's variable, and was never printed.
    expect(api.steps.map((s) => s.output).join('')).not.toContain(token);

    const u = await usage();
    expect(u.builds.count).toBe(2);
    expect(u.leases.count).toBeGreaterThanOrEqual(2);
    await waitFor('both leases ended', async () => (await usage()).leases.active === 0);
  });

  test('a second workflow reuses the org cache: cached steps on a fresh lease', async () => {
    expect(first).toBeDefined();
    fs.writeFileSync(path.join(repo, 'app.txt'), 'app v2\n'); // a code change: the steps before COPY stay cached
    const cfg: Config = {
      version: 2.1,
      orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
      workflows: { images: { jobs: [{ 'buildcloud/build': { name: 'api', context: 'buildcloud', cli: CLI_CMD, tags: 'acme/api:ci' } }] } }
    };
    const t = Date.now();
    const r = await run(cfg, 'images', { workflowId: 'a1b2c3d4-0000-4000-8000-000000000002' });
    timings.secondWorkflow = Date.now() - t;
    const api = job(r, 'api');
    expectSuccess(api);
    expect(api.exported.BUILDCLOUD_LEASE_ID).not.toBe(first.api.exported.BUILDCLOUD_LEASE_ID);
    expect(Number(api.exported.BUILDCLOUD_CACHED_STEPS)).toBeGreaterThan(0);
    expect(Number(api.exported.BUILDCLOUD_CACHED_STEPS)).toBeLessThan(Number(api.exported.BUILDCLOUD_TOTAL_STEPS));
    expect(Number(api.exported.BUILDCLOUD_CACHE_RATIO)).toBeGreaterThan(0);
    expect(stepNamed(api, 'Build Cloud build').output).toMatch(/importing cache manifest/);
    expect(summaryOf(api)).toMatch(new RegExp(`\\(${api.exported.BUILDCLOUD_CACHED_STEPS} of ${api.exported.BUILDCLOUD_TOTAL_STEPS} steps? cached\\)`));
    const u = await usage();
    expect(u.builds.count).toBe(3);
    expect(u.builds.cachedSteps).toBeGreaterThan(0);
  });

  test('a failing build step is followed by report (when: always), which releases the lease', async () => {
    const broken = path.join(work, 'broken-repo');
    await makeBusyboxContext(broken, 'RUN echo about to fail && exit 3\n');
    const cfg: Config = {
      version: 2.1,
      orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
      workflows: { images: { jobs: [{ 'buildcloud/build': { name: 'broken', context: 'buildcloud', cli: CLI_CMD } }] } }
    };
    const r = await run(cfg, 'images', { workflowId: 'a1b2c3d4-0000-4000-8000-000000000003', checkoutFrom: broken });
    const j = job(r, 'broken');
    expect(j.status).toBe('failed');
    expect(j.steps.map((s) => [s.step.name, s.status])).toEqual([
      ['checkout', 'success'],
      ['Build Cloud setup', 'success'],
      ['Build Cloud build', 'failed'],
      ['Build Cloud report', 'success'],
      ['store_artifacts', 'success']
    ]);
    expect(stepNamed(j, 'Build Cloud build').output).toMatch(/docker build failed/);
    const leaseId = j.exported.BUILDCLOUD_LEASE_ID;
    expect(leaseId).toBeTruthy();
    expect((await lease(leaseId)).state).toBe('LEASE_STATE_RELEASED');
    expect((await usage()).leases.active).toBe(0);
    expect(summaryOf(j)).toMatch(/1 failed/);
  });

  test('parameters with quotes, $(...), backticks and newlines reach the CLI unchanged and execute nothing', async () => {
    const marker = path.join(work, `pwned-${process.pid}-${Date.now()}`);
    // One line per build argument and label; inside a line anything goes.
    const evil = `it's "quoted" $(touch ${marker}) \`touch ${marker}\`; touch ${marker} && echo $HOME | cat \\ {{.}} %s end`;
    const badTag = `acme/evil:ci$(touch ${marker})`;
    // The user's own docker commands between setup and report: the image is on the builder, reached through
    // DOCKER_HOST from $BASH_ENV. /usr/bin/docker is Debian's 20.10 client (/usr/local/bin/docker has no buildx).
    // The builder runs no containers (no `docker create`/`cp`): the file is read from the exported image instead.
    const read = [
      `/usr/bin/docker image inspect acme/evil:ci --format '{{json .Config.Labels}}' > labels.json`,
      't=$(mktemp -d)',
      '/usr/bin/docker save acme/evil:ci -o "$t/image.tar"',
      'tar -xf "$t/image.tar" -C "$t"',
      'for layer in "$t"/*/layer.tar; do tar -xOf "$layer" --wildcards payload.txt ./payload.txt 2>/dev/null || true; done > payload.txt',
      'rm -rf "$t"'
    ].join('\n');
    const cfg: Config = {
      version: 2.1,
      orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
      jobs: {
        evil: {
          executor: 'buildcloud/default',
          steps: [
            'checkout',
            { 'buildcloud/setup': { cli: CLI_CMD } },
            {
              'buildcloud/build': {
                cli: CLI_CMD,
                tags: 'acme/evil:ci',
                build_args: `PAYLOAD=${evil}\nOTHER=two words`,
                labels: `org.example.evil=${evil}\norg.example.plain=ok`
              }
            },
            { run: { name: 'Read what reached the image', command: read } },
            { 'buildcloud/build': { cli: CLI_CMD, tags: `acme/evil:fine\n${badTag}` } },
            { 'buildcloud/report': { cli: CLI_CMD } },
            { run: { name: 'After report', when: 'always', command: 'echo "docker host now: ${DOCKER_HOST:-unset}"' } }
          ]
        }
      },
      workflows: { evil: { jobs: [{ evil: { context: 'buildcloud' } }] } }
    };
    const r = await run(cfg, 'evil', { workflowId: 'a1b2c3d4-0000-4000-8000-000000000004' });
    const j = job(r, 'evil');
    const statuses = j.steps.map((s) => s.status);
    if (statuses[1] !== 'success' || statuses[2] !== 'success' || statuses[3] !== 'success') throw new Error(describeJob(j));
    // The build argument ran through the Dockerfile's RUN into the image, and the label into its config, intact.
    expect(fs.readFileSync(path.join(j.workingDirectory, 'payload.txt'), 'utf8')).toBe(evil);
    expect(JSON.parse(fs.readFileSync(path.join(j.workingDirectory, 'labels.json'), 'utf8'))).toMatchObject({
      'org.example.evil': evil,
      'org.example.plain': 'ok'
    });
    // A tag that is no image reference reaches docker as it was written, and docker refuses it; report still runs.
    expect(j.steps.map((s) => [s.step.name, s.status]).slice(4)).toEqual([
      ['Build Cloud build', 'failed'],
      ['Build Cloud report', 'success'],
      ['After report', 'success']
    ]);
    expect(j.steps[4].output).toContain(badTag);
    expect(j.steps[6].output).toContain('docker host now: unset');
    expect(fs.existsSync(marker)).toBe(false);
    expect((await lease(j.exported.BUILDCLOUD_LEASE_ID)).state).toBe('LEASE_STATE_RELEASED');
  });
});

// Issue 11, case 6: a project whose default branch is master. CircleCI names the default branch in no variable, so
// without the orb's default_branch parameter a branch's first build imports cache:<branch> and cache:main, neither
// of which exists. Each pipeline runs on a fresh builder (the previous one's grace, 1 s here, has ended and its
// dockerd is gone), so only the org cache can serve a step. A project of its own (acme/legacy-app), so no earlier
// test's cache:main of acme/widget-api can serve anything here.
describe('a CircleCI project whose default branch is master', () => {
  const LEGACY = ['RUN echo "legacy deps" > /deps.txt && sleep 2', 'RUN cat /deps.txt > /built.txt && echo built >> /built.txt && sleep 1'].join('\n');
  let legacy: string;
  let masterJob: JobResult;
  const used: string[] = []; // builders of the earlier pipelines

  beforeAll(async () => {
    legacy = path.join(work, 'legacy-repo');
    await makeBusyboxContext(legacy, LEGACY);
  });

  const cfg = (defaultBranch?: string): Config => ({
    version: 2.1,
    orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
    workflows: {
      image: {
        jobs: [
          {
            'buildcloud/build': {
              name: 'image',
              context: 'buildcloud',
              cli: CLI_CMD,
              tags: 'acme/legacy-app:ci',
              ...(defaultBranch ? { default_branch: defaultBranch } : {})
            }
          }
        ]
      }
    }
  });

  async function pipeline(branch: string, workflowId: string, defaultBranch?: string): Promise<JobResult> {
    // A fresh builder: the previous pipeline's has gone after its grace.
    for (const b of used) await waitFor(`builder ${b} destroyed after its grace`, async () => !dockerdAlive(b));
    const j = job(await run(cfg(defaultBranch), 'image', { workflowId, checkoutFrom: legacy, branch, projectReponame: 'legacy-app' }), 'image');
    expectSuccess(j);
    const builder = await builderOf(j.exported.BUILDCLOUD_LEASE_ID);
    expect(used).not.toContain(builder);
    used.push(builder);
    return j;
  }
  const steps = (j: JobResult) => [Number(j.exported.BUILDCLOUD_CACHED_STEPS), Number(j.exported.BUILDCLOUD_TOTAL_STEPS)];
  // What the build imported, from BuildKit's own progress: each `--cache-from` ref it tried, and those it found
  // missing ("ERROR: <ref>: not found").
  const imports = (j: JobResult) => {
    const out = stepNamed(j, 'Build Cloud build').output;
    const tried = [...new Set([...out.matchAll(/^#\d+ importing cache manifest from (\S+)$/gm)].map((m) => m[1]))];
    const missing = new Set([...out.matchAll(/^#\d+ ERROR: (\S+): not found$/gm)].map((m) => m[1]));
    return { tried, missing: tried.filter((r) => missing.has(r)), found: tried.filter((r) => !missing.has(r)) };
  };
  // The tags tried, found or missing, once each: a build imports its cache scope's refs and then the project's
  // (the same tags in both: src/core/build-cache.ts).
  const tagOf = (ref: string) => ref.slice(ref.lastIndexOf(':') + 1);
  const tagsOf = (refs: string[]) => [...new Set(refs.map(tagOf))].sort();

  test('a pipeline on master (default_branch: master) builds everything and exports the cache of master', async () => {
    masterJob = await pipeline('master', 'b1b2c3d4-0000-4000-8000-000000000061', 'master');
    expect(steps(masterJob)).toEqual([0, 3]);
    expect(masterJob.exported.BUILDCLOUD_CACHE_TO).toMatch(/\/acme\/legacy-app\/cache\S*:\S*master$/);
    expect(stepNamed(masterJob, 'Build Cloud build').output).toMatch(/org cache exported/);
    expect(stepNamed(masterJob, 'Build Cloud setup').output).not.toMatch(/no default branch given/);
  });

  test("feature-x with default_branch: master, on a fresh builder, imports master's cache: 3 of 3 steps cached", async () => {
    expect(masterJob).toBeDefined();
    const j = await pipeline('feature-x', 'b1b2c3d4-0000-4000-8000-000000000062', 'master');
    timings.defaultBranchParameter = steps(j);
    // Its own branch's cache (missing: a new branch) and the default branch's, which served every step.
    const { tried, missing, found } = imports(j);
    expect(tagsOf(tried)).toEqual(['feature-x', 'master']);
    expect(tagsOf(missing)).toEqual(['feature-x']);
    expect(tagsOf(found)).toEqual(['master']);
    expect(found[0]).toMatch(/\/acme\/legacy-app\/cache\S*:master$/);
    expect(steps(j)).toEqual([3, 3]);
  });

  test('the control: another new branch without the parameter imports cache:<branch> and cache:main, finds neither: 0 of 3', async () => {
    expect(masterJob).toBeDefined();
    const j = await pipeline('feature-y', 'b1b2c3d4-0000-4000-8000-000000000063');
    timings.defaultBranchMissing = steps(j);
    // The job's log says which refs the build tried (both missing) and which default branch setup assumed.
    const { tried, missing, found } = imports(j);
    expect(tagsOf(tried)).toEqual(['feature-y', 'main']);
    expect(tagsOf(missing)).toEqual(['feature-y', 'main']);
    expect(found).toEqual([]);
    expect(steps(j)).toEqual([0, 3]);
    expect(stepNamed(j, 'Build Cloud setup').output).toMatch(/no default branch given \(the default_branch parameter or BUILDCLOUD_DEFAULT_BRANCH\).*'main'/);
    // and the build's miss line says why nothing was found and what to set.
    expect(stepNamed(j, 'Build Cloud build').output).toMatch(
      /no cache yet .*; the default branch 'main' was assumed \(CircleCI names none\): set the orb's default_branch/
    );
  });
});

// Issue 11, case 7: an executor image without bash (Alpine). CircleCI runs every step with `/bin/sh -eo pipefail`
// there (busybox ash; the emulator: busybox sh, no bash on PATH), which does not read $BASH_ENV by itself.
describe('the orb on an executor without bash (node:22-alpine: CircleCI runs steps with /bin/sh)', () => {
  test('setup, build and report work under busybox sh; a later step of the user reads the results with . "$BASH_ENV"', async () => {
    const cfg: Config = {
      version: 2.1,
      orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
      jobs: {
        alpine: {
          docker: [{ image: 'node:22-alpine' }],
          steps: [
            'checkout',
            { 'buildcloud/setup': { cli: CLI_CMD } },
            { 'buildcloud/build': { cli: CLI_CMD, tags: 'acme/alpine:ci' } },
            {
              run: {
                name: 'Use the builder',
                command: [
                  'echo "shell: ${BASH_VERSION:-not bash}; bash on PATH: $(command -v bash || echo none)"',
                  '. "$BASH_ENV"',
                  'echo "cached ${BUILDCLOUD_CACHED_STEPS} of ${BUILDCLOUD_TOTAL_STEPS}"',
                  "docker image inspect acme/alpine:ci --format 'id={{.Id}}'"
                ].join('\n')
              }
            },
            { 'buildcloud/report': { cli: CLI_CMD } },
            { run: { name: 'After report', when: 'always', command: '. "$BASH_ENV"; echo "docker host now: ${DOCKER_HOST:-unset}"' } }
          ]
        }
      },
      workflows: { alpine: { jobs: [{ alpine: { context: 'buildcloud' } }] } }
    };
    const j = job(await run(cfg, 'alpine', { workflowId: 'a1b2c3d4-0000-4000-8000-000000000007' }), 'alpine');
    expectSuccess(j);
    expect(j.env.SHELL).toBe('/bin/sh');
    const use = stepNamed(j, 'Use the builder').output;
    expect(use).toMatch(/^shell: not bash; bash on PATH: none$/m);
    expect(use).toContain(`cached ${j.exported.BUILDCLOUD_CACHED_STEPS} of ${j.exported.BUILDCLOUD_TOTAL_STEPS}`);
    expect(Number(j.exported.BUILDCLOUD_TOTAL_STEPS)).toBe(5);
    expect(use).toContain(`id=${j.exported.BUILDCLOUD_IMAGE_ID}`);
    expect(j.exported.BUILDCLOUD_IMAGE_ID).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(stepNamed(j, 'Build Cloud report').output).toMatch(/released lease/);
    expect(stepNamed(j, 'After report').output).toContain('docker host now: unset');
    expect((await lease(j.exported.BUILDCLOUD_LEASE_ID)).state).toBe('LEASE_STATE_RELEASED');
    expect(j.steps.map((s) => s.output).join('')).not.toContain(token);
  });
});
