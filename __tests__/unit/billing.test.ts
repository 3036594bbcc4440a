import { balance, billableSeconds, canProvision, leaseDeadline, reapDecision, summarizeBuilds, BuildFacts } from '../../src/server/billing';

describe('billableSeconds', () => {
  test.each([
    [0, 0, 0],
    [1000, 1000, 0],
    [2000, 1000, 0], // clock went backwards: nothing, never negative
    [0, 1, 1], // no minimum, but a started second counts
    [0, 999, 1],
    [0, 1000, 1],
    [0, 1001, 2],
    [0, 1200, 2],
    [0, 60_000, 60],
    [0, 3_600_000, 3600],
    [0, NaN, 0]
  ])('from %p to %p bills %p s', (from, to, want) => {
    expect(billableSeconds(from, to)).toBe(want);
  });
});

describe('leaseDeadline / reapDecision', () => {
  const opts = { idleTimeoutMs: 60_000, maxTtlMs: 600_000 };

  test.each([
    [{ createdAt: 0, lastActiveAt: 0 }, 60_000],
    [{ createdAt: 0, lastActiveAt: 100_000 }, 160_000],
    [{ createdAt: 0, lastActiveAt: 590_000 }, 600_000] // TTL comes first
  ])('deadline of %p is %p', (lease, want) => {
    expect(leaseDeadline(lease, opts)).toBe(want);
  });

  test.each<[string, { createdAt: number; lastActiveAt: number }, number, boolean, ReturnType<typeof reapDecision>]>([
    ['fresh lease', { createdAt: 0, lastActiveAt: 0 }, 30_000, false, null],
    ['just before idle', { createdAt: 0, lastActiveAt: 0 }, 59_999, false, null],
    ['idle at the deadline', { createdAt: 0, lastActiveAt: 0 }, 60_000, false, { reason: 'idle', endedAt: 60_000 }],
    // The reaper ran late: billed up to the idle deadline, not up to now.
    ['idle, reaper late', { createdAt: 0, lastActiveAt: 10_000 }, 500_000, false, { reason: 'idle', endedAt: 70_000 }],
    ['open connections keep it alive', { createdAt: 0, lastActiveAt: 0 }, 300_000, true, null],
    ['but not past the TTL', { createdAt: 0, lastActiveAt: 0 }, 600_000, true, { reason: 'ttl', endedAt: 600_000 }],
    ['active, TTL passed long ago', { createdAt: 0, lastActiveAt: 599_000 }, 900_000, false, { reason: 'ttl', endedAt: 600_000 }],
    ['server down past both deadlines: the first one', { createdAt: 0, lastActiveAt: 0 }, 10_000_000, false, { reason: 'idle', endedAt: 60_000 }],
    ['open connections, way past TTL', { createdAt: 0, lastActiveAt: 0 }, 10_000_000, true, { reason: 'ttl', endedAt: 600_000 }]
  ])('%s', (_name, lease, now, open, want) => {
    expect(reapDecision(lease, now, opts, open)).toEqual(want);
  });

  test('a reaped lease bills up to its deadline', () => {
    const d = reapDecision({ createdAt: 1_000, lastActiveAt: 31_000 }, 1_000_000, opts, false);
    expect(d).not.toBeNull();
    expect(billableSeconds(1_000, d!.endedAt)).toBe(90);
  });
});

describe('balance / canProvision', () => {
  test.each([
    // bucket, billed, active → used, left, overdraft, minutes used/left/overdraft
    [6000, 0, 0, 0, 6000, 0, 0, 100, 0],
    [6000, 1200, 300, 1500, 4500, 0, 25, 75, 0],
    [6000, 6000, 0, 6000, 0, 0, 100, 0, 0],
    [6000, 6000, 90, 6090, 0, 90, 101.5, 0, 1.5], // overdraft: 0 left, overdraft reported
    [60, 1, 0, 1, 59, 0, 0.02, 0.98, 0], // used rounds up, left rounds down
    [0, 0, 0, 0, 0, 0, 0, 0, 0]
  ])('bucket %p billed %p active %p', (bucket, billed, active, used, left, over, mUsed, mLeft, mOver) => {
    const b = balance(bucket, billed, active);
    expect(b).toMatchObject({ usedSeconds: used, leftSeconds: left, overdraftSeconds: over });
    expect(b).toMatchObject({ minutesUsed: mUsed, minutesLeft: mLeft, minutesOverdraft: mOver });
  });

  test.each([
    [60, true],
    [59, false], // less than a minimum lease
    [0, false],
    [-5, false]
  ])('canProvision(%p) = %p', (left, want) => {
    expect(canProvision(left)).toBe(want);
  });
  test('a smaller minimum lease', () => {
    expect(canProvision(1, 1)).toBe(true);
    expect(canProvision(0, 0)).toBe(false);
  });
});

describe('summarizeBuilds', () => {
  const b = (status: string, total: number, cached: number, actor?: string, durationMs = 1000): BuildFacts => ({
    status,
    totalSteps: total,
    cachedSteps: cached,
    cacheRatio: total ? cached / total : 0,
    durationMs,
    actor
  });

  test('no builds', () => {
    expect(summarizeBuilds([])).toEqual({
      builds: 0,
      succeeded: 0,
      failed: 0,
      cancelled: 0,
      totalSteps: 0,
      cachedSteps: 0,
      durationSeconds: 0,
      avgCacheRatio: 0,
      withCachedStepShare: 0,
      distinctActors: 0
    });
  });

  test('counts, ratios, north star and actors', () => {
    const s = summarizeBuilds([
      b('success', 4, 4, 'ann'),
      b('success', 4, 2, 'bob'),
      b('failure', 4, 0, 'ann'),
      b('cancelled', 0, 0, undefined), // no steps: not in the average, but a build without a cached step
      b('success', 10, 1, 'cy', 2500)
    ]);
    expect(s).toMatchObject({ builds: 5, succeeded: 3, failed: 1, cancelled: 1, totalSteps: 22, cachedSteps: 7 });
    expect(s.avgCacheRatio).toBe(0.4); // (1 + 0.5 + 0 + 0.1) / 4
    expect(s.withCachedStepShare).toBe(0.6); // 3 of 5
    expect(s.distinctActors).toBe(3);
    expect(s.durationSeconds).toBe(7); // 6.5 s rounded
  });
});
