// Issue 9, findings 5, 6 and 7, tried as an attacker against the real `buildcloud serve` (the bundled CLI), real
// builders and a real OIDC issuer on loopback (discovery document + JWKS over HTTP, GitLab id_token claims):
// - ExchangeToken gives one generic answer to a token from an untrusted namespace, an unsigned token, a token
//   signed by another key and a token of an unknown issuer, and names no org or namespace; the detail is in the log.
// - An access token stops working at the next request after its trust rule is removed.
// - `serve --host <this host's address>` without TLS does not start; with --insecure it warns at every start.
// - A 900 KB identity.actor is refused naming the field and its limit.
// Each refusal has its accepted control beside it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { UnsecuredJWT, type JWTPayload } from 'jose';
import { ApiClient, ControlPlaneError } from '../../src/core/api-client';
import type { LeaseMsg } from '../../src/contract/grpc';
import { Pki } from '../../src/server/pki';
import { OIDC_REFUSAL } from '../../src/server/oidc';
import { buildCompletedEvent } from '../../src/contract/metering-events';
import { adminSetup, cli, startServer, TestClient, waitFor, type ServerProcess } from '../helpers/server';
import { gitlabClaims, LocalIssuer, newIssuerKey } from '../helpers/oidc-issuer';

// A GitLab id_token of a job in <namespace>/widget-api, from the local issuer (CI-REFERENCE.md §3).
const claims = (namespace: string, o: JWTPayload = {}): JWTPayload => {
  const now = Math.floor(Date.now() / 1000);
  return { iss: issuer.issuer, iat: now, nbf: now - 5, exp: now + 300, ...gitlabClaims(namespace, 'widget-api', o) };
};

let issuer: LocalIssuer;
let server: ServerProcess;
let acmeRule: number;
const leases: Array<{ client: TestClient; lease: LeaseMsg }> = [];
const clients: Array<{ close(): void }> = [];

type Ident = { provider: string; project: string; branch: string; defaultBranch: string; fork: boolean; actor: string; runUrl: string };
const identity = (actor = 'mallory', o: Partial<Ident> = {}): Ident => ({
  provider: 'gitlab',
  project: 'acme-group/widget-api',
  branch: 'main',
  defaultBranch: 'main',
  fork: false,
  actor,
  runUrl: '',
  ...o
});

async function exchange(oidcToken: string, org = ''): Promise<{ accessToken: string; org: string } | ControlPlaneError> {
  const api = new ApiClient({ endpoint: server.info.grpc, attempts: 1, deadlineMs: 20_000 });
  clients.push(api);
  return api.exchangeToken(oidcToken, org).catch((e: ControlPlaneError) => e);
}

async function provision(token: string, pipelineKey: string, actor?: string, o: Partial<Ident> = {}): Promise<LeaseMsg> {
  const client = new TestClient(server.info.grpc, token);
  clients.push(client);
  const lease = await client.provision({ pipelineKey, jobId: 'build', identity: identity(actor, o) });
  leases.push({ client, lease });
  return lease;
}

function trustAdd(org: string, namespace: string): number {
  const r = cli(['admin', 'trust', 'add', '--org', org, '--gitlab-namespace', namespace, '--issuer', issuer.issuer, '--state-dir', server.stateDir, '--json']);
  if (r.status !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as { id: number }).id;
}

beforeAll(async () => {
  issuer = await new LocalIssuer(await newIssuerKey('gl-1'), '/gitlab').start();
  server = await startServer(['--insecure-oidc-issuers', '--warm-pool', '0', '--grace', '1s', '--idle-timeout', '60s']);
  adminSetup(server.stateDir, 'acme', 1000);
  adminSetup(server.stateDir, 'beta', 1000);
  acmeRule = trustAdd('acme', 'acme-group');
  // Another org's rule on the same issuer: nothing of it may reach a caller.
  trustAdd('beta', 'beta-secret-ns');
});

afterAll(async () => {
  for (const { client, lease } of leases) await client.release(lease.id).catch(() => undefined);
  for (const c of clients) c.close();
  expect(await server?.stop()).toBe(0);
  await issuer?.stop();
});

describe('ExchangeToken tells an outsider nothing (finding 5)', () => {
  test('control: a token of the trusted namespace exchanges, and the access token provisions', async () => {
    const res = await exchange(await issuer.sign(claims('acme-group')));
    if (res instanceof Error) throw res;
    expect(res.org).toBe('acme');
    const lease = await provision(res.accessToken, 'gl/4821/1001');
    expect(lease.org).toBe('acme');
  });

  test('untrusted namespace, unsigned, signed by another key, unknown issuer: all one generic PERMISSION_DENIED', async () => {
    const forger = await newIssuerKey('gl-1'); // the issuer's kid, another key
    const attempts: Array<[string, string, string?]> = [
      ['untrusted namespace', await issuer.sign(claims('evil-group'))],
      ['untrusted namespace, asking for org beta', await issuer.sign(claims('evil-group')), 'beta'],
      ["acme's namespace, asking for org beta", await issuer.sign(claims('acme-group')), 'beta'],
      ['unknown org', await issuer.sign(claims('acme-group')), 'nobody'],
      ['unsigned (alg none)', new UnsecuredJWT(claims('acme-group')).encode()],
      ['unsigned, asking for org beta', new UnsecuredJWT(claims('beta-secret-ns')).encode(), 'beta'],
      ['signed by another key', await issuer.sign(claims('acme-group'), forger)],
      ['signed by another key, asking for org beta', await issuer.sign(claims('beta-secret-ns'), forger), 'beta'],
      ['unknown issuer', await issuer.sign(claims('acme-group', { iss: 'https://gitlab.attacker.example' }))],
      ['wrong audience', await issuer.sign(claims('acme-group', { aud: 'https://gitlab.com' }))]
    ];
    for (const [what, token, org] of attempts) {
      const res = await exchange(token, org);
      expect([what, res instanceof ControlPlaneError]).toEqual([what, true]);
      const err = res as ControlPlaneError;
      expect([what, err.code, err.details]).toEqual([what, grpc.status.PERMISSION_DENIED, OIDC_REFUSAL]);
    }
    // The one answer names the fix and nothing of the trust table.
    expect(OIDC_REFUSAL).toContain('buildcloud admin trust add');
    for (const secret of ['acme', 'beta', 'acme-group', 'beta-secret-ns', issuer.issuer]) expect(OIDC_REFUSAL).not.toContain(secret);
  });

  test("the server's log keeps the detail (which rule, which claim) at warn", async () => {
    await exchange(await issuer.sign(claims('evil-group')));
    const line = await waitFor('the refusal in the log', async () =>
      server
        .stderr()
        .split('\n')
        .find((l) => l.includes('oidc token refused') && l.includes('evil-group'))
    );
    const entry = JSON.parse(line) as { level: number; reason: string; detail: string };
    expect(entry.level).toBe(40); // pino warn
    expect(entry.reason).toBe('claim_mismatch');
    expect(entry.detail).toContain(`rule #${acmeRule} of org "acme" expects namespace_path="acme-group"`);
    expect(entry.detail).toContain('namespace_path="evil-group"');
  });

  test('an access token stops working at the next request once its trust rule is removed', async () => {
    const rule = trustAdd('acme', 'acme-other');
    const res = await exchange(await issuer.sign(claims('acme-other')));
    if (res instanceof Error) throw res;
    const own = { project: 'acme-other/widget-api' }; // the project its token's claims name
    await provision(res.accessToken, 'gl/4821/1002', undefined, own); // control: works while the rule exists
    const removed = cli(['admin', 'trust', 'remove', String(rule), '--state-dir', server.stateDir]);
    expect(removed.status).toBe(0);
    const err = (await provision(res.accessToken, 'gl/4821/1002', undefined, own).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    // And a fresh exchange for that namespace is refused like any other.
    const again = (await exchange(await issuer.sign(claims('acme-other')))) as ControlPlaneError;
    expect([again.code, again.details]).toEqual([grpc.status.PERMISSION_DENIED, OIDC_REFUSAL]);
  });
});

// Findings 1 and 2 once more, with the identity a job claims: the credential, not the request, decides.
describe('identity that chooses scope is verified', () => {
  // Each lease of a new pipeline holds a builder: release them as each test ends, as a CI job's report step would,
  // so the org stays inside its default share of the pool (--org-max-builders).
  afterEach(async () => {
    for (const { client, lease } of leases.splice(0)) await client.release(lease.id).catch(() => undefined);
  });
  const access = async (o: JWTPayload): Promise<string> => {
    const res = await exchange(await issuer.sign(claims('acme-group', o)));
    if (res instanceof Error) throw res;
    return res.accessToken;
  };
  const feature = { ref: 'feature-x', ref_protected: 'false', sub: 'project_path:acme-group/widget-api:ref_type:branch:ref:feature-x' };
  const denied = async (token: string, o: Partial<Ident>): Promise<grpc.ServiceError> =>
    (await provision(token, 'gl/4821/3001', undefined, o).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;

  test("a feature-x job's OIDC token cannot claim another project, nor main; its own identity gets its own ref", async () => {
    const token = await access(feature);
    const other = await denied(token, { project: 'acme-group/billing', branch: 'feature-x' });
    expect([other.code, other.details]).toEqual([
      grpc.status.PERMISSION_DENIED,
      "identity.project 'acme-group/billing' is not the project of this job's OIDC token ('acme-group/widget-api'): a job provisions only for its own project."
    ]);
    const main = await denied(token, { branch: 'main' });
    expect(main.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(main.details).toMatch(/identity\.branch 'main' is not the branch of this job's OIDC token \('feature-x'\)/);
    // Control: the request may leave project and branch out; the claims fill them in.
    const lease = await provision(token, 'gl/4821/3002', undefined, { project: '', branch: '' });
    expect(lease.cache?.exportRef).toBe(`${server.info.registry}/acme/acme-group/widget-api/cache:feature-x`);
  });

  test('main from a merge request pipeline (ref unprotected) gets a read-only lease and is told why; a protected push on main writes main', async () => {
    const mr = await access({ pipeline_source: 'merge_request_event', ref_protected: 'false' });
    const ro = await provision(mr, 'gl/4821/3003');
    expect(ro.cache?.exportRef).toBe('');
    expect(ro.cache?.importRefs).toEqual([`${server.info.registry}/acme/acme-group/widget-api/cache:main`]);
    expect(ro.cache?.readOnlyReason).toMatch(/'main' is a protected branch and this is a merge request pipeline/);
    const push = await access({});
    const rw = await provision(push, 'gl/4821/3004');
    expect(rw.cache?.exportRef).toBe(`${server.info.registry}/acme/acme-group/widget-api/cache:main`);
  });

  test("another project's OIDC job sending the same pipeline key never joins the first one's builder", async () => {
    const a = await provision(await access({}), 'gl/shared/1');
    const b = await provision(await access({ project_path: 'acme-group/billing' }), 'gl/shared/1', undefined, { project: 'acme-group/billing' });
    const a2 = await provision(await access({}), 'gl/shared/1');
    expect(b.builders[0].builderId).not.toBe(a.builders[0].builderId);
    expect(a2.builders[0].builderId).toBe(a.builders[0].builderId); // control: the same project shares
  });

  test("a pull request's read-only job sending main's pipeline key gets a builder of its own, and cannot release main's lease", async () => {
    const main = await provision(await access({}), 'gl/4821/4001');
    const mrToken = await access({ pipeline_source: 'merge_request_event', ref_protected: 'false' });
    const mr = await provision(mrToken, 'gl/4821/4001');
    expect(mr.cache?.exportRef).toBe('');
    // Sharing main's builder would let it tag images that main's build then uses and pushes to cache:main.
    expect(mr.builders[0].builderId).not.toBe(main.builders[0].builderId);
    const mrClient = new TestClient(server.info.grpc, mrToken);
    clients.push(mrClient);
    const err = (await mrClient.release(main.id).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    // Control: a second job of main's pipeline shares main's builder.
    const main2 = await provision(await access({}), 'gl/4821/4001');
    expect(main2.builders[0].builderId).toBe(main.builders[0].builderId);
  });

  test("another project's job cannot release or even see a lease of this project (lease ids are in CI logs)", async () => {
    const victim = await provision(await access({}), 'gl/4821/3011');
    const intruder = new TestClient(server.info.grpc, await access({ project_path: 'acme-group/billing' }));
    clients.push(intruder);
    for (const call of [() => intruder.release(victim.id), () => intruder.get(victim.id)]) {
      const err = (await call().catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect([err.code, err.details]).toEqual([grpc.status.NOT_FOUND, `Lease '${victim.id}' not found for org 'acme'.`]);
    }
    // Control: its own project's token sees it, and it is still active.
    const own = new TestClient(server.info.grpc, await access({}));
    clients.push(own);
    expect((await own.get(victim.id)).state).toBe('LEASE_STATE_ACTIVE');
  });

  test("another project's job cannot post usage records for this project's lease: deferred, not stored; its own are accepted", async () => {
    const ownToken = await access({});
    const victim = await provision(ownToken, 'gl/4821/3012');
    const intruderToken = await access({ project_path: 'acme-group/billing' });
    const record = (buildId: string) =>
      buildCompletedEvent(
        'acme',
        {
          lease_id: victim.id,
          build_id: buildId,
          platform: 'linux/amd64',
          status: 'success',
          duration_ms: 1000,
          total_steps: 5,
          cached_steps: 5,
          actor: 'mallory'
        },
        { source: '/buildcloud/gitlab' }
      );
    const post = async (token: string, ev: object) => {
      const r = await fetch(`${server.info.http}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/cloudevents-batch+json' },
        body: JSON.stringify([ev])
      });
      expect(r.status).toBe(200);
      return (await r.json()) as { accepted: number; deferred: number; results: Array<{ status: string; reason?: string }> };
    };
    const forged = await post(intruderToken, record('forged-1'));
    expect(forged).toMatchObject({ accepted: 0, deferred: 1 });
    expect(forged.results[0].reason).toMatch(/is a lease this credential did not provision/);
    // Control: the lease's own project sends its record.
    expect(await post(ownToken, record('real-1'))).toMatchObject({ accepted: 1, deferred: 0 });
  });

  test('scoped org tokens: --project and --branches bound the request; a protected branch is written only when named', async () => {
    const mint = (...args: string[]): string => {
      const r = cli(['admin', 'token', 'create', '--org', 'acme', '--state-dir', server.stateDir, ...args]);
      if (r.status !== 0) throw new Error(r.stderr);
      return r.stdout.trim();
    };
    const features = mint('--project', 'acme-group/widget-api', '--branches', '*');
    const outside = await denied(features, { project: 'acme-group/billing', branch: 'feature-x' });
    expect([outside.code, outside.details]).toEqual([
      grpc.status.PERMISSION_DENIED,
      "identity.project 'acme-group/billing' is outside this token's projects (acme-group/widget-api)."
    ]);
    // A trailing or leading slash names the same project: an exclusion holds against it.
    const notSecret = mint('--project', 'acme-group/*,!acme-group/secret', '--branches', '*');
    for (const project of ['acme-group/secret', 'acme-group/secret/', '/acme-group/Secret']) {
      const e = await denied(notSecret, { project, branch: 'feature-x' });
      expect(e.code).toBe(grpc.status.PERMISSION_DENIED);
    }
    // '*' covers main, but a wildcard does not name a protected branch: read-only there, writes elsewhere.
    const onMain = await provision(features, 'gl/4821/3005');
    expect(onMain.cache?.exportRef).toBe('');
    expect(onMain.cache?.readOnlyReason).toMatch(/this token's --branches do not name it/);
    const onFeature = await provision(features, 'gl/4821/3006', undefined, { branch: 'feature-x' });
    expect(onFeature.cache?.exportRef).toBe(`${server.info.registry}/acme/acme-group/widget-api/cache:feature-x`);
    // The release token names main: it writes it.
    const release = mint('--project', 'acme-group/widget-api', '--branches', 'main');
    expect((await provision(release, 'gl/4821/3007')).cache?.exportRef).toBe(`${server.info.registry}/acme/acme-group/widget-api/cache:main`);
    const notMain = await denied(release, { branch: 'feature-x' });
    expect(notMain.details).toBe("identity.branch 'feature-x' is outside this token's branches (main).");
    // --read-only: never writes.
    const ro = mint('--read-only');
    const roLease = await provision(ro, 'gl/4821/3008', undefined, { branch: 'feature-x' });
    expect([roLease.cache?.exportRef, roLease.cache?.readOnlyReason]).toEqual(['', 'the credential is read-only']);
    // token list says what each can do, never a secret.
    const list = cli(['admin', 'token', 'list', '--org', 'acme', '--state-dir', server.stateDir]);
    expect(list.stdout).toContain('projects acme-group/widget-api; branches main');
    expect(list.stdout).toContain('projects any; branches any; read-only');
    for (const t of [features, release, ro]) expect(list.stdout).not.toContain(t.split('_')[2]);
  });

  test('an org can protect more branches: release/* from a merge request is then read-only', async () => {
    const set = cli(['admin', 'org', 'set', '--org', 'acme', '--protected-branches', 'main,release/*', '--state-dir', server.stateDir]);
    expect(set.stdout).toContain('protected branches main, release/*');
    const rel = { ref: 'release/2', pipeline_source: 'merge_request_event', sub: 'project_path:acme-group/widget-api:ref_type:branch:ref:release/2' };
    const lease = await provision(await access(rel), 'gl/4821/3009', undefined, { branch: 'release/2' });
    expect(lease.cache?.exportRef).toBe('');
    const reset = cli(['admin', 'org', 'set', '--org', 'acme', '--protected-branches', 'default', '--state-dir', server.stateDir]);
    expect(reset.stdout).toContain('protected branches main, master');
    const again = await provision(await access(rel), 'gl/4821/3010', undefined, { branch: 'release/2' });
    expect(again.cache?.exportRef).toMatch(/cache:release-2-[0-9a-f]{12}$/);
  });

  test("a token that names no project (none of the three CIs' claims) is refused at exchange, saying so", async () => {
    const bare = {
      iss: issuer.issuer,
      aud: 'buildcloud',
      sub: 'x',
      namespace_path: 'acme-group',
      iat: Math.floor(Date.now() / 1000),
      exp: Math.floor(Date.now() / 1000) + 300
    };
    const res = (await exchange(await issuer.sign(bare))) as ControlPlaneError;
    expect(res.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(res.details).toMatch(/This GitLab OIDC token names no project \(claim project_path\)/);
  });
});

describe('identity fields are bounded (finding 7)', () => {
  test('a 900 KB actor is refused naming identity.actor and its limit; control: a normal actor is accepted', async () => {
    const token = adminSetup(server.stateDir, 'gamma', 1000);
    const big = 'm'.repeat(900 * 1024);
    const err = (await provision(token, 'gl/4821/2001', big).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/^Invalid identity\.actor: 921600 characters, the limit is 255 /);
    expect(err.details.length).toBeLessThan(400);
    const ok = await provision(token, 'gl/4821/2001', 'mallory');
    expect(ok.org).toBe('gamma');
  });
});

describe('TLS by default off loopback (finding 6)', () => {
  // This host's own non-loopback address (what an operator would pass to reach it from other machines).
  const address =
    Object.values(os.networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal)?.address ?? '0.0.0.0';
  const quick = ['--driver', 'none', '--warm-pool', '0'];
  const started: ServerProcess[] = [];
  afterAll(async () => {
    // Only those still running: stop() waits for an exit that a process already gone (e.g. killed) never sends.
    for (const s of started) if (s.proc.exitCode === null && s.proc.signalCode === null) await s.stop();
  });

  test(`serve --host ${address} without TLS refuses to start, naming --tls-cert, --tls-key and --insecure`, async () => {
    const err = (await startServer(['--host', address, ...quick]).catch((e: Error) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/exited \(1\) before it was ready/);
    expect(err.message).toContain(`Refusing to listen on ${address} without TLS`);
    for (const flag of ['--tls-cert', '--tls-key', '--insecure']) expect(err.message).toContain(flag);
  });

  test('control: with --insecure it starts, and warns at every start', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-insecure-'));
    for (let i = 0; i < 2; i++) {
      const s = await startServer(['--host', address, '--insecure', ...quick], dir);
      started.push(s);
      expect(s.info.grpc).toBe(`${address}:${s.info.grpc.split(':').pop()}`);
      await waitFor('the warning', async () => s.stderr().includes('WARNING: serving gRPC and HTTP WITHOUT TLS on a non-loopback address (--insecure)'));
      expect(await s.stop()).toBe(0);
    }
  });

  test('control: with --tls-cert/--tls-key it starts, serving grpcs', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-tls-host-'));
    const pki = await Pki.loadOrCreate(path.join(dir, 'operator-ca'));
    const cert = await pki.issueServer([address]);
    fs.writeFileSync(path.join(dir, 'server.pem'), cert.certPem);
    fs.writeFileSync(path.join(dir, 'server-key.pem'), cert.keyPem, { mode: 0o600 });
    const s = await startServer(['--host', address, '--tls-cert', path.join(dir, 'server.pem'), '--tls-key', path.join(dir, 'server-key.pem'), ...quick]);
    started.push(s);
    expect(s.info.grpc).toMatch(/^grpcs:\/\//);
    expect(s.stderr()).not.toContain('WITHOUT TLS');
  });

  test('a --registry URL with a password is never echoed', async () => {
    const err = (await startServer(['--registry', 'ftp://cache-bot:hunter2-s3cret@registry.example.com', ...quick]).catch((e: Error) => e)) as Error;
    expect(err.message).toContain("Invalid --registry 'ftp://cache-bot:***@registry.example.com'");
    expect(err.message).not.toContain('hunter2');
  });
});
