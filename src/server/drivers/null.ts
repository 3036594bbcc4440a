// The null driver: builders that are only bookkeeping. No process, no directory, no network, no host state.
//
// For benchmarks and tests of the control plane alone (`buildcloud serve --driver null`): provisioning, sharing per
// pipeline, leases, certificates, each builder's mTLS front, reaping and metering all run as with real builders, but
// the front has no engine behind it, so the endpoints it hands out answer every Docker API call with
// "the builder's engine is not answering" (502). Nobody can build on them. Never use it for real jobs.
import type { BuilderHandle, Driver } from './driver';

/** The engine socket every null builder names: nothing ever listens there (a path under /nonexistent). */
export const NULL_ENGINE_SOCKET = '/nonexistent/buildcloud-null-driver/engine.sock';

/** A Driver whose builders start at once and hold nothing (see the file comment). */
export class NullDriver implements Driver {
  readonly name = 'null';

  /** @param platform the one platform its builders report, e.g. linux/amd64 (the host's, by default). */
  constructor(private readonly platform: string) {}

  platforms(): string[] {
    return [this.platform];
  }

  async start(id: string): Promise<BuilderHandle> {
    return { id, driver: 'null', platform: this.platform, kind: 'docker', socketPath: NULL_ENGINE_SOCKET, dir: '', pid: null, startedMs: 0 };
  }

  async destroy(): Promise<void> {}

  // A null builder never dies: nothing runs that could.
  async alive(): Promise<boolean> {
    return true;
  }
}
