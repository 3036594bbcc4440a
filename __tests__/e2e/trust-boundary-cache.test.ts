// Issue 9, findings 1 and 2, tried as an attacker against the real `buildcloud serve`, real builders and the real
// registry behind the registry proxy: a lease may write only its own export ref, read only its project's cache,
// gets a tag of its own whatever its branch is called, and never joins another project's builder. Each refusal
// has its control beside it (the lease's own export ref pushes; one project's jobs still share a builder).
// Pushes go through Debian's docker 20.10 client with the lease's env; raw HTTP where the CLI cannot say it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, docker, dockerEnvFor, registryRequest, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import type { LeaseMsg } from '../../src/contract/grpc';

const MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';

let server: ServerProcess;
let acme: TestClient;
let work: string;
let context: string;
const leases: LeaseMsg[] = [];

function identity(project: string, branch: string): object {
  return { provider: 'github', project, branch, defaultBranch: 'main', actor: 'mallory' };
}

async function lease(project: string, branch: string, pipelineKey: string, jobId = 'build'): Promise<LeaseMsg> {
  const l = await acme.provision({ pipelineKey, jobId, identity: identity(project, branch) });
  leases.push(l);
  return l;
}

// Raw registry API call through the proxy with the lease's own registry credentials.
async function registry(
  l: LeaseMsg,
  method: string,
  repoPath: string,
  init: { body?: string; contentType?: string } = {}
): Promise<{ status: number; body: string; digest: string }> {
  const r = l.cache!.registry!;
  const headers: Record<string, string> = {
    authorization: `Basic ${Buffer.from(`${r.username}:${r.password}`).toString('base64')}`,
    accept: MANIFEST_V2
  };
  if (init.contentType) headers['content-type'] = init.contentType;
  const res = await registryRequest(server.info, `https://${r.host}/v2/${repoPath}`, { method, headers, body: init.body });
  return { status: res.status, body: res.body, digest: String(res.headers['docker-content-digest'] ?? '') };
}

// "host/acme/acme/app/cache:main" → { repo: "acme/acme/app/cache", tag: "main" }
function split(ref: string): { repo: string; tag: string } {
  const noHost = ref.slice(server.info.registry.length + 1);
  const i = noHost.lastIndexOf(':');
  return { repo: noHost.slice(0, i), tag: noHost.slice(i + 1) };
}

function buildAndTag(l: LeaseMsg, dir: string, tags: string[]): NodeJS.ProcessEnv {
  const env = dockerEnvFor(l, path.join(work, dir));
  const built = docker(['build', '--progress=plain', ...tags.flatMap((t) => ['-t', t]), '.'], env, context);
  if (built.status !== 0) throw new Error(`docker build failed:\n${built.out}`);
  return env;
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-trust-cache-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s']);
  acme = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
  context = path.join(work, 'ctx');
  fs.mkdirSync(context);
  await makeBusyboxContext(context, 'RUN echo trusted > /release.txt');
});

afterAll(async () => {
  for (const l of leases) await acme.release(l.id).catch(() => undefined);
  acme?.close();
  expect(await server?.stop()).toBe(0);
  fs.rmSync(work, { recursive: true, force: true });
});

describe('what a lease may write and read in the org cache', () => {
  let mainRef = '';
  let mainDigest = '';

  test("control: the default branch's lease pushes its own export ref (cache:main) with docker push", async () => {
    const l = await lease('acme/app', 'main', 'app/run-main/1');
    mainRef = l.cache!.exportRef;
    expect(mainRef).toBe(`${server.info.registry}/acme/acme/app/cache:main`);
    const env = buildAndTag(l, 'main', [mainRef]);
    const pushed = docker(['push', mainRef], env);
    expect(pushed.out).toMatch(/digest: sha256:/);
    expect(pushed.status).toBe(0);
    const { repo, tag } = split(mainRef);
    mainDigest = (await registry(l, 'HEAD', `${repo}/manifests/${tag}`)).digest;
    expect(mainDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  test('a feature-x lease pushing to cache:main is refused (403 DENIED naming its own ref); its own export ref pushes', async () => {
    expect(mainDigest).not.toBe('');
    const l = await lease('acme/app', 'feature-x', 'app/run-feature/1');
    const own = l.cache!.exportRef;
    expect(own).toBe(`${server.info.registry}/acme/acme/app/cache:feature-x`);
    expect(l.cache!.importRefs).toEqual([own, mainRef]);
    const env = buildAndTag(l, 'feature-x', [own, mainRef]);

    // Control: the lease's own export ref, docker push through the proxy.
    const ok = docker(['push', own], env);
    expect(ok.out).toMatch(/digest: sha256:/);
    expect(ok.status).toBe(0);

    // The attack with the real CLI: the same image, tagged as the default branch's cache.
    const attack = docker(['push', mainRef], env);
    expect(attack.status).not.toBe(0);
    expect(attack.out).toContain(`this lease may write only "${own}"`);

    // The same attack in raw HTTP: the lease's own (valid) manifest PUT onto tag main.
    const { repo, tag } = split(own);
    const manifest = await registry(l, 'GET', `${repo}/manifests/${tag}`);
    expect(manifest.status).toBe(200);
    const put = await registry(l, 'PUT', `${repo}/manifests/main`, { body: manifest.body, contentType: MANIFEST_V2 });
    expect(put.status).toBe(403);
    expect(JSON.parse(put.body).errors[0]).toEqual({
      code: 'DENIED',
      message: `PUT ${repo}/manifests/main is denied: this lease may write only "${own}" (its export ref) and "${l.cache!.repository}/<scope>:feature-x" (its cache scopes)`
    });
    // Control in raw HTTP: the same manifest onto its own tag is accepted.
    expect((await registry(l, 'PUT', `${repo}/manifests/${tag}`, { body: manifest.body, contentType: MANIFEST_V2 })).status).toBe(201);
    // Nor may it delete the default branch's manifest by digest (same repository).
    expect((await registry(l, 'DELETE', `${repo}/manifests/${mainDigest}`)).status).toBe(403);

    // cache:main is still what the main branch pushed.
    expect((await registry(l, 'HEAD', `${repo}/manifests/main`)).digest).toBe(mainDigest);
  });

  test("a lease of acme/app cannot push to, or read, acme/other-project's cache; other-project's own lease can", async () => {
    const other = await lease('acme/other-project', 'main', 'other/run/1');
    const otherRef = other.cache!.exportRef;
    expect(otherRef).toBe(`${server.info.registry}/acme/acme/other-project/cache:main`);
    const { repo: otherRepo } = split(otherRef);

    const l = await lease('acme/app', 'main', 'app/run-cross/1');
    const env = buildAndTag(l, 'cross', [otherRef]);
    const attack = docker(['push', otherRef], env);
    expect(attack.status).not.toBe(0);
    expect(attack.out).toContain(`this lease may write only "${l.cache!.exportRef}"`);

    const upload = await registry(l, 'POST', `${otherRepo}/blobs/uploads/`);
    expect(upload.status).toBe(403);
    expect(JSON.parse(upload.body).errors[0].code).toBe('DENIED');
    expect(JSON.parse(upload.body).errors[0].message).toContain(`this lease may write only "${l.cache!.exportRef}"`);
    const read = await registry(l, 'GET', `${otherRepo}/manifests/main`);
    expect(read.status).toBe(403);
    expect(JSON.parse(read.body).errors[0].message).toContain('may read only its cache refs\' repositories ("acme/acme/app/cache")');

    // The key of the step fingerprints: one per project, so acme/app's leases cannot read other-project's.
    const again = await lease('acme/app', 'feature-x', 'app/run-cross/2');
    expect(Buffer.from(l.cache!.fingerprintKey!, 'base64url')).toHaveLength(32);
    expect(again.cache!.fingerprintKey).toBe(l.cache!.fingerprintKey);
    expect(other.cache!.fingerprintKey).not.toBe(l.cache!.fingerprintKey);

    // Control: other-project's own lease pushes its own cache.
    const envOther = buildAndTag(other, 'other', [otherRef]);
    const ok = docker(['push', otherRef], envOther);
    expect(ok.out).toMatch(/digest: sha256:/);
    expect(ok.status).toBe(0);
  });

  test("a fork's lease pushes nothing, not even its own branch's tag", async () => {
    const l = await acme.provision({ pipelineKey: 'app/run-fork/1', jobId: 'build', identity: { ...identity('acme/app', 'patch-1'), fork: true } });
    leases.push(l);
    expect(l.cache!.exportRef).toBe('');
    const { repo } = split(mainRef);
    const put = await registry(l, 'POST', `${repo}/blobs/uploads/`);
    expect(put.status).toBe(403);
    expect(JSON.parse(put.body).errors[0].code).toBe('DENIED');
    expect((await registry(l, 'HEAD', `${repo}/manifests/main`)).status).toBe(200); // reads
  });
});

describe('cache scopes (issue 11): any scope of its own project, at its own branch tag, nothing else', () => {
  test('control: a lease pushes its own scope at its branch tag, and an upload tag of its own, promoted to the branch tag', async () => {
    const l = await lease('acme/app', 'feature-s', 'app/run-scope/1');
    const repo = l.cache!.repository!;
    expect(repo).toBe(`${server.info.registry}/acme/acme/app/cache`);
    expect(l.cache!.importTags).toEqual(['feature-s', 'main']);
    expect(l.cache!.exportTag).toBe('feature-s');
    expect(l.cache!.uploadPrefix).toBe(`bcup-${l.id}-`);
    const upload = `${repo}/api:${l.cache!.uploadPrefix}0123456789ab`;
    const env = buildAndTag(l, 'scope-own', [`${repo}/api:feature-s`, upload]);
    const ok = docker(['push', `${repo}/api:feature-s`], env);
    expect(ok.out).toMatch(/digest: sha256:/);
    expect(ok.status).toBe(0);
    const up = docker(['push', upload], env);
    expect(up.status).toBe(0);
    const digest = /digest: (sha256:[0-9a-f]{64})/.exec(up.out)![1];
    // Promoted by the proxy before the push returned: the scope's branch tag holds the upload's manifest.
    const { repo: scopeRepo } = split(`${repo}/api:feature-s`);
    expect((await registry(l, 'HEAD', `${scopeRepo}/manifests/feature-s`)).digest).toBe(digest);
  });

  test("refused: another branch's tag, another lease's upload tag, another project's scope, a nested project's cache, another org's repository", async () => {
    const l = await lease('acme/app', 'feature-s', 'app/run-scope-attack/1');
    const victim = await lease('acme/app', 'feature-v', 'app/run-scope-victim/1');
    const repo = l.cache!.repository!;
    const env = buildAndTag(l, 'scope-attack', [`${repo}/api:main`, `${repo}/api:feature-s`]);
    expect(docker(['push', `${repo}/api:feature-s`], env).status).toBe(0); // control
    // The real CLI: the default branch's tag of a scope.
    const attack = docker(['push', `${repo}/api:main`], env);
    expect(attack.status).not.toBe(0);
    expect(attack.out).toContain(`(its cache scopes)`);

    const { repo: scopeRepo } = split(`${repo}/api:x`);
    const manifest = await registry(l, 'GET', `${scopeRepo}/manifests/feature-s`);
    expect(manifest.status).toBe(200);
    const put = (name: string, tag: string) => registry(l, 'PUT', `${name}/manifests/${tag}`, { body: manifest.body, contentType: MANIFEST_V2 });
    const denied = async (name: string, tag: string, why: RegExp) => {
      const r = await put(name, tag);
      expect({ name, tag, status: r.status }).toEqual({ name, tag, status: 403 });
      expect(JSON.parse(r.body).errors[0].message).toMatch(why);
    };
    const writeOnly = /this lease may write only .*\(its cache scopes\)/;
    await denied(scopeRepo, 'main', writeOnly);
    await denied(scopeRepo, `${victim.cache!.uploadPrefix}0123456789ab`, writeOnly);
    await denied(scopeRepo, `${l.cache!.uploadPrefix}main`, writeOnly);
    await denied('acme/acme/other-project/cache/api', 'feature-s', writeOnly);
    await denied('acme/acme/app/cache/cache', 'feature-s', writeOnly); // project "acme/app/cache"'s unscoped cache
    await denied('acme/acme/app/cache/cache/api', 'feature-s', writeOnly); // project "acme/app/cache"'s scope
    await denied('globex/acme/app/cache/api', 'feature-s', /may only use repositories under "acme\/"/);
    // Control: the same manifest onto its own scope and tag.
    expect((await put(scopeRepo, 'feature-s')).status).toBe(201);
    // A stage scope of its own is let through to the registry, which answers for itself (its blobs are not there).
    const stage = await put('acme/acme/app/cache/web__deps', 'feature-s');
    expect({ status: stage.status, code: JSON.parse(stage.body).errors[0].code }).toEqual({ status: 400, code: 'MANIFEST_BLOB_UNKNOWN' });
  });

  test('a fork reads the scopes and writes none', async () => {
    const l = await acme.provision({ pipelineKey: 'app/run-scope-fork/1', jobId: 'build', identity: { ...identity('acme/app', 'patch-2'), fork: true } });
    leases.push(l);
    expect(l.cache!.exportTag).toBe('');
    expect(l.cache!.uploadPrefix).toBe('');
    expect((await registry(l, 'HEAD', 'acme/acme/app/cache/api/manifests/feature-s')).status).toBe(200);
    const r = await registry(l, 'PUT', 'acme/acme/app/cache/api/manifests/patch-2', { body: '{}', contentType: MANIFEST_V2 });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).errors[0].message).toMatch(/read-only|may not write/);
  });
});

describe('branch names map to tags injectively', () => {
  test('branches "main!", "main@" and "main+" each get a tag of their own, never "main"; "main!" cannot write main', async () => {
    const refs: string[] = [];
    for (const branch of ['main!', 'main@', 'main+']) {
      const l = await lease('acme/app', branch, `app/run-${encodeURIComponent(branch)}/1`);
      const { tag } = split(l.cache!.exportRef);
      expect(tag).toMatch(/^main-[0-9a-f]{12}$/);
      refs.push(l.cache!.exportRef);
      if (branch === 'main!') {
        const { repo } = split(l.cache!.exportRef);
        const put = await registry(l, 'PUT', `${repo}/manifests/main`, { body: '{}', contentType: MANIFEST_V2 });
        expect(put.status).toBe(403);
        expect(JSON.parse(put.body).errors[0].message).toContain(`may write only "${l.cache!.exportRef}"`);
      }
    }
    expect(new Set(refs).size).toBe(3);
  });
});

describe('builder sharing is bound to the project', () => {
  test('two projects sending one pipeline key get different builders; two jobs of one project share (control)', async () => {
    const key = '123456/987654/1'; // a GitHub repository_id/run_id/attempt, as seen in a run URL
    const victim = await lease('acme/app', 'main', key, 'build');
    const intruder = await lease('acme/other-project', 'main', key, 'build');
    expect(intruder.builders[0].builderId).not.toBe(victim.builders[0].builderId);
    expect(intruder.builders[0].shared).toBe(false);
    expect(intruder.builders[0].address).not.toBe(victim.builders[0].address);

    const sibling = await lease('acme/app', 'main', key, 'test');
    expect(sibling.builders[0].builderId).toBe(victim.builders[0].builderId);
    expect(sibling.builders[0].shared).toBe(true);
  });
});
