// The demo's control plane: the real `buildcloud serve` as a child process, an org with a bucket of minutes,
// and a base image in the org's registry (nothing can be pulled from the internet here, and a fresh builder
// must find `FROM` somewhere real).
import { spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ApiClient } from '../src/core/api-client';
import { configureRunner, cleanupRunner } from '../src/core/runner-config';
import { resolveDocker } from '../src/core/docker-cli';
import { startServe } from './control-plane';

export interface DemoServer {
  proc: ChildProcess;
  stateDir: string;
  grpc: string;
  http: string;
  registry: string;
  logFile: string; // serve's stderr: kept when the demo fails, removed when it passes
  stop(): Promise<void>;
}

/** The real `buildcloud serve` (control-plane.ts), its log in a temp file rather than in memory: the demo runs long. */
export async function startControlPlane(cli: string, stateDir: string, extra: string[]): Promise<DemoServer> {
  const logFile = path.join(os.tmpdir(), `buildcloud-demo-serve-${process.pid}-${Date.now()}.log`);
  const s = await startServe(cli, stateDir, extra, { logFile });
  return {
    proc: s.proc,
    stateDir,
    grpc: s.info.grpc,
    http: s.info.http,
    registry: s.info.registry,
    logFile,
    stop: async () => {
      await s.stop();
    }
  };
}

// A busybox rootfs built into an image on a builder of the org (builders build; they do not `docker import`) and
// pushed to the org's registry namespace. COPY of a directory, not ADD of an archive: correct under user namespaces
// on every engine (drivers/builder-isolation.ts).
// The base image goes where the demo's builds may read it: a lease writes only its own export ref and reads only its
// project's cache repository (docs/security.md), so a bootstrap lease of the demo's project pushes it to its export
// ref, a tag of that repository. Returns the ref.
export async function pushBaseImage(server: DemoServer, token: string, project: string, work: string): Promise<string> {
  const ctx = path.join(work, 'base-image');
  const root = path.join(ctx, 'rootfs');
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  const applets = spawnSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'busybox') fs.symlinkSync('busybox', path.join(root, 'bin', a));
  fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\n');

  const api = new ApiClient({ endpoint: server.grpc, token });
  const lease = await api.provision({
    org: '',
    pipelineKey: `demo/bootstrap/${Date.now()}`,
    jobId: 'base-image',
    platforms: [],
    scope: 'SCOPE_JOB',
    identity: { provider: 'local', project, branch: 'base-image', defaultBranch: 'main', fork: false, actor: 'demo', runUrl: '' }
  });
  const ref = lease.cache?.exportRef ?? '';
  if (!ref) {
    await api.release(lease.id).catch(() => undefined);
    api.close();
    throw new Error('the bootstrap lease has no export ref to push the base image to');
  }
  const docker = await resolveDocker(process.env);
  const cfg = await configureRunner(lease, `buildcloud-demo-base-${process.pid}`, { tempRoot: work, docker });
  try {
    const env = { ...process.env, ...cfg.env } as NodeJS.ProcessEnv;
    const built = spawnSync(docker.path, ['build', '-q', '-t', ref, ctx], { env, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`docker build of the base image failed: ${built.stderr}`);
    const push = spawnSync(docker.path, ['push', ref], { env, encoding: 'utf8' });
    if (push.status !== 0) throw new Error(`docker push ${ref} failed: ${push.stderr}`);
    return ref;
  } finally {
    await cleanupRunner(cfg, docker);
    await api.release(lease.id).catch(() => undefined);
    api.close();
  }
}
