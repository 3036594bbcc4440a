// Checks of a build's local paths before docker is called (issue 12): a missing Dockerfile or context directory is
// an input error that names the input, not a failed (and billed) build whose message shows the builder's internal
// path (…/builders/<id>/data/tmp/buildkit-mount…/Dockerfile). Remote contexts (git and http URLs, '-' for stdin)
// are docker's to read and are left to it.
import { promises as fsp } from 'fs';
import * as path from 'path';
import { InputError } from './input-error';

/** How the wrapper names an input in its messages: the CLI's flag and variable, or the action's input. */
export type InputNaming = 'cli' | 'action';

/** "--file / BUILDCLOUD_FILE" for the CLI, "input 'file'" for the action. */
export function inputName(input: string, naming: InputNaming = 'cli'): string {
  return naming === 'action' ? `input '${input}'` : `--${input} / BUILDCLOUD_${input.toUpperCase().replace(/-/g, '_')}`;
}

/** Whether docker reads this context itself (a Git or HTTP URL, or '-' for stdin): nothing to check here. */
export function isRemoteContext(context: string): boolean {
  return context === '-' || /^[a-z][a-z0-9+.-]*:\/\//i.test(context) || /^git@/.test(context);
}

async function kind(p: string): Promise<'file' | 'dir' | 'other' | null> {
  try {
    const st = await fsp.stat(p);
    return st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
  } catch {
    return null;
  }
}

/**
 * Checks the build's context and Dockerfile as the user gave them (`context`, `file`: relative to `cwd`, as docker
 * resolves them). Throws InputError naming the input and what is expected; returns when docker may be called.
 */
export async function checkBuildPaths(s: { context: string; file: string }, cwd: string, naming: InputNaming = 'cli'): Promise<void> {
  if (isRemoteContext(s.context)) return;
  const ctx = path.resolve(cwd, s.context);
  const ctxKind = await kind(ctx);
  if (ctxKind === null) {
    throw new InputError(`Build context '${s.context}' not found (from ${inputName('context', naming)}): pass an existing directory, e.g. '.'.`);
  }
  if (ctxKind !== 'dir') {
    throw new InputError(`Build context '${s.context}' is not a directory (from ${inputName('context', naming)}): pass the directory to send to the builder.`);
  }
  if (s.file) {
    const fileKind = await kind(path.resolve(cwd, s.file));
    if (fileKind === null) {
      throw new InputError(
        `Dockerfile '${s.file}' not found (from ${inputName('file', naming)}): pass its path relative to ${cwd}, or leave it empty for the context's Dockerfile.`
      );
    }
    if (fileKind !== 'file') throw new InputError(`Dockerfile '${s.file}' is not a file (from ${inputName('file', naming)}).`);
    return;
  }
  // As docker: Dockerfile in the context, else its lower-case form.
  for (const name of ['Dockerfile', 'dockerfile']) if ((await kind(path.join(ctx, name))) === 'file') return;
  throw new InputError(
    `No Dockerfile in build context '${s.context}' (from ${inputName('context', naming)}): add one, or pass its path with ${inputName('file', naming)}.`
  );
}
