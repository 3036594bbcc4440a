// The part of @actions/core a step uses on its way to the first input check and the first request. The whole
// package (its HTTP client, OIDC, exec and summary modules: about 40 ms to load, bundled and minified, on a 2-vCPU
// runner) is required only by what needs it (full-core.ts: getIDToken and the job summary); file commands use its
// own file-command module. Workflow commands (`::name props::message`, escaped as GitHub documents) are written with
// fs.writeSync: creating process.stdout costs a step that fails on its inputs about 3 ms of its 5 ms budget.
// __tests__/unit/workflow-commands.test.ts holds the output to @actions/core's, call by call.
import * as fs from 'fs';
import * as os from 'os';
import { toCommandProperties, toCommandValue } from '@actions/core/lib/utils';

const escapeData = (s: unknown): string => toCommandValue(s).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
const escapeProperty = (s: unknown): string => escapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');

/** `::name k=v,...::message` as @actions/core's issueCommand writes it, with its line ending. */
export function commandText(name: string, properties: Record<string, unknown>, message: unknown): string {
  const keys = Object.keys(properties);
  const props = keys.filter((k) => properties[k]).map((k) => `${k}=${escapeProperty(properties[k])}`);
  return `::${name || 'missing.command'}${keys.length ? ` ${props.join(',')}` : ''}::${escapeData(message)}${os.EOL}`;
}

/** Writes `text` to stdout synchronously, in order with process.stdout (synchronous for files, pipes and TTYs on POSIX). */
export function writeOut(text: string): void {
  try {
    fs.writeSync(1, text);
  } catch {
    process.stdout.write(text); // EAGAIN on a non-blocking descriptor, or no descriptor 1 at all
  }
}

const issueCommand = (name: string, properties: Record<string, unknown>, message: unknown): void => writeOut(commandText(name, properties, message));
const issue = (name: string, message = ''): void => issueCommand(name, {}, message);

/** An input as core.getInput(name) reads it: INPUT_<NAME> (spaces as _), trimmed; '' when unset. */
export function getInput(name: string): string {
  return (process.env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
}

/** core.getState: the value main saved under `name` (STATE_<name> in post); '' when unset. */
export function getState(name: string): string {
  return process.env[`STATE_${name}`] || '';
}

// GITHUB_STATE, GITHUB_OUTPUT and GITHUB_ENV files; the crypto-using file-command module loads only when one is written.
function keyValue(file: 'STATE' | 'OUTPUT' | 'ENV', legacy: string, name: string, value: unknown): void {
  if (process.env[`GITHUB_${file}`]) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy: loaded on first use, not at start-up (issue 10)
    const fc = require('@actions/core/lib/file-command') as typeof import('@actions/core/lib/file-command');
    fc.issueFileCommand(file, fc.prepareKeyValueMessage(name, value));
    return;
  }
  if (file === 'OUTPUT') writeOut(os.EOL);
  issueCommand(legacy, { name }, toCommandValue(value));
}

/** core.saveState: for the post step. */
export const saveState = (name: string, value: unknown): void => keyValue('STATE', 'save-state', name, value);
/** core.setOutput: a step output. */
export const setOutput = (name: string, value: unknown): void => keyValue('OUTPUT', 'set-output', name, value);
/** core.exportVariable: for later steps of the job, and this process. */
export function exportVariable(name: string, value: unknown): void {
  process.env[name] = toCommandValue(value);
  keyValue('ENV', 'set-env', name, value);
}

/** core.setSecret: masks `secret` in the job's log. */
export const setSecret = (secret: string): void => issueCommand('add-mask', {}, secret);
/** core.info: a plain log line. */
export const info = (message: string): void => writeOut(message + os.EOL);
/** core.debug: shown when the job runs with step debug logging. */
export const debug = (message: string): void => issueCommand('debug', {}, message);
/** core.warning: a warning annotation. */
export const warning = (message: string): void => issueCommand('warning', {}, message);

/** core.setFailed: an error annotation, and exit code 1 when the step ends. */
export function setFailed(message: string): void {
  process.exitCode = 1;
  issueCommand('error', toCommandProperties({}), message);
}

/** core.group: `fn`'s output folded under `name` in the log. */
export async function group<T>(name: string, fn: () => Promise<T>): Promise<T> {
  issue('group', name);
  try {
    return await fn();
  } finally {
    issue('endgroup');
  }
}
