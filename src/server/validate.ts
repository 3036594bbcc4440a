// Validation of what clients send: every error names the field and what is expected.
import { invalid } from './errors';
import {
  IDENTITY_LIMITS,
  JOB_ID_MAX,
  KEY_MAX,
  KEY_PATTERN as PRINTABLE,
  MAX_PLATFORMS,
  ORG_MAX,
  ORG_PATTERN as ORG,
  PIPELINE_KEY_MAX,
  PLATFORM_PATTERN as PLATFORM
} from '../contract/rules';

export function validateOrgName(name: string, field = 'org'): string {
  if (!name || name.length > ORG_MAX || !ORG.test(name)) {
    throw invalid(`Invalid ${field} '${truncate(name)}'. Expected 1-${ORG_MAX} lowercase letters, digits and single . _ - between them (e.g. acme-corp).`);
  }
  return name;
}

export function validateKey(value: string, field: string, max = KEY_MAX): string {
  if (!value) throw invalid(`Missing ${field}. Expected a non-empty string of up to ${max} printable characters.`);
  if (value.length > max) throw invalid(tooLong(field, value, max, 'printable ASCII characters without spaces'));
  if (!PRINTABLE.test(value)) {
    throw invalid(`Invalid ${field} '${truncate(value, 40)}'. Expected up to ${max} printable ASCII characters without spaces.`);
  }
  return value;
}

// ---- identity of a Provision request ---------------------------------------------------------------------------
// Every field a client sends about itself is bounded here, before anything is stored, logged or used to build a
// name: one table, documented in docs/api.md ("Limits of identity fields"). An error names the field, its limit and
// the rule; it quotes at most 40 characters of the value (escaped), never the whole of an oversize one.

// The table itself (IDENTITY_LIMITS) is contract: src/contract/rules.ts, which the runner checks its inputs with too.

export interface IdentityFields {
  provider?: string;
  project?: string;
  branch?: string;
  defaultBranch?: string;
  actor?: string;
  runUrl?: string;
  fork?: boolean;
}

function tooLong(field: string, value: string, max: number, rule: string): string {
  return `Invalid ${field}: ${value.length} characters, the limit is ${max} (${rule}). The value starts '${truncate(escape(value), 40)}'.`;
}

// Control and non-ASCII characters as \u escapes: the message must not carry a newline or a terminal escape back.
function escape(s: string): string {
  return s.replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

export function validateIdentityField(name: keyof typeof IDENTITY_LIMITS, value: unknown): string {
  const r = IDENTITY_LIMITS[name];
  if (value !== undefined && value !== null && typeof value !== 'string') throw invalid(`Invalid ${r.field}: expected a string.`);
  const v = (value as string | undefined | null) ?? '';
  if (!v) {
    if (r.required) throw invalid(`Missing ${r.field}. Expected up to ${r.max} ${r.rule}.`);
    return v;
  }
  if (v.length > r.max) throw invalid(tooLong(r.field, v, r.max, r.rule));
  if (!r.re.test(v)) throw invalid(`Invalid ${r.field} '${truncate(escape(v), 40)}'. Expected up to ${r.max} ${r.rule}.`);
  return v;
}

// The whole request's caller-supplied identity, checked before the lease manager sees it. Fields the lease
// manager checks itself (project required, platforms) keep their own messages; this only adds bounds.
export function validateProvisionIdentity(req: { pipelineKey?: string; jobId?: string; identity?: IdentityFields | null }): void {
  // Oversize keys are refused here without echoing them; the lease manager checks the rest of their rules.
  for (const [field, v, max] of [
    ['pipeline_key', req.pipelineKey, PIPELINE_KEY_MAX],
    ['job_id', req.jobId, JOB_ID_MAX]
  ] as const) {
    if (typeof v === 'string' && v.length > max) throw invalid(tooLong(field, v, max, 'printable ASCII characters without spaces'));
  }
  const id = req.identity ?? {};
  for (const name of Object.keys(IDENTITY_LIMITS) as Array<keyof typeof IDENTITY_LIMITS>) {
    if (name === 'project' && !id.project) continue; // "Missing identity.project" comes from the lease manager
    validateIdentityField(name, id[name]);
  }
}

export function normalisePlatforms(requested: string[], available: string[]): string[] {
  const list = requested.length ? requested : available.slice(0, 1);
  if (list.length > MAX_PLATFORMS) throw invalid(`Invalid platforms: ${list.length} given. Expected at most ${MAX_PLATFORMS}.`);
  const out: string[] = [];
  for (const raw of list) {
    const p = String(raw).trim().toLowerCase();
    if (!PLATFORM.test(p)) throw invalid(`Invalid platform '${truncate(raw)}'. Expected os/arch such as linux/amd64.`);
    if (!available.includes(p)) {
      throw invalid(`Platform '${p}' is not available on this control plane. Available: ${available.join(', ') || 'none'}.`);
    }
    if (!out.includes(p)) out.push(p);
  }
  return out;
}

/**
 * A caller's value as an error message may quote it: control characters (newlines, ESC of terminal colour codes)
 * shown as JSON escapes, cut to `n` characters. An error is printed in CI logs and terminals, so a value must not
 * be able to forge lines or colours there.
 */
export function truncate(s: unknown, n = 80): string {
  const str = String(s ?? '');
  const cut = str.length > n ? `${str.slice(0, n)}...` : str;
  // eslint-disable-next-line no-control-regex -- control characters are what this looks for
  return cut.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
