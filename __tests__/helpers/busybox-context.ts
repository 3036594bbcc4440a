// A build context that needs no registry: nothing can be pulled here, so the base "image" is a busybox rootfs
// ADDed onto scratch. The tar is byte-for-byte reproducible (fixed mtimes, owners, order), so the ADD step has
// the same cache key in every test and on every builder.
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

async function findBusybox(): Promise<string> {
  for (const p of BUSYBOX_CANDIDATES) {
    try {
      await fs.access(p);
      // A dynamically linked busybox would need its libc inside the image.
      const ldd = await run('/usr/bin/file', ['-L', p]).catch(() => 'statically linked');
      if (ldd.includes('statically linked') || ldd.includes('static-pie')) return p;
    } catch {
      // try the next one
    }
  }
  throw new Error('a static busybox is required for build tests: apt-get install -y busybox-static');
}

// Writes dir/rootfs.tar and dir/Dockerfile ("FROM scratch", "ADD rootfs.tar /", then dockerfileBody).
export async function makeBusyboxContext(dir: string, dockerfileBody: string): Promise<void> {
  const busybox = await findBusybox();
  await fs.mkdir(dir, { recursive: true });
  // Stage the rootfs outside the context so it is not sent to the builder twice.
  const stage = await fs.mkdtemp(path.join(os.tmpdir(), 'bc-rootfs-'));
  try {
    const root = path.join(stage, 'root');
    for (const d of ['bin', 'etc', 'root', 'tmp', 'proc', 'sys', 'dev', 'work']) {
      await fs.mkdir(path.join(root, d), { recursive: true });
    }
    await fs.chmod(path.join(root, 'tmp'), 0o1777);
    await fs.copyFile(busybox, path.join(root, 'bin', 'busybox'));
    await fs.chmod(path.join(root, 'bin', 'busybox'), 0o755);
    const applets = (await run(busybox, ['--list'])).split('\n').map((s) => s.trim());
    for (const applet of applets) {
      if (!applet || applet === 'busybox' || applet.includes('/')) continue;
      await fs.symlink('busybox', path.join(root, 'bin', applet));
    }
    await fs.writeFile(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    await fs.writeFile(path.join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    await run('tar', ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '-C', root, '-cf', path.join(dir, 'rootfs.tar'), '.']);
  } finally {
    await fs.rm(stage, { recursive: true, force: true });
  }
  const body = dockerfileBody.endsWith('\n') ? dockerfileBody : `${dockerfileBody}\n`;
  await fs.writeFile(path.join(dir, 'Dockerfile'), `FROM scratch\nADD rootfs.tar /\n${body}`);
  // The tar's own mtime is not part of BuildKit's cache key, but keep it fixed anyway for other consumers.
  await fs.utimes(path.join(dir, 'rootfs.tar'), 0, 0);
}
