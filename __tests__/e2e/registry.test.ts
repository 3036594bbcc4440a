// The org cache for real: Debian's docker-registry behind the RegistryProxy, driven by skopeo and raw HTTP.
// Needs the Debian packages docker-registry and skopeo; without them this FAILS (it does not skip).
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { adminSetup, docker, dockerEnvFor, startServer, TestClient, type ServerProcess } from '../helpers/server';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { DOCKER_CERTS_DIR, REGISTRY_TRUST_FILE } from '../../src/server/drivers/registry-trust';
import { EmbeddedRegistry, findRegistryBinary } from '../../src/server/registry';
import { Pki } from '../../src/server/pki';
import { RegistryPrincipal, RegistryProxy, registryProxyTls } from '../../src/server/registry-proxy';

const USERS: Record<string, { password: string; org: string }> = {
  'acme-ci': { password: 'acme-pass', org: 'acme' },
  'globex-ci': { password: 'globex-pass', org: 'globex' }
};
const ACME = 'acme-ci:acme-pass';
const GLOBEX = 'globex-ci:globex-pass';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

function which(bin: string): string | null {
  for (const d of (process.env.PATH ?? '').split(':').concat('/usr/bin')) {
    const p = path.join(d, bin);
    if (d && fs.existsSync(p)) return p;
  }
  return null;
}

// ---- a hand-made OCI image layout: config + gzip layers, no pulls needed ----
const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

function tarFile(name: string, content: Buffer): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, off: number, len: number): void => {
    h.write(s.slice(0, len), off, 'ascii');
  };
  const octal = (n: number, len: number): string => n.toString(8).padStart(len - 1, '0') + '\0';
  put(name, 0, 100);
  put(octal(0o644, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(content.length, 12), 124, 12);
  put(octal(0, 12), 136, 12);
  h.fill(' ', 148, 156); // checksum is computed with its own field as spaces
  put('0', 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  const pad = Buffer.alloc((512 - (content.length % 512)) % 512);
  return Buffer.concat([h, content, pad]);
}

interface Image {
  dir: string;
  manifestDigest: string;
  blobs: string[];
}

function writeBlob(dir: string, b: Buffer): { digest: string; size: number } {
  const hex = sha256(b);
  fs.writeFileSync(path.join(dir, 'blobs', 'sha256', hex), b);
  return { digest: `sha256:${hex}`, size: b.length };
}

function makeImage(dir: string, files: Array<Array<[string, Buffer]>>): Image {
  fs.mkdirSync(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layers = files.map((entries) => {
    const tar = Buffer.concat([...entries.map(([n, c]) => tarFile(n, c)), Buffer.alloc(1024)]);
    return { diffId: `sha256:${sha256(tar)}`, ...writeBlob(dir, gzipSync(tar)) };
  });
  const config = writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        config: {},
        rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) }
      })
    )
  );
  const manifest = writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size }))
      })
    )
  );
  fs.writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: OCI_MANIFEST, ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }]
    })
  );
  return { dir, manifestDigest: manifest.digest, blobs: [config.digest, ...layers.map((l) => l.digest)] };
}

// ---- processes and raw HTTP ----
function run(argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(argv[0], argv.slice(1), { env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}
function request(host: string, method: string, urlPath: string, creds: string | null, body?: Buffer, headers: http.OutgoingHttpHeaders = {}): Promise<Reply> {
  const u = new URL(urlPath, `https://${host}`);
  const auth = creds ? { authorization: 'Basic ' + Buffer.from(creds).toString('base64') } : {};
  return new Promise((resolve, reject) => {
    const req = https.request(
      { hostname: u.hostname, port: Number(u.port), ca: pki.caPem, method, path: u.pathname + u.search, headers: { ...auth, ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      }
    );
    req.on('error', reject);
    req.end(body);
  });
}
const errCode = (r: Reply): string => JSON.parse(r.body.toString('utf8')).errors[0].code;

let tmp: string;
let registry: EmbeddedRegistry;
let proxy: RegistryProxy;
let pki: Pki;
let certDir: string; // what skopeo trusts for the proxy: <dir>/ca.crt, the control plane's CA
let skopeo: string;
let env: NodeJS.ProcessEnv;
const skopeoArgs = (...a: string[]): string[] => [skopeo, '--insecure-policy', ...a];
const push = (img: Image, ref: string, creds: string) =>
  run(
    skopeoArgs('copy', '--preserve-digests', `--dest-creds=${creds}`, `--dest-cert-dir=${certDir}`, `oci:${img.dir}:latest`, `docker://${proxy.host}/${ref}`),
    env
  );

beforeAll(async () => {
  const registryBin = findRegistryBinary();
  const skopeoBin = which('skopeo');
  const missing = [registryBin ? '' : 'docker-registry', skopeoBin ? '' : 'skopeo'].filter(Boolean);
  if (missing.length) {
    throw new Error(`e2e registry test needs ${missing.join(' and ')}: install with \`apt-get install -y ${missing.join(' ')}\` (Debian packages)`);
  }
  skopeo = skopeoBin as string;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-registry-e2e-'));
  // skopeo must not pick up the host's credentials or registries config.
  env = { PATH: process.env.PATH, HOME: tmp, XDG_RUNTIME_DIR: tmp, REGISTRY_AUTH_FILE: path.join(tmp, 'auth.json') };
  registry = new EmbeddedRegistry({ dir: path.join(tmp, 'a-rather-long-state-directory-name-to-force-the-short-socket-path-fallback', 'registry') });
  await registry.start();
  pki = await Pki.loadOrCreate(path.join(tmp, 'pki'));
  certDir = path.join(tmp, 'certs');
  fs.mkdirSync(certDir);
  fs.writeFileSync(path.join(certDir, 'ca.crt'), pki.caPem);
  proxy = new RegistryProxy({
    upstream: { socketPath: registry.socketPath },
    tls: await registryProxyTls('127.0.0.1', pki), // TLS only: no plainHttpOnLoopback
    authenticate: async (u, p): Promise<RegistryPrincipal | null> => (USERS[u]?.password === p ? { org: USERS[u].org } : null)
  });
  await proxy.listen();
});

afterAll(async () => {
  await proxy?.close();
  await registry?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('embedded registry', () => {
  test('listens only on a private unix socket with a short path', () => {
    expect(Buffer.byteLength(registry.socketPath)).toBeLessThanOrEqual(100);
    expect(fs.statSync(registry.socketPath).isSocket()).toBe(true);
    expect(fs.statSync(path.dirname(registry.socketPath)).mode & 0o077).toBe(0);
  });

  test('an early exit rejects with the log tail', async () => {
    const bad = new EmbeddedRegistry({ dir: path.join(tmp, 'bad'), registryPath: '/bin/false' });
    await expect(bad.start()).rejects.toThrow(/exited with code 1 before it was ready/);
  });
});

describe('org cache through the proxy', () => {
  let imgA: Image;

  beforeAll(async () => {
    imgA = makeImage(path.join(tmp, 'img-a'), [[['hello.txt', Buffer.from('hello from acme\n')]]]);
    const r = await push(imgA, 'acme/app/cache:main', ACME);
    if (r.code !== 0) throw new Error(`skopeo push failed: ${r.stderr}`);
  });

  test('org A reads its image back (skopeo) with the same digests', async () => {
    const out = path.join(tmp, 'pulled-a');
    const r = await run(
      skopeoArgs(
        'copy',
        '--preserve-digests',
        `--src-creds=${ACME}`,
        `--src-cert-dir=${certDir}`,
        `docker://${proxy.host}/acme/app/cache:main`,
        `oci:${out}:main`
      ),
      env
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const index = JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8'));
    expect(index.manifests[0].digest).toBe(imgA.manifestDigest);
    for (const b of imgA.blobs) expect(fs.existsSync(path.join(out, 'blobs', 'sha256', b.slice(7)))).toBe(true);
  });

  test("org B gets 403 on org A's manifest and blobs, and on the catalog", async () => {
    const m = await request(proxy.host, 'GET', '/v2/acme/app/cache/manifests/main', GLOBEX, undefined, { accept: OCI_MANIFEST });
    expect(m.status).toBe(403);
    expect(errCode(m)).toBe('DENIED');
    for (const b of imgA.blobs) {
      const g = await request(proxy.host, 'GET', `/v2/acme/app/cache/blobs/${b}`, GLOBEX);
      expect(g.status).toBe(403);
      expect(errCode(g)).toBe('DENIED');
    }
    const c = await request(proxy.host, 'GET', '/v2/_catalog', GLOBEX);
    expect(c.status).toBe(403);
    expect((await request(proxy.host, 'GET', '/v2/_catalog', ACME)).status).toBe(403);
    // And the same through a real client.
    const s = await run(skopeoArgs('inspect', '--raw', `--creds=${GLOBEX}`, `--cert-dir=${certDir}`, `docker://${proxy.host}/acme/app/cache:main`), env);
    expect(s.code).not.toBe(0);
    expect(s.stderr).toMatch(/denied|403/i);
  });

  test("org B cannot mount org A's blob into its own repository by digest", async () => {
    const layer = imgA.blobs[1];
    const r = await request(proxy.host, 'POST', `/v2/globex/x/cache/blobs/uploads/?mount=${layer}&from=acme/app/cache`, GLOBEX);
    expect(r.status).toBe(202); // a fresh upload session, not 201 Created
    expect((await request(proxy.host, 'HEAD', `/v2/globex/x/cache/blobs/${layer}`, GLOBEX)).status).toBe(404);
    // Within the org, mounting works.
    const own = await request(proxy.host, 'POST', `/v2/acme/other/cache/blobs/uploads/?mount=${layer}&from=acme/app/cache`, ACME);
    expect(own.status).toBe(201);
  });

  test('a wrong password gets 401 with a Basic challenge', async () => {
    const r = await request(proxy.host, 'GET', '/v2/acme/app/cache/manifests/main', 'acme-ci:wrong');
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe('Basic realm="buildcloud"');
    const s = await run(skopeoArgs('inspect', '--raw', '--creds=acme-ci:wrong', `--cert-dir=${certDir}`, `docker://${proxy.host}/acme/app/cache:main`), env);
    expect(s.code).not.toBe(0);
    expect(s.stderr).toMatch(/unauthorized|401/i);
  });

  test('a chunked blob upload (POST, PATCH, PATCH, PUT) follows Location and Range through the proxy', async () => {
    const blob = randomBytes(300_000);
    const digest = `sha256:${sha256(blob)}`;
    const start = await request(proxy.host, 'POST', '/v2/acme/chunks/cache/blobs/uploads/', ACME);
    expect(start.status).toBe(202);
    expect(start.headers['docker-upload-uuid']).toBeTruthy();
    let location = String(start.headers.location);
    expect(location.startsWith(`https://${proxy.host}/v2/acme/chunks/cache/blobs/uploads/`)).toBe(true);
    let offset = 0;
    for (const size of [100_000, 200_000]) {
      const chunk = blob.subarray(offset, offset + size);
      const p = await request(proxy.host, 'PATCH', location, ACME, chunk, {
        'content-type': 'application/octet-stream',
        'content-range': `${offset}-${offset + size - 1}`,
        'content-length': size
      });
      expect(p.status).toBe(202);
      offset += size;
      expect(p.headers.range).toBe(`0-${offset - 1}`);
      location = String(p.headers.location);
      expect(location.startsWith(`https://${proxy.host}/`)).toBe(true);
    }
    const done = await request(proxy.host, 'PUT', `${location}&digest=${encodeURIComponent(digest)}`, ACME, Buffer.alloc(0), { 'content-length': 0 });
    expect(done.status).toBe(201);
    const got = await request(proxy.host, 'GET', `/v2/acme/chunks/cache/blobs/${digest}`, ACME);
    expect(got.status).toBe(200);
    expect(sha256(got.body)).toBe(digest.slice(7));
  });

  test('concurrent pushes of different images to one tag all succeed and leave the registry consistent', async () => {
    // Both share a base layer (uploaded twice at once) and have a big layer of their own.
    const base: Array<[string, Buffer]> = [['base.bin', Buffer.alloc(512 * 1024, 3)]];
    const images = ['x', 'y', 'z', 'w'].map((n) => makeImage(path.join(tmp, `img-${n}`), [base, [[`${n}.bin`, randomBytes(3 * 1024 * 1024)]]]));
    const results = await Promise.all(images.map((img) => push(img, 'acme/app/cache:pr-42', ACME)));
    results.forEach((r) => expect(r.stderr).toBe(''));
    results.forEach((r) => expect(r.code).toBe(0));

    const head = await request(proxy.host, 'HEAD', '/v2/acme/app/cache/manifests/pr-42', ACME, undefined, { accept: OCI_MANIFEST });
    expect(head.status).toBe(200);
    expect(images.map((i) => i.manifestDigest)).toContain(head.headers['docker-content-digest']);
    for (const img of images) {
      const m = await request(proxy.host, 'GET', `/v2/acme/app/cache/manifests/${img.manifestDigest}`, ACME, undefined, { accept: OCI_MANIFEST });
      expect(m.status).toBe(200);
      expect(`sha256:${sha256(m.body)}`).toBe(img.manifestDigest);
      for (const b of img.blobs) {
        const g = await request(proxy.host, 'GET', `/v2/acme/app/cache/blobs/${b}`, ACME);
        expect(g.status).toBe(200);
        expect(`sha256:${sha256(g.body)}`).toBe(b);
      }
    }
  });
});

// Raw bytes of a plain-HTTP request to host:port, and everything that came back before the connection closed.
function plainHttp(host: string, creds: string): Promise<string> {
  const [hostname, port] = [host.slice(0, host.lastIndexOf(':')), Number(host.slice(host.lastIndexOf(':') + 1))];
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ host: hostname, port }, () => {
      s.write(`GET /v2/acme/app/cache/manifests/main HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Basic ${Buffer.from(creds).toString('base64')}\r\n\r\n`);
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => undefined);
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

describe('TLS only', () => {
  test("a client that does not trust the control plane's CA is refused (skopeo verifies by default)", async () => {
    const s = await run(skopeoArgs('inspect', '--raw', `--creds=${ACME}`, `docker://${proxy.host}/acme/app/cache:main`), env);
    expect(s.code).not.toBe(0);
    expect(s.stderr).toMatch(/x509|certificate/i);
    expect(s.stderr).not.toContain('acme-pass');
  });

  test('a plain-HTTP request to the proxy port gets no registry answer', async () => {
    expect(await plainHttp(proxy.host, ACME)).not.toMatch(/HTTP\/1\.[01]/);
  });

  test("an operator's cert of a CA the engines were never given: trusting the served cert itself suffices (Go)", async () => {
    // What serve writes to certs.d for --tls-cert is that file's certificates, not a CA: Go's crypto/x509 (skopeo
    // here, dockerd and BuildKit on builders) accepts a leaf that is itself in the root pool.
    const operatorCa = await Pki.loadOrCreate(path.join(tmp, 'operator-pki'));
    const op = await operatorCa.issueServer(['127.0.0.1']);
    const id = await registryProxyTls('127.0.0.1', pki, { cert: op.certPem, key: op.keyPem });
    expect(id.source).toBe('operator');
    const pinned = path.join(tmp, 'pinned-certs');
    fs.mkdirSync(pinned);
    fs.writeFileSync(path.join(pinned, 'buildcloud-ca.crt'), id.trustPem);
    const other = new RegistryProxy({
      upstream: { socketPath: registry.socketPath },
      tls: id,
      authenticate: async (u, p) => (USERS[u]?.password === p ? { org: USERS[u].org } : null)
    });
    await other.listen();
    try {
      const img = makeImage(path.join(tmp, 'img-pinned'), [[['pinned.txt', Buffer.from('pinned\n')]]]);
      const ok = await run(
        skopeoArgs('copy', `--dest-creds=${ACME}`, `--dest-cert-dir=${pinned}`, `oci:${img.dir}:latest`, `docker://${other.host}/acme/pinned/cache:main`),
        env
      );
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      // Control: the control plane's own CA does not vouch for the operator's cert.
      const no = await run(skopeoArgs('inspect', '--raw', `--creds=${ACME}`, `--cert-dir=${certDir}`, `docker://${other.host}/acme/pinned/cache:main`), env);
      expect(no.stderr).toMatch(/x509|certificate/i);
    } finally {
      await other.close();
    }
  });
});

// The whole path for real: `buildcloud serve --host <this host's own address>` with dockerd builders. Off loopback
// the proxy speaks TLS only. A builder's dockerd pushes the org cache through it, and a FRESH builder (another
// pipeline) imports it with BuildKit (`--cache-from`) and pulls it with dockerd: both verify the proxy's cert
// against the control plane's CA, which serve put in /etc/docker/certs.d/<registry>/ for them.
describe('builders push and pull the org cache through the TLS-only proxy (serve off loopback, real dockerd)', () => {
  let server: ServerProcess;
  let acme: TestClient;
  let work: string;
  let trustFile: string;
  const address = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
  const provision = (pipelineKey: string) =>
    acme.provision({ pipelineKey, jobId: 'build', identity: { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main', actor: 'dev' } });

  beforeAll(async () => {
    if (!address) throw new Error('this test needs a non-loopback IPv4 address on this host (none found)');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-registry-tls-'));
    // --insecure: plaintext gRPC for the test client; the registry proxy serves TLS whatever it says.
    server = await startServer(['--host', address, '--insecure', '--idle-timeout', '60s', '--grace', '1s']);
    acme = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
    await makeBusyboxContext(path.join(work, 'ctx'), 'RUN echo cached-through-tls > /tls.txt\n');
    trustFile = path.join(DOCKER_CERTS_DIR, server.info.registry, REGISTRY_TRUST_FILE);
  });

  afterAll(async () => {
    acme?.close();
    expect(await server?.stop()).toBe(0);
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test("builders' engines trust the control plane's CA for the proxy, in a public file", () => {
    expect(server.info.registry).toBe(`${address}:${server.info.registry.split(':').pop()}`);
    const ca = fs.readFileSync(path.join(server.stateDir, 'pki', 'ca.pem'), 'utf8');
    expect(fs.readFileSync(server.info.registryCaFile, 'utf8')).toBe(ca);
    expect(fs.readFileSync(trustFile, 'utf8')).toBe(ca);
    expect(fs.statSync(trustFile).mode & 0o777).toBe(0o644);
  });

  test('a plain-HTTP request to the proxy port gets no registry answer', async () => {
    expect(await plainHttp(server.info.registry, 'anyone:anything')).not.toMatch(/HTTP\/1\.[01]/);
  });

  test('one builder pushes (dockerd) with inline cache; a fresh builder imports it and builds FROM it (BuildKit)', async () => {
    const l1 = await provision('tls/pipeline-1/1');
    const ref = l1.cache!.exportRef;
    expect(ref.startsWith(`${server.info.registry}/`)).toBe(true);
    const env1 = dockerEnvFor(l1, path.join(work, 'l1'));
    const ctx = path.join(work, 'ctx');
    const built = docker(['build', '--progress=plain', '--build-arg', 'BUILDKIT_INLINE_CACHE=1', '-t', ref, '.'], env1, ctx);
    expect(built.out).toMatch(/RUN echo cached-through-tls/);
    expect(built.status).toBe(0);
    const pushed = docker(['push', ref], env1);
    expect(pushed.out).toMatch(/digest: sha256:[0-9a-f]{64}/);
    expect(pushed.status).toBe(0);

    const l2 = await provision('tls/pipeline-2/1');
    expect(l2.builders[0].builderId).not.toBe(l1.builders[0].builderId);
    expect(l2.cache!.importRefs).toContain(ref);
    const env2 = dockerEnvFor(l2, path.join(work, 'l2'));
    const imported = docker(['build', '--progress=plain', '--cache-from', ref, '.'], env2, ctx);
    expect(imported.out).not.toMatch(/ERROR/);
    expect(imported.out).toMatch(/importing cache manifest from/);
    // The RUN step's own record ends CACHED, after pulling its layers from the registry (the builder is fresh).
    expect(imported.out).toMatch(
      /#(\d+) \[2\/2\] RUN echo cached-through-tls[^\n]*\n(?:#\1 [^\n]*\n)*?#\1 pulling sha256:[^\n]*\n(?:#\1 [^\n]*\n)*?#\1 CACHED/
    );
    expect(imported.status).toBe(0);
    // A build FROM the pushed image pulls it through the proxy (builders allow no `docker pull`: FROM is the way).
    const fromCtx = path.join(work, 'from-ctx');
    fs.mkdirSync(fromCtx);
    fs.writeFileSync(path.join(fromCtx, 'Dockerfile'), `FROM ${ref}\nRUN grep -q cached-through-tls /tls.txt\n`);
    const pulled = docker(['build', '--progress=plain', '--no-cache', '.'], env2, fromCtx);
    expect(pulled.out).toMatch(/resolve [^\n]*cache:main@sha256:[0-9a-f]{64}/);
    expect(pulled.status).toBe(0);
    // Control: dockerd really verifies (it reads certs.d per request). Without the trust file the same push fails.
    fs.renameSync(trustFile, `${trustFile}.off`);
    try {
      const refused = docker(['push', ref], env1);
      expect(refused.out).toMatch(/x509: certificate signed by unknown authority/);
      expect(refused.out).not.toContain(l1.cache!.registry!.password);
      expect(refused.status).not.toBe(0);
    } finally {
      fs.renameSync(`${trustFile}.off`, trustFile);
    }
    await acme.release(l1.id);
    await acme.release(l2.id);
  });

  test('serve removes the trust file when it stops', async () => {
    expect(await server.stop()).toBe(0);
    expect(fs.existsSync(trustFile)).toBe(false);
    expect(fs.existsSync(path.dirname(trustFile))).toBe(false);
  });
});
