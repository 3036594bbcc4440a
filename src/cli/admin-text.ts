// What `buildcloud admin` prints: pure functions from store rows to text (and the JSON beside it), so unit tests pin
// the exact lines an operator reads.
import type { BucketRow, OrgLimitsRow } from '../server/store/store';

/** "1 build minute", "2 build minutes", "0.5 build minutes": a count of minutes, rounded to 2 decimals. */
export function buildMinutes(n: number): string {
  const r = +n.toFixed(2);
  return `${r} build minute${r === 1 ? '' : 's'}`;
}

/** "1 token", "3 trust rules": a count and its noun, plural unless exactly 1. */
export function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** One bucket of minutes as `admin bucket list` and `admin org show` report it. */
export interface BucketView {
  id: number;
  createdAt: string; // RFC 3339
  minutes: number; // bought
  usedMinutes: number; // billed against it
  leftMinutes: number;
  note: string;
}

/**
 * The org's buckets with what was billed against each: billed seconds are taken from the oldest bucket first (the
 * buckets are one prepaid balance; the order only tells which purchase is spent). Billed seconds past the last
 * bucket (an overdraft) are returned apart.
 */
export function bucketViews(buckets: BucketRow[], billedSeconds: number): { buckets: BucketView[]; overdraftMinutes: number } {
  let rest = Math.max(0, billedSeconds);
  const views = [...buckets]
    .sort((a, b) => a.createdAt - b.createdAt || a.id - b.id)
    .map((b) => {
      const used = Math.min(b.seconds, rest);
      rest -= used;
      return {
        id: b.id,
        createdAt: new Date(b.createdAt).toISOString(),
        minutes: +(b.seconds / 60).toFixed(2),
        usedMinutes: +(used / 60).toFixed(2),
        leftMinutes: +((b.seconds - used) / 60).toFixed(2),
        note: b.note
      };
    });
  return { buckets: views, overdraftMinutes: +(rest / 60).toFixed(2) };
}

/** The lines of one org's buckets: a header naming the org and its totals, then one line per bucket. */
export function bucketLines(org: string, v: { buckets: BucketView[]; overdraftMinutes: number }): string[] {
  if (!v.buckets.length) {
    return [`Org '${org}': no buckets of minutes. Add one with \`buildcloud admin bucket add --org ${org} --minutes N --note TEXT\`.`];
  }
  const bought = v.buckets.reduce((s, b) => s + b.minutes, 0);
  const left = v.buckets.reduce((s, b) => s + b.leftMinutes, 0);
  const lines = [`Org '${org}': ${count(v.buckets.length, 'bucket')}, ${buildMinutes(left)} left of ${buildMinutes(bought)} bought`];
  for (const b of v.buckets) {
    const note = b.note ? `  '${b.note}'` : '';
    lines.push(`  #${b.id}  ${b.createdAt.slice(0, 10)}  ${buildMinutes(b.minutes)}: ${b.usedMinutes} used, ${b.leftMinutes} left${note}`);
  }
  if (v.overdraftMinutes > 0) lines.push(`  overdraft: ${buildMinutes(v.overdraftMinutes)} billed past the buckets`);
  return lines;
}

/** Everything `admin org show` reports about one org. */
export interface OrgView {
  org: string;
  maxBuilders: number | null;
  maxLeases: number | null;
  overdraftMinutes: number;
  protectedBranches: string[];
  protectedBranchesDefault: boolean; // never set: the default main, master
  minutesBought: number;
  minutesBilled: number;
  minutesReserved: number;
  minutesLeft: number;
  buckets: BucketView[];
  trustRules: number;
  tokens: number; // not revoked
  revokedTokens: number;
}

/** The org's view from its rows. */
export function orgView(
  org: string,
  limits: OrgLimitsRow,
  defaultProtected: readonly string[],
  buckets: BucketRow[],
  billedSeconds: number,
  reservedSeconds: number,
  trustRules: number,
  tokens: { revokedAt: number | null }[]
): OrgView {
  const bv = bucketViews(buckets, billedSeconds);
  const bought = buckets.reduce((s, b) => s + b.seconds, 0);
  return {
    org,
    maxBuilders: limits.maxBuilders,
    maxLeases: limits.maxLeases,
    overdraftMinutes: limits.overdraftSeconds / 60,
    protectedBranches: [...(limits.protectedBranches ?? defaultProtected)],
    protectedBranchesDefault: limits.protectedBranches === null,
    minutesBought: +(bought / 60).toFixed(2),
    minutesBilled: +(billedSeconds / 60).toFixed(2),
    minutesReserved: +(reservedSeconds / 60).toFixed(2),
    minutesLeft: +((bought - billedSeconds - reservedSeconds) / 60).toFixed(2),
    buckets: bv.buckets,
    trustRules,
    tokens: tokens.filter((t) => t.revokedAt === null).length,
    revokedTokens: tokens.filter((t) => t.revokedAt !== null).length
  };
}

/** `admin org show` as text. */
export function orgShowText(v: OrgView): string {
  const cap = (n: number | null) => (n === null ? 'unlimited' : String(n));
  const bv = { buckets: v.buckets, overdraftMinutes: Math.max(0, +(v.minutesBilled - v.minutesBought).toFixed(2)) };
  return [
    `Org '${v.org}'`,
    `  limits     max builders ${cap(v.maxBuilders)}, max leases ${cap(v.maxLeases)}, overdraft ${buildMinutes(v.overdraftMinutes)}`,
    `  minutes    ${buildMinutes(v.minutesLeft)} left: ${v.minutesBought} bought, ${v.minutesBilled} billed, ${v.minutesReserved} reserved by running leases`,
    `  protected  ${v.protectedBranches.join(', ')}${v.protectedBranchesDefault ? ' (the default)' : ''}`,
    `  trust      ${count(v.trustRules, 'trust rule')}`,
    `  tokens     ${count(v.tokens, 'token')}${v.revokedTokens ? ` (and ${v.revokedTokens} revoked)` : ''}`,
    ...bucketLines(v.org, bv).map((l, i) => (i === 0 ? `  buckets    ${l.replace(/^Org '[^']*': /, '')}` : `  ${l}`))
  ].join('\n');
}
