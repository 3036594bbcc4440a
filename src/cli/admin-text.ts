// What `buildcloud admin` prints: pure functions from store rows to text (and the JSON beside it), so unit tests pin
// the exact lines an operator reads.
import type { BucketRow, OrgLimitsRow, TokenRow, TrustRow } from '../server/store/store';

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
  trustRules: TrustRuleView[];
  tokens: TokenView[]; // revoked ones too, marked
}

/** One OIDC trust rule as `admin org show` lists it. */
export interface TrustRuleView {
  id: number;
  issuer: string;
  audience: string;
  claim: string;
  value: string;
}

/** One org token as `admin org show` lists it: never its secret. */
export interface TokenView {
  id: string;
  label: string;
  scope: TokenRow['scope']; // null: the org-admin token (any project, any branch)
  createdAt: string; // RFC 3339
  revokedAt: string | null; // RFC 3339
}

/** What --max-builders of an org with no cap of its own means: serve's per-org share. */
export const SERVE_ORG_MAX_BUILDERS = "serve's --org-max-builders applies (default 3/4 of --max-builders)";

/** An org's builder cap as text: the number, or what applies without one. */
export function maxBuildersText(n: number | null): string {
  return n === null ? SERVE_ORG_MAX_BUILDERS : String(n);
}

/** A token's scope in a few words. */
export function scopeText(scope: TokenRow['scope']): string {
  if (!scope) return 'org-admin (any project, any branch)';
  return `projects ${scope.projects?.join(',') ?? 'any'}; branches ${scope.branches?.join(',') ?? 'any'}${scope.readOnly ? '; read-only' : ''}`;
}

/** The org's view from its rows. */
export function orgView(
  org: string,
  limits: OrgLimitsRow,
  defaultProtected: readonly string[],
  buckets: BucketRow[],
  billedSeconds: number,
  reservedSeconds: number,
  trustRules: TrustRow[],
  tokens: TokenRow[]
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
    trustRules: trustRules.map((r) => ({ id: r.id, issuer: r.issuer, audience: r.audience, claim: r.claim, value: r.value })),
    tokens: [...tokens]
      .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id))
      .map((t) => ({
        id: t.id,
        label: t.label,
        scope: t.scope,
        createdAt: new Date(t.createdAt).toISOString(),
        revokedAt: t.revokedAt === null ? null : new Date(t.revokedAt).toISOString()
      }))
  };
}

/** `admin org show` as text: one line per trust rule and per token under their counts. */
export function orgShowText(v: OrgView): string {
  const cap = (n: number | null) => (n === null ? 'unlimited' : String(n));
  const bv = { buckets: v.buckets, overdraftMinutes: Math.max(0, +(v.minutesBilled - v.minutesBought).toFixed(2)) };
  const live = v.tokens.filter((t) => t.revokedAt === null).length;
  const revoked = v.tokens.length - live;
  const addTrust = `add one with \`buildcloud admin trust add --org ${v.org} --github-owner OWNER\``;
  const addToken = `create one with \`buildcloud admin token create --org ${v.org}\``;
  return [
    `Org '${v.org}'`,
    `  limits     max builders ${maxBuildersText(v.maxBuilders)}, max leases ${cap(v.maxLeases)}, overdraft ${buildMinutes(v.overdraftMinutes)}`,
    `  minutes    ${buildMinutes(v.minutesLeft)} left: ${v.minutesBought} bought, ${v.minutesBilled} billed, ${v.minutesReserved} reserved by running leases`,
    `  protected  ${v.protectedBranches.join(', ')}${v.protectedBranchesDefault ? ' (the default)' : ''}`,
    `  trust      ${count(v.trustRules.length, 'trust rule')}${v.trustRules.length ? '' : `: ${addTrust}`}`,
    ...v.trustRules.map((r) => `    #${r.id}  issuer ${r.issuer}  aud ${r.audience}  ${r.claim}=${r.value}`),
    `  tokens     ${count(live, 'token')}${revoked ? ` (and ${revoked} revoked)` : ''}${v.tokens.length ? '' : `: ${addToken}`}`,
    ...v.tokens.map(
      (t) =>
        `    ${t.id}  '${t.label}'  ${scopeText(t.scope)}  created ${t.createdAt.slice(0, 10)}${t.revokedAt ? `  revoked ${t.revokedAt.slice(0, 10)}` : ''}`
    ),
    ...bucketLines(v.org, bv).map((l, i) => (i === 0 ? `  buckets    ${l.replace(/^Org '[^']*': /, '')}` : `  ${l}`))
  ].join('\n');
}
