// Full jitter: a random delay up to the exponential bound, so parallel jobs do not retry in lockstep.
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(maxMs, baseMs * 2 ** (attempt - 1)));
}
