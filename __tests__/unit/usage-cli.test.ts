// `buildcloud usage`: the address forms --endpoint takes (the same as setup's, read as the HTTP port), per-pipeline
// usage, and the exact messages for a wrong flag. The control plane is a small local HTTP server answering the
// contract's shapes (src/contract/http-api.ts).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import type { AddressInfo } from 'net';
import { program } from '../../src/cli/index';
import { renderPipelineUsage, renderUsage, usageBaseUrl, usageView } from '../../src/cli/usage';
import { cliSchema, validate } from '../helpers/json-schema';
import type { PipelineUsage } from '../../src/contract/http-api';
import type { ProjectUsage } from '../../src/contract/project-usage';

let server: http.Server;
let port: number;
let seen: { url: string; auth: string | undefined }[];
let out: string[];

const PIPELINE: PipelineUsage = {
  org: 'acme',
  pipelineKey: '42/7/1',
  leases: 4,
  activeLeases: 0,
  billedSeconds: 60,
  builds: 4,
  succeeded: 3,
  failed: 1,
  cancelled: 0,
  pushFailed: 1,
  pushRefused: 1,
  buildsWithCache: 3,
  totalSteps: 28,
  cachedSteps: 18,
  deduplicatedSteps: 2,
  avgCacheRatio: 0.643,
  cacheMisses: [{ leaseId: 'l1', reason: 'COPY src/ /opt/app/src/: a file changed' }]
};

const PROJECT: ProjectUsage = {
  org: 'acme',
  project: 'acme/app',
  month: '2026-11',
  leases: { count: 5, active: 1 },
  billedSeconds: 150,
  builds: {
    count: 4,
    succeeded: 4,
    failed: 0,
    cancelled: 0,
    pushFailed: 1,
    pushRefused: 0,
    totalSteps: 28,
    cachedSteps: 21,
    deduplicatedSteps: 0,
    avgCacheRatio: 0.75,
    withCachedStepShare: 1
  },
  pipelines: 1
};

beforeAll(async () => {
  server = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', auth: req.headers.authorization });
    res.setHeader('content-type', 'application/json');
    if (req.url?.startsWith('/v1/orgs/acme/pipelines/usage?key=42%2F7%2F1')) return res.end(JSON.stringify(PIPELINE));
    if (req.url?.startsWith('/v1/orgs/acme/pipelines/usage')) return res.end(JSON.stringify({ ...PIPELINE, pipelineKey: 'x', leases: 0 }));
    if (req.url?.startsWith('/v1/orgs/acme/projects/usage?project=acme%2Fapp&month=2026-11')) return res.end(JSON.stringify(PROJECT));
    if (req.url?.startsWith('/v1/orgs/acme/projects/usage'))
      return res.end(JSON.stringify({ ...PROJECT, project: 'acme/none', leases: { count: 0, active: 0 }, builds: {} }));
    if (req.url?.startsWith('/v1/orgs/acme/usage'))
      return res.end(JSON.stringify({ org: 'acme', month: '2026-11', minutes: { used: 1, left: 59, bought: 60 } }));
    res.statusCode = 404;
    res.end(JSON.stringify({ error: { code: 'not_found', message: 'org "nope" not found' } }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));
beforeEach(() => {
  seen = [];
  out = [];
  jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
});
afterEach(() => jest.restoreAllMocks());

async function usage(...args: string[]): Promise<string> {
  await program().parseAsync(['node', 'buildcloud', 'usage', '--token', 'bct_t_secret', '--state-dir', '/nonexistent', ...args]);
  return out.join('');
}

describe('usageBaseUrl: the forms setup takes, read as the HTTP port', () => {
  test.each([
    ['127.0.0.1:7644', 'http://127.0.0.1:7644'],
    ['http://127.0.0.1:7644', 'http://127.0.0.1:7644'],
    ['http://127.0.0.1:7644/', 'http://127.0.0.1:7644'],
    ['https://cp.example.com:7644', 'https://cp.example.com:7644'],
    ['https://cp.example.com/buildcloud', 'https://cp.example.com/buildcloud'],
    ['[::1]:7644', 'http://[::1]:7644'],
    // A bare host takes the default port, as the help says.
    ['127.0.0.1', 'http://127.0.0.1:7644'],
    ['cp.example.com', 'http://cp.example.com:7644'],
    ['[::1]', 'http://[::1]:7644']
  ])('%s → %s', (e, url) => expect(usageBaseUrl(e)).toBe(url));

  test('a grpc:// endpoint names the HTTP port instead', () => {
    expect(() => usageBaseUrl('grpc://cp.example.com:7643')).toThrow(
      "Invalid --endpoint 'grpc://cp.example.com:7643': usage reads the HTTP API, not gRPC. Pass the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644), e.g. --endpoint http://cp.example.com:7644."
    );
  });
  test('a malformed endpoint says which forms it takes, never echoing credentials', () => {
    expect(() => usageBaseUrl('cp.example.com:http')).toThrow(
      "Invalid --endpoint 'cp.example.com:http': expected the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644)."
    );
    expect(() => usageBaseUrl('ftp://user:hunter2@cp:1')).toThrow("Invalid --endpoint 'ftp://***@cp:1'");
  });
});

describe('usage command', () => {
  test('--endpoint host:port (issue 12: "Failed to parse URL") reads the org report', async () => {
    const text = await usage('--org', 'acme', '--month', '2026-11', '--endpoint', `127.0.0.1:${port}`);
    expect(seen).toEqual([{ url: '/v1/orgs/acme/usage?month=2026-11', auth: 'Bearer bct_t_secret' }]);
    expect(text).toMatch(/^Org 'acme', 2026-11\n {2}minutes {3}0 used this month; 1 used, 59 left of 60 bought\n/);
  });

  test('--pipeline KEY: one pipeline, exact text', async () => {
    const text = await usage('--org', 'acme', '--pipeline', '42/7/1', '--endpoint', `http://127.0.0.1:${port}`);
    expect(seen[0].url).toBe('/v1/orgs/acme/pipelines/usage?key=42%2F7%2F1');
    expect(text).toBe(
      [
        "Pipeline '42/7/1' of org 'acme'",
        '  leases    4 (0 active), 1 build minute billed',
        '  builds    4 (3 succeeded, 1 failed); of those succeeded, 1 push failed, 1 push refused (tag taken)',
        "  steps     28: 18 cached, 2 deduplicated (run by another job's build at the same time)",
        '  cache     average ratio 64.3%; builds with a cached step 75.0%',
        '  miss      COPY src/ /opt/app/src/: a file changed (lease l1)',
        ''
      ].join('\n')
    );
  });

  test('--pipeline --json: the pipeline view of the one usage schema, numbers as numbers', async () => {
    const json = JSON.parse(await usage('--org', 'acme', '--pipeline', '42/7/1', '--json', '--endpoint', `127.0.0.1:${port}`));
    expect(validate(cliSchema('usage'), json)).toEqual([]);
    expect(json).toEqual({
      view: 'pipeline',
      org: 'acme',
      pipelineKey: '42/7/1',
      leases: { count: 4, active: 0 },
      billedSeconds: 60,
      builds: {
        count: 4,
        succeeded: 3,
        failed: 1,
        cancelled: 0,
        pushFailed: 1,
        pushRefused: 1,
        totalSteps: 28,
        cachedSteps: 18,
        deduplicatedSteps: 2,
        avgCacheRatio: 0.643,
        withCachedStepShare: 0.75
      },
      cacheMisses: [{ leaseId: 'l1', reason: 'COPY src/ /opt/app/src/: a file changed' }]
    });
  });

  test('--project --json: the project view of the one usage schema', async () => {
    const json = JSON.parse(await usage('--org', 'acme', '--project', 'acme/app', '--month', '2026-11', '--json', '--endpoint', `127.0.0.1:${port}`));
    expect(validate(cliSchema('usage'), json)).toEqual([]);
    expect(json).toEqual({ view: 'project', ...PROJECT });
  });

  test('--json of a view validates only with its own counts: a count as a string is named', () => {
    const v = usageView('project', { ...PROJECT, builds: { ...PROJECT.builds, failed: '1' } });
    expect(v.builds.failed).toBe(0); // read defensively: a non-number is no count
    expect(validate(cliSchema('usage'), { ...v, builds: { ...v.builds, failed: '1' } })).toEqual(['$.builds.failed: expected integer, got string "1"']);
    expect(validate(cliSchema('usage'), { ...v, view: 'repo' })).toEqual(['$.view: "repo" is not one of ["org","project","pipeline"]']);
  });

  test('--project P: one project this month, exact text', async () => {
    const text = await usage('--org', 'acme', '--project', 'acme/app', '--month', '2026-11', '--endpoint', `127.0.0.1:${port}`);
    expect(seen[0].url).toBe('/v1/orgs/acme/projects/usage?project=acme%2Fapp&month=2026-11');
    expect(text).toBe(
      [
        "Project 'acme/app' of org 'acme', 2026-11",
        '  leases    5 (1 active) in 1 pipeline, 2.5 build minutes billed',
        '  builds    4 (4 succeeded, 0 failed); of those succeeded, 1 push failed',
        "  steps     28: 21 cached, 0 deduplicated (run by another job's build at the same time)",
        '  cache     average ratio 75.0%; builds with a cached step 100.0%',
        ''
      ].join('\n')
    );
  });

  test('a project with no leases says so', async () => {
    expect(await usage('--org', 'acme', '--project', 'acme/none', '--month', '2026-10', '--endpoint', `127.0.0.1:${port}`)).toBe(
      `Project 'acme/none' of org 'acme', 2026-11: no leases. Check the name (as setup prints it: "identity: project ..."), or see the whole org with \`buildcloud usage --org acme\`.\n`
    );
  });

  test('a pipeline key with no leases says so', async () => {
    expect(await usage('--org', 'acme', '--pipeline', 'x', '--endpoint', `127.0.0.1:${port}`)).toBe(
      "Pipeline 'x' of org 'acme': no leases. Check the key (the setup step prints it), or see the whole org with `buildcloud usage --org acme`.\n"
    );
  });

  test.each([
    [[], 'Missing --org: pass --org ORG, the org whose usage to show (`buildcloud admin org list` lists the orgs).'],
    [['--org', 'acme', '--month', '2026-13'], "Invalid --month '2026-13': expected YYYY-MM, e.g. 2026-11."],
    [['--org', 'acme', '--pipeline', 'k', '--month', '2026-11'], '--month does not apply to --pipeline (a pipeline is one run): pass one of them.'],
    [['--org', 'acme', '--pipeline', 'k'.repeat(257)], 'Invalid --pipeline: expected a pipeline key of 1-256 characters, e.g. 123456/789/1.'],
    [['--org', 'acme', '--project', 'acme/app', '--pipeline', 'k'], '--project and --pipeline both given: pass one of them (a pipeline is of one project).'],
    [['--org', 'acme', '--project', 'acme app'], 'Invalid --project: expected the project path, 1-256 printable characters without spaces, e.g. acme/app.']
  ])('%j → %s', async (args, message) => {
    await expect(usage(...args, '--endpoint', `127.0.0.1:${port}`)).rejects.toThrow(message);
    expect(seen).toEqual([]);
  });

  test('an error answer is shown with its status and message', async () => {
    await expect(usage('--org', 'nope', '--endpoint', `127.0.0.1:${port}`)).rejects.toThrow('Usage request failed (HTTP 404): org "nope" not found');
  });

  test('nothing listening: names the endpoint and the port it wants', async () => {
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const dead = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    await expect(usage('--org', 'acme', '--endpoint', `127.0.0.1:${dead}`)).rejects.toThrow(
      `Cannot reach the control plane at http://127.0.0.1:${dead} (ECONNREFUSED): check --endpoint, the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644); the gRPC port (default 7643) does not answer it.`
    );
  });
});

test('renderPipelineUsage: 2 minutes are plural', () => {
  expect(renderPipelineUsage({ ...PIPELINE, billedSeconds: 120, cacheMisses: [] }).split('\n')[1]).toBe('  leases    4 (0 active), 2 build minutes billed');
});

describe('usage: what is at the endpoint, said (issue 12 follow-up)', () => {
  let other: http.Server;
  let otherPort: number;
  beforeAll(async () => {
    // Some other web server: an HTML 404 for every path.
    other = http.createServer((_req, res) => {
      res.statusCode = 404;
      res.setHeader('content-type', 'text/html');
      res.end('<html><body>Not Found</body></html>');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    otherPort = (other.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => other.close(() => r())));

  test('an HTTP server that is not a control plane is named as such', async () => {
    await expect(usage('--org', 'acme', '--endpoint', `127.0.0.1:${otherPort}`)).rejects.toThrow(
      `http://127.0.0.1:${otherPort} answers HTTP but is not a Build Cloud control plane (GET /v1/orgs/acme/usage: HTTP 404, not JSON). Pass --endpoint the HTTP address \`buildcloud serve\` prints (default port 7644).`
    );
  });

  test('https:// against a plaintext control plane says so', async () => {
    await expect(usage('--org', 'acme', '--endpoint', `https://127.0.0.1:${port}`)).rejects.toThrow(
      `https://127.0.0.1:${port} answers plaintext HTTP, not TLS: pass --endpoint http://127.0.0.1:${port} (a control plane serves https only with serve's --tls-cert and --tls-key).`
    );
  });

  test('a missing org with the admin token names the command that creates it; with an org token, not found', async () => {
    await expect(
      program().parseAsync([
        'node',
        'buildcloud',
        'usage',
        '--org',
        'nope',
        '--token',
        'bca_admin',
        '--state-dir',
        '/nonexistent',
        '--endpoint',
        `127.0.0.1:${port}`
      ])
    ).rejects.toThrow("Org 'nope' not found: create it with `buildcloud admin org create nope --minutes N`.");
    await expect(usage('--org', 'nope', '--endpoint', `127.0.0.1:${port}`)).rejects.toThrow('Usage request failed (HTTP 404): org "nope" not found');
  });
});

describe('usage over https with a private CA', () => {
  let dir: string;
  let tlsServer: https.Server;
  let tlsPort: number;
  const savedCa = process.env.BUILDCLOUD_CA_FILE;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-usage-tls-'));
    const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    ossl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-subj',
      '/CN=test private CA',
      '-days',
      '2'
    );
    ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
    fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
    ossl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '2', '-extfile', 'ext.cnf');
    tlsServer = https.createServer({ cert: fs.readFileSync(path.join(dir, 'srv.pem')), key: fs.readFileSync(path.join(dir, 'srv.key')) }, (req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ...PIPELINE, pipelineKey: 'tls' }));
    });
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
    tlsPort = (tlsServer.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => tlsServer.close(() => r()));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  afterEach(() => {
    if (savedCa === undefined) delete process.env.BUILDCLOUD_CA_FILE;
    else process.env.BUILDCLOUD_CA_FILE = savedCa;
  });

  test('without the CA: the certificate is not trusted, and the message names --ca-file', async () => {
    delete process.env.BUILDCLOUD_CA_FILE;
    await expect(usage('--org', 'acme', '--pipeline', 'k', '--endpoint', `https://127.0.0.1:${tlsPort}`)).rejects.toThrow(
      `The certificate of https://127.0.0.1:${tlsPort} is not trusted here (UNABLE_TO_VERIFY_LEAF_SIGNATURE): pass --ca-file (or set BUILDCLOUD_CA_FILE to) the PEM file of the CA that signed it (for a self-signed certificate, serve's --tls-cert file itself).`
    );
  });

  test('--ca-file trusts it', async () => {
    const text = await usage('--org', 'acme', '--pipeline', 'k', '--endpoint', `https://127.0.0.1:${tlsPort}`, '--ca-file', path.join(dir, 'ca.pem'));
    expect(text.split('\n')[0]).toBe("Pipeline 'tls' of org 'acme'");
    expect(process.env.BUILDCLOUD_CA_FILE).toBe(savedCa); // restored after the call
  });

  test('BUILDCLOUD_CA_FILE trusts it, as the runner does', async () => {
    process.env.BUILDCLOUD_CA_FILE = path.join(dir, 'ca.pem');
    const text = await usage('--org', 'acme', '--pipeline', 'k', '--endpoint', `https://127.0.0.1:${tlsPort}`);
    expect(text.split('\n')[0]).toBe("Pipeline 'tls' of org 'acme'");
  });

  test('on the control plane host: the endpoint, admin token and CA from the state dir', async () => {
    delete process.env.BUILDCLOUD_CA_FILE;
    const state = path.join(dir, 'state');
    fs.mkdirSync(state, { recursive: true });
    fs.writeFileSync(path.join(state, 'server.json'), JSON.stringify({ http: `https://127.0.0.1:${tlsPort}`, registryCaFile: path.join(dir, 'ca.pem') }));
    fs.writeFileSync(path.join(state, 'admin-token'), 'bca_x\n');
    await program().parseAsync(['node', 'buildcloud', 'usage', '--org', 'acme', '--pipeline', 'k', '--state-dir', state]);
    expect(out.join('').split('\n')[0]).toBe("Pipeline 'tls' of org 'acme'");
  });

  test('an unreadable --ca-file is named', async () => {
    await expect(
      usage('--org', 'acme', '--pipeline', 'k', '--endpoint', `https://127.0.0.1:${tlsPort}`, '--ca-file', path.join(dir, 'nope.pem'))
    ).rejects.toThrow(
      `Cannot use --ca-file '${path.join(dir, 'nope.pem')}' (ENOENT): pass the PEM file of the CA that signed the control plane's certificate.`
    );
  });
});

test('renderUsage: push failures and cancelled builds in the org text, as in the other views', () => {
  const text = renderUsage({ org: 'acme', month: '2026-11', builds: { count: 5, succeeded: 3, failed: 1, cancelled: 1, pushFailed: 2, pushRefused: 0 } });
  expect(text.split('\n')[3]).toBe('  builds    5 (3 succeeded, 1 failed, 1 cancelled); of those succeeded, 2 push failed');
});
