// "Did you mean …?" for a name nobody defined: an unknown BUILDCLOUD_* variable (env-vars.ts), and any other list of
// known names (inputs, flags). Pure, so every wrapper that meets an unknown name suggests the same one.

/** Edit distance with adjacent transpositions (optimal string alignment): TAGS/TGAS is 1, TAG/TAGS is 1. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/**
 * The known name closest to `name`, or undefined when none is close enough to be what was meant: at most 1 edit for
 * names up to 4 characters, else at most 2 (or a third of the name, for long ones); failing that, a known name that
 * starts with this one (3 characters or more) and an underscore (PIPELINE → PIPELINE_ID, JOB → JOB_ID). `prefix` (e.g. BUILDCLOUD_) is
 * left out of the comparison, so a short name is not "close" to every other one through what they share. Ties go to
 * the earlier candidate.
 */
export function closestName(name: string, candidates: readonly string[], prefix = ''): string | undefined {
  const strip = (s: string) => (prefix && s.startsWith(prefix) ? s.slice(prefix.length) : s);
  const n = strip(name);
  const limit = n.length <= 4 ? 1 : Math.max(2, Math.floor(n.length / 3));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const dist = editDistance(n, strip(c));
    if (dist < bestD) [best, bestD] = [c, dist];
  }
  if (bestD <= limit) return best;
  // A name cut short (PIPELINE for PIPELINE_ID, JOB for JOB_ID) is further off by edits than it is in meaning.
  return n.length >= 3 ? candidates.find((c) => strip(c).startsWith(`${n}_`)) : undefined;
}
