// How a builder's engine is kept from the host (serve --builder-isolation), and its daemon.json.
//
// - userns: dockerd --userns-remap=default. RUN steps run as root of a user namespace, mapped to the `dockremap`
//   subordinate range (100000+ on the host), not as host root.
// - none: a plain rootful engine.
// - auto (the default): userns where the engine builds correctly under it, none (with a warning) where it does not.
//   Docker Engine before 26 carries a BuildKit that extracts `ADD <local archive>` as host root under userns-remap:
//   later RUN steps see the files as nobody's and the exported layer (image, push, inline cache) comes out EMPTY
//   (moby/buildkit#4708, fixed by #4712 in BuildKit v0.13.0, which Docker Engine 26.0 ships). Debian 12 ships 20.10.
// Rootless dockerd (rootlesskit) is not offered: see docs/security.md.
import { execFile } from 'node:child_process';

export type BuilderIsolation = 'userns' | 'none';
export type BuilderIsolationSetting = BuilderIsolation | 'auto';
export const BUILDER_ISOLATION_SETTINGS: readonly BuilderIsolationSetting[] = ['auto', 'userns', 'none'];
/** The first Docker Engine major version whose BuildKit handles ADD archives under userns-remap (BuildKit 0.13). */
export const USERNS_SAFE_ENGINE_MAJOR = 26;

/** "Docker version 20.10.24+dfsg1, build 5d6db84" → { major: 20, minor: 10 }; null when not that form. */
export function parseDockerdVersion(out: string): { major: number; minor: number } | null {
  const m = /Docker version (\d+)\.(\d+)/.exec(out);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : null;
}

/** The mode builders run with, and why (for the start-up log). */
export function resolveIsolation(setting: BuilderIsolationSetting, versionOutput: string): { mode: BuilderIsolation; reason: string } {
  if (setting !== 'auto') return { mode: setting, reason: `--builder-isolation ${setting}` };
  const v = parseDockerdVersion(versionOutput);
  if (v && v.major >= USERNS_SAFE_ENGINE_MAJOR) return { mode: 'userns', reason: `dockerd ${v.major}.${v.minor} builds correctly with user namespaces` };
  const which = v ? `dockerd ${v.major}.${v.minor}` : `dockerd of unknown version (${JSON.stringify(versionOutput.trim().slice(0, 80))})`;
  return {
    mode: 'none',
    reason: `${which} empties the layers of ADD <local archive> under user namespaces (moby/buildkit#4708, fixed in Docker Engine ${USERNS_SAFE_ENGINE_MAJOR})`
  };
}

/** `dockerd --version`, or '' when it does not answer within 10 s. */
export function dockerdVersion(dockerdPath: string): Promise<string> {
  return new Promise((resolve) => {
    execFile(dockerdPath, ['--version'], { timeout: 10_000 }, (err, stdout) => resolve(err ? '' : String(stdout)));
  });
}

// The engine's daemon.json. BuildKit entitlements are refused by the engine itself, whatever the client asks:
// network-host would put a RUN step in the host's network namespace (past the bridge and its egress rules, onto
// the control plane's loopback listeners), security-insecure would make it privileged.
export function daemonConfig(isolation: BuilderIsolation): Record<string, unknown> {
  return {
    features: { buildkit: true },
    builder: { entitlements: { 'network-host': false, 'security-insecure': false } },
    ...(isolation === 'userns' ? { 'userns-remap': 'default' } : {})
  };
}
