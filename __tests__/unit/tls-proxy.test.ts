import { promises as fs } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as tls from 'tls';
import { Pki, CertPair } from '../../src/server/pki';
import { BuilderTlsProxy } from '../../src/server/tls-proxy';

// A stand-in for dockerd's API socket. It records every request it sees (so a test can prove a refused call
// never reached it), answers /_ping, echoes request bodies, streams /build until the client goes away, switches
// /session to a raw echo (like BuildKit's h2c session), and answers /grpc with a 400 that keeps the connection.
interface Engine {
  server: http.Server;
  seen: string[];
  open: Set<net.Socket>;
}
function startEngine(socketPath: string): Promise<Engine> {
  const seen: string[] = [];
  const open = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.url === '/_ping') {
      res.setHeader('Builder-Version', '2');
      res.end('OK');
      return;
    }
    if (req.url?.startsWith('/v1.41/build?')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.write('{"stream":"step 1"}\n');
      const t = setInterval(() => res.write('{"stream":"."}\n'), 20);
      res.on('close', () => clearInterval(t));
      return;
    }
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => res.end(`echo:${req.method}:${body}`));
  });
  server.on('connection', (s: net.Socket) => {
    open.add(s);
    s.once('close', () => open.delete(s));
  });
  server.on('upgrade', (req, sock: net.Socket, head: Buffer) => {
    seen.push(`UPGRADE ${req.method} ${req.url}`);
    if (req.url === '/grpc') {
      // Not switched, and the engine would keep reading requests on this connection.
      sock.write('HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nnope');
      sock.on('data', (d) => seen.push(`RAW ${d}`));
      return;
    }
    sock.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    if (head.length) sock.write(head);
    sock.pipe(sock); // raw echo after the upgrade
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve({ server, seen, open })));
}

function connect(port: number, pki: Pki, cert: CertPair | null, opts: { halfOpen?: boolean; socket?: net.Socket } = {}): tls.TLSSocket {
  // allowHalfOpen reaches the underlying net.Socket at runtime but is missing from @types/node's ConnectionOptions.
  const options: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
    ...(opts.socket ? { socket: opts.socket } : { host: '127.0.0.1', port }),
    ca: pki.caPem,
    cert: cert?.certPem,
    key: cert?.keyPem,
    servername: 'localhost',
    allowHalfOpen: opts.halfOpen ?? false
  };
  return tls.connect(options);
}

// Resolves with everything the socket received until it closed.
function collect(sock: tls.TLSSocket): Promise<{ data: string; error: Error | null }> {
  return new Promise((resolve) => {
    let data = '';
    let error: Error | null = null;
    sock.on('data', (d) => (data += d));
    sock.on('error', (e) => (error = e));
    sock.on('close', () => resolve({ data, error }));
  });
}

function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() > until) reject(new Error('condition not met in time'));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

// One HTTP/1.1 exchange on an open TLS socket: writes `raw` and resolves with what arrived until `until` matches
// or the socket closed.
function exchange(sock: tls.TLSSocket, raw: string, until: RegExp): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const onData = (d: Buffer): void => {
      got += d;
      if (until.test(got)) done();
    };
    const done = (): void => {
      sock.off('data', onData);
      sock.off('close', done);
      resolve(got);
    };
    sock.on('data', onData);
    sock.once('close', done);
    sock.write(raw);
  });
}

describe('BuilderTlsProxy', () => {
  let dir: string;
  let pki: Pki;
  let server: CertPair;
  let leaseA: CertPair;
  let leaseB: CertPair;
  let engineSocket: string;
  let engine: Engine;
  const proxies: BuilderTlsProxy[] = [];

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-proxy-'));
    pki = await Pki.loadOrCreate(path.join(dir, 'pki'));
    server = await pki.issueServer(['127.0.0.1', 'localhost']);
    leaseA = await pki.issueClient('lease-a', 3600_000);
    leaseB = await pki.issueClient('lease-b', 3600_000);
    engineSocket = path.join(dir, 'engine.sock');
    engine = await startEngine(engineSocket);
  });
  beforeEach(() => {
    engine.seen.length = 0;
  });
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });
  afterAll(async () => {
    engine.server.closeAllConnections();
    for (const s of engine.open) s.destroy();
    await new Promise((r) => engine.server.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function proxy(socketPath = engineSocket, onActivity?: (fp: string) => void): Promise<{ p: BuilderTlsProxy; port: number }> {
    const p = new BuilderTlsProxy({ socketPath, server, caPem: pki.caPem, onActivity });
    proxies.push(p);
    await p.listen();
    return { p, port: Number(p.address.split(':').pop()) };
  }

  async function open(port: number, cert: CertPair = leaseA): Promise<tls.TLSSocket> {
    const sock = connect(port, pki, cert);
    sock.on('error', () => undefined);
    await new Promise((r) => sock.once('secureConnect', r));
    return sock;
  }

  it("forwards allowed calls, keeps the connection for the next one, and passes the engine's headers", async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    expect(p.address).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    const sock = await open(port);
    const ping = await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /\r\n\r\nOK$/);
    expect(ping).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(ping).toMatch(/Builder-Version: 2/i);
    expect(p.activeConnections(leaseA.fingerprint)).toBe(1);
    // Same connection, a body with Content-Length, then a chunked one.
    const auth = await exchange(sock, 'POST /v1.41/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello', /echo:POST:hello/);
    expect(auth).toContain('echo:POST:hello');
    const chunked = await exchange(
      sock,
      'POST /v1.41/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n',
      /echo:POST:abcde/
    );
    expect(chunked).toContain('echo:POST:abcde');
    expect(engine.seen).toEqual(['GET /_ping', 'POST /v1.41/auth', 'POST /v1.41/auth']);
    sock.destroy();
    await waitFor(() => p.activeConnections() === 0);
  });

  it('answers refused calls itself with a 403 the docker CLI prints, and the engine never sees them', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const body = JSON.stringify({ Image: 'x', HostConfig: { Binds: ['/:/host'], Privileged: true } });
    const run = await exchange(
      sock,
      `POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      /\}$/
    );
    expect(run).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(JSON.parse(run.slice(run.indexOf('\r\n\r\n') + 4)).message).toMatch(
      /containers \(`docker run`, .*\) are not available on a remote builder; use `load: true`/
    );
    // The connection stays usable: the refused request's body was consumed, not read as the next request.
    const ping = await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /\r\n\r\nOK$/);
    expect(ping).toMatch(/^HTTP\/1\.1 200 /);
    const host = await exchange(sock, 'POST /v1.41/build?networkmode=host&version=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n', /\}$/);
    expect(host).toMatch(/^HTTP\/1\.1 403 /);
    expect(host).toContain('--network \\"host\\" is not allowed');
    expect(engine.seen).toEqual(['GET /_ping']);
    sock.destroy();
  });

  it('checks each of several pipelined requests on its own', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const out = await exchange(
      sock,
      'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1.41/volumes/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /v1.41/version HTTP/1.1\r\nHost: x\r\n\r\n',
      /echo:GET:$/
    );
    expect(out.match(/HTTP\/1\.1 \d+/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 403', 'HTTP/1.1 200']);
    expect(out).toContain('volumes (`docker volume`) are not available');
    expect(engine.seen).toEqual(['GET /_ping', 'GET /v1.41/version']);
    sock.destroy();
  });

  it("cannot be made to smuggle a request inside another one's body", async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const inner = 'POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n';
    // A GET with a chunked body whose payload is a whole request: the engine must get it framed as a body.
    const chunk = `${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`;
    const echoed = await exchange(
      sock,
      `GET /v1.41/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}`,
      /Content-Length: 0\r\n\r\n(\r\n0\r\n\r\n)?$/
    );
    expect(echoed).toContain(`echo:GET:${inner}`);
    // Conflicting framing is refused by the parser before anything is forwarded.
    const both = await exchange(sock, `POST /v1.41/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}`, /400/);
    expect(both).toMatch(/^HTTP\/1\.1 400 /);
    expect(engine.seen).toEqual(['GET /v1.41/version']);
    sock.destroy();
  });

  it('refuses a form-encoded body, which the engine would read as options over the checked query', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const form = 'version=1&networkmode=host';
    const out = await exchange(
      sock,
      `POST /v1.41/build?version=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\n\r\n${form}`,
      /\}$/
    );
    expect(out).toMatch(/^HTTP\/1\.1 400 /);
    expect(out).toContain('form-encoded request bodies');
    expect(engine.seen).toEqual([]);
    sock.destroy();
  });

  it("switches protocols for BuildKit's session and pipes the raw stream both ways", async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const agent = new https.Agent({ ca: pki.caPem, cert: leaseA.certPem, key: leaseA.keyPem });
    const echoed = await new Promise<string>((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1',
        port,
        path: '/v1.41/session',
        method: 'POST',
        agent,
        headers: { Connection: 'Upgrade', Upgrade: 'h2c', 'X-Docker-Expose-Session-Uuid': 'u1' }
      });
      req.on('upgrade', (res, sock) => {
        expect(res.statusCode).toBe(101);
        let b = '';
        sock.on('data', (d: Buffer) => {
          b += d;
          if (b === 'ping-after-upgrade') {
            sock.destroy();
            resolve(b);
          }
        });
        sock.write('ping-after-upgrade');
      });
      req.on('error', reject);
      req.end();
    });
    expect(echoed).toBe('ping-after-upgrade');
    expect(engine.seen).toEqual(['UPGRADE POST /v1.41/session']);
    agent.destroy();
  });

  it('upgrades nothing else, and closes a connection the engine did not switch', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    // attach and exec are hijacked with `Upgrade: tcp`: refused like the calls themselves.
    const a = await open(port);
    const attach = await exchange(a, 'POST /v1.41/containers/x/attach?stream=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n', /\}$/);
    expect(attach).toMatch(/^HTTP\/1\.1 403 /);
    // An allowed call sent as an upgrade would leave a raw pipe behind it: refused.
    const b = await open(port);
    const ping = await exchange(b, 'GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n', /\}$/);
    expect(ping).toMatch(/^HTTP\/1\.1 403 /);
    // /grpc answered 400 instead of 101: the answer is passed on and the connection ends, so a request sent after
    // it can never reach the engine unchecked.
    const c = await open(port);
    const closed = collect(c);
    c.write('POST /grpc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    await waitFor(() => engine.seen.includes('UPGRADE POST /grpc'));
    c.write('POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n');
    const { data } = await closed;
    expect(data).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(engine.seen.filter((s) => s.includes('containers'))).toEqual([]);
    a.destroy();
    b.destroy();
  });

  it('refuses a cert of another lease from the same CA', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = connect(port, pki, leaseB);
    sock.on('secureConnect', () => sock.write('GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n'));
    const { data } = await collect(sock);
    // Answered by the proxy itself (so the docker CLI can say why), never by the engine.
    expect(data).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(data).toContain('not allowed on this builder');
    expect(engine.seen).toEqual([]);
    expect(p.activeConnections()).toBe(0);
  });

  it('refuses clients without a cert and with a cert of another CA', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const none = connect(port, pki, null);
    none.on('secureConnect', () => none.write('GET /_ping HTTP/1.1\r\n\r\n'));
    expect((await collect(none)).data).toBe('');

    const other = await Pki.loadOrCreate(path.join(dir, 'other-ca'));
    const foreign = await other.issueClient('intruder', 3600_000);
    p.allow(foreign.fingerprint); // even when allowed, the chain must verify against our CA
    const bad = connect(port, pki, foreign);
    bad.on('secureConnect', () => bad.write('GET /_ping HTTP/1.1\r\n\r\n'));
    expect((await collect(bad)).data).toBe('');
    expect(p.activeConnections()).toBe(0);
    expect(engine.seen).toEqual([]);
  });

  it('revoke cuts open connections of that cert only (a streaming build too), and refuses it afterwards', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    p.allow(leaseB.fingerprint.toUpperCase().replace(/(..)(?!$)/g, '$1:')); // Node's colon form is accepted too
    const a = await open(port, leaseA);
    const b = await open(port, leaseB);
    const aDone = collect(a);
    // A's build streams progress until its connection is cut.
    await exchange(a, 'POST /v1.41/build?version=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n', /step 1/);
    expect(p.activeConnections(leaseA.fingerprint)).toBe(1);
    expect(p.activeConnections(leaseB.fingerprint)).toBe(1);
    expect(p.activeConnections()).toBe(2);
    const engineConns = engine.open.size;
    p.revoke(leaseA.fingerprint);
    await aDone; // closes without our doing anything
    expect(p.activeConnections(leaseA.fingerprint)).toBe(0);
    // The engine sees the build's connection go (what cancels a solve).
    await waitFor(() => engine.open.size < engineConns);
    // B is untouched.
    expect(await exchange(b, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /OK$/)).toMatch(/^HTTP\/1\.1 200 /);
    expect(p.activeConnections()).toBe(1);
    const again = connect(port, pki, leaseA);
    again.on('secureConnect', () => again.write('GET /_ping HTTP/1.1\r\n\r\n'));
    expect((await collect(again)).data).toMatch(/^HTTP\/1\.1 403 /);
    b.destroy();
  });

  it('calls onActivity on connect and at most once a second on traffic', async () => {
    const seen: string[] = [];
    const { p, port } = await proxy(engineSocket, (fp) => seen.push(fp));
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    await waitFor(() => seen.length === 1);
    expect(seen[0]).toBe(leaseA.fingerprint);
    for (let i = 0; i < 5; i++) await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /OK$/);
    expect(seen.length).toBe(1); // throttled: still within the first second
    await new Promise((r) => setTimeout(r, 1100));
    await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /OK$/);
    expect(seen.length).toBe(2);
    sock.destroy();
  });

  it('answers 502 when the engine is not there, and keeps serving', async () => {
    const { p, port } = await proxy(path.join(dir, 'missing.sock'));
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const out = await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /\}$/);
    expect(out).toMatch(/^HTTP\/1\.1 502 /);
    expect(out).toContain('engine is not answering');
    sock.destroy();
    await waitFor(() => p.activeConnections() === 0);
    const again = await open(port);
    expect(await exchange(again, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /\}$/)).toMatch(/^HTTP\/1\.1 502 /);
    again.destroy();
  });

  it('survives a client that resets mid-request', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const raw = net.connect(port, '127.0.0.1');
    const sock = connect(port, pki, leaseA, { socket: raw });
    sock.on('error', () => undefined);
    sock.write(`POST /v1.41/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n${'x'.repeat(100_000)}`);
    await waitFor(() => p.activeConnections() === 1);
    raw.resetAndDestroy();
    await waitFor(() => p.activeConnections() === 0);
  });

  it('close() stops listening and drops every connection', async () => {
    const { p, port } = await proxy();
    p.allow(leaseA.fingerprint);
    const sock = await open(port);
    const closed = collect(sock);
    await exchange(sock, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', /OK$/);
    expect(p.activeConnections()).toBe(1);
    // A connection stuck in its handshake must not keep close() waiting.
    const raw = net.connect(port, '127.0.0.1');
    raw.on('error', () => undefined);
    await new Promise((r) => raw.once('connect', r));
    await p.close();
    await closed;
    expect(p.activeConnections()).toBe(0);
    await expect(new Promise((resolve, reject) => net.connect(port, '127.0.0.1').on('connect', resolve).on('error', reject))).rejects.toThrow(/ECONNREFUSED/);
  });
});

// Image names on a shared builder (image-names.ts): a stand-in engine with an image store. A build tags its `t=`
// names with the Id the test sends in X-Test-Image-Id (as if BuildKit had made that image); inspect, history, save,
// push and tag answer from the store. The front's own calls come without the /v1.41 prefix the client uses here.
describe('BuilderTlsProxy: image names shared by the leases of one builder', () => {
  let dir: string;
  let pki: Pki;
  let server: CertPair;
  const leases: Record<'a' | 'b' | 'c', CertPair> = {} as Record<'a' | 'b' | 'c', CertPair>;
  let engine: http.Server;
  let socketPath: string;
  const images = new Map<string, string>(); // familiar name → Id
  const seen: string[] = [];
  let p: BuilderTlsProxy;
  let port: number;
  const ID1 = `sha256:${'1'.repeat(64)}`;
  const ID2 = `sha256:${'2'.repeat(64)}`;
  const withLatest = (n: string): string => (n.includes(':') ? n : `${n}:latest`);

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-proxy-names-'));
    pki = await Pki.loadOrCreate(path.join(dir, 'pki'));
    server = await pki.issueServer(['127.0.0.1', 'localhost']);
    for (const k of ['a', 'b', 'c'] as const) leases[k] = await pki.issueClient(`lease-${k}`, 3600_000);
    socketPath = path.join(dir, 'engine.sock');
    engine = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      const u = new URL(req.url ?? '/', 'http://engine');
      const p = u.pathname.replace(/^\/v1\.\d+/, '');
      let m: RegExpExecArray | null;
      if (p === '/build') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.write('{"stream":"step 1"}\n');
        const id = String(req.headers['x-test-image-id'] ?? '');
        setTimeout(() => {
          if (id) for (const t of u.searchParams.getAll('t')) images.set(withLatest(t), id);
          res.end('{"aux":{"ID":"done"}}\n');
        }, 20);
      } else if (p === '/images/json') {
        const byId = new Map<string, string[]>();
        for (const [n, id] of images) byId.set(id, [...(byId.get(id) ?? []), n]);
        res.end(JSON.stringify([...byId].map(([Id, RepoTags]) => ({ Id, RepoTags }))));
      } else if ((m = /^\/images\/(.+)\/(json|history|get|push|tag)$/.exec(p))) {
        const name = decodeURIComponent(m[1]);
        const ref = m[2] === 'push' ? `${name}:${u.searchParams.get('tag')}` : withLatest(name);
        const id = name.startsWith('sha256:') ? name : images.get(ref);
        if (!id) {
          res.writeHead(404).end(JSON.stringify({ message: `No such image: ${name}` }));
        } else if (m[2] === 'tag') {
          images.set(`${u.searchParams.get('repo')}:${u.searchParams.get('tag') || 'latest'}`, id);
          res.writeHead(201).end();
        } else res.end(JSON.stringify({ Id: id, route: m[2] }));
      } else res.end('{}');
    });
    await new Promise<void>((r) => engine.listen(socketPath, r));
  });
  beforeEach(async () => {
    images.clear();
    seen.length = 0;
    p = new BuilderTlsProxy({ socketPath, server, caPem: pki.caPem });
    port = await p.listen();
    for (const k of ['a', 'b', 'c'] as const) p.allow(leases[k].fingerprint);
  });
  afterEach(async () => {
    await p.close();
  });
  afterAll(async () => {
    engine.closeAllConnections();
    await new Promise((r) => engine.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function open(k: 'a' | 'b' | 'c'): Promise<tls.TLSSocket> {
    const sock = connect(port, pki, leases[k]);
    sock.on('error', () => undefined);
    await new Promise((r) => sock.once('secureConnect', r));
    return sock;
  }
  // The whole chunked build answer: the front ends it only after recording the names.
  const build = (sock: tls.TLSSocket, id: string, tags = 't=app:test'): Promise<string> =>
    exchange(sock, `POST /v1.41/build?version=2&${tags} HTTP/1.1\r\nHost: x\r\nX-Test-Image-Id: ${id}\r\nContent-Length: 0\r\n\r\n`, /\r\n0\r\n\r\n$/);
  async function call(sock: tls.TLSSocket, method: string, target: string): Promise<{ status: number; body: string }> {
    // A whole answer (the front flushes headers on their own): Content-Length bytes of body, or the last chunk.
    const complete = (s: string): boolean => {
      const at = s.indexOf('\r\n\r\n');
      if (at < 0) return false;
      const body = s.slice(at + 4);
      if (/transfer-encoding: chunked/i.test(s.slice(0, at))) return /(^|\r\n)0\r\n\r\n$/.test(body);
      return Buffer.byteLength(body) >= Number(/content-length: (\d+)/i.exec(s)?.[1] ?? 0);
    };
    const out = await exchange(sock, `${method} /v1.41${target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`, { test: complete } as RegExp);
    return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(out)?.[1]), body: out.slice(out.indexOf('\r\n\r\n') + 4) };
  }
  const TAKEN = "Build Cloud: 'app:test' on the pipeline's shared builder now names another job's image (built after this job's).";
  const READS: Array<[string, string]> = [
    ['GET', '/images/app:test/json'],
    ['GET', '/images/docker.io/library/app:test/history'],
    ['GET', '/images/app:test/get'],
    ['GET', '/images/get?names=library%2Fapp%3Atest'],
    ['POST', '/images/app/push?tag=test'],
    ['POST', '/images/app:test/tag?repo=mine&tag=1']
  ];

  it("refuses A's reads of a tag B built after it (409, never sent to the engine); B, C, and reads by Id pass", async () => {
    const [a, b, c] = [await open('a'), await open('b'), await open('c')];
    expect(await build(a, ID1)).toContain('"aux"');
    expect((await call(a, 'GET', '/images/app:test/json')).body).toContain(ID1);
    await build(b, ID2);
    for (const [method, target] of READS) {
      const r = await call(a, method, target);
      expect({ target, status: r.status }).toEqual({ target, status: 409 });
      expect(JSON.parse(r.body).message).toContain(TAKEN);
      expect(r.body).not.toContain(leases.b.fingerprint.slice(0, 16));
    }
    // Only the front's own look-ups (unprefixed) reached the engine for A's refused reads.
    expect(seen.filter((s) => s.includes('/v1.41/images/'))).toEqual(['GET /v1.41/images/app:test/json']);
    expect(images.has('mine:1')).toBe(false);
    expect(await call(a, 'GET', `/images/${ID1}/json`)).toMatchObject({ status: 200 });
    expect(await call(a, 'GET', `/images/app@sha256:${'1'.repeat(64)}/json`)).toMatchObject({ status: 404 }); // the engine's answer
    expect((await call(b, 'GET', '/images/app:test/json')).body).toContain(ID2);
    expect((await call(c, 'GET', '/images/app:test/json')).body).toContain(ID2); // never set it: may read it
    expect(await call(c, 'POST', '/images/app/push?tag=test')).toMatchObject({ status: 200 });
    for (const s of [a, b, c]) s.destroy();
  });

  it('building the tag again makes A its setter; a tag (docker tag) sets a name the same way', async () => {
    const [a, b] = [await open('a'), await open('b')];
    await build(a, ID1);
    await build(b, ID2);
    expect(await call(a, 'GET', '/images/app:test/json')).toMatchObject({ status: 409 });
    await build(a, ID1);
    expect((await call(a, 'GET', '/images/app:test/json')).body).toContain(ID1);
    expect(await call(b, 'GET', '/images/app:test/json')).toMatchObject({ status: 409 });
    // B points the name back at its image with `docker tag <id> app:test`: B is the setter again.
    expect(await call(b, 'POST', `/images/${ID2}/tag?repo=app&tag=test`)).toMatchObject({ status: 201 });
    expect(await call(b, 'GET', '/images/app:test/json')).toMatchObject({ status: 200 });
    expect(await call(a, 'GET', '/images/app:test/json')).toMatchObject({ status: 409 });
    a.destroy();
    b.destroy();
  });

  it('a failed build changes nothing; the engine is asked again at read time; revoke forgets the lease', async () => {
    const [a, b] = [await open('a'), await open('b')];
    await build(a, ID1, 't=app:test&t=localhost:5000/app:1');
    await build(b, ''); // failed: tags nothing
    expect(await call(a, 'GET', '/images/app:test/json')).toMatchObject({ status: 200 });
    expect(await call(b, 'GET', '/images/app:test/json')).toMatchObject({ status: 200 });
    await build(b, ID2);
    expect(await call(a, 'GET', '/images/app:test/json')).toMatchObject({ status: 409 });
    expect(await call(a, 'GET', '/images/localhost:5000/app:1/json')).toMatchObject({ status: 200 }); // another name
    images.set('app:test', ID1); // the name names A's image again (changed by the engine, unseen by the front)
    expect(await call(a, 'GET', '/images/app:test/json')).toMatchObject({ status: 200 });
    images.set('app:test', ID2);
    p.revoke(leases.a.fingerprint);
    p.allow(leases.a.fingerprint); // the same cert let in again: its names were forgotten
    const again = await open('a');
    expect(await call(again, 'GET', '/images/app:test/json')).toMatchObject({ status: 200 });
    b.destroy();
    again.destroy();
  });
});
