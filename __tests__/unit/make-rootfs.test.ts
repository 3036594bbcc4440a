// examples/gitlab/app/make-rootfs.sh writes the rootfs.tar the example's Dockerfile ADDs, byte for byte the one the
// tests write (__tests__/helpers/busybox-context.ts): a clean clone builds the example after running it once.
import { execFileSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeBusyboxContext } from '../helpers/busybox-context';
import { ROOT } from '../helpers/server';

test('make-rootfs.sh writes the same rootfs.tar as the test helper', async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-rootfs-'));
  try {
    const example = path.join(work, 'example');
    fs.mkdirSync(example);
    fs.copyFileSync(path.join(ROOT, 'examples/gitlab/app/make-rootfs.sh'), path.join(example, 'make-rootfs.sh'));
    const out = execFileSync('sh', [path.join(example, 'make-rootfs.sh')], { encoding: 'utf8' });
    expect(out.trim()).toBe(`wrote ${path.join(example, 'rootfs.tar')}`);
    await makeBusyboxContext(path.join(work, 'helper'), '');
    const sha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    expect(sha(path.join(example, 'rootfs.tar'))).toBe(sha(path.join(work, 'helper', 'rootfs.tar')));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});
