// The GitLab CI component for real: gitlab-ci-local (the real interpreter, shell executor) runs
// examples/gitlab/.gitlab-ci.yml, which includes plugins/gitlab/templates/buildcloud.yml four times, against the real
// control plane, dockerd builders and org-cache registry. The CLI is a copy of dist/cli.js outside any node_modules
// tree, the way a runner gets it from the npm package or a vendored file.
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { stringify } from 'yaml';
import { adminSetup, docker, dockerEnvFor, startServer, CLI, ROOT, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { artifact, dotenvReport, initRepo, parseMetrics, requireGitlabCiLocal, runGitlabCiLocal, type PipelineRun } from '../../harness/gitlab-runner';
import type { LeaseMsg } from '../../src/contract/grpc';
import type { PipelineUsage, UsageReport } from '../../src/contract/http-api';

const COMPONENT = 'plugins/gitlab/templates/buildcloud.yml';
const EXAMPLE = path.join(ROOT, 'examples/gitlab');
const BUILD_JOBS = ['build-api', 'build-worker', 'build-web', 'build-migrations'];

let server: ServerProcess;
let token: string;
let client: TestClient;
let work: string;
let vendoredCli: string;
let exampleRepo: string;
const timings: Record<string, number> = {};

async function get<T>(url: string): Promise<T> {
  const res = await fetch(`${server.info.http}${url}`, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}
const pipelineUsage = (key: string) => get<PipelineUsage>(`/v1/orgs/acme/pipelines/usage?key=${encodeURIComponent(key)}`);

// A repository laid out like this one, so the example's paths (the component file, the context) resolve the same.
async function makeRepo(name: string, pipeline: string, app: { from?: string; dockerfile?: string }): Promise<string> {
  const repo = path.join(work, name);
  fs.mkdirSync(path.join(repo, path.dirname(COMPONENT)), { recursive: true });
  fs.copyFileSync(path.join(ROOT, COMPONENT), path.join(repo, COMPONENT));
  fs.writeFileSync(path.join(repo, '.gitlab-ci.yml'), pipeline);
  const context = path.join(repo, 'examples/gitlab/app');
  await makeBusyboxContext(context, '');
  if (app.from) fs.cpSync(app.from, context, { recursive: true });
  if (app.dockerfile) fs.writeFileSync(path.join(context, 'Dockerfile'), app.dockerfile);
  initRepo(repo);
  return repo;
}

function run(repo: string, extra: { variables?: Record<string, string>; predefined?: string[] } = {}): Promise<PipelineRun> {
  return runGitlabCiLocal(repo, {
    // Like project CI/CD variables in Settings: they beat the component's (empty) job variables.
    variables: { BUILDCLOUD_ENDPOINT: server.info.http, BUILDCLOUD_TOKEN: token, BUILDCLOUD_SPOOL_DIR: path.join(work, 'spool'), ...extra.variables },
    inputs: { cli: `node ${vendoredCli}` },
    predefined: extra.predefined
  });
}

function expectPassed(p: PipelineRun, jobs: string[]): void {
  for (const j of jobs) {
    if (p.results[j] !== 'PASS') throw new Error(`job ${j}: ${p.results[j] ?? 'did not run'}\n${p.output.slice(-6000)}`);
  }
}

interface JobFacts {
  job: string;
  env: Record<string, string>;
  metrics: Record<string, number>;
  lease: LeaseMsg;
}

async function factsOf(repo: string, job: string): Promise<JobFacts> {
  const env = dotenvReport(repo, job);
  expect(env.BUILDCLOUD_LEASE_ID).toMatch(/^l[0-9a-f]+$/);
  return { job, env, metrics: parseMetrics(artifact(repo, job, 'buildcloud-metrics.txt')), lease: await client.get(env.BUILDCLOUD_LEASE_ID) };
}

beforeAll(async () => {
  requireGitlabCiLocal();
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-gitlab-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '1']);
  token = adminSetup(server.stateDir, 'acme', 120);
  client = new TestClient(server.info.grpc, token);
  // The package's claim: one bundled file, no node_modules needed for setup, build and report.
  vendoredCli = path.join(work, 'vendor', 'buildcloud', 'cli.js');
  fs.mkdirSync(path.dirname(vendoredCli), { recursive: true });
  fs.copyFileSync(CLI, vendoredCli);
  exampleRepo = await makeRepo('example', fs.readFileSync(path.join(EXAMPLE, '.gitlab-ci.yml'), 'utf8'), { from: path.join(EXAMPLE, 'app') });
});

afterAll(async () => {
  client?.close();
  if (server) expect(await server.stop()).toBe(0);
  if (work) fs.rmSync(work, { recursive: true, force: true });
  console.log(`gitlab e2e timings (ms): ${JSON.stringify(timings)}`);
});

describe('examples/gitlab/.gitlab-ci.yml on gitlab-ci-local', () => {
  let first: JobFacts[];

  test('parallel build jobs share the pipeline builder, and the reports agree with the control plane', async () => {
    const p = await run(exampleRepo);
    timings.pipeline1 = p.durationMs;
    expectPassed(p, [...BUILD_JOBS, 'release-notes']);
    first = await Promise.all(BUILD_JOBS.map((j) => factsOf(exampleRepo, j)));

    // One pipeline key, four leases, one builder: the same DOCKER_HOST and builder id in every job.
    const key = first[0].lease.pipelineKey;
    expect(key).toMatch(/^\d+\/\d+$/); // GitLab's CI_PROJECT_ID/CI_PIPELINE_ID
    expect(new Set(first.map((f) => f.lease.pipelineKey))).toEqual(new Set([key]));
    expect(new Set(first.map((f) => f.env.BUILDCLOUD_LEASE_ID)).size).toBe(4);
    expect(new Set(first.map((f) => f.env.BUILDCLOUD_DOCKER_HOST)).size).toBe(1);
    expect(first[0].env.BUILDCLOUD_DOCKER_HOST).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(new Set(first.map((f) => f.lease.builders[0].builderId)).size).toBe(1);
    for (const f of first) {
      // after_script released the lease; the job's log shows the build ran on the builder.
      expect(f.lease.state).toBe('LEASE_STATE_RELEASED');
      expect(p.log(f.job).join('\n')).toContain(`builder ${f.lease.builders[0].builderId}`);
      expect(f.env.BUILDCLOUD_BUILDS).toBe('1');
      expect(Number(f.env.BUILDCLOUD_TOTAL_STEPS)).toBeGreaterThanOrEqual(6);
      expect(f.env.BUILDCLOUD_IMAGE_ID).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(f.env.BUILDCLOUD_FALLBACK_USED).toBe('false');
      // The metrics report says what the dotenv says, and the minutes are the control plane's own.
      expect(f.metrics.buildcloud_builds).toBe(1);
      expect(f.metrics.buildcloud_total_steps).toBe(Number(f.env.BUILDCLOUD_TOTAL_STEPS));
      expect(f.metrics.buildcloud_cached_steps).toBe(Number(f.env.BUILDCLOUD_CACHED_STEPS));
      // Deduplicated steps apart from cached ones, in both (issue 11).
      expect(f.env.BUILDCLOUD_DEDUPLICATED_STEPS).toMatch(/^\d+$/);
      expect(f.metrics.buildcloud_deduplicated_steps).toBe(Number(f.env.BUILDCLOUD_DEDUPLICATED_STEPS));
      expect(f.metrics.buildcloud_cache_ratio).toBeCloseTo(Number(f.env.BUILDCLOUD_CACHE_RATIO), 3);
      expect(f.metrics.buildcloud_build_minutes).toBeCloseTo(f.lease.billedSeconds / 60, 3);
      expect(Number(f.env.BUILDCLOUD_BUILD_MINUTES)).toBeCloseTo(f.lease.billedSeconds / 60, 2);
      expect(artifact(exampleRepo, f.job, 'buildcloud-summary.md')).toContain(f.env.BUILDCLOUD_LEASE_ID);
    }
    // Inputs holding CI/CD variables expand at run time: the api image is tagged $CI_REGISTRY_IMAGE/api:$CI_COMMIT_SHORT_SHA.
    expect(p.log('build-api').join('\n')).toMatch(/naming to local-registry\.gitlab\.example\.com\/acme\/widgets\/api:[0-9a-f]{8}( [0-9.]+s)? done/);

    const usage = await pipelineUsage(key);
    expect(usage).toMatchObject({ leases: 4, activeLeases: 0, builds: 4, failed: 0 });
    expect(usage.totalSteps).toBe(first.reduce((s, f) => s + Number(f.env.BUILDCLOUD_TOTAL_STEPS), 0));
    expect(usage.cachedSteps).toBe(first.reduce((s, f) => s + Number(f.env.BUILDCLOUD_CACHED_STEPS), 0));
    expect(usage.billedSeconds).toBe(first.reduce((s, f) => s + f.lease.billedSeconds, 0));

    // The later stage read build-api's dotenv report through needs:.
    const api = first[0].env;
    const notes = p.log('release-notes').join('\n');
    expect(notes).toContain(`> api image ${api.BUILDCLOUD_IMAGE_ID} built on ${api.BUILDCLOUD_DOCKER_HOST} (lease ${api.BUILDCLOUD_LEASE_ID})`);
    expect(notes).toContain(
      `> api cache ${api.BUILDCLOUD_CACHED_STEPS}/${api.BUILDCLOUD_TOTAL_STEPS} steps (ratio ${api.BUILDCLOUD_CACHE_RATIO}), ${api.BUILDCLOUD_BUILD_MINUTES} build minutes`
    );
  });

  test('a second pipeline, on a fresh builder, builds from the org cache the first one exported', async () => {
    expect(first).toBeDefined();
    const p = await run(exampleRepo);
    timings.pipeline2 = p.durationMs;
    expectPassed(p, [...BUILD_JOBS, 'release-notes']);
    const second = await Promise.all(BUILD_JOBS.map((j) => factsOf(exampleRepo, j)));
    const key = second[0].lease.pipelineKey;
    expect(key).not.toBe(first[0].lease.pipelineKey);
    expect(new Set(second.map((f) => f.lease.builders[0].builderId)).size).toBe(1);
    for (const f of second) {
      expect(p.log(f.job).join('\n')).toContain('importing cache manifest');
      expect(Number(f.env.BUILDCLOUD_CACHED_STEPS)).toBeGreaterThan(0);
      expect(f.metrics.buildcloud_cached_steps).toBe(Number(f.env.BUILDCLOUD_CACHED_STEPS));
    }
    const usage = await pipelineUsage(key);
    expect(usage).toMatchObject({ leases: 4, activeLeases: 0, builds: 4, buildsWithCache: 4 });
    expect(usage.cachedSteps).toBe(second.reduce((s, f) => s + Number(f.env.BUILDCLOUD_CACHED_STEPS), 0));
  });
});

test('a failing build still reports and releases its lease; hostile inputs reach the CLI unchanged and run nothing', async () => {
  const marker = path.join(os.tmpdir(), `pwned-gitlab-${crypto.randomBytes(4).toString('hex')}`);
  // GitLab expands $NAME and ${NAME} in variables and turns $$ into $; everything else arrives as written.
  const msg = `it's "double" 'single' $(touch ${marker}-1) \`touch ${marker}-2\` ; echo injected | cat & > /dev/null * ? [ab] {a,b} ~ \\ # $$HOME end`;
  const msgSeen = msg.replace('$$HOME', '$HOME');
  const note = `a "label" with 'quotes' $(touch ${marker}-3) \`touch ${marker}-4\`; rm -rf /tmp/nothing | tee x`;
  const badTag = `hostile/bad:$(touch ${marker}-5)`;
  const dockerfile = [
    'FROM scratch AS base',
    'ADD rootfs.tar /',
    '',
    'FROM base AS echo',
    'ARG MSG',
    'ARG SECOND',
    `RUN printf 'MSG<%s>\\n' "$MSG" && printf 'SECOND<%s>\\n' "$SECOND" && printf '%s' "$MSG" > /msg.txt`,
    '',
    'FROM base AS broken',
    'RUN echo "about to fail" && exit 3',
    ''
  ].join('\n');
  const include = (inputs: Record<string, unknown>) => ({ local: COMPONENT, inputs: { context: 'examples/gitlab/app', ...inputs } });
  const pipeline = stringify({
    stages: ['build'],
    include: [
      include({
        'job-name': 'hostile',
        target: 'echo',
        tags: 'hostile/probe:1',
        'no-cache': true,
        'build-args': `MSG=${msg}\nSECOND=second line, with a comma`,
        labels: `org.example.note=${note}\norg.example.second=two`
      }),
      include({ 'job-name': 'broken', target: 'broken' }),
      include({ 'job-name': 'hostile-tag', target: 'echo', tags: `hostile/ok:1\n${badTag}` })
    ]
  });
  const repo = await makeRepo('hostile', pipeline, { dockerfile });
  // The test holds a lease of the same pipeline so the builder, and the image built on it, outlive the jobs.
  const key = '4242/9001';
  const holder = await client.provision({
    pipelineKey: key,
    jobId: 'e2e-holder',
    identity: { provider: 'gitlab', project: 'acme/widgets', branch: 'main', defaultBranch: 'main', actor: 'e2e' }
  });
  let released = false;
  let pipelineBuilds = 0;
  try {
    const p = await run(repo, { variables: { CI_PROJECT_ID: '4242', CI_PIPELINE_ID: '9001' }, predefined: ['CI_PROJECT_ID', 'CI_PIPELINE_ID'] });
    timings.hostile = p.durationMs;
    expect(p.results).toMatchObject({ hostile: 'PASS', broken: 'FAIL', 'hostile-tag': 'FAIL' });

    // The failed job ran after_script: report released its lease and wrote the reports.
    const broken = await factsOf(repo, 'broken');
    const brokenLog = p.log('broken').join('\n');
    expect(brokenLog).toContain('Running after script...');
    expect(brokenLog).toContain(`Build Cloud: released lease ${broken.env.BUILDCLOUD_LEASE_ID}`);
    expect(broken.lease.state).toBe('LEASE_STATE_RELEASED');
    expect(broken.env.BUILDCLOUD_BUILDS).toBe('1');
    expect(broken.env.BUILDCLOUD_DIGEST ?? '').toBe('');
    expect(broken.metrics.buildcloud_builds).toBe(1);
    expect((await factsOf(repo, 'hostile-tag')).lease.state).toBe('LEASE_STATE_RELEASED');

    // Build-args: BuildKit printed exactly what the input held, both lines of it.
    const hostileLog = p.log('hostile').join('\n');
    expect(hostileLog).toContain(`MSG<${msgSeen}>`);
    expect(hostileLog).toContain('SECOND<second line, with a comma>');
    // Labels: read back from the image on the builder the test still holds.
    const env = dockerEnvFor(holder, path.join(work, 'holder'));
    const inspect = docker(['image', 'inspect', '--format', '{{json .Config.Labels}}', 'hostile/probe:1'], env);
    expect(inspect.status).toBe(0);
    expect(JSON.parse(inspect.out)).toMatchObject({ 'org.example.note': note, 'org.example.second': 'two' });
    // Tags: the hostile one is rejected (by the CLI's own check, or by docker), quoted exactly as it arrived.
    const tagLog = p.log('hostile-tag').join('\n');
    expect([`'${badTag}'`, `"${badTag}"`].some((quoted) => tagLog.includes(quoted))).toBe(true);
    for (const n of [1, 2, 3, 4, 5]) expect(fs.existsSync(`${marker}-${n}`)).toBe(false);

    await client.release(holder.id);
    released = true;
    const usage = await pipelineUsage(key);
    expect(usage).toMatchObject({ leases: 4, activeLeases: 0 }); // three jobs and the holder
    expect(usage.failed).toBeGreaterThanOrEqual(1);
    pipelineBuilds = usage.builds;
  } finally {
    if (!released) await client.release(holder.id).catch(() => undefined);
  }
  const org = await get<UsageReport>('/v1/orgs/acme/usage');
  expect(org.leases.active).toBe(0);
  expect(org.builds.count).toBeGreaterThanOrEqual(pipelineBuilds);
  expect(org.builds.failed).toBeGreaterThanOrEqual(1);
});
