// The head start of a job's first https request (src/core/preconnect.ts): the connection opened early is the one the
// request uses, it is verified as the request's own would be, and a connection that failed meanwhile is not used.
import * as fs from 'fs';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import type * as net from 'net';
import { Pki } from '../../src/server/pki';
import { adoptPreconnected, preconnect } from '../../src/core/preconnect';
import { httpRequest } from '../../src/core/http-request';

let server: https.Server;
let url: string;
let caFile: string;
let connections: number;

beforeAll(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-preconnect-'));
  const pki = await Pki.loadOrCreate(path.join(dir, 'ca'));
  const cert = await pki.issueServer(['127.0.0.1']);
  caFile = path.join(dir, 'ca.pem');
  fs.writeFileSync(caFile, pki.caPem);
  server = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
  });
  server.on('secureConnection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});
afterAll(() => {
  server.closeAllConnections();
  server.close();
});
beforeEach(() => (connections = 0));

const waitFor = async (cond: () => boolean) => {
  while (!cond()) await new Promise((r) => setImmediate(r));
};

test('the request uses the connection opened early: one TLS connection in all, made before the request', async () => {
  const env = { BUILDCLOUD_CA_FILE: caFile };
  expect(preconnect(url, env)).toBe(true);
  await waitFor(() => connections === 1); // the handshake completed with nothing requested yet
  process.env.BUILDCLOUD_CA_FILE = caFile;
  try {
    const r = await httpRequest(`${url}/x`, { method: 'POST', body: '{}', preconnected: true });
    expect([r.status, r.text]).toEqual([200, '{"ok":true}']);
  } finally {
    delete process.env.BUILDCLOUD_CA_FILE;
  }
  expect(connections).toBe(1);
  expect(adoptPreconnected(new URL(url).origin)).toBeNull(); // handed over once
});

test('a server the runner does not trust: the early connection fails and is not used; the request fails on its own', async () => {
  expect(preconnect(url, {})).toBe(true); // no BUILDCLOUD_CA_FILE: the private CA is not trusted
  await waitFor(() => connections === 0 && adoptPreconnectedPeek(url));
  const err = await httpRequest(`${url}/x`, { method: 'POST', body: '{}', preconnected: true }).catch((e: Error & { cause?: { code?: string } }) => e);
  expect((err as Error & { cause?: { code?: string } }).cause?.code).toMatch(/SELF_SIGNED|UNABLE_TO_VERIFY/);
});

test('nothing is opened for http:// or gRPC endpoints, or an endpoint that does not parse', () => {
  expect(preconnect('http://127.0.0.1:1', {})).toBe(false);
  expect(preconnect('127.0.0.1:1', {})).toBe(false);
  expect(preconnect('grpcs://127.0.0.1:1', {})).toBe(false);
  expect(preconnect('not an endpoint', {})).toBe(false);
  expect(adoptPreconnected('http://127.0.0.1:1')).toBeNull();
});

// Whether the early connection to `u` has settled (failed, or verified): the test waits for the failure to land.
function adoptPreconnectedPeek(u: string): boolean {
  const held = (globalThis as unknown as Record<symbol, Map<string, { failed: boolean; socket: { authorized?: boolean } }>>)[
    Symbol.for('buildcloud.preconnected')
  ]?.get(new URL(u).origin);
  return !held || held.failed;
}
