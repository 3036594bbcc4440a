// Writing results in each CI's own form: shell export lines (sourced in GitLab, appended to CircleCI's $BASH_ENV),
// GitLab dotenv reports and OpenMetrics reports. Pure formatting, table-tested.

// Single-quoted for POSIX shells: the only character that needs care inside single quotes is the quote itself.
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function exportLines(env: Record<string, string>): string {
  return (
    Object.entries(env)
      .map(([k, v]) => {
        if (!NAME.test(k)) throw new Error(`not a variable name: ${k}`);
        return `export ${k}=${shellQuote(v)}`;
      })
      .join('\n') + '\n'
  );
}

/** The longest value dotenvLines writes: GitLab takes a dotenv report of at most 5 kB (and some 20 variables). */
export const DOTENV_VALUE_MAX = 1000;

/**
 * GitLab dotenv (artifacts:reports:dotenv): one `KEY=VALUE` per line, keys [A-Za-z0-9_]. GitLab reads the value as
 * written up to the end of the line: spaces and quotes inside it are kept as they are (quotes are not removed, so
 * none are added), leading and trailing blanks are stripped, and a value cannot span lines. So a value is written as
 * it is, except: its lines are joined with `,` (a list of cache refs stays a comma-separated list; a message of
 * several lines stays readable), blanks at both ends are trimmed, other control characters become spaces, and a
 * value longer than DOTENV_VALUE_MAX characters is cut there, ending in `…`.
 */
export function dotenvLines(values: Record<string, string>): string {
  return (
    Object.entries(values)
      .map(([k, v]) => {
        if (!/^[A-Za-z0-9_]+$/.test(k)) throw new Error(`not a dotenv key: ${k}`);
        let clean = v
          .split(/\r?\n|\r/)
          .map((l) => l.trim())
          .filter(Boolean)
          .join(',')
          // eslint-disable-next-line no-control-regex -- control characters are what this replaces
          .replace(/[\u0000-\u001f\u007f]/g, ' ')
          .trim();
        if (clean.length > DOTENV_VALUE_MAX) clean = `${clean.slice(0, DOTENV_VALUE_MAX - 1)}…`;
        return `${k}=${clean}`;
      })
      .join('\n') + '\n'
  );
}

export interface MetricsInput {
  buildMinutes: number; // billed minutes of this job's lease
  builds: number;
  totalSteps: number;
  cachedSteps: number;
  cacheRatio: number;
  buildSeconds: number;
  deduplicatedSteps?: number; // steps another job's build at the same time ran: not cache hits
}

// GitLab's metrics report (artifacts:reports:metrics): OpenMetrics text, `name value` lines.
export function metricsReport(m: MetricsInput): string {
  const n = (x: number) => (Number.isFinite(x) ? String(+x.toFixed(4)) : '0');
  return [
    `buildcloud_build_minutes ${n(m.buildMinutes)}`,
    `buildcloud_builds ${m.builds}`,
    `buildcloud_build_seconds ${n(m.buildSeconds)}`,
    `buildcloud_total_steps ${m.totalSteps}`,
    `buildcloud_cached_steps ${m.cachedSteps}`,
    `buildcloud_deduplicated_steps ${m.deduplicatedSteps ?? 0}`,
    `buildcloud_cache_ratio ${n(m.cacheRatio)}`,
    '# EOF',
    ''
  ].join('\n');
}

// Outputs whose plain variable name would be read back as an input of the same name by a later step.
const RENAMED: Record<string, string> = { platforms: 'BUILDCLOUD_BUILDER_PLATFORMS', fallback: 'BUILDCLOUD_FALLBACK_USED' };

// Output names as variables: `docker-host` → BUILDCLOUD_DOCKER_HOST.
export function outputsAsEnv(outputs: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(outputs).map(([k, v]) => [RENAMED[k] ?? `BUILDCLOUD_${k.toUpperCase().replace(/-/g, '_')}`, v]));
}

/** setup's outputs as `setup --json` prints them: `fallback` a boolean, `cache-from` and `platforms` lists. */
export interface SetupValues {
  builder: string;
  'docker-host': string;
  'lease-id': string;
  'cache-from': string[];
  'cache-to': string;
  platforms: string[];
  fallback: boolean;
}

// CI outputs are strings (lists newline- or comma-separated); JSON carries the values they stand for.
const list = (v: string | undefined, sep: RegExp) => (v ? v.split(sep).filter(Boolean) : []);

/** setup's string outputs as typed values (docs/schemas/cli-setup.json). */
export function setupValues(outputs: Record<string, string>): SetupValues {
  return {
    builder: outputs.builder ?? '',
    'docker-host': outputs['docker-host'] ?? '',
    'lease-id': outputs['lease-id'] ?? '',
    'cache-from': list(outputs['cache-from'], /\n/),
    'cache-to': outputs['cache-to'] ?? '',
    platforms: list(outputs.platforms, /,/),
    fallback: outputs.fallback === 'true'
  };
}

/** What `report --json` prints (docs/schemas/cli-report.json). */
export interface ReportValues<B> {
  builds: B[];
  billedSeconds: number | null;
  warnings: string[];
  cacheRatio: number;
  builderShared: boolean | null; // another job of the pipeline held the builder while this one did; null without a lease
}

/** The report's JSON from the job's builds and what report() said. */
export function reportValues<B>(
  r: { builds: B[]; billedSeconds: number | null; warnings: string[]; summary: { builderShared?: boolean } },
  cacheRatio: number
): ReportValues<B> {
  return { builds: r.builds, billedSeconds: r.billedSeconds, warnings: r.warnings, cacheRatio, builderShared: r.summary.builderShared ?? null };
}
