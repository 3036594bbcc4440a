import { X509Certificate, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Pki } from '../../src/server/pki';
import { installRegistryTrust, REGISTRY_TRUST_FILE } from '../../src/server/drivers/registry-trust';
import { isLoopbackAddress, RegistryPrincipal, RegistryProxy, RegistryProxyOptions, RegistryProxyTls, registryProxyTls } from '../../src/server/registry-proxy';

// A fake upstream registry on a unix socket: records what reaches it, answers with a per-test handler.
interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  sha256: string;
  bytes: number;
  aborted: boolean;
}
type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void;

const USERS: Record<string, { password: string; principal: RegistryPrincipal }> = {
  'acme-ci': { password: 's3cret-acme', principal: { org: 'acme' } },
  'globex-ci': { password: 's3cret-globex', principal: { org: 'globex' } },
  'acme-fork': { password: 's3cret-fork', principal: { org: 'acme', readOnly: true } },
  // Leases as the control plane builds them (leases.ts registryPrincipal → cache-refs registryScope).
  'lease-feat': {
    password: 's3cret-feat',
    principal: { org: 'acme', scope: { pull: ['acme/app/cache'], push: { repository: 'acme/app/cache', tag: 'feature-x' } } }
  },
  'lease-notag': { password: 's3cret-notag', principal: { org: 'acme', scope: { pull: ['acme/app/cache'], push: null } } }
};
const authenticate = async (u: string, p: string): Promise<RegistryPrincipal | null> => (USERS[u]?.password === p ? USERS[u].principal : null);
const basic = (u: string, p: string): string => 'Basic ' + Buffer.from(`${u}:${p}`).toString('base64');
const ACME = basic('acme-ci', 's3cret-acme');
const GLOBEX = basic('globex-ci', 's3cret-globex');
const FORK = basic('acme-fork', 's3cret-fork');
const FEAT = basic('lease-feat', 's3cret-feat');
const NOTAG = basic('lease-notag', 's3cret-notag');

let tmp: string;
let socketPath: string;
let upstream: http.Server;
let seen: Seen[];
let handler: Handler;
let proxy: RegistryProxy;
let logLines: string[];
let pki: Pki;
let proxyTls: RegistryProxyTls; // a cert of the test CA for 127.0.0.1

const okHandler: Handler = (req, res) => {
  res.writeHead(200, { 'Content-Type': 'application/json', 'Docker-Distribution-API-Version': 'registry/2.0' });
  res.end(JSON.stringify({ upstream: true, url: req.url }));
};

function startUpstream(sock: string): Promise<http.Server> {
  const srv = http.createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const chunks: Buffer[] = [];
    const rec: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, sha256: '', bytes: 0, aborted: false };
    seen.push(rec);
    req.on('data', (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
      if (chunks.length < 64) chunks.push(c);
      srv.emit('upstream-data', rec, bytes);
    });
    req.on('aborted', () => {
      rec.aborted = true;
      srv.emit('upstream-aborted', rec);
    });
    req.on('end', () => {
      rec.sha256 = hash.digest('hex');
      rec.bytes = bytes;
      handler(req, res, Buffer.concat(chunks));
    });
  });
  return new Promise((resolve) => srv.listen(sock, () => resolve(srv)));
}

async function makeProxy(over: Partial<RegistryProxyOptions> = {}): Promise<RegistryProxy> {
  const logStream = new Writable({
    write(chunk, _enc, cb) {
      logLines.push(String(chunk));
      cb();
    }
  });
  const p = new RegistryProxy({ upstream: { socketPath }, authenticate, tls: proxyTls, log: pino({ level: 'debug' }, logStream), ...over });
  await p.listen();
  return p;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}
function call(
  p: RegistryProxy,
  method: string,
  urlPath: string,
  opts: { auth?: string; body?: Buffer | string; headers?: http.OutgoingHttpHeaders } = {}
): Promise<Reply> {
  const [hostname, port] = p.host.split(':');
  return new Promise((resolve, reject) => {
    const req = https.request(
      { hostname, port: Number(port), ca: pki.caPem, method, path: urlPath, headers: { ...(opts.auth ? { authorization: opts.auth } : {}), ...opts.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject); // a response cut short
      }
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

const errorCode = (r: Reply): string => JSON.parse(r.body).errors[0].code;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rp-'));
  socketPath = path.join(tmp, 'up.sock');
  seen = [];
  upstream = await startUpstream(socketPath);
  pki = await Pki.loadOrCreate(path.join(tmp, 'pki'));
  proxyTls = await registryProxyTls('127.0.0.1', pki);
});
afterAll(async () => {
  await new Promise((r) => upstream.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});
beforeEach(async () => {
  seen = [];
  logLines = [];
  handler = okHandler;
  proxy = await makeProxy();
});
afterEach(async () => {
  await proxy.close();
});

describe('authentication', () => {
  test('host is loopback with the listening port', () => {
    expect(proxy.host).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  test.each<[string, string | undefined]>([
    ['no credentials', undefined],
    ['a wrong password', basic('acme-ci', 'nope')],
    ['an unknown user', basic('mallory', 's3cret-acme')],
    ['a bearer token', 'Bearer abc'],
    ['garbage', 'Basic !!!']
  ])('/v2/ with %s → 401 with a Basic challenge, nothing forwarded', async (_n, auth) => {
    const r = await call(proxy, 'GET', '/v2/', { auth });
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe('Basic realm="buildcloud"');
    expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
    expect(errorCode(r)).toBe('UNAUTHORIZED');
    expect(seen).toHaveLength(0);
  });

  test("/v2/ with valid credentials is forwarded without the caller's credentials, with the caller's Host", async () => {
    const r = await call(proxy, 'GET', '/v2/', { auth: ACME, headers: { 'x-forwarded-host': 'evil.example' } });
    expect(r.status).toBe(200);
    expect(seen).toHaveLength(1);
    expect(seen[0].url).toBe('/v2/');
    expect(seen[0].headers.authorization).toBeUndefined();
    expect(seen[0].headers['x-forwarded-host']).toBeUndefined();
    expect(seen[0].headers.host).toBe(proxy.host);
  });

  test('a repository request without credentials is 401, not 403 (clients must learn to authenticate)', async () => {
    const r = await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main');
    expect(r.status).toBe(401);
  });

  test('authenticate throwing gives a 500 and the proxy keeps serving', async () => {
    await proxy.close();
    proxy = await makeProxy({
      authenticate: async () => {
        throw new Error('store down');
      }
    });
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(500);
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(500);
  });
});

describe('path rules', () => {
  test.each<[string, string, string, number, string | null]>([
    ['own manifest by tag', 'GET', '/v2/acme/app/cache/manifests/main', 200, null],
    ['own manifest by digest', 'HEAD', `/v2/acme/app/cache/manifests/sha256:${'a'.repeat(64)}`, 200, null],
    ['own blob', 'GET', `/v2/acme/platform/tools/api/cache/blobs/sha256:${'b'.repeat(64)}`, 200, null],
    ['own upload start', 'POST', '/v2/acme/app/cache/blobs/uploads/', 200, null],
    ['own upload chunk', 'PATCH', '/v2/acme/app/cache/blobs/uploads/0b1c-uuid?_state=abc%3D%3D', 200, null],
    ['own tags', 'GET', '/v2/acme/app/cache/tags/list?n=10', 200, null],
    ['other org manifest', 'GET', '/v2/globex/app/cache/manifests/main', 403, 'DENIED'],
    ['other org blob', 'GET', `/v2/globex/app/cache/blobs/sha256:${'b'.repeat(64)}`, 403, 'DENIED'],
    ['other org upload', 'POST', '/v2/globex/app/cache/blobs/uploads/', 403, 'DENIED'],
    ['a look-alike org', 'GET', '/v2/acme-evil/app/manifests/main', 403, 'DENIED'],
    ['the org name itself as a repository', 'GET', '/v2/acme/manifests/main', 403, 'DENIED'],
    ['catalog', 'GET', '/v2/_catalog', 403, 'DENIED'],
    ['dot-dot traversal', 'GET', '/v2/acme/x/../../globex/app/manifests/main', 404, 'UNSUPPORTED'],
    ['encoded slash', 'GET', '/v2/acme/x%2F..%2Fglobex/manifests/main', 404, 'UNSUPPORTED'],
    ['unknown sub-resource', 'GET', '/v2/acme/app/cache/referrers/x', 404, 'UNSUPPORTED'],
    ['uppercase repository', 'GET', '/v2/ACME/app/manifests/main', 404, 'UNSUPPORTED'],
    ['v1 API', 'GET', '/v1/search', 404, 'UNSUPPORTED'],
    ['root', 'GET', '/', 404, 'UNSUPPORTED']
  ])('%s: %s %s → %d', async (_n, method, urlPath, status, code) => {
    const r = await call(proxy, method, urlPath, { auth: ACME });
    expect(r.status).toBe(status);
    if (code) {
      expect(errorCode(r)).toBe(code);
      expect(seen).toHaveLength(0);
    } else {
      expect(seen.map((s) => s.url)).toEqual([urlPath]);
    }
  });

  test('the 403 names the allowed prefix', async () => {
    const r = await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: GLOBEX });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).errors[0].message).toContain('"globex/"');
  });

  test('a read-only principal (a fork) may pull but not push', async () => {
    expect((await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: FORK })).status).toBe(200);
    const put = await call(proxy, 'PUT', '/v2/acme/app/cache/manifests/main', { auth: FORK, body: '{}' });
    expect(put.status).toBe(403);
    expect(errorCode(put)).toBe('DENIED');
    expect((await call(proxy, 'POST', '/v2/acme/app/cache/blobs/uploads/', { auth: FORK })).status).toBe(403);
  });

  test.each<[string, string]>([
    ['from another org', '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=globex/app/cache'],
    ['from an encoded key', '/v2/acme/app/cache/blobs/uploads/?%6Dount=sha256:x&%66rom=globex/app/cache'],
    ['with two from values', '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme/a&from=globex/b'],
    ['from the bare org name', '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme']
  ])('a cross-repository mount %s is dropped (plain upload instead)', async (_n, urlPath) => {
    const r = await call(proxy, 'POST', urlPath, { auth: ACME });
    expect(r.status).toBe(200);
    expect(seen[0].url).toBe('/v2/acme/app/cache/blobs/uploads/');
  });

  test("a mount from the caller's own org is forwarded untouched", async () => {
    const urlPath = '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme/other/cache';
    await call(proxy, 'POST', urlPath, { auth: ACME });
    expect(seen[0].url).toBe(urlPath);
  });
});

describe("lease scope: a lease writes only its export ref and reads only its refs' repositories", () => {
  const D = `sha256:${'d'.repeat(64)}`;
  test.each<[string, string, string, number]>([
    // What docker 20.10 and BuildKit do when pushing the lease's own export ref: all allowed.
    ['HEAD a blob in its repository', 'HEAD', `/v2/acme/app/cache/blobs/${D}`, 200],
    ['start an upload', 'POST', '/v2/acme/app/cache/blobs/uploads/', 200],
    ['send a chunk', 'PATCH', '/v2/acme/app/cache/blobs/uploads/u-1?_state=x', 200],
    ['finish an upload', 'PUT', `/v2/acme/app/cache/blobs/uploads/u-1?_state=x&digest=${D}`, 200],
    ['cancel an upload', 'DELETE', '/v2/acme/app/cache/blobs/uploads/u-1', 200],
    ['PUT its export tag', 'PUT', '/v2/acme/app/cache/manifests/feature-x', 200],
    ['PUT a manifest by digest (index children, content-addressed: moves no tag)', 'PUT', `/v2/acme/app/cache/manifests/${D}`, 200],
    ["read the default branch's tag it imports", 'GET', '/v2/acme/app/cache/manifests/main', 200],
    // The attacks.
    ["PUT the default branch's tag", 'PUT', '/v2/acme/app/cache/manifests/main', 403],
    ['PUT a look-alike tag', 'PUT', '/v2/acme/app/cache/manifests/feature-x2', 403],
    ["upload into another project's cache", 'POST', '/v2/acme/other-project/cache/blobs/uploads/', 403],
    ["PUT another project's tag", 'PUT', '/v2/acme/other-project/cache/manifests/feature-x', 403],
    ["read another project's cache", 'GET', '/v2/acme/other-project/cache/manifests/main', 403],
    ["DELETE a manifest by digest (would drop another branch's cache)", 'DELETE', `/v2/acme/app/cache/manifests/${D}`, 403],
    ['DELETE a blob', 'DELETE', `/v2/acme/app/cache/blobs/${D}`, 403],
    ['DELETE its own tag', 'DELETE', '/v2/acme/app/cache/manifests/feature-x', 403],
    // Digest-shaped refs the registry parses as TAGS (it registers only sha256/sha512 of full length, lower case).
    ['PUT "main:<hex>" (a tag to the registry)', 'PUT', `/v2/acme/app/cache/manifests/main:${'0'.repeat(32)}`, 403],
    ['PUT a short sha256', 'PUT', `/v2/acme/app/cache/manifests/sha256:${'a'.repeat(32)}`, 403],
    ['PUT an upper-case sha256', 'PUT', `/v2/acme/app/cache/manifests/sha256:${'A'.repeat(64)}`, 403],
    ['PUT an unregistered algorithm', 'PUT', `/v2/acme/app/cache/manifests/md5:${'a'.repeat(32)}`, 403],
    ['PUT a sha512 (registered)', 'PUT', `/v2/acme/app/cache/manifests/sha512:${'b'.repeat(128)}`, 200]
  ])('%s: %s %s → %d', async (_n, method, urlPath, status) => {
    const r = await call(proxy, method, urlPath, { auth: FEAT, body: method === 'PUT' || method === 'PATCH' ? '{}' : undefined });
    expect(r.status).toBe(status);
    if (status === 403) {
      expect(errorCode(r)).toBe('DENIED');
      expect(seen).toHaveLength(0);
    } else {
      expect(seen.map((x) => x.url)).toEqual([urlPath]);
    }
  });

  test("the registry's own 5xx body (storage driver, paths on this host) never reaches a lease", async () => {
    handler = (_req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(
        '{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":{"DriverName":"filesystem","Path":"/docker/registry/v2/repositories/acme/app/cache/_manifests"}}]}'
      );
    };
    const r = await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: FEAT });
    expect(r.status).toBe(502);
    expect(r.body).not.toContain('/docker/registry');
    expect(r.body).not.toContain('filesystem');
    expect(errorCode(r)).toBe('UNAVAILABLE');
  });

  test('a refused write says which ref the lease may write', async () => {
    const r = await call(proxy, 'PUT', '/v2/acme/app/cache/manifests/main', { auth: FEAT, body: '{}' });
    expect(JSON.parse(r.body).errors[0].message).toBe(
      `PUT acme/app/cache/manifests/main is denied: this lease may write only "${proxy.host}/acme/app/cache:feature-x" (its export ref)`
    );
  });

  test('a refused read names the repositories the lease may read', async () => {
    const r = await call(proxy, 'GET', '/v2/acme/other-project/cache/manifests/main', { auth: FEAT });
    expect(JSON.parse(r.body).errors[0].message).toContain('may read only its cache refs\' repositories ("acme/app/cache")');
  });

  test('a lease without an export ref (a tag build) writes nothing and is told why', async () => {
    expect((await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: NOTAG })).status).toBe(200);
    const r = await call(proxy, 'POST', '/v2/acme/app/cache/blobs/uploads/', { auth: NOTAG });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).errors[0].message).toContain('this lease may not write the org cache (it has no export ref');
  });

  test.each<[string, string, string]>([
    [
      'from its own repository: kept',
      '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme/app/cache',
      '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme/app/cache'
    ],
    [
      'from another project of its org: dropped (it may not read there)',
      '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=acme/other/cache',
      '/v2/acme/app/cache/blobs/uploads/'
    ],
    ['from another org: dropped', '/v2/acme/app/cache/blobs/uploads/?mount=sha256:x&from=globex/app/cache', '/v2/acme/app/cache/blobs/uploads/']
  ])('a mount %s', async (_n, urlPath, forwarded) => {
    const r = await call(proxy, 'POST', urlPath, { auth: FEAT });
    expect(r.status).toBe(200);
    expect(seen[0].url).toBe(forwarded);
  });
});

describe('forwarding', () => {
  test('upload Location, Docker-Upload-UUID and Range pass through and point back at the proxy', async () => {
    handler = (req, res) => {
      res.writeHead(202, {
        Location: `http://${req.headers.host}/v2/acme/app/cache/blobs/uploads/u-1?_state=xyz`,
        'Docker-Upload-UUID': 'u-1',
        Range: '0-99',
        'Content-Length': '0'
      });
      res.end();
    };
    const r = await call(proxy, 'PATCH', '/v2/acme/app/cache/blobs/uploads/u-1?_state=abc', {
      auth: ACME,
      body: Buffer.alloc(100, 1),
      headers: { 'content-range': '0-99' }
    });
    expect(r.status).toBe(202);
    expect(r.headers.location).toBe(`https://${proxy.host}/v2/acme/app/cache/blobs/uploads/u-1?_state=xyz`);
    expect(r.headers['docker-upload-uuid']).toBe('u-1');
    expect(r.headers.range).toBe('0-99');
    expect(seen[0].headers['content-range']).toBe('0-99');
    expect(seen[0].bytes).toBe(100);
  });

  test('an external upstream gets the configured credentials and its absolute Location is rewritten to the proxy', async () => {
    const tcpUp = http.createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, sha256: '', bytes: 0, aborted: false });
      const loc =
        req.url === '/v2/acme/a/blobs/uploads/'
          ? `http://${req.headers.host}/v2/acme/a/blobs/uploads/u-2?_state=s` // absolute, upstream's own host
          : 'https://storage.example/blob?sig=1'; // a redirect to blob storage: leave alone
      res.writeHead(req.method === 'POST' ? 202 : 307, { Location: loc });
      res.end();
    });
    await new Promise<void>((r) => tcpUp.listen(0, '127.0.0.1', () => r()));
    const upPort = (tcpUp.address() as { port: number }).port;
    await proxy.close();
    proxy = await makeProxy({ upstream: { url: `http://127.0.0.1:${upPort}`, username: 'cp', password: 'up-pass' } });
    try {
      const r = await call(proxy, 'POST', '/v2/acme/a/blobs/uploads/', { auth: ACME });
      expect(r.headers.location).toBe(`https://${proxy.host}/v2/acme/a/blobs/uploads/u-2?_state=s`);
      expect(seen[0].headers.authorization).toBe(basic('cp', 'up-pass'));
      expect(seen[0].headers.host).toBe(`127.0.0.1:${upPort}`);
      const g = await call(proxy, 'GET', `/v2/acme/a/blobs/sha256:${'c'.repeat(64)}`, { auth: ACME });
      expect(g.status).toBe(307);
      expect(g.headers.location).toBe('https://storage.example/blob?sig=1');
    } finally {
      await new Promise((r) => tcpUp.close(r));
    }
  });

  test("an external upstream refusing the control plane's credentials is a 502, not a confusing challenge", async () => {
    const tcpUp = http.createServer((_req, res) => {
      res.writeHead(401, { 'WWW-Authenticate': 'Bearer realm="x"' });
      res.end();
    });
    await new Promise<void>((r) => tcpUp.listen(0, '127.0.0.1', () => r()));
    await proxy.close();
    proxy = await makeProxy({ upstream: { url: `http://127.0.0.1:${(tcpUp.address() as { port: number }).port}` } });
    try {
      const r = await call(proxy, 'GET', '/v2/', { auth: ACME });
      expect(r.status).toBe(502);
      expect(r.headers['www-authenticate']).toBeUndefined();
    } finally {
      await new Promise((r) => tcpUp.close(r));
    }
  });

  test('request bodies stream: the upstream sees the first chunk before the client has sent the rest', async () => {
    handler = (_req, res) => {
      res.writeHead(201);
      res.end();
    };
    const [hostname, port] = proxy.host.split(':');
    const firstSeen = new Promise<void>((resolve) => upstream.once('upstream-data', () => resolve()));
    const done = new Promise<number>((resolve, reject) => {
      const req = https.request(
        {
          hostname,
          port: Number(port),
          ca: pki.caPem,
          method: 'PUT',
          path: `/v2/acme/a/blobs/uploads/u?digest=sha256:${'d'.repeat(64)}`,
          headers: { authorization: ACME }
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }
      );
      req.on('error', reject);
      req.write(Buffer.alloc(64 * 1024, 7));
      // Only after the upstream got data do we send the rest: a buffering proxy would deadlock here.
      void firstSeen.then(() => req.end(Buffer.alloc(8 * 1024 * 1024, 8)));
    });
    expect(await done).toBe(201);
    const expected = createHash('sha256')
      .update(Buffer.alloc(64 * 1024, 7))
      .update(Buffer.alloc(8 * 1024 * 1024, 8))
      .digest('hex');
    expect(seen[0].sha256).toBe(expected);
  });

  test('response bodies stream: the client gets the first chunk before the upstream has finished', async () => {
    let finish: () => void = () => undefined;
    handler = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      res.write(Buffer.alloc(1024, 1));
      finish = () => res.end(Buffer.alloc(1024, 2));
    };
    const [hostname, port] = proxy.host.split(':');
    const total = await new Promise<number>((resolve, reject) => {
      https
        .get({ hostname, port: Number(port), ca: pki.caPem, path: `/v2/acme/a/blobs/sha256:${'e'.repeat(64)}`, headers: { authorization: ACME } }, (res) => {
          let n = 0;
          res.on('data', (c: Buffer) => {
            n += c.length;
            finish();
          });
          res.on('end', () => resolve(n));
        })
        .on('error', reject);
    });
    expect(total).toBe(2048);
  });

  test('an unreachable upstream is a 502 with a registry-style error, and the proxy keeps serving', async () => {
    await proxy.close();
    proxy = await makeProxy({ upstream: { socketPath: path.join(tmp, 'nobody.sock') } });
    const r = await call(proxy, 'GET', '/v2/acme/a/manifests/main', { auth: ACME });
    expect(r.status).toBe(502);
    expect(errorCode(r)).toBe('UNAVAILABLE');
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(502);
  });

  test('a client aborting mid-upload aborts the upstream request and breaks nothing', async () => {
    handler = (_req, res) => {
      res.writeHead(201);
      res.end();
    };
    const [hostname, port] = proxy.host.split(':');
    const upstreamAborted = new Promise<void>((resolve) => upstream.once('upstream-aborted', () => resolve()));
    const gotData = new Promise<void>((resolve) => upstream.once('upstream-data', () => resolve()));
    const req = https.request({
      hostname,
      port: Number(port),
      ca: pki.caPem,
      method: 'PATCH',
      path: '/v2/acme/a/blobs/uploads/u',
      headers: { authorization: ACME, 'content-length': String(10 * 1024 * 1024) }
    });
    req.on('error', () => undefined);
    req.write(Buffer.alloc(128 * 1024));
    await gotData;
    req.destroy();
    await upstreamAborted;
    handler = okHandler;
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(200);
  });

  test('an upstream dying mid-response does not crash the proxy', async () => {
    handler = (_req, res) => {
      res.writeHead(200, { 'Content-Length': '1000' });
      res.write('partial');
      setTimeout(() => res.destroy(), 20);
    };
    await expect(call(proxy, 'GET', `/v2/acme/a/blobs/sha256:${'f'.repeat(64)}`, { auth: ACME })).rejects.toThrow();
    handler = okHandler;
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(200);
  });

  test('parallel requests from different orgs are neither serialised nor mixed', async () => {
    // Every upstream response is held until all 20 requests have arrived: a serialising proxy would time out.
    const pending: Array<() => void> = [];
    handler = (req, res, body) => {
      pending.push(() => {
        res.writeHead(201, { 'X-Echo': createHash('sha256').update(body).digest('hex') });
        res.end(req.url);
      });
      if (pending.length === 20) pending.forEach((f) => f());
    };
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => {
        const org = i % 2 ? 'acme' : 'globex';
        const body = Buffer.alloc(4096 + i, i);
        return call(proxy, 'PUT', `/v2/${org}/app${i}/cache/manifests/t${i}`, { auth: i % 2 ? ACME : GLOBEX, body }).then((r) => ({ r, i, body, org }));
      })
    );
    for (const { r, i, body, org } of replies) {
      expect(r.status).toBe(201);
      expect(r.body).toBe(`/v2/${org}/app${i}/cache/manifests/t${i}`);
      expect(r.headers['x-echo']).toBe(createHash('sha256').update(body).digest('hex'));
    }
  });

  test('credentials never reach the logs', async () => {
    await call(proxy, 'GET', '/v2/', { auth: ACME });
    await call(proxy, 'GET', '/v2/', { auth: basic('acme-ci', 'wrong-pass-xyz') });
    await call(proxy, 'GET', '/v2/globex/a/manifests/main', { auth: ACME });
    const logs = logLines.join('');
    expect(logs).toContain('/v2/'); // the proxy did log at debug
    for (const secret of ['s3cret-acme', 'wrong-pass-xyz', ACME.slice(6), 'acme-ci:']) expect(logs).not.toContain(secret);
  });
});

const hostOf = (p: RegistryProxy): string => p.host.split(':')[0];
const portOf = (p: RegistryProxy): number => Number(p.host.split(':')[1]);

describe('TLS (the proxy serves HTTPS only)', () => {
  test("a client trusting the control plane's CA completes the handshake; the cert names the proxy's IP", async () => {
    const peer = await new Promise<tls.PeerCertificate>((resolve, reject) => {
      const s = tls.connect({ host: hostOf(proxy), port: portOf(proxy), ca: pki.caPem }, () => {
        const c = s.getPeerCertificate();
        s.end();
        resolve(c);
      });
      s.on('error', reject);
    });
    expect(peer.subjectaltname).toBe('IP Address:127.0.0.1');
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(200);
  });

  test('a client that does not trust the CA is refused by its own verification', async () => {
    const err = await new Promise<Error>((resolve) => {
      const s = tls.connect({ host: hostOf(proxy), port: portOf(proxy) }, () => resolve(new Error('connected')));
      s.on('error', resolve);
    });
    expect((err as NodeJS.ErrnoException).code).toMatch(/SELF_SIGNED|UNABLE_TO_GET_ISSUER|UNABLE_TO_VERIFY/);
  });

  test('plain HTTP gets no registry answer, and nothing reaches the upstream', async () => {
    const received = await new Promise<string>((resolve) => {
      const chunks: Buffer[] = [];
      const s = net.connect({ host: hostOf(proxy), port: portOf(proxy) }, () => {
        s.write(`GET /v2/ HTTP/1.1\r\nHost: ${proxy.host}\r\nAuthorization: ${ACME}\r\n\r\n`);
      });
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', () => undefined);
      s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    });
    expect(received).not.toMatch(/HTTP\/1\.[01]/);
    expect(seen).toHaveLength(0);
    // And an HTTP client sees the connection fail.
    await expect(
      new Promise((resolve, reject) => {
        http.get({ host: hostOf(proxy), port: portOf(proxy), path: '/v2/', headers: { authorization: ACME } }, resolve).on('error', reject);
      })
    ).rejects.toThrow();
    expect(logLines.join('')).not.toContain('s3cret-acme');
  });
});

describe('plain HTTP on loopback, and registryProxyTls', () => {
  // What a raw plain-HTTP GET /v2/ with credentials gets back from host:port before the connection closes.
  const plainGet = (hostname: string, port: number): Promise<string> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      const s = net.connect({ host: hostname, port }, () => s.write(`GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: ${ACME}\r\nConnection: close\r\n\r\n`));
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', () => undefined);
      s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    });

  test.each([
    ['127.0.0.1', true],
    ['127.9.8.7', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['10.0.0.1', false],
    ['0.0.0.0', false],
    ['::', false],
    ['fe80::1', false],
    [undefined, false]
  ])('isLoopbackAddress(%s) is %s', (a, expected) => {
    expect(isLoopbackAddress(a)).toBe(expected);
  });

  test('with plainHttpOnLoopback, a connection to a loopback address gets plain HTTP answered, and TLS still works', async () => {
    await proxy.close();
    proxy = await makeProxy({ plainHttpOnLoopback: true });
    expect(await plainGet(hostOf(proxy), portOf(proxy))).toMatch(/^HTTP\/1\.1 200 /);
    expect((await call(proxy, 'GET', '/v2/', { auth: ACME })).status).toBe(200);
    // Upload Locations come back in the scheme the client used.
    handler = (req, res) => {
      res.writeHead(202, { Location: `http://${req.headers.host}/v2/acme/a/blobs/uploads/u-3?_state=s` });
      res.end();
    };
    const plainLocation = await new Promise<string>((resolve, reject) => {
      http
        .request({ host: hostOf(proxy), port: portOf(proxy), method: 'POST', path: '/v2/acme/a/blobs/uploads/', headers: { authorization: ACME } }, (res) => {
          res.resume();
          resolve(String(res.headers.location));
        })
        .on('error', reject)
        .end();
    });
    expect(plainLocation).toBe(`http://${proxy.host}/v2/acme/a/blobs/uploads/u-3?_state=s`);
    expect((await call(proxy, 'POST', '/v2/acme/a/blobs/uploads/', { auth: ACME })).headers.location).toBe(
      `https://${proxy.host}/v2/acme/a/blobs/uploads/u-3?_state=s`
    );
  });

  test('with plainHttpOnLoopback, a connection to a non-loopback address of this host still gets no plain-HTTP answer', async () => {
    const address = Object.values(os.networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
    if (!address) throw new Error('this test needs a non-loopback IPv4 address on this host (none found)');
    await proxy.close();
    const own = await registryProxyTls(address, pki);
    proxy = await makeProxy({ plainHttpOnLoopback: true, host: address, tls: own });
    expect(await plainGet(address, portOf(proxy))).toBe('');
    const r = await new Promise<number>((resolve, reject) => {
      https
        .get({ host: address, port: portOf(proxy), path: '/v2/', ca: pki.caPem, headers: { authorization: ACME } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject);
    });
    expect(r).toBe(200);
  });

  test("without an operator cert: a cert of the control plane's CA for the host (IP or DNS SAN), trusted through the CA", async () => {
    const ip = await registryProxyTls('10.1.2.3', pki);
    expect(ip.source).toBe('control-plane-ca');
    expect(ip.trustPem).toBe(pki.caPem);
    const x = new X509Certificate(ip.cert);
    expect(x.subjectAltName).toBe('IP Address:10.1.2.3');
    expect(x.verify(new X509Certificate(pki.caPem).publicKey)).toBe(true);
    const dns = new X509Certificate((await registryProxyTls('cp.example.com', pki)).cert);
    expect(dns.subjectAltName).toBe('DNS:cp.example.com');
  });

  test('an operator cert that names the host is used as it is and is what engines trust; one for another host is not', async () => {
    const operatorCa = await Pki.loadOrCreate(path.join(tmp, 'operator-pki'));
    const op = await operatorCa.issueServer(['10.1.2.3', 'cp.example.com']);
    const operator = { cert: op.certPem, key: op.keyPem };
    for (const host of ['10.1.2.3', 'cp.example.com']) {
      const id = await registryProxyTls(host, pki, operator);
      expect(id).toEqual({ cert: op.certPem, key: op.keyPem, trustPem: op.certPem, source: 'operator' });
    }
    const other = await registryProxyTls('127.0.0.1', pki, operator);
    expect(other.source).toBe('control-plane-ca');
    expect(other.cert).not.toBe(op.certPem);
  });

  test('an operator cert that is not PEM is refused naming --tls-cert, without echoing the key', async () => {
    const err = (await registryProxyTls('10.1.2.3', pki, { cert: 'not a cert', key: 'PRIVATE-KEY-MATERIAL' }).catch((e: Error) => e)) as Error;
    expect(err.message).toContain('--tls-cert');
    expect(err.message).not.toContain('PRIVATE-KEY-MATERIAL');
  });

  test("the proxy serves an operator's cert", async () => {
    const operatorCa = await Pki.loadOrCreate(path.join(tmp, 'operator-pki'));
    const op = await operatorCa.issueServer(['127.0.0.1']);
    await proxy.close();
    proxy = await makeProxy({ tls: { cert: op.certPem, key: op.keyPem } });
    const fp = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: hostOf(proxy), port: portOf(proxy), ca: operatorCa.caPem }, () => {
        resolve(s.getPeerCertificate().fingerprint256.replace(/:/g, '').toLowerCase());
        s.end();
      });
      s.on('error', reject);
    });
    expect(fp).toBe(op.fingerprint);
  });
});

describe("installRegistryTrust (what builders' dockerd reads for the proxy)", () => {
  test('writes <certsDir>/<host:port>/buildcloud-ca.crt 0644, and removes it and its directory again', async () => {
    const certsDir = fs.mkdtempSync(path.join(tmp, 'certs.d-'));
    const remove = await installRegistryTrust('192.0.2.7:7645', pki.caPem, { certsDir });
    const file = path.join(certsDir, '192.0.2.7:7645', REGISTRY_TRUST_FILE);
    expect(fs.readFileSync(file, 'utf8')).toBe(pki.caPem);
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    await remove();
    expect(fs.existsSync(path.dirname(file))).toBe(false);
  });

  test("a file of the operator's own in that directory stays, and so does the directory", async () => {
    const certsDir = fs.mkdtempSync(path.join(tmp, 'certs.d-'));
    fs.mkdirSync(path.join(certsDir, '192.0.2.7:7645'));
    fs.writeFileSync(path.join(certsDir, '192.0.2.7:7645', 'ca.crt'), 'theirs');
    await (
      await installRegistryTrust('192.0.2.7:7645', pki.caPem, { certsDir })
    )();
    expect(fs.readFileSync(path.join(certsDir, '192.0.2.7:7645', 'ca.crt'), 'utf8')).toBe('theirs');
  });

  test("a start after a crash removes the previous run's file (recorded in the state dir)", async () => {
    const certsDir = fs.mkdtempSync(path.join(tmp, 'certs.d-'));
    const recordFile = path.join(tmp, `record-${process.hrtime.bigint()}`);
    await installRegistryTrust('192.0.2.7:1111', pki.caPem, { certsDir, recordFile }); // "crashed": never removed
    await installRegistryTrust('192.0.2.7:2222', pki.caPem, { certsDir, recordFile });
    expect(fs.readdirSync(certsDir)).toEqual(['192.0.2.7:2222']);
    expect(fs.readFileSync(recordFile, 'utf8').trim()).toBe(path.join(certsDir, '192.0.2.7:2222', REGISTRY_TRUST_FILE));
  });

  test.each(['../etc:1', '192.0.2.7', 'a/b:1', '', 'host:port'])('a registry host %j is refused, naming the expected form', async (host) => {
    await expect(installRegistryTrust(host, pki.caPem, { certsDir: tmp })).rejects.toThrow(/expected host:port/);
  });
});

describe('an upstream registry that does not answer (issue 14: the org cache slow)', () => {
  test('is a 504 after upstreamTimeoutMs, naming the wait, so clients give up instead of hanging', async () => {
    await proxy.close();
    proxy = await makeProxy({ upstreamTimeoutMs: 200 });
    handler = () => undefined; // reads the request, never answers
    const t0 = Date.now();
    const r = await call(proxy, 'HEAD', '/v2/acme/app/cache/manifests/main', { auth: FEAT });
    expect(r.status).toBe(504);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    const g = await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: FEAT });
    expect(g.status).toBe(504);
    expect(JSON.parse(g.body).errors[0]).toEqual({ code: 'UNAVAILABLE', message: 'the cache registry did not answer within 0.2 s' });
    expect(logLines.join('')).toContain('upstream registry did not answer in time');
  });

  test('an answer that starts within the wait is passed through whole', async () => {
    await proxy.close();
    proxy = await makeProxy({ upstreamTimeoutMs: 1000 });
    handler = (req, res) => setTimeout(() => okHandler(req, res, Buffer.alloc(0)), 150);
    const r = await call(proxy, 'GET', '/v2/acme/app/cache/manifests/main', { auth: FEAT });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ upstream: true, url: '/v2/acme/app/cache/manifests/main' });
  });
});
