// The build step's list inputs that carry KEY=VALUE entries, secrets and SSH specs, each checked entry by entry.
// Entries are read by list-entries.ts (docker/build-push-action's form: one per line, or "double-quoted" across
// lines). An error names the input, the entry's number and its first line, and what is expected; never the entry's
// text, which may be (or hold a line of) a secret.
import * as fs from 'fs';
import * as path from 'path';
import { InputError } from './input-error';
import { parseListEntries, UnclosedQuoteError, type ListEntry } from './list-entries';

/** A `secrets` entry: BuildKit secret `id` with its value (written to a 0600 file for the build only). */
export interface BuildSecret {
  id: string;
  value: string;
}

/** A `secret-files` entry: BuildKit secret `id` read from `path` (absolute) by the docker client. */
export interface BuildSecretFile {
  id: string;
  path: string;
}

export const MULTI_LINE_FORM =
  'One entry per line; an entry whose value spans lines goes in double quotes, from the quote that starts its first line to the quote that ends its last: "KEY=line 1<newline>line 2" (write "" for a quote inside it).';

// Docker's own rule for an ARG name is looser, but an ARG a Dockerfile can use is a shell-style identifier.
const BUILD_ARG_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
// A label key is any text without whitespace; a quote in it is a quoted entry gone wrong (text after its closing quote).
const LABEL_KEY = /^[^\s="]+$/;
// BuildKit secret and SSH ids: the characters docker's --secret/--ssh syntax passes through unquoted (ids such as
// GIT_AUTH_TOKEN.github.com included).
const ID = /^[A-Za-z0-9_.-]+$/;
// The last line of a base64 block pasted without quotes reads as KEY= or KEY==: a long run of letters and digits of
// both cases. No build argument is named like that; refusing it beats passing the value cut at its first line.
const BASE64_TAIL = /^(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[0-9])[A-Za-z0-9+/]{20,}={1,2}$/;

const where = (input: string, n: number, e: ListEntry) => `Invalid input '${input}': entry ${n} (line ${e.line})`;

function entries(input: string, text: string, trim = true): ListEntry[] {
  try {
    return parseListEntries(trim ? text.trim() : text, trim);
  } catch (err) {
    if (!(err instanceof UnclosedQuoteError)) throw err;
    throw new InputError(
      `Invalid input '${input}': entry ${err.entry} (line ${err.line}) opens a double quote that is never closed. Expected the closing " at the end of the entry's last line, and "" for a quote inside it.`
    );
  }
}

/**
 * `build-args` or `labels`: KEY=VALUE entries (the value may span lines when the entry is quoted), as `KEY=VALUE`
 * strings in input order. Throws InputError naming the entry for a missing `=`, a key docker would not take, or
 * (build-args) what looks like the last line of an unquoted base64 value.
 */
export function keyValueEntries(input: 'build-args' | 'labels', text: string): string[] {
  return entries(input, text).map((e, i) => {
    const eq = e.value.indexOf('=');
    const key = eq > 0 ? e.value.slice(0, eq) : '';
    const keyRule = input === 'build-args' ? BUILD_ARG_KEY : LABEL_KEY;
    if (!keyRule.test(key)) {
      const what = input === 'build-args' ? 'KEY: letters, digits and _, not starting with a digit' : 'KEY without spaces, = or quotes';
      throw new InputError(`${where(input, i + 1, e)} is not KEY=VALUE (${what}). ${MULTI_LINE_FORM}`);
    }
    if (input === 'build-args' && i > 0 && BASE64_TAIL.test(e.value)) {
      throw new InputError(
        `${where(input, i + 1, e)} reads as the last line of a multi-line (base64) value, not as a build argument of its own. ${MULTI_LINE_FORM}`
      );
    }
    return e.value;
  });
}

/**
 * `secrets`: ID=VALUE entries, the value taken as given (not trimmed: a key file's last newline may matter), as
 * docker/build-push-action reads them (trimWhitespace: false). Throws InputError naming the entry, never its value.
 */
export function secretEntries(input: 'secrets', text: string): BuildSecret[] {
  const out = entries(input, text, false).map((e, i) => {
    const eq = e.value.indexOf('=');
    const id = eq > 0 ? e.value.slice(0, eq) : '';
    if (!ID.test(id) || eq === e.value.length - 1)
      throw new InputError(`${where(input, i + 1, e)} is not ID=VALUE (ID: letters, digits, . _ -; VALUE not empty). ${MULTI_LINE_FORM}`);
    return { id, value: e.value.slice(eq + 1), n: i + 1, e };
  });
  unique(input, out);
  return out.map(({ id, value }) => ({ id, value }));
}

/** `secret-files`: ID=PATH entries, each an existing file (relative paths from the working directory). */
export function secretFileEntries(input: 'secret-files', text: string, secrets: BuildSecret[] = []): BuildSecretFile[] {
  const taken = new Set(secrets.map((s) => s.id));
  const out = entries(input, text).map((e, i) => {
    const eq = e.value.indexOf('=');
    const id = eq > 0 ? e.value.slice(0, eq) : '';
    const file = eq > 0 ? e.value.slice(eq + 1).trim() : '';
    if (!ID.test(id) || !file) throw new InputError(`${where(input, i + 1, e)} is not ID=PATH (ID: letters, digits, . _ -). One entry per line.`);
    if (taken.has(id)) throw new InputError(`${where(input, i + 1, e)} uses an id that 'secrets' gives already. Expected each secret id once.`);
    const abs = path.resolve(file);
    if (!isFile(abs)) throw new InputError(`${where(input, i + 1, e)}: its PATH is not a readable file. Expected ID=PATH of an existing file.`);
    return { id, path: abs, n: i + 1, e };
  });
  unique(input, out);
  return out.map(({ id, path: p }) => ({ id, path: p }));
}

/**
 * `ssh`: `default`, `ID` (the agent at SSH_AUTH_SOCK) or `ID=PATH[,PATH]` (an agent socket or private keys), one per
 * line: docker build --ssh's own syntax (`default|<id>[=<socket>|<key>[,<key>]]`). Paths made absolute; each must exist.
 */
export function sshEntries(input: 'ssh', text: string): string[] {
  const out = entries(input, text).map((e, i) => {
    const eq = e.value.indexOf('=');
    const id = eq < 0 ? e.value : e.value.slice(0, eq);
    const paths = eq < 0 ? [] : e.value.slice(eq + 1).split(',');
    if (!ID.test(id) || paths.some((p) => !p.trim()))
      throw new InputError(`${where(input, i + 1, e)} is not default, ID or ID=PATH[,PATH] (ID: letters, digits, . _ -). One entry per line.`);
    const abs = paths.map((p) => path.resolve(p.trim()));
    if (abs.some((p) => !fs.existsSync(p)))
      throw new InputError(`${where(input, i + 1, e)}: a PATH in it does not exist. Expected an SSH agent socket or private key files.`);
    return { id, spec: abs.length ? `${id}=${abs.join(',')}` : id, n: i + 1, e };
  });
  unique(input, out);
  return out.map((s) => s.spec);
}

function unique(input: string, list: { id: string; n: number; e: ListEntry }[]): void {
  const seen = new Set<string>();
  for (const s of list) {
    if (seen.has(s.id)) throw new InputError(`${where(input, s.n, s.e)} repeats the id of an earlier entry. Expected each id once.`);
    seen.add(s.id);
  }
}

function isFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/**
 * The names the build receives, never a value: "build-args: A, B; labels: desc; secrets: NPM_TOKEN". Printed before the
 * build, so an entry split in two (a line of a value without quotes read as KEY=VALUE) shows as a key nobody meant.
 */
export function entryNames(
  s: { buildArgs: string[]; labels: string[]; secrets: BuildSecret[]; secretFiles: BuildSecretFile[]; ssh: string[] },
  declaredArgs: ReadonlySet<string> | null = null
): string {
  const keys = (list: string[]) => list.map((e) => e.slice(0, e.indexOf('=')));
  // A build-arg the Dockerfile declares no ARG for is shown by its entry number only: it may be a line of a value.
  const args = keys(s.buildArgs).map((k, i) => (!declaredArgs || declaredArgs.has(k) || PREDEFINED_ARGS.has(k) ? k : `entry ${i + 1} (no such ARG)`));
  const parts: [string, string[]][] = [
    ['build-args', args],
    ['labels', keys(s.labels)],
    ['secrets', s.secrets.map((x) => x.id)],
    ['secret-files', s.secretFiles.map((x) => x.id)],
    ['ssh', s.ssh.map((x) => x.split('=')[0])]
  ];
  return parts
    .filter(([, names]) => names.length)
    .map(([input, names]) => `${input}: ${names.join(', ')}`)
    .join('; ');
}

/**
 * Build arguments every Dockerfile accepts without an ARG (Docker's predefined ARGs and BuildKit's own):
 * https://docs.docker.com/reference/dockerfile/#predefined-args and #buildkit-built-in-build-args.
 */
export const PREDEFINED_ARGS: ReadonlySet<string> = new Set([
  'HTTP_PROXY',
  'http_proxy',
  'HTTPS_PROXY',
  'https_proxy',
  'FTP_PROXY',
  'ftp_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
  'BUILDKIT_INLINE_CACHE',
  'BUILDKIT_CACHE_MOUNT_NS',
  'BUILDKIT_CONTEXT_KEEP_GIT_DIR',
  'BUILDKIT_MULTI_PLATFORM',
  'BUILDKIT_SANDBOX_HOSTNAME',
  'BUILDKIT_SYNTAX',
  'SOURCE_DATE_EPOCH'
]);

/**
 * Warnings for `build-args` or `labels` entries that set the same key again (docker keeps the last one), named by
 * entry numbers only: a repeated "key" may be a line of a value.
 */
export function repeatedKeyWarnings(input: 'build-args' | 'labels', list: string[]): string[] {
  const seen = new Map<string, number[]>();
  list.forEach((e, i) => {
    const k = e.slice(0, e.indexOf('='));
    seen.set(k, [...(seen.get(k) ?? []), i + 1]);
  });
  return [...seen.values()]
    .filter((n) => n.length > 1)
    .map((n) => `Build Cloud: ${input} entries ${n.join(', ')} set the same key; the build keeps the last (entry ${n[n.length - 1]}).`);
}

/**
 * Warnings for build-args no ARG of the Dockerfile takes (docker ignores them): named by entry number only, since an
 * unquoted line of a multi-line value reads as KEY=VALUE and its "key" is part of the value.
 */
export function undeclaredArgWarnings(buildArgs: string[], declared: ReadonlySet<string>): string[] {
  return buildArgs.flatMap((e, i) => {
    const k = e.slice(0, e.indexOf('='));
    if (declared.has(k) || PREDEFINED_ARGS.has(k)) return [];
    return [
      `Build Cloud: build-args entry ${i + 1} names no ARG of the Dockerfile, so the build ignores it. If it is a line of the previous value, put that whole entry in double quotes. ${MULTI_LINE_FORM}`
    ];
  });
}
