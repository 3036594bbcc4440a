// `buildcloud serve --tls-cert --tls-key`: gRPC and HTTP over TLS for a control plane exposed beyond loopback.
import * as fs from 'fs';
import * as https from 'https';
import { spawnSync } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { ApiClient, ControlPlaneError } from '../../src/core/api-client';
import { startTlsServer, type ServerProcess } from '../helpers/server';

let server: ServerProcess;
let token: string;
let caFile: string;

beforeAll(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-tls-'));
  ({ server, token, caFile } = await startTlsServer(dir));
});

afterAll(async () => {
  delete process.env.BUILDCLOUD_CA_FILE;
  expect(await server?.stop()).toBe(0);
});

const identity = { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main', fork: false, actor: 'dev', runUrl: '' };

test('gRPC is served over TLS: a client trusting the CA gets answers, a plaintext client gets none', async () => {
  expect(server.info.grpc).toMatch(/^grpcs:\/\/127\.0\.0\.1:\d+$/);
  process.env.BUILDCLOUD_CA_FILE = caFile;
  const secure = new ApiClient({ endpoint: server.info.grpc, token, attempts: 1 });
  // --driver none: the call reaches the server's own logic (FAILED_PRECONDITION), so TLS and auth both worked.
  const err = (await secure
    .provision({ org: '', pipelineKey: 'p/1', jobId: 'j', platforms: [], scope: 'SCOPE_PIPELINE', identity })
    .catch((e) => e)) as ControlPlaneError;
  secure.close();
  expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(err.details).toMatch(/no builder driver/);

  const plain = new ApiClient({ endpoint: server.info.grpc.replace('grpcs://', 'grpc://'), token, attempts: 1, deadlineMs: 3000 });
  const refused = (await plain
    .provision({ org: '', pipelineKey: 'p/1', jobId: 'j', platforms: [], scope: 'SCOPE_PIPELINE', identity })
    .catch((e) => e)) as ControlPlaneError;
  plain.close();
  expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL]).toContain(refused.code);
});

test('HTTP (metering, usage, health) is served over TLS with the same certificate', async () => {
  expect(server.info.http).toMatch(/^https:\/\//);
  const body = await new Promise<string>((resolve, reject) => {
    https
      .get(`${server.info.http}/healthz`, { ca: fs.readFileSync(caFile) }, (res) => {
        let b = '';
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve(b));
      })
      .on('error', reject);
  });
  expect(JSON.parse(body)).toEqual({ status: 'ok' });
  // Without the CA the certificate is not trusted.
  await expect(new Promise((resolve, reject) => https.get(`${server.info.http}/healthz`, resolve).on('error', reject))).rejects.toThrow(
    /self.signed|unable to verify|certificate/i
  );
});

test('the API over HTTPS (Connect): a client trusting the CA reaches the server, one that does not is refused', async () => {
  process.env.BUILDCLOUD_CA_FILE = caFile;
  const secure = new ApiClient({ endpoint: server.info.http, token, attempts: 1 });
  const err = (await secure
    .provision({ org: '', pipelineKey: 'p/1', jobId: 'j', platforms: [], scope: 'SCOPE_PIPELINE', identity })
    .catch((e) => e)) as ControlPlaneError;
  expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
  expect(err.details).toMatch(/no builder driver/);
  delete process.env.BUILDCLOUD_CA_FILE;
  const untrusting = new ApiClient({ endpoint: server.info.http, token, attempts: 1 });
  const refused = (await untrusting.get('lease-x').catch((e) => e)) as ControlPlaneError;
  expect(refused.code).toBe(grpc.status.UNAVAILABLE);
  expect(refused.message).toMatch(/SELF_SIGNED|UNABLE_TO_VERIFY|CERT/i);
});

// The runner CLI opens its TLS connection while its steps load (src/core/preconnect.ts): that head start must verify
// the server exactly as the request would, so a control plane the runner does not trust gets no token.
test.each([
  ['trusting the CA: the call reaches the server', true, /no builder driver/],
  ['without the CA: refused before anything is sent', false, /SELF_SIGNED|UNABLE_TO_VERIFY|certificate/i]
])('runner setup over https:// (%s)', (_name, trusted, expected) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-tls-runner-'));
  const r = spawnSync(process.execPath, [path.join(__dirname, '../../dist/runner.js'), 'setup'], {
    env: {
      PATH: process.env.PATH,
      HOME: home,
      BUILDCLOUD_ENDPOINT: server.info.http,
      BUILDCLOUD_TOKEN: token,
      BUILDCLOUD_FALLBACK: 'none',
      BUILDCLOUD_PROVISION_TIMEOUT: '2',
      ...(trusted ? { BUILDCLOUD_CA_FILE: caFile } : {})
    },
    encoding: 'utf8',
    timeout: 60_000
  });
  fs.rmSync(home, { recursive: true, force: true });
  expect(r.status).not.toBe(0);
  expect(r.stderr + r.stdout).toMatch(expected);
  expect(r.stderr + r.stdout).not.toContain(token);
});
