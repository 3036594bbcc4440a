// The `secrets` input's values on their way to BuildKit: each in a 0600 file in the runner's private dir for the one
// build (docker build --secret id=ID,src=FILE), removed after it whatever its outcome; out of the environment of the
// docker processes; and redacted from what the runner CLI prints. Never on a command line, never in a log.
import { promises as fsp } from 'fs';
import * as path from 'path';
import { envName } from './inputs';

/** Where a secret value was written for one build: pass `secrets` to BuildOptions, remove `files` after the build. */
export interface SecretFiles {
  secrets: { id: string; src: string }[];
  files: string[];
}

/** The paths build `n`'s secret values go to under `dir` (the runner's 0700 private dir): the i-th value, `secret-n-i`. */
export function secretFilePaths(dir: string, n: number, values: { id: string }[]): SecretFiles {
  const files = values.map((_, i) => path.join(dir, `secret-${n}-${i}`));
  return { secrets: values.map((v, i) => ({ id: v.id, src: files[i] })), files };
}

/**
 * Writes each value to its file, created 0600 and exclusive (`wx`: a file already there is an error, not something
 * to overwrite or follow). Throws on the first failure, after removing what it wrote.
 */
export async function writeSecretFiles(values: { value: string }[], files: string[]): Promise<void> {
  try {
    for (let i = 0; i < values.length; i++) await fsp.writeFile(files[i], values[i].value, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    await removeSecretFiles(files);
    throw err;
  }
}

/** Removes the files; a missing one is fine. */
export async function removeSecretFiles(files: string[]): Promise<void> {
  await Promise.all(files.map((f) => fsp.rm(f, { force: true })));
}

// The variables that carry the secrets input into this process: the runner CLI's and the GitHub Action's.
export const SECRET_INPUT_VARS = [envName('secrets'), 'INPUT_SECRETS'];

/** `env` without the variables that hold secret values: for docker, which needs none of them. */
export function withoutSecretInputs(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const k of SECRET_INPUT_VARS) delete out[k];
  return out;
}

/**
 * What to hide of each secret value in a log: the whole value and each of its lines (a log line never holds more than
 * one line of a multi-line value), trimmed, longest first so a line inside a longer one does not split it. Lines of
 * fewer than 3 characters are left: hiding every "}" or "==" would garble the log and protect nothing.
 */
export function secretFragments(values: string[]): string[] {
  const all = new Set<string>();
  for (const v of values) {
    for (const part of [v, ...v.split(/\r\n|\n|\r/)]) {
      const t = part.trim();
      if (t.length >= 3) all.add(t);
    }
  }
  return [...all].sort((a, b) => b.length - a.length);
}

/** A function that replaces every fragment of the values in a line with ***; the identity when there are none. */
export function redactor(values: string[]): (line: string) => string {
  const fragments = secretFragments(values);
  if (!fragments.length) return (line) => line;
  return (line) => fragments.reduce((l, f) => l.split(f).join('***'), line);
}

/** Below this many characters a secret (or a line of one) is likely to match ordinary log text when masked. */
export const SHORT_SECRET = 8;

/**
 * A warning per secret whose value, or a line of it, is short enough (3 to SHORT_SECRET - 1 characters) to hide
 * ordinary log text when masked: every occurrence of it in docker's output becomes *** (the CI's masking works the
 * same way). Names the secret id and the length, never the value.
 */
export function shortSecretWarnings(values: { id: string; value: string }[]): string[] {
  const out: string[] = [];
  for (const { id, value } of values) {
    const short = [value, ...value.split(/\r\n|\n|\r/)].map((p) => p.trim()).filter((p) => p.length >= 3 && p.length < SHORT_SECRET);
    if (!short.length) continue;
    const n = Math.min(...short.map((p) => p.length));
    out.push(
      `secret '${id}' holds a value${value.includes('\n') ? ' line' : ''} of only ${n} characters: it is masked wherever those characters appear in the log, so lines of docker's output may show *** where no secret is. A longer secret avoids that.`
    );
  }
  return out;
}
