// The PR comment against a nock'ed GitHub REST API (found by its marker across pages, updated in place), and the
// pipeline's figures against a nock'ed control plane. nock 14 intercepts both clients' requests (Octokit's fetch, and node:http for the figures).
import nock from 'nock';
import { pipelineFigures, upsertPrComment, type PrTarget } from '../../src/github/pr-comment';
import { PR_COMMENT_MARKER, type PipelineSummary } from '../../src/core/summary';

const GITHUB = 'https://api.github.com';
const CP = 'http://cp.test:7644';
const TARGET: PrTarget = { owner: 'acme', repo: 'widget-api', issueNumber: 42, token: 'ghs_job_token_123' };
const COMMENTS = '/repos/acme/widget-api/issues/42/comments';
// 4 builds, 15 of 20 steps cached, 150 billed seconds → 2.50 minutes and 75%.
const FIGURES: PipelineSummary = { builds: 4, failed: 1, buildsWithCache: 3, totalSteps: 20, cachedSteps: 15, billedSeconds: 150 };

const comment = (id: number, body: string | null, login = 'github-actions[bot]') => ({
  id,
  body,
  user: { login },
  html_url: `https://github.com/acme/widget-api/pull/42#issuecomment-${id}`
});
const others = (from: number, count: number) => Array.from({ length: count }, (_, i) => comment(from + i, `LGTM ${from + i}`, 'octocat'));

// Every request must carry the job's token; anything not scripted fails the test instead of reaching the network.
const github = () => nock(GITHUB).matchHeader('authorization', /^(token|bearer) ghs_job_token_123$/i);

beforeAll(() => nock.disableNetConnect());
// nock patches Node's shared http module for the whole worker process; later test files (real servers, real
// proxies) must get it back untouched.
afterAll(() => {
  nock.cleanAll();
  nock.enableNetConnect();
  nock.restore();
});
afterEach(() => {
  const pending = nock.pendingMocks();
  nock.cleanAll();
  expect(pending).toEqual([]);
});

describe('upsertPrComment', () => {
  test('no comment of ours: POST creates one with the marker, minutes and cache ratio', async () => {
    let posted: { body: string } | undefined;
    github()
      .get(COMMENTS)
      .query({ per_page: '100' })
      .reply(200, [comment(1, 'Nice work'), comment(2, null), comment(3, 'Build Cloud is great')]);
    github()
      .post(COMMENTS, (b) => {
        posted = b;
        return true;
      })
      .reply(201, { id: 99 });

    await expect(upsertPrComment(TARGET, FIGURES)).resolves.toBe('created');
    expect(posted).toBeDefined();
    const body = posted!.body;
    expect(body.startsWith(PR_COMMENT_MARKER)).toBe(true);
    expect(body).toContain('**2.50** build minutes');
    expect(body).toContain('cache ratio **75%** (15 of 20 steps)');
    expect(body).toContain('4 builds');
    expect(body).toContain('1 failed');
  });

  test('our comment on the second page: PATCH updates that comment, nothing is posted', async () => {
    const page2 = `${GITHUB}${COMMENTS}?per_page=100&page=2`;
    let patched: { body: string } | undefined;
    github()
      .get(COMMENTS)
      .query({ per_page: '100' })
      .reply(200, others(1, 100), { link: `<${page2}>; rel="next", <${page2}>; rel="last"` });
    github()
      .get(COMMENTS)
      .query({ per_page: '100', page: '2' })
      .reply(200, [comment(101, 'Looks fine'), comment(7001, `${PR_COMMENT_MARKER}\n**Build Cloud**: 1 build · cache ratio **0%**`), comment(102, 'Ship it')], {
        link: `<${GITHUB}${COMMENTS}?per_page=100&page=1>; rel="first", <${GITHUB}${COMMENTS}?per_page=100&page=1>; rel="prev"`
      });
    github()
      .patch('/repos/acme/widget-api/issues/comments/7001', (b) => {
        patched = b;
        return true;
      })
      .reply(200, { id: 7001 });
    // No POST is scripted: with net connect disabled, a POST would fail the call.

    await expect(upsertPrComment(TARGET, FIGURES)).resolves.toBe('updated');
    expect(patched!.body).toContain(PR_COMMENT_MARKER);
    expect(patched!.body).toContain('cache ratio **75%** (15 of 20 steps)');
  });

  test('comments without the marker are left alone, even ones that mention Build Cloud', async () => {
    const touched: string[] = [];
    github()
      .get(COMMENTS)
      .query({ per_page: '100' })
      .reply(200, [comment(5, '**Build Cloud**: 3 builds (pasted by a person)'), comment(6, '<!-- buildcloud: something else -->')]);
    github()
      .post(COMMENTS)
      .reply(201, () => {
        touched.push('post');
        return { id: 8 };
      });
    nock(GITHUB)
      .patch(/\/repos\/acme\/widget-api\/issues\/comments\/\d+/)
      .optionally()
      .reply(200, (uri) => {
        touched.push(`patch ${uri}`);
        return {};
      });

    await expect(upsertPrComment(TARGET, { builds: 0, totalSteps: 0, cachedSteps: 0 })).resolves.toBe('created');
    expect(touched).toEqual(['post']);
  });

  test('a GitHub error propagates (the caller decides to warn)', async () => {
    github().get(COMMENTS).query({ per_page: '100' }).reply(403, { message: 'Resource not accessible by integration' });
    await expect(upsertPrComment(TARGET, FIGURES)).rejects.toThrow('Resource not accessible by integration');
  });
});

describe('pipelineFigures', () => {
  const KEY = '4242/9001/1';
  const usage = () => nock(CP).matchHeader('authorization', 'Bearer bca_access_1').get('/v1/orgs/acme/pipelines/usage').query({ key: KEY });

  test("maps the control plane's pipeline usage to the summary fields", async () => {
    usage().reply(200, {
      org: 'acme',
      pipelineKey: KEY,
      leases: 3,
      activeLeases: 1,
      billedSeconds: 600,
      builds: 5,
      failed: 1,
      buildsWithCache: 3,
      totalSteps: 40,
      cachedSteps: 30,
      avgCacheRatio: 0.7
    });
    await expect(pipelineFigures(CP, 'acme', KEY, 'bca_access_1')).resolves.toEqual({
      builds: 5,
      failed: 1,
      buildsWithCache: 3,
      totalSteps: 40,
      cachedSteps: 30,
      billedSeconds: 600
    });
  });

  test('the pipeline key is sent encoded in the query', async () => {
    let path = '';
    nock(CP)
      .get(/^\/v1\/orgs\/acme\/pipelines\/usage/)
      .reply(200, (uri) => {
        path = uri;
        return { builds: 0, totalSteps: 0, cachedSteps: 0 };
      });
    await pipelineFigures(CP, 'acme', 'a b/c&d=e', 't');
    expect(path).toBe('/v1/orgs/acme/pipelines/usage?key=a%20b%2Fc%26d%3De');
  });

  test.each([
    ['404', (s: nock.Interceptor) => s.reply(404, { error: { code: 'not_found', message: 'org "acme" not found' } })],
    ['500', (s: nock.Interceptor) => s.reply(500, 'boom')],
    ['a network error', (s: nock.Interceptor) => s.replyWithError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7644'), { code: 'ECONNREFUSED' }))],
    ['a body that is not JSON', (s: nock.Interceptor) => s.reply(200, '<html>proxy error</html>', { 'content-type': 'text/html' })]
  ])('null on %s', async (_name, answer) => {
    answer(usage());
    await expect(pipelineFigures(CP, 'acme', KEY, 'bca_access_1')).resolves.toBeNull();
  });
});
