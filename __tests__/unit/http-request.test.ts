// The runner's node:http request helper against real loopback servers: replies, the size bound, the abort signal's
// reason, refused connections in fetch's shape (message plus cause), and https trusting BUILDCLOUD_CA_FILE.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { headerValue, httpRequest } from '../../src/core/http-request';

const servers: Array<http.Server> = [];
const listen = async (s: http.Server): Promise<number> => {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as AddressInfo).port;
};
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

describe('httpRequest', () => {
  it('sends method, headers and body, and returns status, headers and text', async () => {
    const port = await listen(
      http.createServer((req, res) => {
        let body = '';
        req.on('data', (c) => (body += c));
        req.on('end', () => {
          res.writeHead(429, { 'retry-after': '3', 'content-type': 'application/json' });
          res.end(JSON.stringify({ method: req.method, auth: req.headers.authorization, body, length: req.headers['content-length'] }));
        });
      })
    );
    const r = await httpRequest(`http://127.0.0.1:${port}/v1/events`, { method: 'POST', headers: { authorization: 'Bearer t' }, body: 'héllo' });
    expect(r.status).toBe(429);
    expect(headerValue(r.headers, 'Retry-After')).toBe('3');
    expect(headerValue(r.headers, 'x-none')).toBeNull();
    expect(JSON.parse(r.text)).toEqual({ method: 'POST', auth: 'Bearer t', body: 'héllo', length: '6' });
  });

  it('refuses a reply larger than maxBytes', async () => {
    const port = await listen(http.createServer((_req, res) => res.end('x'.repeat(10_000))));
    await expect(httpRequest(`http://127.0.0.1:${port}/`, { maxBytes: 1000 })).rejects.toThrow('the reply is larger than 1000 bytes');
  });

  it("rejects with the signal's reason when no reply comes in time", async () => {
    const port = await listen(http.createServer(() => undefined)); // never answers
    await expect(httpRequest(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(50) })).rejects.toMatchObject({ name: 'TimeoutError' });
  });

  it('reports a refused connection as fetch did: a message and the system error as cause', async () => {
    const port = await listen(http.createServer());
    await new Promise((r) => servers.pop()!.close(r));
    const err = await httpRequest(`http://127.0.0.1:${port}/`, {}).catch((e: Error & { cause?: { code?: string } }) => e);
    expect(err).toMatchObject({ message: 'request failed', cause: { code: 'ECONNREFUSED' } });
  });

  it('trusts the control plane CA from BUILDCLOUD_CA_FILE for https', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'http-request-'));
    const saved = process.env.BUILDCLOUD_CA_FILE;
    try {
      const ossl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: 'pipe' });
      ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca');
      ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
      writeFileSync(join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
      ossl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '1', '-extfile', 'ext');
      const port = await listen(
        https.createServer({ key: readFileSync(join(dir, 'srv.key')), cert: readFileSync(join(dir, 'srv.pem')) }, (_req, res) => res.end('ok'))
      );
      delete process.env.BUILDCLOUD_CA_FILE;
      await expect(httpRequest(`https://127.0.0.1:${port}/`, {})).rejects.toMatchObject({ message: 'request failed' });
      process.env.BUILDCLOUD_CA_FILE = join(dir, 'ca.pem');
      expect(await httpRequest(`https://127.0.0.1:${port}/`, {})).toMatchObject({ status: 200, text: 'ok' });
    } finally {
      if (saved === undefined) delete process.env.BUILDCLOUD_CA_FILE;
      else process.env.BUILDCLOUD_CA_FILE = saved;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
