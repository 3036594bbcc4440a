import { formatBytes, isCacheRepository, parseSize, planRetention, quotaMessage, type Inventory, type RetentionPolicy } from '../../src/server/cache-retention';

const DAY = 86_400_000;
const NOW = 100 * DAY;
const d = (c: string): string => `sha256:${c.repeat(64)}`;

// Each manifest m<X> references config c<X> and one layer l<X> (1000 bytes), plus a shared base layer (5000 bytes).
function inventory(repos: Inventory['repos']): Inventory {
  const manifests = new Map<string, { blobs: string[]; children: string[] }>();
  const blobSizes = new Map<string, number>([[d('0'), 5000]]);
  for (const r of repos) {
    for (const v of r.revisions) {
      const k = v.digest.slice(7, 8);
      const layer = `sha256:${'f'.repeat(63)}${k}`;
      const config = `sha256:${'e'.repeat(63)}${k}`;
      manifests.set(v.digest, { blobs: [config, d('0'), layer], children: [] });
      blobSizes.set(v.digest, 10).set(config, 10).set(layer, 1000);
    }
  }
  return { repos, manifests, blobSizes };
}

const policy = (p: Partial<RetentionPolicy> = {}): RetentionPolicy => ({
  keepPerTag: 2,
  expireMs: 30 * DAY,
  graceMs: 3600_000,
  quotaFor: () => 0,
  now: NOW,
  ...p
});

// acme/app/cache: main pushed a, b, c (c newest, an hour ago); old pushed d 40 days ago; feat pushed e two days ago.
const ACME = {
  name: 'acme/app/cache',
  tags: [
    {
      tag: 'main',
      history: [
        { digest: d('c'), at: NOW - 3600_000 },
        { digest: d('b'), at: NOW - 2 * DAY },
        { digest: d('a'), at: NOW - 3 * DAY }
      ]
    },
    { tag: 'old', history: [{ digest: d('d'), at: NOW - 40 * DAY }] },
    { tag: 'feat', history: [{ digest: d('9'), at: NOW - 2 * DAY }] }
  ],
  revisions: ['a', 'b', 'c', 'd', '9'].map((k, i) => ({ digest: d(k), at: NOW - (10 - i) * DAY }))
};

test('keeps the newest N images per tag and expires branches not built for D days', () => {
  const plan = planRetention(inventory([ACME]), policy());
  expect(plan.deleteTags).toEqual([{ repo: 'acme/app/cache', tag: 'old', reason: 'expired' }]);
  expect(plan.deleteManifests.map((m) => m.digest).sort()).toEqual([d('a'), d('d')].sort());
  // Kept: b, c, 9: 3 × (10 + 10 + 1000) + the shared base once.
  expect(plan.orgs.get('acme')).toEqual({ usedBytes: 3 * 1020 + 5000, quotaBytes: 0, overBytes: 0, evictedTags: 0 });
});

test('over its quota an org keeps only current images, then evicts the least recently pushed tags, never the newest', () => {
  // Quota between "main and feat current only" (2 × 1020 + 5000 = 7040) and everything kept.
  const plan = planRetention(inventory([ACME]), policy({ quotaFor: () => 7100 }));
  expect(plan.deleteTags).toEqual([{ repo: 'acme/app/cache', tag: 'old', reason: 'expired' }]);
  expect(plan.deleteManifests.map((m) => m.digest).sort()).toEqual([d('a'), d('b'), d('d')].sort());
  expect(plan.orgs.get('acme')).toMatchObject({ usedBytes: 7040, overBytes: 0, evictedTags: 0 });

  const tight = planRetention(inventory([ACME]), policy({ quotaFor: () => 6500 }));
  expect(tight.deleteTags).toContainEqual({ repo: 'acme/app/cache', tag: 'feat', reason: 'quota' });
  expect(tight.orgs.get('acme')).toMatchObject({ usedBytes: 6020, overBytes: 0, evictedTags: 1 });

  // Below what the newest tag alone needs: it stays, and the org is reported over by the difference.
  const floor = planRetention(inventory([ACME]), policy({ quotaFor: () => 1000 }));
  expect(floor.deleteTags.filter((t) => t.reason === 'quota').map((t) => t.tag)).toEqual(['feat']);
  expect(floor.orgs.get('acme')).toMatchObject({ usedBytes: 6020, quotaBytes: 1000, overBytes: 5020 });
});

test("one org's quota never evicts another org's cache, and young manifests in no tag are kept", () => {
  const other = {
    name: 'zeta/app/cache',
    tags: [{ tag: 'main', history: [{ digest: d('7'), at: NOW - DAY }] }],
    revisions: [
      { digest: d('7'), at: NOW - DAY },
      { digest: d('6'), at: NOW - 60_000 }, // pushed by digest a minute ago: a push under way
      { digest: d('5'), at: NOW - 5 * 3600_000 } // in no tag, five hours old: garbage
    ]
  };
  const plan = planRetention(inventory([ACME, other]), policy({ quotaFor: (org) => (org === 'acme' ? 1000 : 0) }));
  expect(plan.deleteTags.every((t) => t.repo.startsWith('acme/'))).toBe(true);
  expect(plan.deleteManifests.filter((m) => m.repo.startsWith('zeta/')).map((m) => m.digest)).toEqual([d('5')]);
  expect(plan.orgs.get('zeta')).toMatchObject({ usedBytes: 2 * 1020 + 5000, overBytes: 0 });
});

test('a manifest two tags point at stays while one of them keeps it', () => {
  const repo = {
    name: 'acme/app/cache',
    tags: [
      { tag: 'a', history: [{ digest: d('1'), at: NOW - 50 * DAY }] },
      { tag: 'b', history: [{ digest: d('1'), at: NOW - DAY }] }
    ],
    revisions: [{ digest: d('1'), at: NOW - 50 * DAY }]
  };
  const plan = planRetention(inventory([repo]), policy());
  expect(plan.deleteTags).toEqual([{ repo: 'acme/app/cache', tag: 'a', reason: 'expired' }]);
  expect(plan.deleteManifests).toEqual([]);
});

test('policy, sizes and the quota message', () => {
  expect(() => planRetention(inventory([]), policy({ keepPerTag: 0 }))).toThrow('keepPerTag 0: expected a whole number of at least 1');
  expect(parseSize('200MiB', '--max')).toBe(200 * 1024 ** 2);
  expect(parseSize('1.5GiB', '--max')).toBe(1.5 * 1024 ** 3);
  expect(parseSize('10GB', '--max')).toBe(10e9);
  expect(parseSize('0', '--max')).toBe(0);
  expect(() => parseSize('lots', '--cache-quota')).toThrow("Invalid --cache-quota 'lots'. Expected a size such as 500MiB, 20GiB or 0 (no quota).");
  expect(formatBytes(1536)).toBe('1.5 KiB');
  const msg = quotaMessage('acme', { usedBytes: 12 * 1024 ** 2, quotaBytes: 10 * 1024 ** 2 });
  expect(msg).toContain("org 'acme' is over its org-cache storage quota: 12.0 MiB stored, quota 10.0 MiB, 2.0 MiB over");
  expect(msg).toContain('buildcloud admin cache quota --org acme --max 22MiB');
});

test('repositories outside the org cache (a base image an org credential pushed) count but are never trimmed or evicted', () => {
  const base = {
    name: 'acme/busybox',
    tags: [
      {
        tag: 'latest',
        history: [
          { digest: d('8'), at: NOW - 90 * DAY },
          { digest: d('4'), at: NOW - 95 * DAY }
        ]
      }
    ],
    revisions: [
      { digest: d('8'), at: NOW - 90 * DAY },
      { digest: d('4'), at: NOW - 95 * DAY },
      { digest: d('3'), at: NOW - 95 * DAY }
    ]
  };
  const plan = planRetention(inventory([ACME, base]), policy({ quotaFor: () => 1000 }));
  expect(plan.deleteTags.filter((t) => t.repo === 'acme/busybox')).toEqual([]);
  expect(plan.deleteManifests.filter((m) => m.repo === 'acme/busybox')).toEqual([]);
  expect(isCacheRepository('acme/app/cache')).toBe(true);
  expect(isCacheRepository('acme/platform/app/cache/web__build')).toBe(true);
  expect(isCacheRepository('acme/busybox')).toBe(false);
  expect(isCacheRepository('acme/cache')).toBe(false);
});
