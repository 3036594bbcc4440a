import { writeSync } from 'fs';

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/**
 * The CLIs' one error boundary: prints `err` to stderr (its message for our named errors, whose message says what
 * to fix; the stack for bugs, or always with BUILDCLOUD_DEBUG) and returns the exit code (CliError's own, else 1).
 */
export function reportError(err: unknown): number {
  const e = err as Error;
  const bug = !e || ['Error', 'TypeError', 'ReferenceError', 'RangeError', 'SyntaxError'].includes(e.name);
  const text = `buildcloud: ${bug || process.env.BUILDCLOUD_DEBUG ? e?.stack || String(err) : e.message}\n`;
  try {
    // Synchronous, in order with process.stderr; creating that stream costs a job failing on its inputs about 3 ms.
    writeSync(2, text);
  } catch {
    process.stderr.write(text);
  }
  return err instanceof CliError ? err.exitCode : 1;
}
