// Named state shared by the action's main and post steps (GITHUB_STATE → STATE_* in post).
import * as core from './workflow-commands';

export const State = {
  session: 'buildcloud-session',
  spoolBase: 'buildcloud-spool-base'
} as const;

export const getSessionFile = (): string => core.getState(State.session);
export const setSessionFile = (file: string): void => core.saveState(State.session, file);
export const getSpoolBase = (): string => core.getState(State.spoolBase);
export const setSpoolBase = (dir: string): void => core.saveState(State.spoolBase, dir);

export function log() {
  return { info: core.info, warn: core.warning, debug: core.debug };
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
