// What the builder pool holds and hands out: a live builder, the pool's options, an acquisition, the listener told
// when a builder is lost, and builder/lease ids. Types only (and the id maker), so builders.ts keeps to the pool.
import { randomBytes } from 'crypto';
import type { Logger } from './log';
import type { Driver, BuilderHandle, EngineHealth } from './drivers/driver';
import type { BuilderTlsProxy } from './tls-proxy';
import type { Pki } from './pki';

/**
 * Called when a builder's engine is lost (its process exited, or a probe found it dead) while the pool did not
 * destroy it: `leaseIds` held it then. The builder is being destroyed and replaced when this is called.
 */
export type BuilderLostListener = (builderId: string, leaseIds: string[], why: string) => void;

export interface LiveBuilder {
  id: string;
  platform: string;
  handle: BuilderHandle;
  proxy: BuilderTlsProxy;
  address: string;
  shareKey: string | null; // null while warm (not yet owned by any org)
  org: string | null;
  holders: Set<string>; // lease ids
  // Leases that held this builder together with another lease, or took it over from one (in its grace period): the
  // builder was not theirs alone. Kept for the builder's life, so a lease's Release still says so after it let go.
  sharedBy: Set<string>;
  graceTimer: NodeJS.Timeout | null;
  state: 'warm' | 'assigned' | 'grace' | 'destroying';
  graceSince?: number; // unix ms its grace period began (the oldest gives way first when the pool is full)
  destroyed: Promise<void> | null; // set once destruction starts: stop() must wait for one already under way
  probe?: Promise<EngineHealth> | null; // the hand-out probe under way, which concurrent hand-outs share
  healthyAt?: number; // unix ms of the last probe that found the engine 'ok'
}

export interface BuilderPoolOptions {
  driver: Driver;
  pki: Pki;
  host: string;
  warmPool: number;
  maxBuilders: number;
  graceMs: number;
  log: Logger;
  onActivity: (fingerprint: string) => void;
  onChange?: () => void; // gauges
  now?: () => number; // unix ms, for the hand-out probe's freshness (tests); Date.now by default
}

export interface Acquired {
  builder: LiveBuilder;
  warm: boolean;
  shared: boolean;
}

/** A new id: `prefix` and 12 random hex digits (b… for builders, l… for leases). */
export function newId(prefix: string): string {
  return `${prefix}${randomBytes(6).toString('hex')}`;
}
