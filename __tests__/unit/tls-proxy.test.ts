import { promises as fs } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as tls from 'tls';
import { Pki, CertPair } from '../../src/server/pki';
import { BuilderTlsProxy } from '../../src/server/tls-proxy';

// A stand-in for dockerd's API socket: /_ping, and a 101 upgrade after which bytes are echoed (like /session).
function startEngine(socketPath: string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.url === '/_ping') {
      res.end('OK');
      return;
    }
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => res.end(`echo:${body}`));
  });
  server.on('upgrade', (req, sock: net.Socket, head: Buffer) => {
    sock.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    if (head.length) sock.write(head);
    sock.pipe(sock); // raw echo after the upgrade
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

// A raw echo engine that answers "bye" once the client half-closes: tests byte piping and half-close.
function startRawEngine(socketPath: string): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('data', (d) => sock.write(d));
    sock.on('end', () => sock.end('bye'));
    sock.on('error', () => undefined);
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

function connect(
  port: number,
  pki: Pki,
  cert: CertPair | null,
  opts: { halfOpen?: boolean; socket?: net.Socket } = {},
): tls.TLSSocket {
  // allowHalfOpen reaches the underlying net.Socket at runtime but is missing from @types/node's ConnectionOptions.
  const options: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
    ...(opts.socket ? { socket: opts.socket } : { host: '127.0.0.1', port }),
    ca: pki.caPem,
    cert: cert?.certPem,
    key: cert?.keyPem,
    servername: 'localhost',
    allowHalfOpen: opts.halfOpen ?? false,
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

describe('BuilderTlsProxy', () => {
  let dir: string;
  let pki: Pki;
  let server: CertPair;
  let leaseA: CertPair;
  let leaseB: CertPair;
  let rawSocket: string;
  let httpSocket: string;
  let rawEngine: net.Server;
  let httpEngine: http.Server;
  const proxies: BuilderTlsProxy[] = [];

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-proxy-'));
    pki = await Pki.loadOrCreate(path.join(dir, 'pki'));
    server = await pki.issueServer(['127.0.0.1', 'localhost']);
    leaseA = await pki.issueClient('lease-a', 3600_000);
    leaseB = await pki.issueClient('lease-b', 3600_000);
    rawSocket = path.join(dir, 'raw.sock');
    httpSocket = path.join(dir, 'http.sock');
    rawEngine = await startRawEngine(rawSocket);
    httpEngine = await startEngine(httpSocket);
  });
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });
  afterAll(async () => {
    await new Promise((r) => rawEngine.close(r));
    httpEngine.closeAllConnections();
    await new Promise((r) => httpEngine.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function proxy(socketPath = rawSocket, onActivity?: (fp: string) => void): Promise<BuilderTlsProxy> {
    const p = new BuilderTlsProxy({ socketPath, server, caPem: pki.caPem, onActivity });
    proxies.push(p);
    await p.listen();
    return p;
  }

  it('pipes an allowed client to the engine, with half-close in both directions', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    expect(p.address).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    const port = Number(p.address.split(':').pop());
    const sock = connect(port, pki, leaseA, { halfOpen: true });
    const done = collect(sock);
    await new Promise((r) => sock.once('secureConnect', r));
    sock.write('hello ');
    await waitFor(() => p.activeConnections(leaseA.fingerprint) === 1);
    // Half-close: the engine answers "bye" only after it saw our end, and we must still receive it.
    sock.end('world');
    const { data, error } = await done;
    expect(error).toBeNull();
    expect(data).toBe('hello worldbye');
    await waitFor(() => p.activeConnections() === 0);
  });

  it('refuses a cert of another lease from the same CA', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const sock = connect(port, pki, leaseB);
    sock.on('secureConnect', () => sock.write('GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n'));
    const { data } = await collect(sock);
    // Answered by the proxy itself (so the docker CLI can say why), never by the engine, which echoes.
    expect(data).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(data).toContain('not allowed on this builder');
    expect(data).not.toContain('GET /_ping');
    expect(p.activeConnections()).toBe(0);
  });

  it('refuses clients without a cert and with a cert of another CA', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const none = connect(port, pki, null);
    none.on('secureConnect', () => none.write('x'));
    expect((await collect(none)).data).toBe('');

    const other = await Pki.loadOrCreate(path.join(dir, 'other-ca'));
    const foreign = await other.issueClient('intruder', 3600_000);
    p.allow(foreign.fingerprint); // even when allowed, the chain must verify against our CA
    const bad = connect(port, pki, foreign);
    bad.on('secureConnect', () => bad.write('x'));
    expect((await collect(bad)).data).toBe('');
    expect(p.activeConnections()).toBe(0);
  });

  it('revoke cuts open connections of that cert only, and refuses it afterwards', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    p.allow(leaseB.fingerprint.toUpperCase().replace(/(..)(?!$)/g, '$1:')); // Node's colon form is accepted too
    const port = Number(p.address.split(':').pop());
    const a = connect(port, pki, leaseA);
    const b = connect(port, pki, leaseB);
    const aDone = collect(a);
    let aData = '';
    let bData = '';
    a.on('data', (d) => (aData += d));
    b.on('data', (d) => (bData += d));
    a.write('a1');
    b.write('b1');
    await waitFor(() => aData === 'a1' && bData === 'b1');
    expect(p.activeConnections(leaseA.fingerprint)).toBe(1);
    expect(p.activeConnections(leaseB.fingerprint)).toBe(1);
    expect(p.activeConnections()).toBe(2);
    p.revoke(leaseA.fingerprint);
    const aResult = await aDone; // closes without our doing anything
    expect(aResult.data).toBe('a1');
    expect(p.activeConnections(leaseA.fingerprint)).toBe(0);
    // B is untouched.
    b.write('b2');
    await waitFor(() => bData === 'b1b2');
    expect(p.activeConnections()).toBe(1);
    const again = connect(port, pki, leaseA);
    again.on('secureConnect', () => again.write('x'));
    expect((await collect(again)).data).toMatch(/^HTTP\/1\.1 403 /);
    b.destroy();
  });

  it('calls onActivity on connect and at most once a second on traffic', async () => {
    const seen: string[] = [];
    const p = await proxy(rawSocket, (fp) => seen.push(fp));
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const sock = connect(port, pki, leaseA);
    let got = '';
    sock.on('data', (d) => (got += d));
    await waitFor(() => seen.length === 1);
    expect(seen[0]).toBe(leaseA.fingerprint);
    for (let i = 0; i < 20; i++) sock.write('x');
    await waitFor(() => got.length === 20);
    expect(seen.length).toBe(1); // throttled: still within the first second
    await new Promise((r) => setTimeout(r, 1100));
    sock.write('y');
    await waitFor(() => seen.length === 2);
    sock.destroy();
  });

  it('passes HTTP requests and 101 upgrades through untouched', async () => {
    const p = await proxy(httpSocket);
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const agent = new https.Agent({ ca: pki.caPem, cert: leaseA.certPem, key: leaseA.keyPem });
    const body = await new Promise<string>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port, path: '/_ping', agent }, (res) => {
          let b = '';
          res.on('data', (d) => (b += d));
          res.on('end', () => resolve(b));
        })
        .on('error', reject);
    });
    expect(body).toBe('OK');

    const echoed = await new Promise<string>((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1',
        port,
        path: '/session',
        method: 'POST',
        agent,
        headers: { Connection: 'Upgrade', Upgrade: 'h2c' },
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
    agent.destroy();
  });

  it('survives an engine that is not there', async () => {
    const p = await proxy(path.join(dir, 'missing.sock'));
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const sock = connect(port, pki, leaseA);
    sock.on('secureConnect', () => sock.write('x'));
    expect((await collect(sock)).data).toBe('');
    await waitFor(() => p.activeConnections() === 0);
    // Still serving afterwards.
    const again = connect(port, pki, leaseA);
    again.on('secureConnect', () => again.end());
    await collect(again);
  });

  it('survives a client that resets mid-stream', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const raw = net.connect(port, '127.0.0.1');
    const sock = connect(port, pki, leaseA, { socket: raw });
    sock.on('error', () => undefined);
    sock.write('x'.repeat(100_000));
    await waitFor(() => p.activeConnections() === 1);
    raw.resetAndDestroy();
    await waitFor(() => p.activeConnections() === 0);
  });

  it('close() stops listening and drops every connection', async () => {
    const p = await proxy();
    p.allow(leaseA.fingerprint);
    const port = Number(p.address.split(':').pop());
    const sock = connect(port, pki, leaseA);
    const closed = collect(sock);
    let got = '';
    sock.on('data', (d) => (got += d));
    sock.write('hi');
    await waitFor(() => got === 'hi');
    expect(p.activeConnections()).toBe(1);
    // A connection stuck in its handshake must not keep close() waiting.
    const raw = net.connect(port, '127.0.0.1');
    raw.on('error', () => undefined);
    await new Promise((r) => raw.once('connect', r));
    await p.close();
    expect((await closed).data).toBe('hi');
    expect(p.activeConnections()).toBe(0);
    await expect(
      new Promise((resolve, reject) => net.connect(port, '127.0.0.1').on('connect', resolve).on('error', reject)),
    ).rejects.toThrow(/ECONNREFUSED/);
  });
});
