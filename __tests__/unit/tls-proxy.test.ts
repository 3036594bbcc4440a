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
