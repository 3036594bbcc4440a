// Long request work (a batch of up to 1,000 usage records) is done in slices, and between two slices the event loop
// must get back to I/O: health checks, gRPC calls and every builder's TLS front share this one thread (issue 13:
// no request may block them for more than a few milliseconds). `await new Promise(setImmediate)` alone is not
// enough: Node runs every immediate queued before its check phase in that one phase, so four concurrent batches
// ran four slices back to back. A TurnQueue lets one waiter go per turn of the loop, in arrival order.

/** Hands out turns of the event loop: each `next()` resolves in a turn of its own, after I/O has been polled. */
export class TurnQueue {
  private readonly waiting: Array<() => void> = [];
  private scheduled = false;

  /** Resolves on a later turn of the event loop than the call; at most one caller per turn. */
  next(): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.turn);
      }
    });
  }

  private readonly turn = (): void => {
    const resolve = this.waiting.shift();
    // Scheduled from inside an immediate: runs in the next turn's check phase, after that turn's poll for I/O.
    if (this.waiting.length > 0) setImmediate(this.turn);
    else this.scheduled = false;
    resolve?.();
  };
}

/**
 * A time budget for one slice of work: `spent()` is true once `budgetMs` (ms of wall time) have passed since the
 * slice began; `restart()` begins the next slice.
 */
export class SliceClock {
  private start = performance.now();
  constructor(private readonly budgetMs: number) {}
  spent(): boolean {
    return performance.now() - this.start >= this.budgetMs;
  }
  restart(): void {
    this.start = performance.now();
  }
}
