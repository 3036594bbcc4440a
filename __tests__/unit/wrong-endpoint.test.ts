// Issue 12: a wrong endpoint fails within 5 s with ONE message naming the endpoint and the likely mistake, instead
// of 121 s of retries. Every case against a real listener this test makes on loopback (refused port, unknown host,
// the other protocol, TLS mismatches in both directions, an untrusted certificate, a server that is no control
// plane), plus what is still retried because it can heal: a control plane restarting after it answered, a rate
// limit, a 503 with Retry-After.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { ApiClient, ControlPlaneError, EndpointError, type ApiClientOptions } from '../../src/core/api-client';
import { endpointProblem, speaksOf, type Reach } from '../../src/core/endpoint-probe';
import { plainDetails } from '../../src/core/grpc-transport';
import { parseEndpoint } from '../../src/core/endpoint';
import type { ProvisionRequestMsg } from '../../src/contract/grpc';
import { FakeControlPlane, leaseFor, rpcError } from '../fixtures/fake-control-plane';

const REQ: ProvisionRequestMsg = {
  org: 'acme',
  pipelineKey: '4242/9001/1',
  jobId: 'build-0',
  platforms: ['linux/amd64'],
  scope: 'SCOPE_PIPELINE',
  identity: { provider: 'github', project: 'acme/widget-api', branch: 'main', defaultBranch: 'main', fork: false, actor: 'octocat', runUrl: '' }
};

let dir: string;
let key: Buffer;
let cert: Buffer;
let plane: FakeControlPlane; // a control plane: gRPC on plane.address, HTTP/JSON on plane.connectUrl
const closers: Array<() => void> = [];
const clients: ApiClient[] = [];
const savedCa = process.env.BUILDCLOUD_CA_FILE;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-wrong-endpoint-'));
  const ossl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: 'pipe' });
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca');
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
  ossl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '1', '-extfile', 'ext');
  key = fs.readFileSync(path.join(dir, 'srv.key'));
  cert = fs.readFileSync(path.join(dir, 'srv.pem'));
  plane = await FakeControlPlane.start();
});
afterAll(() => {
  plane.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => {
  plane.reset();
  process.env.BUILDCLOUD_CA_FILE = path.join(dir, 'ca.pem'); // the TLS listeners' CA is trusted unless a test says otherwise
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const close of closers.splice(0)) close();
  if (savedCa === undefined) delete process.env.BUILDCLOUD_CA_FILE;
  else process.env.BUILDCLOUD_CA_FILE = savedCa;
});

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const open = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => open.add(s));
  server.on('secureConnection', (s: net.Socket) => open.add(s));
  closers.push(() => {
    for (const s of open) s.destroy();
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

/** A port nothing listens on: one this test listened on and closed. */
async function refusedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A web server that is no control plane: 404 for everything, as any web server answers an unknown path. */
const notFound = (_req: http.IncomingMessage, res: http.ServerResponse) => res.writeHead(404, { 'content-type': 'text/plain' }).end('404 page not found');

async function grpcTlsPort(): Promise<number> {
  const s = new grpc.Server();
  const port = await new Promise<number>((resolve, reject) =>
    s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createSsl(null, [{ cert_chain: cert, private_key: key }], false), (e, p) => (e ? reject(e) : resolve(p)))
  );
  closers.push(() => s.forceShutdown());
  return port;
}

function client(endpoint: string, over: Partial<ApiClientOptions> = {}): ApiClient {
  const c = new ApiClient({ endpoint, token: 'bct_org_token', attempts: 5, baseDelayMs: 5, maxDelayMs: 20, ...over });
  clients.push(c);
  return c;
}

/** Provision against `endpoint` with retries allowed: the error, how long it took, and how many retries were made. */
async function provisionFails(endpoint: string): Promise<{ err: ControlPlaneError; ms: number; retries: number }> {
  const onRetry = jest.fn();
  const started = Date.now();
  const err = await client(endpoint, { onRetry })
    .provision(REQ)
    .then(
      () => {
        throw new Error(`expected ${endpoint} to fail`);
      },
      (e: unknown) => e as ControlPlaneError
    );
  return { err, ms: Date.now() - started, retries: onRetry.mock.calls.length };
}

describe('a wrong endpoint: one message, at once, never retried', () => {
  test('connection refused', async () => {
    const port = await refusedPort();
    for (const endpoint of [`127.0.0.1:${port}`, `http://127.0.0.1:${port}`]) {
      const { err, ms, retries } = await provisionFails(endpoint);
      expect(err).toBeInstanceOf(EndpointError);
      expect(err.message).toBe(`Endpoint '${endpoint}': nothing listens on 127.0.0.1:${port}: is the control plane running, and is this its port?`);
      expect([err.transient, (err as EndpointError).reachable, retries]).toEqual([false, false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test('an unknown host (DNS)', async () => {
    for (const endpoint of ['cp.buildcloud.invalid:7643', 'https://cp.buildcloud.invalid:7644']) {
      const { err, ms, retries } = await provisionFails(endpoint);
      expect(err.message).toBe(
        `Endpoint '${endpoint}': the host name 'cp.buildcloud.invalid' does not resolve (ENOTFOUND): check its spelling, or use the control plane's IP address.`
      );
      expect([err.transient, (err as EndpointError).reachable, retries]).toEqual([false, false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test("the gRPC port given as an http:// URL: 'this port answers gRPC'", async () => {
    const endpoint = `http://${plane.address}`;
    const { err, ms, retries } = await provisionFails(endpoint);
    expect(err.message).toBe(`Endpoint '${endpoint}': this port answers gRPC, not HTTP/1.1: use ${plane.address} (or the control plane's HTTP port).`);
    expect([err.transient, (err as EndpointError).reachable, retries]).toEqual([false, true, 0]);
    expect(ms).toBeLessThan(5000);
    expect(plane.calls).toEqual([]);
  });

  test("the HTTP port given as host:port for gRPC: 'this port answers HTTP/1.1'", async () => {
    const hostPort = plane.connectUrl.replace('http://', '');
    const { err, ms, retries } = await provisionFails(hostPort);
    expect(err.message).toBe(`Endpoint '${hostPort}': this port answers HTTP/1.1, not gRPC: use ${plane.connectUrl}`);
    expect([err.transient, retries]).toEqual([false, 0]);
    expect(ms).toBeLessThan(5000);
    expect(plane.calls).toEqual([]);
  });

  test('TLS (https://, grpcs://) against a plaintext server', async () => {
    const hostPort = plane.connectUrl.replace('http://', '');
    const cases = [
      [`https://${hostPort}`, `this port answers without TLS: use ${plane.connectUrl} (or serve TLS: buildcloud serve --tls-cert FILE --tls-key FILE).`],
      [`grpcs://${plane.address}`, `this port answers without TLS: use ${plane.address} (or serve TLS: buildcloud serve --tls-cert FILE --tls-key FILE).`]
    ];
    for (const [endpoint, problem] of cases) {
      const { err, ms, retries } = await provisionFails(endpoint);
      expect(err.message).toBe(`Endpoint '${endpoint}': ${problem}`);
      expect([err.transient, retries]).toEqual([false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test('plaintext (http://, host:port) against a TLS server', async () => {
    const web = await listen(https.createServer({ key, cert }, notFound));
    const rpc = await grpcTlsPort();
    const cases = [
      [`http://127.0.0.1:${web}`, `this port answers only over TLS: use https://127.0.0.1:${web}`],
      [`127.0.0.1:${rpc}`, `this port answers only over TLS: use grpcs://127.0.0.1:${rpc}`]
    ];
    for (const [endpoint, problem] of cases) {
      const { err, ms, retries } = await provisionFails(endpoint);
      expect(err.message).toBe(`Endpoint '${endpoint}': ${problem}`);
      expect([err.transient, retries]).toEqual([false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test("TLS with a certificate this runner does not trust: 'set BUILDCLOUD_CA_FILE'", async () => {
    delete process.env.BUILDCLOUD_CA_FILE;
    const web = await listen(https.createServer({ key, cert }, notFound));
    const rpc = await grpcTlsPort();
    for (const hostPort of [`https://127.0.0.1:${web}`, `grpcs://127.0.0.1:${rpc}`]) {
      const { err, ms, retries } = await provisionFails(hostPort);
      expect(err.message).toBe(
        `Endpoint '${hostPort}': the certificate of ${hostPort.replace(/^\w+:\/\//, '')} is not trusted here (UNABLE_TO_VERIFY_LEAF_SIGNATURE): set BUILDCLOUD_CA_FILE to the PEM file of the CA that signed it, or use the host name the certificate names.`
      );
      expect([err.transient, retries]).toEqual([false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test('a web server that is not Build Cloud (HTTP 404)', async () => {
    const port = await listen(http.createServer(notFound));
    const endpoint = `http://127.0.0.1:${port}/buildcloud`;
    const { err, ms, retries } = await provisionFails(endpoint);
    expect(err.message).toBe(
      `Endpoint '${endpoint}': this server answers HTTP/1.1 but is not a Build Cloud control plane (POST /buildcloud/buildcloud.v1.BuildCloud/Provision: HTTP 404). Use the endpoint \`buildcloud serve\` prints (behind a proxy, with its path prefix).`
    );
    expect([err.transient, (err as EndpointError).reachable, retries]).toEqual([false, true, 0]);
    expect(ms).toBeLessThan(5000);
  });

  test('a gRPC server that is not Build Cloud (UNIMPLEMENTED)', async () => {
    const s = new grpc.Server();
    const port = await new Promise<number>((resolve, reject) =>
      s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p)))
    );
    closers.push(() => s.forceShutdown());
    const { err, retries } = await provisionFails(`127.0.0.1:${port}`);
    expect(err.message).toBe(
      `Endpoint '127.0.0.1:${port}': this port answers gRPC but does not serve BuildCloud/Provision: it is not a Build Cloud control plane (or one older than this client). Use the endpoint \`buildcloud serve\` prints.`
    );
    expect(retries).toBe(0);
  });

  test('a port that speaks neither HTTP/1.1 nor gRPC (an SSH server)', async () => {
    const port = await listen(net.createServer((s) => s.end('SSH-2.0-OpenSSH_9.2p1\r\n')));
    for (const endpoint of [`127.0.0.1:${port}`, `http://127.0.0.1:${port}`]) {
      const { err, ms, retries } = await provisionFails(endpoint);
      expect(err.message).toBe(
        `Endpoint '${endpoint}': this port answers, but neither as HTTP/1.1 nor as gRPC (it sent 'SSH-2.0-OpenSSH_9.2p1'): it is not a Build Cloud control plane. Use the endpoint \`buildcloud serve\` prints.`
      );
      expect([err.transient, retries]).toEqual([false, 0]);
      expect(ms).toBeLessThan(5000);
    }
  });

  test('ExchangeToken (the first call of an OIDC job) is checked the same way', async () => {
    const port = await refusedPort();
    const err = await client(`127.0.0.1:${port}`)
      .exchangeToken('jwt')
      .catch((e: ControlPlaneError) => e);
    expect(err).toBeInstanceOf(EndpointError);
    expect((err as Error).message).toBe(
      `Endpoint '127.0.0.1:${port}': nothing listens on 127.0.0.1:${port}: is the control plane running, and is this its port?`
    );
  });
});

describe('what can heal is still retried', () => {
  test('a control plane at capacity (UNAVAILABLE from the control plane itself): retried, no endpoint message', async () => {
    for (const endpoint of [plane.address, plane.connectUrl]) {
      plane.reset();
      plane.on('Provision', (req, n) => {
        if (n <= 2) throw rpcError(grpc.status.UNAVAILABLE, 'control plane at capacity (8 builders)');
        return leaseFor(req);
      });
      const onRetry = jest.fn();
      expect((await client(endpoint, { onRetry }).provision(REQ)).id).toBe('lease-0001');
      expect(onRetry.mock.calls.map(([r]) => r.error)).toEqual(['control plane at capacity (8 builders)', 'control plane at capacity (8 builders)']);
    }
  });

  // Decided (api-client.ts): a refused connection is a wrong address until the control plane has answered; after
  // that, in this process, it is a control plane restarting, retried with backoff like any UNAVAILABLE.
  test('connection refused AFTER a first success in this process: a restart, retried', async () => {
    plane.on('Provision', (req) => leaseFor(req));
    // A front the test can take down: connections to it are passed to the control plane's HTTP port.
    const [, planePort] = plane.connectUrl.replace('http://', '').split(':');
    const front = net.createServer((s) => {
      const up = net.connect(Number(planePort), '127.0.0.1');
      s.pipe(up).pipe(s);
      s.on('error', () => up.destroy());
      up.on('error', () => s.destroy());
    });
    const port = await listen(front);
    const onRetry = jest.fn();
    const c = client(`http://127.0.0.1:${port}`, { onRetry, attempts: 3 });
    expect((await c.provision(REQ)).id).toBe('lease-0001');
    closers.pop()!(); // the control plane goes away: its port now refuses connections
    const err = await c.provision(REQ).catch((e: ControlPlaneError) => e);
    expect(err).not.toBeInstanceOf(EndpointError);
    expect(err).toBeInstanceOf(ControlPlaneError);
    expect([(err as ControlPlaneError).transient, (err as ControlPlaneError).attempts, onRetry.mock.calls.length]).toEqual([true, 3, 2]);
    expect((err as Error).message).toBe('Provision failed: request failed (ECONNREFUSED) (UNAVAILABLE, after 3 attempts)');
  });

  test('Release and Get (about a lease the endpoint gave) treat a refused connection as a restart', async () => {
    const port = await refusedPort();
    const onRetry = jest.fn();
    const err = await client(`127.0.0.1:${port}`, { onRetry, attempts: 3 })
      .release('lease-0001')
      .catch((e: ControlPlaneError) => e);
    expect(err).not.toBeInstanceOf(EndpointError);
    expect([(err as ControlPlaneError).transient, onRetry.mock.calls.length]).toEqual([true, 2]);
    expect((err as Error).message).toBe(
      `Release failed: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:${port} (UNAVAILABLE, after 3 attempts)`
    );
  });

  test("HTTP 503 with Retry-After: waited for the server's delay, then retried", async () => {
    let n = 0;
    const port = await listen(
      http.createServer((req, res) => {
        req.resume();
        if (++n === 1) return res.writeHead(503, { 'content-type': 'text/html', 'retry-after': '2' }).end('<html>Service Unavailable</html>');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'lease-0002', builders: [] }));
      })
    );
    const slept: number[] = [];
    const lease = await client(`http://127.0.0.1:${port}`, { sleep: async (ms) => void slept.push(ms) }).provision(REQ);
    expect(lease.id).toBe('lease-0002');
    expect(slept).toHaveLength(1);
    expect(slept[0]).toBeGreaterThanOrEqual(2000);
    expect(slept[0]).toBeLessThan(2200);
  });
});

describe('endpointProblem (pure)', () => {
  const grpcEp = parseEndpoint('cp.example.com:7643');
  const httpEp = parseEndpoint('https://cp.example.com/buildcloud');
  test.each<[string, ReturnType<typeof parseEndpoint>, Reach, string | null]>([
    ['a timeout says nothing', grpcEp, { kind: 'inconclusive' }, null],
    ['a control plane that speaks as expected', grpcEp, { kind: 'answers', tls: false, speaks: 'http2' }, null],
    ['HTTPS as expected', httpEp, { kind: 'answers', tls: true, speaks: 'http1' }, null],
    [
      'no route',
      grpcEp,
      { kind: 'unreachable', code: 'EHOSTUNREACH' },
      "cp.example.com:7643 cannot be reached from here (EHOSTUNREACH): is the address right, and may this runner's network reach it?"
    ],
    [
      'an HTTPS URL on a TLS gRPC port',
      httpEp,
      { kind: 'answers', tls: true, speaks: 'http2' },
      "this port answers gRPC, not HTTP/1.1: use grpcs://cp.example.com:443 (or the control plane's HTTP port)."
    ],
    [
      'a gRPC endpoint on a plaintext HTTP port keeps no path',
      grpcEp,
      { kind: 'answers', tls: false, speaks: 'http1' },
      'this port answers HTTP/1.1, not gRPC: use http://cp.example.com:7643'
    ],
    [
      'http:// to a TLS web server keeps the path',
      parseEndpoint('http://cp.example.com:8080/bc'),
      { kind: 'answers', tls: true, speaks: 'http1' },
      'this port answers only over TLS: use https://cp.example.com:8080/bc'
    ]
  ])('%s', (_name, where, reach, problem) => {
    expect(endpointProblem(where, reach)?.problem ?? null).toBe(problem);
  });

  test.each([
    ['an HTTP/1.1 status line', Buffer.from('HTTP/1.1 400 Bad Request\r\n'), 'http1'],
    ['an HTTP/2 SETTINGS frame', Buffer.from('000000040000000000', 'hex'), 'http2'],
    ['an HTTP/2 GOAWAY frame', Buffer.from('000008070000000000', 'hex'), 'http2'],
    ['a TLS alert', Buffer.from('15030300020250', 'hex'), 'other']
  ])('speaksOf: %s', (_name, bytes, speaks) => {
    expect(speaksOf(bytes).speaks).toBe(speaks);
  });
});

test("grpc-js's failure text, as a person reads it: no empty 'Resolution note', no timestamps", () => {
  expect(plainDetails('No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ')).toBe(
    'No connection established. Last error: connect ECONNREFUSED 127.0.0.1:1'
  );
  expect(plainDetails('No connection established. Last error: Protocol error (2026-11-30T21:03:22.254Z). Resolution note: ')).toBe(
    'No connection established. Last error: Protocol error'
  );
  expect(plainDetails('control plane at capacity')).toBe('control plane at capacity');
});
