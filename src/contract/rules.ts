// The rules both sides apply to the names and keys a job sends: the runner checks its inputs with them before it
// calls, the control plane checks every request with them again. Defined once here so the two cannot drift; the
// messages that quote them live with each side (an input error on the runner, an INVALID_ARGUMENT on the server).
// docs/api.md ("Limits of identity fields") documents the same table.

/** An org name: lowercase letters and digits, single `.`, `_` or `-` between them (`acme-corp`). */
export const ORG_PATTERN = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
/** Longest org name, in characters. */
export const ORG_MAX = 64;

/** A platform as `os/arch` or `os/arch/vN` (`linux/amd64`, `linux/arm64/v8`), lowercase. */
export const PLATFORM_PATTERN = /^[a-z0-9]+\/[a-z0-9_]+(\/v[0-9]+)?$/;
/** Most platforms one Provision request may ask for. */
export const MAX_PLATFORMS = 8;

/** A key (pipeline key, job id, lease id): printable ASCII without spaces. */
export const KEY_PATTERN = /^[\x21-\x7e]+$/;
/** Longest key the control plane accepts by default, in characters. */
export const KEY_MAX = 256;
/** Longest pipeline key, in characters. */
export const PIPELINE_KEY_MAX = 256;
/** Longest job id, in characters. */
export const JOB_ID_MAX = 256;

/**
 * The bound on one identity field a job sends about itself (CIIdentity in the gRPC contract). A value longer than
 * `max` characters, or a non-empty one that `re` does not match, is refused with a message naming `field` and
 * `rule`; `required` fields must be non-empty.
 */
export interface IdentityFieldRule {
  field: string; // as the caller names it (proto field name)
  max: number; // characters
  rule: string; // what is allowed, for the error message and the docs
  re: RegExp; // applied to non-empty values
  required?: boolean;
}

// No control characters, no whitespace: values end up in refs, logs, summaries and metrics labels.
const NO_SPACE_OR_CONTROL = /^[^\s\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+$/u;
const URL_CHARS = /^https?:\/\/[\x21-\x7e]+$/;

/** Every identity field's bound, by its TypeScript name. */
export const IDENTITY_LIMITS: Record<'provider' | 'project' | 'branch' | 'defaultBranch' | 'actor' | 'runUrl', IdentityFieldRule> = {
  provider: { field: 'identity.provider', max: 32, rule: 'lowercase letters, digits and - (e.g. github, gitlab, circleci, local)', re: /^[a-z][a-z0-9-]*$/ },
  project: { field: 'identity.project', max: 256, rule: 'printable ASCII characters without spaces (e.g. acme/widget-api)', re: KEY_PATTERN, required: true },
  branch: { field: 'identity.branch', max: 255, rule: 'characters without whitespace or control characters (a git branch name)', re: NO_SPACE_OR_CONTROL },
  defaultBranch: {
    field: 'identity.default_branch',
    max: 255,
    rule: 'characters without whitespace or control characters (a git branch name)',
    re: NO_SPACE_OR_CONTROL
  },
  actor: { field: 'identity.actor', max: 255, rule: 'characters without whitespace or control characters (a user login)', re: NO_SPACE_OR_CONTROL },
  runUrl: { field: 'identity.run_url', max: 2048, rule: 'an http:// or https:// URL of printable ASCII characters without spaces', re: URL_CHARS }
};

/** Longest string field of a usage record's data, in characters (longer ones are refused by the endpoint). */
export const MAX_RECORD_STRING = 256;

/**
 * The north star: the share of an org's builds with at least one cached step that the product aims for (0..1).
 * The usage report says whether it is met; summaries show it as the goal.
 */
export const NORTH_STAR_GOAL = 0.8;
