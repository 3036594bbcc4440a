// The org cache probe before a build (build-cache-probe.ts): up, down, slow; against a real HTTP server on loopback
// (the registry proxy speaks plain HTTP there) and a port nothing listens on.
import * as http from 'http';
import * as net from 'net';
import {
  cacheExportTimedOut,
  cacheExportTimeoutMs,
  cacheProbeTimeoutMs,
  cacheUnavailableWarning,
  orgCacheUnavailable,
  DEFAULT_CACHE_EXPORT_TIMEOUT_MS,
  DEFAULT_CACHE_PROBE_TIMEOUT_MS
} from '../../src/core/build-cache-probe';

let server: http.Server;
let host: string;
let answer: (req: http.IncomingMessage, res: http.ServerResponse) => void;
const seen: { method?: string; url?: string; auth?: string }[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    seen.push({ method: req.method, url: req.url, auth: req.headers.authorization });
    answer(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});
beforeEach(() => (seen.length = 0));

const reg = () => ({ host, username: 'lease-1', password: 'pw' });
const status = (code: number) => (_req: http.IncomingMessage, res: http.ServerResponse) => res.writeHead(code).end();

describe('orgCacheUnavailable', () => {
  test.each([200, 404, 401])('a registry answering %i is available: null', async (code) => {
    answer = status(code);
    expect(await orgCacheUnavailable(reg(), 2000)).toBeNull();
    expect(seen).toEqual([{ method: 'GET', url: '/v2/', auth: `Basic ${Buffer.from('lease-1:pw').toString('base64')}` }]);
  });

  test.each([502, 503, 504])('a proxy answering %i (its registry down) is unavailable, saying the status', async (code) => {
    answer = status(code);
    expect(await orgCacheUnavailable(reg(), 2000)).toBe(`it answered HTTP ${code}`);
  });

  test('a registry that never answers is unavailable after the timeout, not later', async () => {
    answer = () => undefined;
    const t0 = Date.now();
    expect(await orgCacheUnavailable(reg(), 300)).toBe('no answer within 0.3 s');
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  test('nothing listening: unavailable, with the system error', async () => {
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise((r) => free.close(r));
    const h = `127.0.0.1:${port}`;
    expect(await orgCacheUnavailable({ ...reg(), host: h }, 2000)).toBe('ECONNREFUSED');
  });
});

describe('probe settings and words', () => {
  test.each([
    [undefined, DEFAULT_CACHE_PROBE_TIMEOUT_MS],
    ['', DEFAULT_CACHE_PROBE_TIMEOUT_MS],
    ['2', 2000],
    ['0.5s', 500]
  ])('BUILDCLOUD_CACHE_PROBE_TIMEOUT=%s is %i ms', (v, ms) => expect(cacheProbeTimeoutMs({ BUILDCLOUD_CACHE_PROBE_TIMEOUT: v })).toBe(ms));

  test.each(['0', 'soon', '301', '-1'])('BUILDCLOUD_CACHE_PROBE_TIMEOUT=%s is refused, naming the variable and what it expects', (v) => {
    expect(() => cacheProbeTimeoutMs({ BUILDCLOUD_CACHE_PROBE_TIMEOUT: v })).toThrow(/BUILDCLOUD_CACHE_PROBE_TIMEOUT .*expected seconds between 0.1 and 300/);
  });

  test.each([
    [undefined, DEFAULT_CACHE_EXPORT_TIMEOUT_MS],
    ['30', 30_000],
    ['600s', 600_000]
  ])('BUILDCLOUD_CACHE_EXPORT_TIMEOUT=%s is %i ms', (v, ms) => expect(cacheExportTimeoutMs({ BUILDCLOUD_CACHE_EXPORT_TIMEOUT: v })).toBe(ms));

  test.each(['0.5', 'never', '86401'])('BUILDCLOUD_CACHE_EXPORT_TIMEOUT=%s is refused, naming the variable and what it expects', (v) => {
    expect(() => cacheExportTimeoutMs({ BUILDCLOUD_CACHE_EXPORT_TIMEOUT: v })).toThrow(
      /BUILDCLOUD_CACHE_EXPORT_TIMEOUT .*expected seconds between 1 and 86400/
    );
  });

  test('a stopped cache export says where, after how long, and that the build is unaffected', () => {
    expect(cacheExportTimedOut('127.0.0.1:5000/acme/app/cache:up-1', 10_000)).toBe(
      "the org cache export to 127.0.0.1:5000/acme/app/cache:up-1 did not finish within 10 s (BUILDCLOUD_CACHE_EXPORT_TIMEOUT) and was stopped: the org cache's registry is slow or down; the build itself is unaffected, and later builds will not reuse this one's layers"
    );
  });

  test('the warning says the build runs without the org cache and is unaffected', () => {
    expect(cacheUnavailableWarning('127.0.0.1:5000', 'no answer within 5.0 s')).toBe(
      'the org cache (registry 127.0.0.1:5000) is unavailable (no answer within 5.0 s): this build runs without it, importing no layers from it and exporting none to it; the build itself is unaffected. Later builds reuse the org cache again once its registry answers.'
    );
  });
});
