// `buildcloud usage`: the address forms --endpoint takes (the same as setup's, read as the HTTP port), per-pipeline
// usage, and the exact messages for a wrong flag. The control plane is a small local HTTP server answering the
// contract's shapes (src/contract/http-api.ts).
import * as http from 'http';
import type { AddressInfo } from 'net';
import { program } from '../../src/cli/index';
import { renderPipelineUsage, usageBaseUrl } from '../../src/cli/usage';
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
  failed: 1,
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
  builds: { count: 4, succeeded: 4, failed: 0, totalSteps: 28, cachedSteps: 21, deduplicatedSteps: 0, avgCacheRatio: 0.75, withCachedStepShare: 1 },
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
    ['[::1]:7644', 'http://[::1]:7644']
  ])('%s → %s', (e, url) => expect(usageBaseUrl(e)).toBe(url));

  test('a grpc:// endpoint names the HTTP port instead', () => {
    expect(() => usageBaseUrl('grpc://cp.example.com:7643')).toThrow(
      "Invalid --endpoint 'grpc://cp.example.com:7643': usage reads the HTTP API, not gRPC. Pass the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644), e.g. --endpoint http://cp.example.com:7644."
    );
  });
  test('a malformed endpoint says which forms it takes, never echoing credentials', () => {
    expect(() => usageBaseUrl('cp.example.com')).toThrow(
      "Invalid --endpoint 'cp.example.com': expected the HTTP port of the control plane as http://HOST:PORT, https://HOST:PORT or HOST:PORT (default port 7644)."
    );
    expect(() => usageBaseUrl('ftp://user:hunter2@cp:1')).toThrow("Invalid --endpoint 'ftp://***@cp:1'");
  });
});

describe('usage command', () => {
  test('--endpoint host:port (issue 12: "Failed to parse URL") reads the org report', async () => {
    const text = await usage('--org', 'acme', '--month', '2026-11', '--endpoint', `127.0.0.1:${port}`);
    expect(seen).toEqual([{ url: '/v1/orgs/acme/usage?month=2026-11', auth: 'Bearer bct_t_secret' }]);
    expect(text).toMatch(/^Org acme, 2026-11\n {2}minutes {3}0 used this month; 1 used, 59 left of 60 bought\n/);
  });

  test('--pipeline KEY: one pipeline, exact text', async () => {
    const text = await usage('--org', 'acme', '--pipeline', '42/7/1', '--endpoint', `http://127.0.0.1:${port}`);
    expect(seen[0].url).toBe('/v1/orgs/acme/pipelines/usage?key=42%2F7%2F1');
    expect(text).toBe(
      [
        'Pipeline 42/7/1 of org acme',
        '  leases    4 (0 active), 1 build minute billed',
        '  builds    4 (1 failed), 3 with a cached step',
        "  steps     28: 18 cached, 2 deduplicated (run by another job's build at the same time)",
        '  cache     average ratio 64.3%',
        '  miss      COPY src/ /opt/app/src/: a file changed (lease l1)',
        ''
      ].join('\n')
    );
  });

  test('--pipeline --json gives the API answer, numbers as numbers', async () => {
    const json = JSON.parse(await usage('--org', 'acme', '--pipeline', '42/7/1', '--json', '--endpoint', `127.0.0.1:${port}`));
    expect(json).toEqual(PIPELINE);
  });

  test('--project P: one project this month, exact text', async () => {
    const text = await usage('--org', 'acme', '--project', 'acme/app', '--month', '2026-11', '--endpoint', `127.0.0.1:${port}`);
    expect(seen[0].url).toBe('/v1/orgs/acme/projects/usage?project=acme%2Fapp&month=2026-11');
    expect(text).toBe(
      [
        'Project acme/app of org acme, 2026-11',
        '  leases    5 (1 active) in 1 pipeline, 2.5 build minutes billed',
        '  builds    4 (4 succeeded, 0 failed)',
        "  steps     28: 21 cached, 0 deduplicated (run by another job's build at the same time)",
        '  cache     average ratio 75.0%; builds with a cached step 100.0%',
        ''
      ].join('\n')
    );
  });

  test('a project with no leases says so', async () => {
    expect(await usage('--org', 'acme', '--project', 'acme/none', '--month', '2026-10', '--endpoint', `127.0.0.1:${port}`)).toBe(
      'Project acme/none of org acme, 2026-11: no leases. Check the name (as setup prints it: "identity: project ..."), or see the whole org with `buildcloud usage --org acme`.\n'
    );
  });

  test('a pipeline key with no leases says so', async () => {
    expect(await usage('--org', 'acme', '--pipeline', 'x', '--endpoint', `127.0.0.1:${port}`)).toBe(
      'Pipeline x of org acme: no leases. Check the key (the setup step prints it), or see the whole org with `buildcloud usage --org acme`.\n'
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
