// setup() end to end within the process: the real settings, identity, credential choice, API client and session
// against an in-process gRPC control plane. Only the two seams that need a docker binary are mocked:
// resolveDocker and configureRunner.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as https from 'https';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { ControlPlaneError, EndpointError } from '../../src/core/api-client';
import { AuthMissingError } from '../../src/core/auth';
import { resolveDocker, type ResolvedDocker } from '../../src/core/docker-cli';
import { configureRunner, type RunnerConfig } from '../../src/core/runner-config';
import { SESSION_ENV, type Session } from '../../src/core/session';
import { setupSettings } from '../../src/core/settings';
import { dockerPathWarning, setup, type SetupDeps } from '../../src/core/setup';
import { report } from '../../src/core/report';
import type { LeaseMsg, ProvisionRequestMsg } from '../../src/contract/grpc';
import { FakeControlPlane, leaseFor, REGISTRY_PASSWORD, rpcError, TLS } from '../fixtures/fake-control-plane';

jest.mock('../../src/core/docker-cli', () => ({ ...jest.requireActual('../../src/core/docker-cli'), resolveDocker: jest.fn() }));
jest.mock('../../src/core/runner-config', () => ({ ...jest.requireActual('../../src/core/runner-config'), configureRunner: jest.fn() }));

const mockedResolveDocker = jest.mocked(resolveDocker);
const mockedConfigureRunner = jest.mocked(configureRunner);

const DOCKER: ResolvedDocker = {
  path: '/usr/bin/docker',
  version: '27.3.1',
  buildx: true,
  buildxVersion: 'v0.17.1',
  reason: 'docker 27.3.1 with buildx v0.17.1 (first on PATH)'
};
const ORG_TOKEN = 'bct_tok1_org-token-s3cret';
const JWT = 'eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJyZXBvOmFjbWUvd2lkZ2V0LWFwaTpyZWY6cmVmcy9oZWFkcy9tYWluIn0.c2lnbmF0dXJl';
const ACCESS_TOKEN = 'bca_access-token-from-exchange';

let plane: FakeControlPlane;
let tmp: string;
let env: Record<string, string>;
let deps: SetupDeps & { log: { info: jest.Mock; warn: jest.Mock; debug: jest.Mock }; mask: jest.Mock };
let cleanup: string[];

beforeAll(async () => {
  plane = await FakeControlPlane.start();
});
afterAll(() => plane.stop());

beforeEach(() => {
  plane.reset();
  cleanup = [];
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-setup-test-'));
  const event = path.join(tmp, 'event.json');
  fs.writeFileSync(event, JSON.stringify({ ref: 'refs/heads/feature/login', repository: { id: 4242, full_name: 'acme/widget-api', default_branch: 'main' } }));
  for (const d of ['home', 'runner-temp', 'spool']) fs.mkdirSync(path.join(tmp, d));
  env = {
    GITHUB_ACTIONS: 'true',
    GITHUB_REPOSITORY: 'acme/widget-api',
    GITHUB_REPOSITORY_ID: '4242',
    GITHUB_REPOSITORY_OWNER: 'acme',
    GITHUB_RUN_ID: '9001',
    GITHUB_RUN_ATTEMPT: '2',
    GITHUB_JOB: 'build',
    GITHUB_EVENT_NAME: 'push',
    GITHUB_EVENT_PATH: event,
    GITHUB_REF: 'refs/heads/feature/login',
    GITHUB_REF_TYPE: 'branch',
    GITHUB_REF_NAME: 'feature/login',
    GITHUB_ACTOR: 'octocat',
    GITHUB_SERVER_URL: 'https://github.com',
    GITHUB_SHA: 'a'.repeat(40),
    HOME: path.join(tmp, 'home'),
    RUNNER_TEMP: path.join(tmp, 'runner-temp')
  };
  deps = {
    env,
    log: { info: jest.fn(), warn: jest.fn(), debug: jest.fn() },
    mask: jest.fn(),
    spoolDir: path.join(tmp, 'spool')
  };
  mockedResolveDocker.mockReset().mockResolvedValue(DOCKER);
  mockedConfigureRunner.mockReset().mockImplementation(async (lease, name, opts) => fakeRunner(lease, name, opts.tempRoot));
  plane.on('Provision', (req) => leaseFor(req)).on('Release', (req) => ({ ...leaseFor(PROVISIONED), id: req.leaseId, state: 'LEASE_STATE_RELEASED' }));
});

afterEach(() => {
  jest.restoreAllMocks();
  for (const d of [tmp, ...cleanup]) fs.rmSync(d, { recursive: true, force: true });
});

const PROVISIONED: ProvisionRequestMsg = {
  org: 'acme',
  pipelineKey: '4242/9001/2',
  jobId: 'build-0-77',
  platforms: [],
  scope: 'SCOPE_PIPELINE',
  identity: null
};

/** What configureRunner makes of a lease, without docker: a private dir under tempRoot and the env it would export. */
function fakeRunner(lease: LeaseMsg, name: string, tempRoot: string): RunnerConfig {
  const dir = fs.mkdtempSync(path.join(tempRoot, 'buildcloud-'));
  const certDir = path.join(dir, 'certs');
  const dockerConfig = path.join(dir, 'docker-config');
  return {
    name,
    dir,
    certDir,
    dockerConfig,
    contextName: name,
    contexts: [name],
    buildxBuilder: '',
    builderName: name,
    driver: 'docker',
    env: {
      DOCKER_CONFIG: dockerConfig,
      DOCKER_BUILDKIT: '1',
      DOCKER_HOST: lease.builders[0].address,
      DOCKER_TLS_VERIFY: '1',
      DOCKER_CERT_PATH: certDir,
      BUILDX_BUILDER: name
    },
    secrets: [lease.tls!.keyPem, 'TUhjQ0FRRUVJRkFLRUtFWUJPRFk=', ...(lease.cache?.registry?.password ? [lease.cache.registry.password] : [])],
    warnings: []
  };
}

const settings = (values: Record<string, string> = {}) =>
  setupSettings(
    (name) => ({ endpoint: plane.address, token: ORG_TOKEN, org: 'acme', platforms: 'linux/amd64,linux/arm64', 'job-id': 'build-0-77', ...values })[name] ?? ''
  );

async function rejection(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e
  );
  // Not toBeInstanceOf(Error): errors from Node's own modules come from another realm than jest's.
  expect(typeof (err as Error)?.message).toBe('string');
  return err as Error;
}

describe('provisioning with an org token', () => {
  test.each([
    ['pipeline', 'SCOPE_PIPELINE'],
    ['job', 'SCOPE_JOB']
  ])('the ProvisionRequest the control plane receives (scope %s)', async (scope, wire) => {
    await setup(settings({ scope }), deps);
    const calls = plane.callsOf('Provision');
    expect(calls).toHaveLength(1);
    expect(calls[0].authorization).toEqual([`Bearer ${ORG_TOKEN}`]);
    expect(calls[0].request).toEqual({
      org: 'acme',
      pipelineKey: '4242/9001/2', // repository id / run id / attempt
      jobId: 'build-0-77', // the job-id setting, not GITHUB_JOB
      platforms: ['linux/amd64', 'linux/arm64'],
      scope: wire,
      identity: {
        provider: 'github',
        project: 'acme/widget-api',
        branch: 'feature/login',
        defaultBranch: 'main',
        fork: false,
        actor: 'octocat',
        runUrl: 'https://github.com/acme/widget-api/actions/runs/9001'
      }
    });
    expect(plane.callsOf('ExchangeToken')).toHaveLength(0);
  });

  test('outputs and the environment for later steps', async () => {
    const r = await setup(settings(), deps);
    const cfg = await mockedConfigureRunner.mock.results[0].value;
    expect(r.outputs).toEqual({
      builder: cfg.builderName,
      'docker-host': 'tcp://127.0.0.1:23750',
      'lease-id': 'lease-0001',
      'cache-from': 'registry.test:5000/acme/cache:feature-login\nregistry.test:5000/acme/cache:main',
      'cache-to': 'registry.test:5000/acme/cache:feature-login',
      platforms: 'linux/amd64,linux/arm64',
      fallback: 'false'
    });
    expect(r.exportEnv).toEqual({ ...cfg.env, [SESSION_ENV]: r.sessionFile });
    expect(r.exportEnv.DOCKER_HOST).toBe('tcp://127.0.0.1:23750');
    expect(r.exportEnv.BUILDCLOUD_SESSION).toBe(path.join(cfg.dir, 'session.json'));
    expect(deps.log.warn).not.toHaveBeenCalled();
  });

  test("the runner's own docker settings before setup are kept for load (only those set), in the session and the env", async () => {
    Object.assign(env, { DOCKER_HOST: 'tcp://docker:2376', DOCKER_TLS_VERIFY: '1', DOCKER_CERT_PATH: '/certs/client' });
    const r = await setup(settings(), deps);
    const cfg = await mockedConfigureRunner.mock.results[0].value;
    const kept = {
      BUILDCLOUD_RUNNER_DOCKER_HOST: 'tcp://docker:2376',
      BUILDCLOUD_RUNNER_DOCKER_TLS_VERIFY: '1',
      BUILDCLOUD_RUNNER_DOCKER_CERT_PATH: '/certs/client'
    };
    expect(r.exportEnv).toEqual({ ...cfg.env, ...kept, [SESSION_ENV]: r.sessionFile });
    // DOCKER_* themselves point at the builder now.
    expect(r.exportEnv.DOCKER_HOST).toBe('tcp://127.0.0.1:23750');
    expect(JSON.parse(fs.readFileSync(r.sessionFile, 'utf8')).env).toMatchObject(kept);
  });

  test('configureRunner gets the lease with its TLS material, a per-job name and RUNNER_TEMP', async () => {
    await setup(settings(), deps);
    expect(mockedResolveDocker).toHaveBeenCalledWith(env);
    expect(mockedConfigureRunner).toHaveBeenCalledTimes(1);
    const [lease, name, opts] = mockedConfigureRunner.mock.calls[0];
    expect(lease.id).toBe('lease-0001');
    expect(lease.tls).toEqual(TLS);
    expect(name).toMatch(/^buildcloud-[0-9a-f]{12}$/);
    expect(opts).toEqual({ tempRoot: env.RUNNER_TEMP, docker: DOCKER });
  });

  test('the session file is 0600 and holds no registry password and no private key', async () => {
    const r = await setup(settings(), deps);
    expect(fs.statSync(r.sessionFile).mode & 0o777).toBe(0o600);
    const text = fs.readFileSync(r.sessionFile, 'utf8');
    expect(text).not.toContain(REGISTRY_PASSWORD);
    expect(text).not.toContain('PRIVATE KEY');
    expect(text).not.toContain('TUhjQ0FRRUVJRkFLRUtFWUJPRFk=');
    const s: Session = JSON.parse(text);
    expect(s.lease?.id).toBe('lease-0001');
    expect(s.lease?.tls).toBeNull();
    expect(s.lease?.cache?.registry).toEqual({ host: 'registry.test:5000', username: 'lease-0001', password: '' });
    expect(s.runner?.secrets).toEqual([]);
    expect(s.fallback).toBe(false);
    expect(s.identity.pipelineKey).toBe('4242/9001/2');
    expect(s.spoolDir).toBe(path.join(tmp, 'spool', 'acme'));
    expect(r.session).toEqual(s);
  });

  test("the org token and the runner's secrets are masked", async () => {
    await setup(settings(), deps);
    const masked = deps.mask.mock.calls.map(([s]) => s);
    expect(masked).toContain(ORG_TOKEN);
    expect(masked).toContain(TLS.keyPem);
    expect(masked).toContain(REGISTRY_PASSWORD);
  });

  test('BUILDCLOUD_TOKEN in the environment serves as the org token', async () => {
    env.BUILDCLOUD_TOKEN = 'bct_from_env';
    await setup(settings({ token: '' }), deps);
    expect(plane.callsOf('Provision')[0].authorization).toEqual(['Bearer bct_from_env']);
    expect(deps.mask).toHaveBeenCalledWith('bct_from_env');
  });

  test('cache: false gives empty cache-from and cache-to', async () => {
    const r = await setup(settings({ cache: 'false' }), deps);
    expect(r.outputs['cache-from']).toBe('');
    expect(r.outputs['cache-to']).toBe('');
    expect(r.outputs['lease-id']).toBe('lease-0001');
    expect(r.session.cache).toBe(false);
    const s: Session = JSON.parse(fs.readFileSync(r.sessionFile, 'utf8'));
    expect(s.lease?.cache?.importRefs).toEqual([]);
    expect(s.lease?.cache?.exportRef).toBe('');
  });

  test('a missing endpoint is named before anything is called', async () => {
    const err = await rejection(setup(settings({ endpoint: '' }), deps));
    expect(err.message).toContain("Missing input 'endpoint'");
    expect(plane.calls).toHaveLength(0);
  });
});

describe('credentials', () => {
  test('no token and no OIDC variables: an error that says to add `id-token: write`', async () => {
    const err = await rejection(setup(settings({ token: '' }), deps));
    expect(err).toBeInstanceOf(AuthMissingError);
    expect(err.message).toContain('id-token: write');
    expect(plane.calls).toHaveLength(0);
  });

  test("GitHub OIDC: the job's token is exchanged and the access token provisions; both masked", async () => {
    env.ACTIONS_ID_TOKEN_REQUEST_URL = 'https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0';
    env.ACTIONS_ID_TOKEN_REQUEST_TOKEN = 'runtime-request-token';
    const githubOidc = jest.fn(async (_aud: string) => JWT);
    plane.on('ExchangeToken', () => ({ accessToken: ACCESS_TOKEN, org: 'acme', expiresAtMs: 1_736_946_000_000 }));

    const r = await setup(settings({ token: '', 'oidc-audience': 'buildcloud-prod' }), { ...deps, githubOidc });

    expect(githubOidc).toHaveBeenCalledWith('buildcloud-prod');
    const [exchange] = plane.callsOf('ExchangeToken');
    expect(exchange.request).toEqual({ oidcToken: JWT, org: 'acme' });
    expect(exchange.authorization).toEqual([]);
    expect(plane.callsOf('Provision')[0].authorization).toEqual([`Bearer ${ACCESS_TOKEN}`]);
    expect(plane.calls.map((c) => c.method)).toEqual(['ExchangeToken', 'Provision']);
    const masked = deps.mask.mock.calls.map(([s]) => s);
    expect(masked).toContain(JWT);
    expect(masked).toContain(ACCESS_TOKEN);
    expect(r.session.token).toBe(ACCESS_TOKEN);
    expect(r.outputs['lease-id']).toBe('lease-0001');
  });

  test("a refused exchange fails setup with the server's message and provisions nothing", async () => {
    env.ACTIONS_ID_TOKEN_REQUEST_URL = 'https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0';
    env.ACTIONS_ID_TOKEN_REQUEST_TOKEN = 'runtime-request-token';
    plane.on('ExchangeToken', () => {
      throw rpcError(grpc.status.PERMISSION_DENIED, 'no trust rule of org acme matches repo:acme/widget-api');
    });
    const err = await rejection(setup(settings({ token: '' }), { ...deps, githubOidc: async () => JWT }));
    expect(err.message).toContain('no trust rule of org acme matches repo:acme/widget-api');
    expect(plane.callsOf('Provision')).toHaveLength(0);
  });
});

describe('when no builder can be had', () => {
  test.each(['none', 'local'])("RESOURCE_EXHAUSTED rejects at once with the server's message (fallback %s)", async (fallback) => {
    plane.on('Provision', () => {
      throw rpcError(grpc.status.RESOURCE_EXHAUSTED, 'no build minutes left for org acme this month');
    });
    const err = await rejection(setup(settings({ fallback }), deps));
    expect(err).toBeInstanceOf(ControlPlaneError);
    expect(err.message).toContain('no build minutes left for org acme this month');
    expect(plane.callsOf('Provision')).toHaveLength(1);
    expect(mockedConfigureRunner).not.toHaveBeenCalled();
  });

  // The control plane stays UNAVAILABLE. The clock moves 100 ms per Provision it receives, so the 1 s budget runs
  // out after ~10 calls however fast they are; Math.random() = 0 makes the client's jittered backoff 0 ms.
  function unavailableForever(): () => number {
    let clock = 1_736_942_400_000;
    plane.on('Provision', () => {
      clock += 100;
      throw rpcError(grpc.status.UNAVAILABLE, 'control plane at capacity (8 builders)');
    });
    jest.spyOn(Math, 'random').mockReturnValue(0);
    return () => clock;
  }

  test("UNAVAILABLE for the whole provision-timeout with fallback: local → the runner's Docker, loudly", async () => {
    const now = unavailableForever();
    const r = await setup(settings({ fallback: 'local', 'provision-timeout': '1' }), { ...deps, now });
    cleanup.push(r.session.dir);

    const calls = plane.callsOf('Provision').length;
    expect(calls).toBeGreaterThanOrEqual(10); // kept trying for the whole budget
    expect(calls).toBeLessThan(20); // and stopped soon after it
    expect(r.outputs).toEqual({ builder: '', 'docker-host': '', 'lease-id': '', 'cache-from': '', 'cache-to': '', platforms: '', fallback: 'true' });
    expect(r.exportEnv).toEqual({ DOCKER_BUILDKIT: '1', [SESSION_ENV]: r.sessionFile });
    expect(r.session.fallback).toBe(true);
    expect(r.session.lease).toBeNull();
    expect(fs.existsSync(r.sessionFile)).toBe(true);
    expect(mockedConfigureRunner).not.toHaveBeenCalled();
    const loud = deps.log.warn.mock.calls.map(([m]) => m).filter((m: string) => m.includes('NO REMOTE BUILDER'));
    expect(loud).toHaveLength(1);
    expect(loud[0]).toContain('control plane at capacity (8 builders)');
    expect(loud[0]).toContain('fallback: local');
  });

  test('UNAVAILABLE for the whole provision-timeout with fallback: none → rejects', async () => {
    const now = unavailableForever();
    const err = await rejection(setup(settings({ fallback: 'none', 'provision-timeout': '1' }), { ...deps, now }));
    expect(err).toBeInstanceOf(ControlPlaneError);
    expect((err as ControlPlaneError).code).toBe(grpc.status.UNAVAILABLE);
    expect(err.message).toContain('control plane at capacity (8 builders)');
    expect(plane.callsOf('Provision').length).toBeGreaterThanOrEqual(10);
    expect(deps.log.warn.mock.calls.some(([m]) => m.includes('NO REMOTE BUILDER'))).toBe(false);
  });

  test('UNAVAILABLE then a lease within the budget: provisioned, no fallback', async () => {
    jest.spyOn(Math, 'random').mockReturnValue(0);
    plane.on('Provision', (req, n) => {
      if (n <= 2) throw rpcError(grpc.status.UNAVAILABLE, 'restarting');
      return leaseFor(req);
    });
    const r = await setup(settings({ fallback: 'local' }), deps);
    expect(r.outputs.fallback).toBe('false');
    expect(r.outputs['lease-id']).toBe('lease-0001');
    expect(plane.callsOf('Provision')).toHaveLength(3);
    expect(deps.log.warn).toHaveBeenCalledTimes(2); // one line per retry
  });
});

// Issue 12: a wrong endpoint used to be retried for the whole provision-timeout (121 s, 31 warnings). Now: one
// error naming the endpoint, at once, with no warning before it; wrong-endpoint.test.ts covers every kind of mistake.
describe('a wrong endpoint', () => {
  async function refusedPort(): Promise<number> {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise((r) => s.close(r));
    return port;
  }

  test('nothing listens there: one error within 5 s, no retries, no warnings (fallback: none)', async () => {
    const port = await refusedPort();
    const started = Date.now();
    const err = await rejection(setup(settings({ endpoint: `127.0.0.1:${port}`, 'provision-timeout': '120' }), deps));
    expect(Date.now() - started).toBeLessThan(5000);
    expect(err).toBeInstanceOf(EndpointError);
    expect(err.message).toBe(`Endpoint '127.0.0.1:${port}': nothing listens on 127.0.0.1:${port}: is the control plane running, and is this its port?`);
    expect(deps.log.warn).not.toHaveBeenCalled();
    expect(mockedConfigureRunner).not.toHaveBeenCalled();
  });

  test('nothing listens there with fallback: local: the control plane may be down, so the job builds locally, loudly', async () => {
    const port = await refusedPort();
    const r = await setup(settings({ endpoint: `127.0.0.1:${port}`, fallback: 'local' }), deps);
    cleanup.push(r.session.dir);
    expect(r.outputs.fallback).toBe('true');
    const warnings = deps.log.warn.mock.calls.map(([m]) => m);
    expect(warnings).toEqual([
      `Build Cloud: NO REMOTE BUILDER (Endpoint '127.0.0.1:${port}': nothing listens on 127.0.0.1:${port}: is the control plane running, and is this its port?). fallback: local is set, so this job builds on the runner's own Docker, without the org cache.`
    ]);
  });

  test('the HTTP port given as host:port: a mistake to fix, not an outage: fails even with fallback: local', async () => {
    const hostPort = plane.connectUrl.replace('http://', '');
    const err = await rejection(setup(settings({ endpoint: hostPort, fallback: 'local' }), deps));
    expect(err.message).toBe(`Endpoint '${hostPort}': this port answers HTTP/1.1, not gRPC: use ${plane.connectUrl}`);
    expect(deps.log.warn).not.toHaveBeenCalled();
    expect(plane.calls).toEqual([]);
  });
});

test("a rate-limited Provision is retried after the server's retry-after, within the provision-timeout", async () => {
  plane.on('Provision', (req, n) => {
    if (n === 1) {
      const metadata = new grpc.Metadata();
      metadata.set('retry-after', '1');
      throw { ...rpcError(grpc.status.RESOURCE_EXHAUSTED, 'Rate limit exceeded: retry after 1 s.'), metadata };
    }
    return leaseFor(req);
  });
  const r = await setup(settings(), deps);
  expect(r.outputs['lease-id']).toBe('lease-0001');
  expect(plane.callsOf('Provision')).toHaveLength(2);
  expect(deps.log.warn.mock.calls.map(([m]) => m)).toEqual(['Build Cloud: Provision failed (Rate limit exceeded: retry after 1 s.); retrying in 1.0 s']);
});

test('configureRunner failing: the lease is released and the error propagates', async () => {
  const boom = new Error('docker context create failed: permission denied');
  mockedConfigureRunner.mockRejectedValue(boom);
  const err = await rejection(setup(settings(), deps));
  expect(err).toBe(boom);
  const releases = plane.callsOf('Release');
  expect(releases).toHaveLength(1);
  expect(releases[0].request).toEqual({ leaseId: 'lease-0001' });
  expect(releases[0].authorization).toEqual([`Bearer ${ORG_TOKEN}`]);
});

test('configureRunner failing and the release failing too: the configure error is the one reported', async () => {
  const boom = new Error('docker context create failed: permission denied');
  mockedConfigureRunner.mockRejectedValue(boom);
  plane.on('Release', () => {
    throw rpcError(grpc.status.INTERNAL, 'store is read-only');
  });
  await expect(setup(settings(), deps)).rejects.toBe(boom);
  expect(plane.callsOf('Release')).toHaveLength(1);
});

describe('no usable docker client', () => {
  const unusable = () => Object.assign(new Error('No usable docker client: /usr/bin/docker has no buildx plugin'), { name: 'DockerNotUsableError' });

  test("the client's error is the one reported, and the lease taken meanwhile is released at once", async () => {
    jest.mocked(resolveDocker).mockRejectedValue(unusable());
    const err = await rejection(setup(settings(), deps));
    expect(err.message).toBe('No usable docker client: /usr/bin/docker has no buildx plugin');
    expect(mockedConfigureRunner).not.toHaveBeenCalled();
    // Provision went out beside the client's choice (issue 10); its lease is handed back, not left to the idle timeout.
    expect(plane.callsOf('Provision')).toHaveLength(1);
    expect(plane.callsOf('Release').map((c) => c.request)).toEqual([{ leaseId: 'lease-0001' }]);
  });

  test('a Provision that fails too: the docker error still comes first', async () => {
    jest.mocked(resolveDocker).mockRejectedValue(unusable());
    plane.on('Provision', () => {
      throw rpcError(grpc.status.PERMISSION_DENIED, "token of org 'other' cannot act for org 'acme'");
    });
    const err = await rejection(setup(settings(), deps));
    expect(err.message).toContain('No usable docker client');
    expect(plane.callsOf('Release')).toHaveLength(0);
  });
});

describe('the docker a shell runs is not the one setup chose', () => {
  /** An executable `docker` in `dir` (a script: only its path matters here). */
  const dockerIn = (dir: string) => {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'docker'), '#!/bin/sh\n', { mode: 0o755 });
    return path.join(dir, 'docker');
  };

  test('one warning line naming both clients and what to run instead', async () => {
    const first = dockerIn(path.join(tmp, 'usr-local-bin'));
    const chosen = dockerIn(path.join(tmp, 'usr-bin'));
    env.PATH = `${path.join(tmp, 'empty')}:${path.dirname(first)}:${path.dirname(chosen)}`;
    mockedResolveDocker.mockResolvedValue({ ...DOCKER, path: chosen, version: '20.10.24+dfsg1', buildx: false, buildxVersion: '' });
    await setup(settings(), deps);
    expect(deps.log.warn.mock.calls).toEqual([
      [
        `Build Cloud: setup chose ${chosen} (20.10.24+dfsg1), but \`docker\` in this shell runs ${first}: a \`docker build\` of your own may fail there ` +
          `(e.g. "Install the buildx component"). Build with buildcloud build, or run ${chosen} build (alias docker=${chosen} in an interactive shell).`
      ]
    ]);
  });

  test('the same file (PATH first, or a link to it), or no docker on PATH: no warning', () => {
    const chosen = dockerIn(path.join(tmp, 'bin'));
    fs.mkdirSync(path.join(tmp, 'links'));
    fs.symlinkSync(chosen, path.join(tmp, 'links', 'docker'));
    const c = { path: chosen, version: '27.3.1', buildx: true };
    expect(dockerPathWarning({ PATH: path.dirname(chosen) }, c)).toBe('');
    expect(dockerPathWarning({ PATH: path.join(tmp, 'links') }, c)).toBe('');
    expect(dockerPathWarning({ PATH: path.join(tmp, 'home') }, c)).toBe('');
    expect(dockerPathWarning({ PATH: path.join(tmp, 'links'), BUILDCLOUD_DOCKER: '/opt/docker' }, { ...c, path: '/opt/docker' })).toMatch(
      /^Build Cloud: BUILDCLOUD_DOCKER names \/opt\/docker \(27\.3\.1, with buildx\), but `docker` in this shell runs /
    );
  });
});

describe('report trusts the control plane as setup did (BUILDCLOUD_CA_FILE)', () => {
  let dir: string;
  let server: https.Server;
  let port: number;
  let connections: number;
  let caFile: string;
  const savedCa = process.env.BUILDCLOUD_CA_FILE;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-setup-ca-'));
    const ossl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: 'pipe' });
    ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca');
    ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
    fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
    ossl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '1', '-extfile', 'ext');
    caFile = path.join(dir, 'ca.pem');
    // A control plane that knows no lease: any answer at all shows the TLS connection was trusted.
    server = https.createServer({ key: fs.readFileSync(path.join(dir, 'srv.key')), cert: fs.readFileSync(path.join(dir, 'srv.pem')) }, (_req, res) =>
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'not_found', message: 'no lease lease-0001' }))
    );
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    connections = 0;
    delete process.env.BUILDCLOUD_CA_FILE;
  });
  afterEach(() => {
    if (savedCa === undefined) delete process.env.BUILDCLOUD_CA_FILE;
    else process.env.BUILDCLOUD_CA_FILE = savedCa;
  });

  const session = (caFile?: string): Session => ({
    version: 1,
    dir: fs.mkdtempSync(path.join(tmp, 'session-')),
    identity: {
      provider: 'local',
      project: 'acme/app',
      branch: 'main',
      defaultBranch: 'main',
      fork: false,
      actor: 'dev',
      runUrl: '',
      pipelineKey: 'local/1',
      jobId: 'local'
    } as Session['identity'],
    org: 'acme',
    endpoint: `https://127.0.0.1:${port}`,
    token: ORG_TOKEN,
    meteringUrl: '',
    spoolDir: path.join(tmp, 'spool'),
    lease: { ...leaseFor(PROVISIONED), idleTimeoutS: 600 },
    runner: null,
    docker: DOCKER,
    env: {},
    fallback: false,
    cache: true,
    summary: false,
    prComment: false,
    startedAtMs: Date.now(),
    ...(caFile ? { caFile } : {})
  });

  test('setup keeps the CA file, as an absolute path, in the session', async () => {
    env.BUILDCLOUD_CA_FILE = path.relative(process.cwd(), caFile);
    const r = await setup(settings(), deps);
    expect(r.session.caFile).toBe(caFile);
    expect(JSON.parse(fs.readFileSync(r.sessionFile, 'utf8')).caFile).toBe(caFile);
  });

  test("report without BUILDCLOUD_CA_FILE trusts the session's CA: the control plane answers", async () => {
    const log = { info: jest.fn(), warn: jest.fn(), debug: jest.fn() };
    const r = await report(session(caFile), { log });
    expect(r.warnings).toEqual([
      'Build Cloud: could not release lease lease-0001 (Release failed: no lease lease-0001 (NOT_FOUND)); the control plane ends it after 600 s without activity.'
    ]);
  });

  test('an untrusted certificate is not retried, and the warning says what to set', async () => {
    const log = { info: jest.fn(), warn: jest.fn(), debug: jest.fn() };
    const r = await report(session(), { log });
    expect(connections).toBe(1);
    expect(r.warnings).toEqual([
      "Build Cloud: could not release lease lease-0001: the control plane's certificate is not trusted here (Release failed: request failed (UNABLE_TO_VERIFY_LEAF_SIGNATURE) (UNAVAILABLE)); " +
        'the control plane ends it after 600 s without activity. Set BUILDCLOUD_CA_FILE to the PEM file of its CA for report, as for setup.'
    ]);
  });
});
