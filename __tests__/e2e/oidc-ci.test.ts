// Issue 9: each CI's OIDC path end to end. A local issuer on loopback (__tests__/helpers/oidc-issuer.ts) serves each
// CI's real token shape and claims; the real `buildcloud serve` trusts it through `buildcloud admin trust add`
// presets; and the jobs run the way their CI runs them, with no org token anywhere:
// - GitHub: the bundled action (dist/github/main.js, post.js) on node24 with the runner's env, INPUT_*, file commands,
//   and ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN answered by the issuer (core.getIDToken).
// - GitLab: the component's own before_script/after_script (plugins/gitlab/templates/buildcloud.yml) in bash with a
//   job's CI_* variables and the `id_tokens` variable the component declares.
// - CircleCI: the packed orb's setup and report commands in the orb harness, with CIRCLE_OIDC_TOKEN_V2.
// For each: the control (setup succeeds, the lease's export ref is the claims' project and branch), the claims
// deciding the scope (the job's variables naming another project are refused, naming both), read-only leases where
// the token proves too little, and the one generic refusal for a forged or untrusted token. Then the no-credential
// message of a Dependabot run, and `fallback: local` for it, through the real action.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import YAML from 'yaml';
import type { JWTPayload } from 'jose';
import { OIDC_REFUSAL } from '../../src/server/oidc';
import type { LeaseMsg } from '../../src/contract/grpc';
import type { Session } from '../../src/core/session';
import { adminSetup, cli, CLI, ROOT, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { githubJobEnv, requireNode24, runStep, type StepResult } from '../../harness/github-runner';
import { context, describeJob, loadOrb, runWorkflow, tmpRoot, type Config, type JobResult, type Orb } from '../../harness/circleci-runner';
import { circleClaims, githubClaims, gitlabClaims, LocalIssuer, newIssuerKey, type IssuerKey } from '../helpers/oidc-issuer';

const ACTION = path.join(ROOT, 'action.yml');
const GITLAB_COMPONENT = path.join(ROOT, 'plugins/gitlab/templates/buildcloud.yml');
const CLI_CMD = `node ${CLI}`;
const CIRCLE_ORG_ID = '8f3b2c1d-4e5a-4b6c-9d7e-0a1b2c3d4e5f'; // the harness's CIRCLE_ORGANIZATION_ID
const REPO_ID = 712345678;
// A JWT anywhere in a log (header.payload of a signed token): the OIDC token or the access token leaked.
const JWT_RE = /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}/;

let server: ServerProcess;
let orgToken: string; // only the test reads leases with it; no job gets it
let work: string;
let gh: LocalIssuer;
let gl: LocalIssuer;
let cc: LocalIssuer;
let forger: IssuerKey;
let orb: Orb;

const cacheRef = (project: string, branch: string) => `${server.info.registry}/acme/${project}/cache:${branch}`;

async function lease(id: string) {
  const c = new TestClient(server.info.grpc, orgToken);
  try {
    return await c.get(id);
  } finally {
    c.close();
  }
}

// `admin trust add` with a preset and --issuer; the rule must name the issuer given (not the CI's public one).
// The lease as the control plane answered Provision, from the session setup saved for the job's later steps (Get
// never returns a lease's cache): its cache refs are what the job may import and the one ref it may export.
function sessionCache(file: string | undefined): NonNullable<LeaseMsg['cache']> {
  if (!file) throw new Error('setup exported no BUILDCLOUD_SESSION');
  const cache = (JSON.parse(fs.readFileSync(file, 'utf8')) as Session).lease?.cache;
  if (!cache) throw new Error(`the session ${file} has no cache`);
  return cache;
}

function trustAdd(args: string[], issuer: string): void {
  const r = cli(['admin', 'trust', 'add', '--org', 'acme', ...args, '--issuer', issuer, '--state-dir', server.stateDir, '--json']);
  if (r.status !== 0) throw new Error(`trust add ${args.join(' ')}: ${r.stderr}`);
  expect(JSON.parse(r.stdout)).toMatchObject({ org: 'acme', issuer });
}

// What a log shows once the runner has hidden ::add-mask:: commands: no token of any kind.
function expectNoSecret(log: string, tokens: string[]): void {
  const shown = log
    .split('\n')
    .filter((l) => !l.startsWith('::add-mask::'))
    .join('\n');
  for (const t of tokens) expect(shown).not.toContain(t);
  expect(shown).not.toMatch(JWT_RE);
}

beforeAll(async () => {
  requireNode24();
  work = tmpRoot('bc-oidc-ci-');
  orb = loadOrb();
  forger = await newIssuerKey('gh-1'); // an issuer's kid, another key
  gh = await new LocalIssuer(await newIssuerKey('gh-1')).start();
  gl = await new LocalIssuer(await newIssuerKey('gl-1'), '/gitlab').start();
  cc = await new LocalIssuer(await newIssuerKey('cc-1'), `/org/${CIRCLE_ORG_ID}`).start();
  server = await startServer(['--insecure-oidc-issuers', '--warm-pool', '1', '--grace', '1s', '--idle-timeout', '60s']);
  orgToken = adminSetup(server.stateDir, 'acme', 1000);
  trustAdd(['--github-owner', 'acme'], gh.issuer);
  trustAdd(['--gitlab-namespace', 'acme-group'], gl.issuer);
  trustAdd(['--circleci-org-id', CIRCLE_ORG_ID], cc.issuer);
});

afterAll(async () => {
  if (server) expect(await server.stop()).toBe(0);
  await Promise.all([gh, gl, cc].map((i) => i?.stop()));
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

// ---- GitHub Actions: the bundled action as the runner runs it ------------------------------------------------

interface GithubRun {
  event?: string; // default push
  repo?: string; // GITHUB_REPOSITORY, default acme/widget-api
  actor?: string;
  headRef?: string; // pull request events
  oidc?: boolean; // the job has `permissions: id-token: write` (default true)
}

class GithubJob {
  readonly env: Record<string, string>;
  readonly temp: string;
  private exported: Record<string, string> = {};
  private state: Record<string, string> = {};

  constructor(runId: string, o: GithubRun = {}) {
    this.temp = fs.mkdtempSync(path.join(work, `gh-${runId}-`));
    const repo = o.repo ?? 'acme/widget-api';
    const event = o.event ?? 'push';
    const actor = o.actor ?? 'jdoe';
    const pr = event.startsWith('pull_request');
    const eventPath = path.join(this.temp, 'event.json');
    const repository = { id: REPO_ID, full_name: repo, default_branch: 'main', fork: false };
    const payload = pr
      ? {
          action: 'opened',
          number: 57,
          pull_request: { number: 57, user: { login: actor }, head: { ref: o.headRef, repo: { id: REPO_ID } }, base: { ref: 'main', repo: { id: REPO_ID } } },
          repository,
          sender: { login: actor }
        }
      : { ref: 'refs/heads/main', repository, sender: { login: actor } };
    fs.writeFileSync(eventPath, JSON.stringify(payload));
    // pull_request runs on the merge ref, pull_request_target on the base branch, push on the branch pushed.
    const ref = event === 'pull_request' ? 'refs/pull/57/merge' : 'refs/heads/main';
    this.env = githubJobEnv({
      runId,
      job: 'build',
      repo,
      eventPath,
      temp: this.temp,
      home: path.join(work, 'home'),
      extra: {
        GITHUB_EVENT_NAME: event,
        GITHUB_REF: ref,
        GITHUB_REF_NAME: ref.replace(/^refs\/(heads|pull)\//, ''),
        GITHUB_ACTOR: actor,
        GITHUB_TRIGGERING_ACTOR: actor,
        ...(pr ? { GITHUB_HEAD_REF: o.headRef ?? '', GITHUB_BASE_REF: 'main' } : {}),
        ...(o.oidc === false ? {} : { ACTIONS_ID_TOKEN_REQUEST_URL: gh.githubRequestUrl, ACTIONS_ID_TOKEN_REQUEST_TOKEN: gh.requestToken })
      }
    });
  }

  private ctx() {
    return {
      env: { ...this.env, ...this.exported },
      expressions: { 'github.job': 'build', 'strategy.job-index': '0', 'job.check_run_id': '1', 'github.token': 'ghs_test' },
      runnerTemp: this.temp
    };
  }

  async main(inputs: Record<string, string> = {}): Promise<StepResult> {
    const r = await runStep(ACTION, 'main', { endpoint: server.info.grpc, ...inputs }, this.ctx());
    this.exported = r.env;
    this.state = r.state;
    return r;
  }

  post(): Promise<StepResult> {
    return runStep(ACTION, 'post', { endpoint: server.info.grpc }, this.ctx(), this.state);
  }
}

// The step failed the way the runner shows it: exit code 1 and one ::error:: line, returned.
function failure(r: StepResult): string {
  expect(r.code).toBe(1);
  const errors = r.stdout.split('\n').filter((l) => l.startsWith('::error::'));
  expect(errors).toHaveLength(1);
  return errors[0];
}

describe('GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_URL through the action', () => {
  test("control: a push to main sets up with no org token; the lease exports to the claims' project and branch", async () => {
    gh.githubClaims = githubClaims('acme/widget-api', { event_name: 'push', ref: 'refs/heads/main' });
    const job = new GithubJob('2001');
    const m = await job.main();
    if (m.failed) throw new Error(m.stdout);
    expect(m.stdout).toContain('Build Cloud: OIDC token exchanged for an access token of org acme');
    expect(gh.issued).toHaveLength(1);
    expect(m.outputs['cache-to']).toBe(cacheRef('acme/widget-api', 'main'));
    expect(m.stdout).not.toContain('read-only');
    expect(sessionCache(m.env.BUILDCLOUD_SESSION)).toMatchObject({ exportRef: cacheRef('acme/widget-api', 'main') });
    expectNoSecret(m.stdout, gh.issued);
    // The ID token and the access token were masked before anything could print them.
    expect(m.stdout).toContain(`::add-mask::${gh.issued[0]}`);
    const p = await job.post();
    expect(p.failed).toBe(false);
    expect(p.stdout).toMatch(/released lease/);
    expect((await lease(m.outputs['lease-id'])).state).toBe('LEASE_STATE_RELEASED');
  });

  test('the claims decide the scope: GITHUB_REPOSITORY naming another repository is refused, naming both', async () => {
    gh.githubClaims = githubClaims('acme/widget-api', { event_name: 'push', ref: 'refs/heads/main' });
    const before = gh.issued.length;
    const job = new GithubJob('2002', { repo: 'acme/other' });
    const m = await job.main();
    const error = failure(m);
    expect(error).toContain("identity.project 'acme/other' is not the project of this job's OIDC token ('acme/widget-api')");
    expect(error).toContain('PERMISSION_DENIED');
    expect(m.outputs['lease-id']).toBeUndefined();
    expect(gh.issued.length).toBe(before + 1); // the token was fetched and exchanged; provisioning refused
    expectNoSecret(m.stdout, gh.issued);
  });

  test("pull_request_target: the lease only reads the cache, and the job's log says why", async () => {
    gh.githubClaims = githubClaims('acme/widget-api', {
      event_name: 'pull_request_target',
      ref: 'refs/heads/main',
      head_ref: 'feature/login',
      base_ref: 'main'
    });
    const job = new GithubJob('2003', { event: 'pull_request_target', headRef: 'feature/login' });
    const m = await job.main();
    if (m.failed) throw new Error(m.stdout);
    expect(m.stdout).toContain(
      'the org cache is read-only for this job (a pull_request_target run may build code from a fork, and its OIDC token cannot tell)'
    );
    expect(m.outputs['cache-to']).toBe('');
    const cache = sessionCache(m.env.BUILDCLOUD_SESSION);
    expect(cache.exportRef).toBe('');
    expect(cache.readOnlyReason).toBe('a pull_request_target run may build code from a fork, and its OIDC token cannot tell');
    // It still imports the default branch's cache.
    expect(cache.importRefs).toContain(cacheRef('acme/widget-api', 'main'));
    expect((await job.post()).failed).toBe(false);
  });

  test("a token signed by another key, from the issuer's own endpoint: the one generic refusal", async () => {
    gh.githubClaims = githubClaims('acme/widget-api', { event_name: 'push', ref: 'refs/heads/main' });
    gh.githubSignWith = forger;
    try {
      const m = await new GithubJob('2004').main();
      expect(failure(m)).toBe(`::error::ExchangeToken failed: ${OIDC_REFUSAL} (PERMISSION_DENIED)`);
      expectNoSecret(m.stdout, gh.issued);
    } finally {
      gh.githubSignWith = null;
    }
  });
});

// ---- GitLab CI: the component's scripts with a job's variables and its id_tokens variable --------------------

const component = (() => {
  const docs = YAML.parseAllDocuments(fs.readFileSync(GITLAB_COMPONENT, 'utf8'), { merge: true });
  const job = (docs[docs.length - 1].toJS() as Record<string, { before_script: string[]; after_script: string[]; id_tokens?: object }>)['.buildcloud'];
  return { before: job.before_script as string[], after: job.after_script as string[], idTokens: Object.keys(job.id_tokens ?? {}) };
})();

interface GitlabRun {
  project?: string; // CI_PROJECT_PATH, default acme-group/widget-api
  mergeRequest?: { source: string; target: string };
  idToken: string;
}

interface GitlabResult {
  code: number | null; // before_script's exit code
  log: string; // before_script's output
  setup: Record<string, string>; // setup's dotenv ($BUILDCLOUD_GITLAB_DIR/setup.env), while the job runs
  session: string | undefined; // BUILDCLOUD_SESSION from the export file the job sources
  // after_script, in a new shell as GitLab runs it: its exit code, output and the job's dotenv report (buildcloud.env)
  finish(): Promise<{ code: number | null; log: string; dotenv: Record<string, string> }>;
}

const readDotenv = (file: string): Record<string, string> =>
  fs.existsSync(file)
    ? Object.fromEntries(
        fs
          .readFileSync(file, 'utf8')
          .split('\n')
          .filter((l) => l.includes('='))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])
      )
    : {};

function bash(lines: string[], cwd: string, env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    // The shell executor: one bash per script section, `set -eo pipefail`, stdin not a terminal.
    const child = spawn('bash', ['-eo', 'pipefail', '-c', lines.join('\n')], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('close', (code) => resolve({ code, out }));
  });
}

let gitlabJobId = 55012931;
async function gitlabJob(o: GitlabRun): Promise<GitlabResult> {
  const project = o.project ?? 'acme-group/widget-api';
  const jobId = String(++gitlabJobId);
  const dir = path.join(work, `gl-${jobId}`, project.split('/').pop()!);
  fs.mkdirSync(dir, { recursive: true });
  const namespace = project.split('/').slice(0, -1).join('/');
  const mr = o.mergeRequest;
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: path.join(work, 'home'),
    CI: 'true',
    GITLAB_CI: 'true',
    CI_SERVER_URL: gl.issuer,
    CI_PROJECT_ID: '4821',
    CI_PROJECT_PATH: project,
    CI_PROJECT_NAMESPACE: namespace,
    CI_PROJECT_ROOT_NAMESPACE: namespace.split('/')[0],
    CI_PROJECT_NAME: project.split('/').pop()!,
    CI_PROJECT_DIR: dir,
    CI_PIPELINE_ID: String(1093344 + Number(jobId)),
    CI_PIPELINE_IID: '388',
    CI_PIPELINE_SOURCE: mr ? 'merge_request_event' : 'push',
    CI_JOB_ID: jobId,
    CI_JOB_NAME: 'build-api',
    CI_COMMIT_SHA: '9c1e0b7a3d5f2e8c6b4a1d9f7e3c5b2a8d6f4e1c',
    CI_COMMIT_REF_NAME: mr ? mr.source : 'main',
    CI_DEFAULT_BRANCH: 'main',
    GITLAB_USER_LOGIN: 'jdoe',
    ...(mr
      ? {
          CI_MERGE_REQUEST_IID: '57',
          CI_MERGE_REQUEST_PROJECT_ID: '4821',
          CI_MERGE_REQUEST_SOURCE_PROJECT_ID: '4821',
          CI_MERGE_REQUEST_SOURCE_BRANCH_NAME: mr.source,
          CI_MERGE_REQUEST_TARGET_BRANCH_NAME: mr.target
        }
      : { CI_COMMIT_BRANCH: 'main', CI_COMMIT_REF_PROTECTED: 'true' }),
    // The component's variables with its input defaults, and `cli` pointing at the bundled CLI.
    BUILDCLOUD_CLI: CLI_CMD,
    BUILDCLOUD_GITLAB_DIR: `${dir}.tmp/buildcloud-${jobId}`,
    BUILDCLOUD_ENDPOINT: server.info.grpc,
    BUILDCLOUD_TOKEN: '',
    BUILDCLOUD_OIDC_AUDIENCE: 'buildcloud',
    BUILDCLOUD_SPOOL_DIR: path.join(work, 'spool'),
    // id_tokens: GitLab puts the signed token in the variable the component declares.
    [component.idTokens[0]]: o.idToken
  };
  const before = await bash(component.before, dir, env);
  const exportFile = path.join(env.BUILDCLOUD_GITLAB_DIR, 'env.sh');
  return {
    code: before.code,
    log: before.out,
    setup: readDotenv(path.join(env.BUILDCLOUD_GITLAB_DIR, 'setup.env')),
    session: /^export BUILDCLOUD_SESSION='([^']*)'$/m.exec(fs.existsSync(exportFile) ? fs.readFileSync(exportFile, 'utf8') : '')?.[1],
    // GitLab runs after_script also when before_script failed.
    finish: async () => {
      const after = await bash(component.after, dir, env);
      return { code: after.code, log: after.out, dotenv: readDotenv(path.join(dir, 'buildcloud.env')) };
    }
  };
}

const glToken = (o: JWTPayload = {}, namespace = 'acme-group', key?: IssuerKey) => gl.sign(gitlabClaims(namespace, 'widget-api', o), key);

describe("GitLab CI: the id_tokens variable through the component's scripts and the CLI", () => {
  test('the component declares the id_tokens variable the CLI reads', () => {
    expect(component.idTokens).toEqual(['BUILDCLOUD_ID_TOKEN']);
  });

  test("control: a push pipeline on main sets up with no org token; the lease exports to the claims' project and branch", async () => {
    const token = await glToken();
    const r = await gitlabJob({ idToken: token });
    if (r.code !== 0) throw new Error(r.log);
    expect(r.log).toContain('Build Cloud: OIDC token exchanged for an access token of org acme');
    expect(r.setup.BUILDCLOUD_CACHE_TO).toBe(cacheRef('acme-group/widget-api', 'main'));
    expect(r.log).not.toContain('read-only');
    expect(sessionCache(r.session)).toMatchObject({ exportRef: cacheRef('acme-group/widget-api', 'main') });
    const done = await r.finish();
    expect(done.code).toBe(0);
    expect(done.dotenv.BUILDCLOUD_CACHE_TO).toBe(cacheRef('acme-group/widget-api', 'main')); // the job's dotenv report
    expect((await lease(r.setup.BUILDCLOUD_LEASE_ID)).state).toBe('LEASE_STATE_RELEASED');
    expectNoSecret(`${r.log}${done.log}`, [token]);
  });

  test('the claims decide the scope: CI_PROJECT_PATH naming another project is refused, naming both', async () => {
    const token = await glToken();
    const r = await gitlabJob({ project: 'acme-group/other', idToken: token });
    expect(r.code).not.toBe(0);
    expect(r.log).toContain("identity.project 'acme-group/other' is not the project of this job's OIDC token ('acme-group/widget-api')");
    expect(r.log).toContain('PERMISSION_DENIED');
    expect(r.setup).toEqual({});
    const done = await r.finish();
    expect(done.log).toContain('nothing to release');
    expectNoSecret(`${r.log}${done.log}`, [token]);
  });

  test('a merge request pipeline from protected main: setup succeeds, the cache is read-only and the log says so', async () => {
    const token = await glToken({ pipeline_source: 'merge_request_event', ref: 'main', ref_protected: 'true' });
    const r = await gitlabJob({ mergeRequest: { source: 'main', target: 'stable' }, idToken: token });
    if (r.code !== 0) throw new Error(r.log);
    expect(r.log).toContain(
      "Build Cloud: the org cache is read-only for this job ('main' is a protected branch and this is a merge request pipeline (its code is not the branch's))"
    );
    expect(r.setup.BUILDCLOUD_CACHE_TO).toBe('');
    const cache = sessionCache(r.session);
    expect(cache.exportRef).toBe('');
    expect(cache.importRefs).toContain(cacheRef('acme-group/widget-api', 'main'));
    expect((await r.finish()).code).toBe(0);
  });

  test('refusals: an untrusted namespace and a token signed by another key get the one generic answer', async () => {
    const refused = async (project: string, token: string): Promise<string> => {
      const r = await gitlabJob({ project, idToken: token });
      expect(r.code).not.toBe(0);
      expect(r.log).toContain(`ExchangeToken failed: ${OIDC_REFUSAL} (PERMISSION_DENIED)`);
      expect(r.setup).toEqual({});
      const done = await r.finish();
      expectNoSecret(`${r.log}${done.log}`, [token]);
      return r.log;
    };
    // An outsider learns nothing of who trusts what: neither the org nor the namespace it trusts.
    expect(await refused('evil-group/widget-api', await glToken({}, 'evil-group'))).not.toContain('acme');
    await refused('acme-group/widget-api', await glToken({}, 'acme-group', await newIssuerKey('gl-1')));
  });
});

// ---- CircleCI: the orb's setup and report commands with CIRCLE_OIDC_TOKEN_V2 ---------------------------------

let circleWorkflow = 0;
async function circleJob(o: { reponame?: string; token: string }): Promise<JobResult> {
  const cfg: Config = {
    version: 2.1,
    orbs: { buildcloud: 'buildcloud-dev/buildcloud@0.1' },
    jobs: {
      image: {
        executor: 'buildcloud/default',
        steps: [{ 'buildcloud/setup': { cli: CLI_CMD } }]
      }
    },
    workflows: { images: { jobs: ['image'] } }
  };
  const r = await runWorkflow(context(cfg, { orbs: { buildcloud: orb } }), 'images', {
    workRoot: work,
    workflowId: `4f7238f8-bbeb-4428-912f-${String(++circleWorkflow).padStart(12, '0')}`,
    organizationId: CIRCLE_ORG_ID,
    projectUsername: 'acme',
    projectReponame: o.reponame ?? 'widget-api',
    // CircleCI sets both in every job; the V2 one is preferred. No BUILDCLOUD_TOKEN anywhere.
    projectEnv: {
      BUILDCLOUD_ENDPOINT: server.info.grpc,
      BUILDCLOUD_SPOOL_DIR: path.join(work, 'spool'),
      CIRCLE_OIDC_TOKEN_V2: o.token,
      CIRCLE_OIDC_TOKEN: 'v1-not-used'
    }
  });
  const j = r.image;
  if (!j || j === 'blocked') throw new Error('the job did not run');
  return j;
}

// The orb's report step as the job's next step would run it: CircleCI's bash sources $BASH_ENV (setup's exports).
async function circleReport(j: JobResult): Promise<{ code: number | null; out: string }> {
  return bash([`${CLI_CMD} report`], j.workingDirectory, { ...j.env, ...j.exported });
}

const ccToken = (o: JWTPayload = {}, key?: IssuerKey) => cc.sign(circleClaims(CIRCLE_ORG_ID, 'github.com/acme/widget-api', o), key);

describe('CircleCI: CIRCLE_OIDC_TOKEN_V2 through the orb and the CLI', () => {
  test("control: a build of main sets up with no org token; the lease exports to the claims' project and branch", async () => {
    const token = await ccToken();
    const j = await circleJob({ token });
    if (j.status !== 'success') throw new Error(describeJob(j));
    expect(j.steps[0].output).toContain('Build Cloud: OIDC token exchanged for an access token of org acme');
    expect(j.exported.BUILDCLOUD_CACHE_TO).toBe(cacheRef('acme/widget-api', 'main'));
    expect(sessionCache(j.exported.BUILDCLOUD_SESSION)).toMatchObject({ exportRef: cacheRef('acme/widget-api', 'main') });
    const report = await circleReport(j);
    expect(report.code).toBe(0);
    expect((await lease(j.exported.BUILDCLOUD_LEASE_ID)).state).toBe('LEASE_STATE_RELEASED');
    expectNoSecret(describeJob(j) + report.out, [token]);
  });

  test('the claims decide the scope: CIRCLE_PROJECT_REPONAME naming another repository is refused, naming both', async () => {
    const token = await ccToken();
    const j = await circleJob({ reponame: 'other', token });
    expect(j.status).toBe('failed');
    expect(j.steps[0].status).toBe('failed');
    expect(j.steps[0].exitCode).not.toBe(0);
    expect(j.steps[0].output).toContain("identity.project 'acme/other' is not the project of this job's OIDC token ('acme/widget-api')");
    expect(j.steps[0].output).toContain('PERMISSION_DENIED');
    expectNoSecret(describeJob(j), [token]);
  });

  test('refusal: a token signed by another key gets the one generic answer', async () => {
    const token = await ccToken({}, await newIssuerKey('cc-1'));
    const j = await circleJob({ token });
    expect(j.steps[0].status).toBe('failed');
    expect(j.steps[0].output).toContain(`ExchangeToken failed: ${OIDC_REFUSAL} (PERMISSION_DENIED)`);
    expectNoSecret(describeJob(j), [token]);
  });
});

// ---- A Dependabot run: no ID token, no Actions secrets ---------------------------------------------------------

describe('a Dependabot pull request through the action (issue 9: it got the generic id-token advice)', () => {
  const dependabot = (runId: string) =>
    new GithubJob(runId, { event: 'pull_request', actor: 'dependabot[bot]', headRef: 'dependabot/npm_and_yarn/lodash-4.17.21', oidc: false });

  test('setup fails naming Dependabot and what works, not the id-token permission', async () => {
    const m = await dependabot('2101').main();
    const error = failure(m);
    expect(error).toContain('No Build Cloud credential: Dependabot started this run (github.actor is dependabot[bot])');
    expect(error).toContain('gh secret set BUILDCLOUD_TOKEN --app dependabot');
    expect(error).toContain("if: github.actor != 'dependabot[bot]'");
    expect(error).toContain('fallback: local');
    expect(error).not.toContain('id-token: write');
  });

  test("with fallback: local it builds on the runner's Docker, and the warning says why", async () => {
    const job = dependabot('2102');
    const m = await job.main({ fallback: 'local' });
    if (m.failed) throw new Error(m.stdout);
    expect(m.outputs.fallback).toBe('true');
    expect(m.outputs['lease-id']).toBe('');
    expect(m.warnings.join('\n')).toMatch(/NO REMOTE BUILDER \(No Build Cloud credential: Dependabot started this run/);
    const p = await job.post();
    expect(p.failed).toBe(false);
    expect(p.summary).toContain('fallback: local');
  });
});
