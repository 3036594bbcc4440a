// A driver starts and stops builders: isolated build engines the control plane hands to leases.

/**
 * What a health probe of an engine found: 'ok' (it answered), 'dead' (its process is gone or nothing listens on its
 * socket: it will not come back), 'unresponsive' (alive, but no answer within the probe's timeout: busy or hung).
 */
export type EngineHealth = 'ok' | 'dead' | 'unresponsive';

export interface BuilderHandle {
  id: string;
  driver: string; // 'dockerd'
  platform: string; // e.g. linux/amd64
  kind: 'docker' | 'buildkit';
  // Where the control plane reaches the engine itself (never given to clients): a unix socket path.
  socketPath: string;
  // Private directory of this builder (config, state, logs): removed on destroy, with the data and exec roots.
  dir: string;
  pid: number | null;
  startedMs: number; // how long the engine took to become ready
}

export interface Driver {
  readonly name: string;
  // Platforms this driver can build natively, e.g. ['linux/amd64'].
  platforms(): string[];
  start(id: string): Promise<BuilderHandle>;
  // Stops the engine, removes its directory and any host state it made (bridge, ...). Never throws for
  // a builder that is already gone.
  destroy(handle: BuilderHandle): Promise<void>;
  // True while the engine answers.
  alive(handle: BuilderHandle): Promise<boolean>;
  // A finer probe than alive(), answered within about `timeoutMs` (ms); never throws. Drivers without it: alive().
  health?(handle: BuilderHandle, timeoutMs: number): Promise<EngineHealth>;
  // Registers `listener`, called with a builder's id when its engine process exits, whoever ended it (a destroy
  // too: the pool ignores exits of builders it is destroying). Drivers whose engines cannot exit have none.
  onEngineExit?(listener: (id: string) => void): void;
  // Tears down what a crashed earlier run left (engines, mounts, networks); returns what it removed.
  cleanupOrphans?(): Promise<string[]>;
}
