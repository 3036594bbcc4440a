// Validated settings from raw inputs. Each wrapper supplies `get(name)` (GitHub: core.getInput; CLI: a flag or a
// BUILDCLOUD_* variable); every error names the input and what is expected.
import { ORG_PATTERN, PLATFORM_PATTERN } from '../contract/rules';
import { BUILD_INPUTS, SETUP_INPUTS, type InputDef } from './inputs';
import { ENDPOINT_FORMS, parseEndpoint } from './endpoint';
import { InputError } from './input-error';
import { keyValueEntries, secretFileEntries, secretEntries, sshEntries, type BuildSecret, type BuildSecretFile } from './build-inputs';

export { InputError } from './input-error';

/**
 * An input's raw text by name. `source`, when the wrapper knows it, says how the user gave the input (`--push`,
 * `BUILDCLOUD_PUSH`), or undefined for its default: errors then name what the user typed, not the input.
 */
export type Getter = ((name: string) => string) & { source?: (name: string) => string | undefined };

export interface SetupSettings {
  endpoint: string;
  token: string;
  org: string;
  oidcAudience: string;
  platforms: string[];
  scope: 'pipeline' | 'job';
  cache: boolean;
  fallback: 'none' | 'local';
  summary: boolean;
  prComment: boolean;
  githubToken: string;
  jobId: string;
  meteringEndpoint: string;
  provisionTimeoutS: number;
}

export interface BuildSettings {
  context: string;
  file: string;
  tags: string[];
  buildArgs: string[];
  target: string;
  cacheScope: string;
  labels: string[];
  push: boolean;
  load: boolean;
  platforms: string[];
  noCache: boolean;
  pull: boolean;
  secrets: BuildSecret[]; // values: written to 0600 files for the build only, masked, never logged
  secretFiles: BuildSecretFile[]; // absolute paths of existing files
  ssh: string[]; // docker build --ssh specs, paths made absolute
}

const TRUE = ['true', 'True', 'TRUE', '1', 'yes'];
const FALSE = ['false', 'False', 'FALSE', '0', 'no'];

/** The words a boolean input or flag takes, as every CI passes them: true, True, TRUE, 1, yes and their opposites. */
export const BOOLEAN_WORDS: readonly string[] = [...TRUE, ...FALSE];

/** `v` as a boolean when it is one of BOOLEAN_WORDS, else undefined. */
export function parseBoolean(v: string): boolean | undefined {
  return TRUE.includes(v) ? true : FALSE.includes(v) ? false : undefined;
}

function raw(def: InputDef, get: Getter): string {
  const v = get(def.name);
  return v === undefined || v === null || v === '' ? def.default : String(v);
}

/** What a boolean takes, for its errors: "true or false (also True, TRUE, 1, yes, False, FALSE, 0, no)". */
export const BOOLEAN_FORMS = `true or false (also ${BOOLEAN_WORDS.filter((w) => w !== 'true' && w !== 'false').join(', ')})`;

/** A boolean input: one of BOOLEAN_WORDS, else an InputError naming it and every accepted form. */
export function boolInput(def: InputDef, get: Getter): boolean {
  const v = raw(def, get).trim();
  if (TRUE.includes(v)) return true;
  if (FALSE.includes(v)) return false;
  throw new InputError(`Invalid input '${def.name}': '${v}'. Expected ${BOOLEAN_FORMS}.`);
}

/**
 * Runs `read` and, when it throws an InputError, names each input in its message as the user gave it (`input 'push'`
 * becomes `BUILDCLOUD_PUSH` or `--push`, as `get.source` says); inputs left at their default keep their name.
 */
function named<T>(get: Getter, read: () => T): T {
  try {
    return read();
  } catch (err) {
    const source = get.source;
    if (!(err instanceof InputError) || !source) throw err;
    const relabelled = new InputError(err.message.replace(/\binput '([a-z-]+)'/g, (whole, name: string) => source(name) ?? whole));
    relabelled.stack = err.stack;
    throw relabelled;
  }
}

// Lists of names: one item per line or comma-separated. Inputs whose entries may hold commas or span lines
// (build-args, labels, secrets, secret-files, ssh) are read by build-inputs.ts instead.
export function listInput(def: InputDef, get: Getter): string[] {
  return raw(def, get)
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);
}

function enumInput<T extends string>(def: InputDef, get: Getter): T {
  const v = raw(def, get).trim();
  if (!def.options!.includes(v)) throw new InputError(`Invalid input '${def.name}': '${v}'. Expected one of: ${def.options!.join(', ')}.`);
  return v as T;
}

function numberInput(def: InputDef, get: Getter, min: number, max: number): number {
  const v = raw(def, get).trim();
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new InputError(`Invalid input '${def.name}': '${v}'. Expected a whole number from ${min} to ${max}.`);
  }
  return Number(v);
}

function str(def: InputDef, get: Getter): string {
  return raw(def, get).trim();
}

function byName(defs: InputDef[]): Record<string, InputDef> {
  return Object.fromEntries(defs.map((d) => [d.name, d]));
}

const S = byName(SETUP_INPUTS);
const B = byName(BUILD_INPUTS);

const PLATFORM = PLATFORM_PATTERN; // the control plane's own rule (src/contract/rules.ts)

function platforms(def: InputDef, get: Getter): string[] {
  const list = listInput(def, get);
  for (const p of list) if (!PLATFORM.test(p)) throw new InputError(`Invalid input '${def.name}': '${p}'. Expected os/arch such as linux/amd64.`);
  return list;
}

/** setup's settings from its raw inputs; throws InputError naming the input (as the user gave it) and what is expected. */
export function setupSettings(get: Getter): SetupSettings {
  return named(get, () => readSetupSettings(get));
}

function readSetupSettings(get: Getter): SetupSettings {
  const endpoint = str(S.endpoint, get);
  if (endpoint) {
    try {
      parseEndpoint(endpoint);
    } catch {
      // user:password@ in a URL is a secret: never echoed, and never the way to pass a credential.
      if (/^[a-z][a-z0-9+.-]*:\/\/[^/]*@/i.test(endpoint.trim()))
        throw new InputError(
          `Invalid input 'endpoint': it holds credentials (user@ or user:password@), which are not accepted or shown. Give the token as 'token' instead.`
        );
      throw new InputError(`Invalid input 'endpoint': '${endpoint}'. Expected ${ENDPOINT_FORMS}.`);
    }
  }
  const metering = str(S['metering-endpoint'], get);
  if (metering && !/^https?:\/\/\S+$/.test(metering)) {
    throw new InputError(`Invalid input 'metering-endpoint': '${metering}'. Expected an http:// or https:// URL.`);
  }
  const org = str(S.org, get);
  if (org && !ORG_PATTERN.test(org)) {
    throw new InputError(`Invalid input 'org': '${org}'. Expected lowercase letters, digits and single . _ - between them.`);
  }
  const jobId = str(S['job-id'], get);
  if (jobId.length > 200 || /\s/.test(jobId))
    throw new InputError(`Invalid input 'job-id': '${jobId.slice(0, 60)}'. Expected up to 200 characters without spaces.`);
  return {
    endpoint,
    token: str(S.token, get),
    org,
    oidcAudience: str(S['oidc-audience'], get),
    platforms: platforms(S.platforms, get),
    scope: enumInput(S.scope, get),
    cache: boolInput(S.cache, get),
    fallback: enumInput(S.fallback, get),
    summary: boolInput(S.summary, get),
    prComment: boolInput(S['pr-comment'], get),
    githubToken: str(S['github-token'], get),
    jobId,
    meteringEndpoint: metering,
    provisionTimeoutS: numberInput(S['provision-timeout'], get, 1, 3600)
  };
}

// Any text names a scope (build-cache.ts makes it a repository component); only its size and control characters
// are refused.
function cacheScopeInput(get: Getter): string {
  const v = str(B['cache-scope'], get);
  if (v.length > 200 || [...v].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f))
    throw new InputError(`Invalid input 'cache-scope': expected up to 200 characters without control characters (e.g. api or docker/api.Dockerfile).`);
  return v;
}

/** build's settings from its raw inputs; throws InputError naming the input (as the user gave it) and what is expected. */
export function buildSettings(get: Getter): BuildSettings {
  return named(get, () => readBuildSettings(get));
}

function readBuildSettings(get: Getter): BuildSettings {
  const buildArgs = keyValueEntries('build-args', raw(B['build-args'], get));
  const labels = keyValueEntries('labels', raw(B.labels, get));
  const secrets = secretEntries('secrets', raw(B.secrets, get));
  const context = str(B.context, get);
  return {
    context,
    file: str(B.file, get),
    tags: listInput(B.tags, get),
    buildArgs,
    target: str(B.target, get),
    cacheScope: cacheScopeInput(get),
    labels,
    push: boolInput(B.push, get),
    load: boolInput(B.load, get),
    platforms: platforms(B.platforms, get),
    noCache: boolInput(B['no-cache'], get),
    pull: boolInput(B.pull, get),
    secrets,
    secretFiles: secretFileEntries('secret-files', raw(B['secret-files'], get), secrets),
    ssh: sshEntries('ssh', raw(B.ssh, get))
  };
}
