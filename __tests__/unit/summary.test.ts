import {
  BuildResult,
  escapeMarkdown,
  formatDuration,
  JobSummary,
  MAX_TABLE_ROWS,
  percent,
  PR_COMMENT_MARKER,
  renderPrComment,
  renderSummary,
  renderText,
  totalsOf
} from '../../src/core/summary';

const build = (over: Partial<BuildResult> = {}): BuildResult => ({
  buildId: 'b1',
  image: 'ghcr.io/acme/api:1.2.3',
  platform: 'linux/amd64',
  status: 'success',
  durationMs: 41_234,
  totalSteps: 12,
  cachedSteps: 11,
  builderId: 'bld-7',
  ...over
});

const TABLE_HEADER = '| Image / target | Platform | Status | Duration | Steps | Cached steps | Cached % | Builder |';
// Cells of a table row: split on pipes that are not escaped (GFM's own rule).
const cells = (row: string) => row.replace(/\\\|/g, '').split('|').length - 2;
const rowsOf = (md: string) => md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| Image') && /\| (✅|❌|⏹️)/.test(l));

describe('renderSummary', () => {
  it.each<[string, JobSummary, (string | RegExp)[], (string | RegExp)[]]>([
    [
      'zero builds',
      { builds: [] },
      ['## Build Cloud', 'No image builds ran in this job.', '| Builds | 0 |', '| Cache ratio (this job) | – |'],
      [TABLE_HEADER, '### Warnings']
    ],
    [
      'a failed build',
      { builds: [build(), build({ buildId: 'b2', image: 'ghcr.io/acme/worker:1', status: 'failure', totalSteps: 5, cachedSteps: 0, durationMs: 900 })] },
      [
        TABLE_HEADER,
        '**2 builds** (1 succeeded, 1 failed), cache ratio **65%** (11 of 17 steps cached)',
        '| ghcr.io/acme/worker:1 | linux/amd64 | ❌ failure | 900 ms | 5 | 0 | 0% | bld-7 |',
        '| Builds with a cached step | 50% (goal 80%) |'
      ],
      []
    ],
    [
      'all cached',
      { builds: [build({ cachedSteps: 12 }), build({ buildId: 'b2', platform: 'linux/arm64', cachedSteps: 12 })] },
      ['cache ratio **100%** (24 of 24 steps cached)', '| ghcr.io/acme/api:1.2.3 | linux/arm64 | ✅ success | 41.2 s | 12 | 12 | 100% | bld-7 |'],
      []
    ],
    ['almost all cached is not shown as all', { builds: [build({ totalSteps: 1000, cachedSteps: 999 })] }, ['cache ratio **99%**', '| 1000 | 999 | 99% |'], []],
    [
      'lease, sharing, totals, links and warnings',
      {
        builds: [build()],
        leaseId: 'lse_4f2a',
        builderShared: true,
        builderWarm: true,
        jobWallMs: 95_000,
        billedSeconds: 121,
        pipeline: { totalSteps: 40, cachedSteps: 30 },
        runUrl: 'https://github.com/acme/api/actions/runs/1',
        usageUrl: 'https://buildcloud.example/orgs/acme/usage?month=2025-01',
        warnings: ['metering endpoint unreachable; 2 records kept']
      },
      [
        "**Builder:** lease `lse_4f2a` · shared with the pipeline's other jobs · warm start",
        '| Job wall time | 1m 35s |',
        "| Billed minutes (this job's lease) | 2.02 |",
        '| Pipeline cache ratio | 75% |',
        '[Run](https://github.com/acme/api/actions/runs/1) · [Usage](https://buildcloud.example/orgs/acme/usage?month=2025-01)',
        '### Warnings',
        '- metering endpoint unreachable; 2 records kept'
      ],
      []
    ],
    [
      'a build without an image shows its id, and no builder a dash',
      { builds: [build({ image: undefined, buildId: 'target-api', builderId: undefined })] },
      ['| target-api | linux/amd64 |', '| 92% | – |'],
      []
    ],
    [
      'links that are not http(s) are dropped',
      { builds: [], runUrl: 'javascript:alert(1)', usageUrl: 'https://x.example/a(b)' },
      ['[Usage](https://x.example/a%28b%29)'],
      ['javascript', '[Run]']
    ]
  ])('%s', (_name, summary, present, absent) => {
    const md = renderSummary(summary);
    for (const p of present) expect(md).toEqual(typeof p === 'string' ? expect.stringContaining(p) : expect.stringMatching(p));
    for (const a of absent) expect(md).not.toEqual(typeof a === 'string' ? expect.stringContaining(a) : expect.stringMatching(a));
  });

  it.each([
    ['a pipe', 'acme/api:v1|evil', 'acme/api:v1&#124;evil'],
    ['a script tag', 'acme/api:<script>alert(1)</script>', 'acme/api:&lt;script&gt;alert(1)&lt;/script&gt;'],
    ['backticks', 'acme/api:`rm -rf`', 'acme/api:&#96;rm -rf&#96;'],
    ['a newline with a fake row', 'acme/api:x\n| fake | row |', 'acme/api:x &#124; fake &#124; row &#124;'],
    ['markdown links', '[click](https://evil.example)', '&#91;click&#93;(https://evil.example)'],
    ['a mention', 'feature/@acme/admins', 'feature/@&#8203;acme/admins']
  ])('escapes %s in a tag so the table keeps its shape and no HTML gets in', (_name, image, escaped) => {
    const md = renderSummary({ builds: [build({ image, builderId: 'x|y' })] });
    const rows = rowsOf(md);
    expect(rows).toHaveLength(1);
    expect(rows[0].startsWith(`| ${escaped} |`)).toBe(true);
    expect(cells(rows[0])).toBe(8);
    expect(md).not.toMatch(/<script|`rm|\]\(https:\/\/evil/);
  });

  it('keeps a digest reference intact: "name@sha256" is no mention', () => {
    expect(escapeMarkdown('acme/api@sha256:abc')).toBe('acme/api@sha256:abc');
  });

  it('truncates beyond 1000 builds with a note, and counts all of them in the totals', () => {
    const builds = Array.from({ length: 1500 }, (_, i) => build({ buildId: `b${i}`, image: `acme/img-${i}:tag` }));
    const md = renderSummary({ builds });
    expect(rowsOf(md)).toHaveLength(MAX_TABLE_ROWS);
    expect(md).toContain("_500 more builds are not listed, to keep this summary under GitHub's 1 MiB limit; the totals count all 1500._");
    expect(md).toContain('| Builds | 1500 |');
  });

  it('stays under GitHub’s 1 MiB step summary limit even with huge, heavily escaped tags', () => {
    const image = '<|>&"`'.repeat(2000); // every character escapes to an entity
    const builds = Array.from({ length: 1000 }, (_, i) => build({ buildId: `b${i}`, image, platform: image, builderId: image }));
    const md = renderSummary({ builds, warnings: Array.from({ length: 500 }, () => image) });
    expect(Buffer.byteLength(md)).toBeLessThan(1024 * 1024);
    expect(md).toMatch(/more builds are not listed/);
    expect(md).toContain('- … and 480 more');
  });
});

describe('renderPrComment', () => {
  it.each([
    [
      'minutes, cache ratio and links',
      { builds: 4, failed: 1, buildsWithCache: 3, totalSteps: 40, cachedSteps: 30, billedSeconds: 300, branch: 'feature/x', runUrl: 'https://ci.example/r/1' },
      '**Build Cloud** on feature/x: 4 builds · 1 failed · **5.00** build minutes · cache ratio **75%** (30 of 40 steps) · 75% of builds reused a cached layer · [run](https://ci.example/r/1)'
    ],
    ['no builds', { builds: 0, totalSteps: 0, cachedSteps: 0 }, '**Build Cloud**: 0 builds · cache ratio **–** (0 of 0 steps)'],
    [
      'a hostile branch name',
      { builds: 1, totalSteps: 1, cachedSteps: 1, branch: '<img src=x onerror=alert(1)>|`x`' },
      '**Build Cloud** on &lt;img src=x onerror=alert(1)&gt;&#124;&#96;x&#96;: 1 build · cache ratio **100%** (1 of 1 steps)'
    ]
  ])('%s', (_name, p, line) => {
    const md = renderPrComment(p);
    const lines = md.split('\n');
    expect(lines[0]).toBe(PR_COMMENT_MARKER); // first, so the wrapper finds its own comment to update
    expect(PR_COMMENT_MARKER).toBe('<!-- buildcloud:pr-comment -->');
    expect(lines[1]).toBe(line);
    expect(md.match(/buildcloud:pr-comment/g)).toHaveLength(1);
  });
});

describe('renderText', () => {
  it('prints one line per build and the totals, with no markup', () => {
    const text = renderText({
      builds: [build(), build({ buildId: 'b2', status: 'failure', cachedSteps: 0 })],
      leaseId: 'lse_1',
      builderShared: false,
      builderWarm: false,
      billedSeconds: 60,
      runUrl: 'https://gitlab.example/acme/api/-/pipelines/9',
      warnings: ['1 record kept']
    });
    expect(text).toBe(
      [
        'Build Cloud: 2 builds (1 succeeded, 1 failed), cache ratio 46% (11 of 24 steps cached)',
        '  success   linux/amd64      41.2 s  cached 11/12 (92%)  builder bld-7  ghcr.io/acme/api:1.2.3',
        '  failure   linux/amd64      41.2 s  cached 0/12 (0%)  builder bld-7  ghcr.io/acme/api:1.2.3',
        'Totals: build time 1m 22s, billed minutes 1.00, builds with a cached step 50%',
        'Builder: lease lse_1 · this job only · cold start',
        'Run: https://gitlab.example/acme/api/-/pipelines/9',
        'Warning: 1 record kept',
        ''
      ].join('\n')
    );
  });

  it('keeps a tag from forging log lines or terminal escapes', () => {
    const text = renderText({ builds: [build({ image: 'x\n::error::forged\r\n\x1b[31mred\x1b[0m' })] });
    expect(text.split('\n').some((l) => l.startsWith('::'))).toBe(false);
    expect(text).not.toContain('\x1b');
    expect(text).toContain('x ::error::forged  red');
  });

  it('says so when no builds ran', () => {
    expect(renderText({ builds: [] }).split('\n')[0]).toBe('Build Cloud: no image builds ran in this job');
  });
});

describe('helpers', () => {
  it.each([
    [0, '0 ms'],
    [850, '850 ms'],
    [41_234, '41.2 s'],
    [65_000, '1m 05s'],
    [3_725_000, '1h 02m'],
    [-5, '0 ms'],
    [Number.NaN, '0 ms']
  ])('formatDuration(%p) = %p', (ms, text) => expect(formatDuration(ms)).toBe(text));

  it.each([
    [0, 0, '–'],
    [0, 4, '0%'],
    [1, 1000, '1%'],
    [1, 3, '33%'],
    [999, 1000, '99%'],
    [4, 4, '100%']
  ])('percent(%p, %p) = %p', (part, whole, text) => expect(percent(part, whole)).toBe(text));

  it('clamps nonsense step counts instead of reporting more cached than total', () => {
    expect(totalsOf([build({ totalSteps: 2, cachedSteps: 5 }), build({ totalSteps: -1, cachedSteps: Number.NaN })])).toMatchObject({
      builds: 2,
      totalSteps: 2,
      cachedSteps: 2
    });
  });
});
