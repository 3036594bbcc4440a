// Issue 12, as a user meets it: `buildcloud setup` with a wrong --endpoint used to retry for 121 s and print 31
// identical warnings. The real CLI (dist/cli.js) against a port this test made and closed: exit 1 within 5 s, no
// retry warning, and a last line that names the endpoint and the likely mistake.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { CLI } from '../helpers/server';

test('setup --endpoint where nothing listens: one message naming the endpoint, within 5 s', async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run node scripts/build.mjs first.`);
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-wrong-endpoint-'));
  const started = Date.now();
  const proc = spawn(process.execPath, [CLI, 'setup', '--endpoint', `127.0.0.1:${port}`, '--org', 'acme'], {
    cwd: home,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, HOME: home, BUILDCLOUD_TOKEN: 'bct_not_used_for_anything' }
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const code = await new Promise((resolve) => proc.once('close', resolve));
  const ms = Date.now() - started;
  fs.rmSync(home, { recursive: true, force: true });
  expect(code).toBe(1);
  expect(ms).toBeLessThan(5000);
  expect(out).not.toMatch(/retrying|Resolution note/);
  expect(out.trim().split('\n').pop()).toBe(
    `buildcloud: Endpoint '127.0.0.1:${port}': nothing listens on 127.0.0.1:${port}: is the control plane running, and is this its port?`
  );
});
