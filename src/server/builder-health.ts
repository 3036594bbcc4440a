// Whether a builder may be handed to a lease: its engine's health (drivers/engine-probe.ts) and whether other
// leases hold it now. A dead engine is always replaced; a slow one only when nobody is building on it, since
// destroying a busy shared builder would break every build running there.
import type { BuilderHandle, Driver, EngineHealth } from './drivers/driver';

/**
 * How long (ms) the probe before a hand-out may take. A provision waits for it only when the engine does not answer,
 * and replacing the builder then costs about a cold start (target: at most 3 s), so waiting as long before giving up
 * keeps an idle engine slowed by a loaded host (a builder in its grace period, holding the pipeline's local layers)
 * from being replaced for nothing. An engine that answers does so in milliseconds.
 */
export const HAND_OUT_PROBE_MS = 3000;

/** How long (ms) an engine that answered its hand-out probe counts as alive without another (builders.ts usable). */
export const HEALTH_FRESH_MS = 1000;

/** The driver's health probe, or its alive() as 'ok' / 'dead' when it has none. Never rejects. */
export async function engineHealth(driver: Driver, handle: BuilderHandle, timeoutMs = HAND_OUT_PROBE_MS): Promise<EngineHealth> {
  try {
    if (driver.health) return await driver.health(handle, timeoutMs);
    return (await driver.alive(handle)) ? 'ok' : 'dead';
  } catch {
    return 'unresponsive';
  }
}

/**
 * 'use' or 'replace' for a builder whose engine showed `health`, `held` being whether any lease holds it now.
 * An unresponsive builder that is held is used: it is busy with those leases' builds, not gone.
 */
export function handOutVerdict(health: EngineHealth, held: boolean): 'use' | 'replace' {
  if (health === 'ok') return 'use';
  if (health === 'dead') return 'replace';
  return held ? 'use' : 'replace';
}
