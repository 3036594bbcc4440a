// Validation of what clients send: every error names the field and what is expected.
import { invalid } from './errors';

const PRINTABLE = /^[\x21-\x7e]+$/;
const PLATFORM = /^[a-z0-9]+\/[a-z0-9_]+(\/v[0-9]+)?$/;
const ORG = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;

export function validateOrgName(name: string, field = 'org'): string {
  if (!name || name.length > 64 || !ORG.test(name)) {
    throw invalid(`Invalid ${field} '${truncate(name)}'. Expected 1-64 lowercase letters, digits and single . _ - between them (e.g. acme-corp).`);
  }
  return name;
}

export function validateKey(value: string, field: string, max = 256): string {
  if (!value) throw invalid(`Missing ${field}. Expected a non-empty string of up to ${max} printable characters.`);
  if (value.length > max || !PRINTABLE.test(value)) {
    throw invalid(`Invalid ${field} '${truncate(value)}'. Expected up to ${max} printable ASCII characters without spaces.`);
  }
  return value;
}

export function normalisePlatforms(requested: string[], available: string[]): string[] {
  const list = requested.length ? requested : available.slice(0, 1);
  if (list.length > 8) throw invalid(`Invalid platforms: ${list.length} given. Expected at most 8.`);
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

export function truncate(s: unknown, n = 80): string {
  const str = String(s ?? '');
  return str.length > n ? `${str.slice(0, n)}...` : str;
}
