// The control plane for real: `buildcloud serve` as a process, real dockerd builders, the real registry,
// Debian's docker client building through the lease's mutual TLS.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';
import * as grpc from '@grpc/grpc-js';
import { adminSetup, cli, docker, dockerEnvFor, registryRequest, startServer, TestClient, waitFor, CLI, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import type { LeaseMsg } from '../../src/contract/grpc';
import type { EventsResponse } from '../../src/contract/http-api';

const DOCKERFILE = ['RUN echo dependencies > /deps.txt && sleep 1', 'RUN cat /deps.txt > /copy.txt && echo built > /built.txt'].join('\n');

let server: ServerProcess;
let acme: TestClient;
let beta: TestClient;
let acmeToken: string;
let betaToken: string;
let work: string;
let context: string;

function dockerdRunningFor(builderId: string): boolean {
  const ps = spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).stdout;
  return ps.split('\n').some((l) => l.includes('dockerd') && l.includes(builderId));
}

function buildArgs(lease: LeaseMsg, tag: string): string[] {
  const args = ['build', '--progress=plain', '--build-arg', 'BUILDKIT_INLINE_CACHE=1', '-t', tag];
  for (const ref of lease.cache!.importRefs) args.push('--cache-from', ref);
  return [...args, '.'];
}

function cachedSteps(out: string): number {
  return out.split('\n').filter((l) => / CACHED$/.test(l.trim()) && /#\d+/.test(l)).length;
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${server.info.http}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-cp-'));
  server = await startServer(['--idle-timeout', '3s', '--grace', '1s', '--warm-pool', '1']);
  acmeToken = adminSetup(server.stateDir, 'acme', 60);
  betaToken = adminSetup(server.stateDir, 'beta', 60);
  acme = new TestClient(server.info.grpc, acmeToken);
  beta = new TestClient(server.info.grpc, betaToken);
  context = path.join(work, 'ctx');
  fs.mkdirSync(context);
  await makeBusyboxContext(context, DOCKERFILE);
});

afterAll(async () => {
  acme?.close();
  beta?.close();
  const code = await server?.stop();
  expect(code).toBe(0);
  // Everything it started, it stopped: no dockerd of its state dir is left.
  const ps = spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).stdout;
  expect(ps.split('\n').filter((l) => l.includes('dockerd') && l.includes(server.stateDir))).toEqual([]);
});

describe('buildcloud serve with real builders', () => {
  let firstExport = '';

  test('jobs of one pipeline share a builder; a build with RUN steps runs on it and exports the org cache', async () => {
    const a = await acme.provision({ pipelineKey: 'repo1/run1/1', jobId: 'build-a' });
    const b = await acme.provision({ pipelineKey: 'repo1/run1/1', jobId: 'build-b' });
    expect(a.state).toBe('LEASE_STATE_ACTIVE');
    expect(a.builders).toHaveLength(1);
    expect(a.builders[0].kind).toBe('ENDPOINT_KIND_DOCKER');
    expect(b.builders[0].builderId).toBe(a.builders[0].builderId);
    expect(b.builders[0].shared).toBe(true);
    expect(a.cache!.exportRef).toBe(`${server.info.registry}/acme/acme/app/cache:main`);

    const env = dockerEnvFor(a, path.join(work, 'job-a'));
    const built = docker(buildArgs(a, a.cache!.exportRef), env, context);
    expect(built.status).toBe(0);
    const pushed = docker(['push', a.cache!.exportRef], env);
    expect(pushed.out).toMatch(/digest: sha256:/);
    expect(pushed.status).toBe(0);
    firstExport = a.cache!.exportRef;

    // Another lease's cert, from the same control plane, is refused by this builder.
    const other = await beta.provision({ pipelineKey: 'other/1', jobId: 'x' });
    const wrong = dockerEnvFor({ ...other, builders: a.builders }, path.join(work, 'wrong-cert'));
    const refused = docker(['version', '--format', '{{.Server.Version}}'], wrong);
    expect(refused.status).not.toBe(0);
    await beta.release(other.id);

    const builderId = a.builders[0].builderId;
    const ra = await acme.release(a.id);
    expect(ra.state).toBe('LEASE_STATE_RELEASED');
    // Still held by job b: the builder stays.
    expect(dockerdRunningFor(builderId)).toBe(true);
    const rb = await acme.release(b.id);
    expect(rb.billedSeconds).toBeGreaterThanOrEqual(1);
    // After the last release and the grace period the builder is destroyed: process and data root gone.
    await waitFor('builder destroyed', async () => !dockerdRunningFor(builderId) && !fs.existsSync(path.join(server.stateDir, 'builders', builderId)));
  });

  test("a second pipeline gets a fresh builder that reuses the first one's layers through the registry", async () => {
    expect(firstExport).not.toBe('');
    const l = await acme.provision({ pipelineKey: 'repo1/run2/1', jobId: 'build' });
    const env = dockerEnvFor(l, path.join(work, 'pipeline2'));
    const built = docker(buildArgs(l, l.cache!.exportRef), env, context);
    expect(built.status).toBe(0);
    expect(built.out).toMatch(/importing cache manifest/);
    expect(cachedSteps(built.out)).toBeGreaterThanOrEqual(2);
    await acme.release(l.id);
  });

  test('two pipelines get two builders; scope job gives a job its own', async () => {
    const p1 = await acme.provision({ pipelineKey: 'repo1/run3/1', jobId: 'j' });
    const p2 = await acme.provision({ pipelineKey: 'repo1/run4/1', jobId: 'j' });
    const solo = await acme.provision({ pipelineKey: 'repo1/run3/1', jobId: 'k', scope: 'SCOPE_JOB' });
    expect(p2.builders[0].builderId).not.toBe(p1.builders[0].builderId);
    expect(solo.builders[0].builderId).not.toBe(p1.builders[0].builderId);
    for (const l of [p1, p2, solo]) await acme.release(l.id);
  });

  test('a lease abandoned by a killed client is reaped after the idle timeout', async () => {
    // A separate client process provisions, prints its lease id, and is killed without releasing.
    const child = spawn(process.execPath, [path.join(__dirname, '../helpers/provision-and-hang.js'), server.info.grpc, acmeToken, 'repo1/dead/1'], {
      stdio: ['ignore', 'pipe', 'inherit']
    });
    const leaseId = await new Promise<string>((resolve) => child.stdout!.once('data', (d) => resolve(d.toString().trim())));
    child.kill('SIGKILL');
    const before = await metric('buildcloud_reaped_leases_total', 'reason="idle"');
    await waitFor('idle lease reaped', async () => (await metric('buildcloud_reaped_leases_total', 'reason="idle"')) > before, 20_000);
    const l = await acme.get(leaseId);
    expect(l.state).toBe('LEASE_STATE_EXPIRED');
    // Billed up to the idle deadline, not beyond: about 3 s of idle after provisioning.
    expect(l.billedSeconds).toBeGreaterThanOrEqual(3);
    expect(l.billedSeconds).toBeLessThanOrEqual(6);
  });

  test('a usage record sent twice counts once', async () => {
    const l = await acme.provision({ pipelineKey: 'repo1/run5/1', jobId: 'j' });
    await acme.release(l.id);
    const event = {
      specversion: '1.0',
      id: `build-${l.id}-1`,
      source: '/buildcloud/test',
      type: 'dev.buildcloud.build.completed',
      subject: 'acme',
      time: new Date().toISOString(),
      datacontenttype: 'application/json',
      data: {
        lease_id: l.id,
        build_id: '1',
        platform: 'linux/amd64',
        status: 'success',
        duration_ms: 1200,
        total_steps: 4,
        cached_steps: 3,
        cache_ratio: 0.75,
        actor: 'dev'
      }
    };
    const send = () =>
      fetch(`${server.info.http}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${acmeToken}`, 'content-type': 'application/cloudevents-batch+json' },
        body: JSON.stringify([event])
      }).then((r) => r.json() as Promise<EventsResponse>);
    expect((await send()).results[0].status).toBe('accepted');
    expect((await send()).results[0].status).toBe('duplicate');
    const usage = JSON.parse(cli(['usage', '--org', 'acme', '--json', '--state-dir', server.stateDir]).stdout);
    expect(usage.builds.count).toBe(1);
    expect(usage.builds.withCachedStepShare).toBe(1);
    expect(usage.minutes.used).toBeGreaterThan(0);
    const text = cli(['usage', '--org', 'acme', '--endpoint', server.info.http, '--token', acmeToken]);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/builds with a cached step 100\.0%/);
  });

  test('an empty bucket refuses provisioning with a message that says so', async () => {
    const token = adminSetup(server.stateDir, 'broke', 0);
    const c = new TestClient(server.info.grpc, token);
    const err = (await c.provision({ pipelineKey: 'x/1', jobId: 'j' }).catch((e) => e)) as grpc.ServiceError;
    c.close();
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(/no build minutes left/);
    expect(err.details).toMatch(/buildcloud admin bucket add --org broke/);
  });

  test("org B can neither see nor use org A's leases, usage or cache", async () => {
    const a = await acme.provision({ pipelineKey: 'repo1/run6/1', jobId: 'j' });
    const getErr = (await beta.get(a.id).catch((e) => e)) as grpc.ServiceError;
    expect(getErr.code).toBe(grpc.status.NOT_FOUND);
    const relErr = (await beta.release(a.id).catch((e) => e)) as grpc.ServiceError;
    expect(relErr.code).toBe(grpc.status.NOT_FOUND);
    const provErr = (await beta.provision({ org: 'acme', pipelineKey: 'repo1/run6/1', jobId: 'j2' }).catch((e) => e)) as grpc.ServiceError;
    expect(provErr.code).toBe(grpc.status.PERMISSION_DENIED);
    const usage = await fetch(`${server.info.http}/v1/orgs/acme/usage`, { headers: { authorization: `Bearer ${betaToken}` } });
    expect(usage.status).toBe(404);

    // B's lease gets B's refs only, and B's registry credentials cannot read A's cache.
    const b = await beta.provision({ pipelineKey: 'b/1', jobId: 'j', identity: { project: 'acme/app', branch: 'main', defaultBranch: 'main' } });
    expect(b.cache!.importRefs.every((r) => r.startsWith(`${server.info.registry}/beta/`))).toBe(true);
    const repo = firstExport.slice(server.info.registry.length + 1).split(':')[0];
    const creds = (l: LeaseMsg) => 'Basic ' + Buffer.from(`${l.cache!.registry!.username}:${l.cache!.registry!.password}`).toString('base64');
    const manifest = `https://${server.info.registry}/v2/${repo}/manifests/main`;
    const accept = 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json';
    expect((await registryRequest(server.info, manifest, { headers: { authorization: creds(a), accept } })).status).toBe(200);
    expect((await registryRequest(server.info, manifest, { headers: { authorization: creds(b), accept } })).status).toBe(403);
    // Pulled through B's own builder with B's credentials: refused too.
    const envB = dockerEnvFor(b, path.join(work, 'beta-pull'));
    const pull = docker(['pull', firstExport], envB);
    expect(pull.status).not.toBe(0);
    // A released lease's registry credentials stop working.
    await acme.release(a.id);
    expect((await registryRequest(server.info, manifest, { headers: { authorization: creds(a), accept } })).status).toBe(401);
    await beta.release(b.id);
  });

  test('bad input gets a clear error and the server stays up', async () => {
    const e1 = (await acme.provision({ pipelineKey: '', jobId: 'j' }).catch((e) => e)) as grpc.ServiceError;
    expect(e1.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(e1.details).toMatch(/pipeline_key/);
    const e2 = (await acme.provision({ pipelineKey: 'p/1', jobId: 'j', platforms: ['windows/sparc'] }).catch((e) => e)) as grpc.ServiceError;
    expect(e2.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(e2.details).toMatch(/windows\/sparc/);
    const bad = new TestClient(server.info.grpc, 'bct_nope_nope');
    const e3 = (await bad.provision({ pipelineKey: 'p/1', jobId: 'j' }).catch((e) => e)) as grpc.ServiceError;
    bad.close();
    expect(e3.code).toBe(grpc.status.UNAUTHENTICATED);
    const junk = await fetch(`${server.info.http}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${acmeToken}`, 'content-type': 'application/json' },
      body: '{not json'
    });
    expect(junk.status).toBe(400);
    expect((await fetch(`${server.info.http}/healthz`)).status).toBe(200);
    expect(fs.existsSync(CLI)).toBe(true);
  });
});
