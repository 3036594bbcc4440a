// `buildcloud usage` against the real `serve --tls-cert` with a private CA (issue 12 follow-up G): it used to read
// neither BUILDCLOUD_CA_FILE nor a flag, so it could not reach such a control plane even on its own host. Now it
// trusts --ca-file or BUILDCLOUD_CA_FILE as the runner does, and on the host, with the state dir, what serve wrote
// there for its certificate (server.json's registryCaFile: the operator's --tls-cert when it names the host).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { cli, startTlsServer, type ServerProcess } from '../helpers/server';

let server: ServerProcess;
let token: string;
let caFile: string;
let otherDir: string;

beforeAll(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-usage-tls-'));
  otherDir = path.join(dir, 'empty-state');
  ({ server, token, caFile } = await startTlsServer(dir, { chain: true }));
});

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
});

// Without the caller's BUILDCLOUD_CA_FILE: each test says what it trusts.
const env = (extra: NodeJS.ProcessEnv = {}) => ({ BUILDCLOUD_CA_FILE: '', BUILDCLOUD_STATE_DIR: otherDir, ...extra });

test('elsewhere, without the CA: one line naming the certificate and --ca-file', () => {
  const r = cli(['usage', '--org', 'acme', '--endpoint', server.info.http, '--token', token], env());
  expect(r.status).toBe(1);
  expect(r.stderr).toBe(
    `buildcloud: The certificate of ${server.info.http} is not trusted here (SELF_SIGNED_CERT_IN_CHAIN): pass --ca-file (or set BUILDCLOUD_CA_FILE to) the PEM file of the CA that signed it (for a self-signed certificate, serve's --tls-cert file itself).\n`
  );
});

test('--ca-file and BUILDCLOUD_CA_FILE: the org report over https', () => {
  const a = cli(['usage', '--org', 'acme', '--endpoint', server.info.http, '--token', token, '--ca-file', caFile], env());
  expect(a.stderr).toBe('');
  expect(a.stdout).toMatch(/^Org 'acme', \d{4}-\d\d\n {2}minutes {3}0 used this month; 0 used, 10 left of 10 bought\n/);
  const b = cli(['usage', '--org', 'acme', '--endpoint', server.info.http, '--token', token, '--json'], env({ BUILDCLOUD_CA_FILE: caFile }));
  expect(JSON.parse(b.stdout)).toMatchObject({ view: 'org', org: 'acme', minutes: { bought: 10 } });
});

test("on the control plane's host: nothing to pass but --state-dir", () => {
  const r = cli(['usage', '--org', 'acme', '--state-dir', server.stateDir], env());
  expect(r.stderr).toBe('');
  expect(r.stdout).toMatch(/^Org 'acme', \d{4}-\d\d\n/);
  // The admin token, a missing org: the command that creates it.
  const nope = cli(['usage', '--org', 'nope', '--state-dir', server.stateDir], env());
  expect(nope.stderr).toBe("buildcloud: Org 'nope' not found: create it with `buildcloud admin org create nope --minutes N`.\n");
});

test('http:// against the TLS control plane: says to use https', () => {
  const plain = server.info.http.replace('https://', 'http://');
  const r = cli(['usage', '--org', 'acme', '--endpoint', plain, '--token', token], env());
  expect(r.stderr).toBe(
    `buildcloud: ${plain} closed the connection without an answer (ECONNRESET): if the control plane serves TLS (serve --tls-cert), pass --endpoint ${server.info.http}.\n`
  );
});
