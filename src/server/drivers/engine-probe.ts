// A cheap, bounded look at a builder's engine before the control plane hands it to a lease: is its process there,
// and does its API answer `/_ping` on its unix socket in time. It tells a dead engine (it will not come back) from
// a slow one (a busy builder running other jobs' builds), because only the first may be replaced without breaking
// builds that are running on it.
import * as http from 'node:http';
import type { EngineHealth } from './driver';

/** Whether a process with this pid exists (signal 0: nothing is sent). An EPERM answer means it exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * GET /_ping on the engine's unix socket, answered within `timeoutMs` (ms). 'ok' on 200; 'dead' when nothing listens
 * (ENOENT: the socket is gone; ECONNREFUSED: no process accepts on it); 'unresponsive' on a timeout, another status
 * or any other error. Never rejects.
 */
export function probeEngine(socketPath: string, timeoutMs: number): Promise<EngineHealth> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (h: EngineHealth): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(h);
    };
    const req = http.request({ socketPath, path: '/_ping', method: 'GET', agent: false }, (res) => {
      res.resume();
      finish(res.statusCode === 200 ? 'ok' : 'unresponsive');
    });
    const timer = setTimeout(() => {
      finish('unresponsive');
      req.destroy();
    }, timeoutMs);
    req.on('error', (err: NodeJS.ErrnoException) => finish(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'dead' : 'unresponsive'));
    req.end();
  });
}
