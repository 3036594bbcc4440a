import { SliceClock, TurnQueue } from '../../src/server/turns';

describe('TurnQueue', () => {
  test('one waiter per turn of the event loop, in arrival order', async () => {
    const q = new TurnQueue();
    const order: string[] = [];
    // Each turn's check phase lets one waiter go. An immediate a waiter queues runs in the next turn's check phase,
    // beside the next waiter: so w1 ran in a later turn than w0 (a poll for I/O in between), and so on.
    const waiters = [0, 1, 2].map((i) =>
      q.next().then(() => {
        order.push(`w${i}`);
        setImmediate(() => order.push(`after-w${i}`));
      })
    );
    await Promise.all(waiters);
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['w0', 'w1', 'after-w0', 'w2', 'after-w1', 'after-w2']);
  });

  test('a plain setImmediate yield lets all waiters run in one check phase, before anything they queue (why TurnQueue exists)', async () => {
    const order: string[] = [];
    const waiters = [0, 1].map((i) =>
      new Promise((r) => setImmediate(r)).then(() => {
        order.push(`w${i}`);
        setImmediate(() => order.push(`after-w${i}`));
      })
    );
    await Promise.all(waiters);
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['w0', 'w1', 'after-w0', 'after-w1']);
  });

  test('keeps working after it has drained', async () => {
    const q = new TurnQueue();
    await q.next();
    await q.next();
    await expect(Promise.all([q.next(), q.next()])).resolves.toHaveLength(2);
  });
});

describe('SliceClock', () => {
  test('spent once its budget has passed, fresh after restart', async () => {
    const c = new SliceClock(5);
    expect(c.spent()).toBe(false);
    const t = performance.now();
    while (performance.now() - t < 6); // busy for 6 ms: the budget is wall time of this thread
    expect(c.spent()).toBe(true);
    c.restart();
    expect(c.spent()).toBe(false);
  });
});
