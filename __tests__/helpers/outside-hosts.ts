// Hosts "outside" a builder, made by the test itself: a network namespace joined to the host by a veth pair, with
// an HTTP server in it. Egress tests send traffic only to these, never to a real private or link-local address.
import { spawn, execFile, type ChildProcess } from 'child_process';
import * as http from 'http';
import { hostTool } from '../../src/server/drivers/host-tools';

const IP = hostTool('ip');

export interface OutsideHost {
  ns: string;
  hostIf: string;
  host: string; // our end's address
  far: string; // the namespace's address; its HTTP server listens on port 8080
  server: ChildProcess;
}

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as NodeJS.ErrnoException & { code?: number }).code) || 1 : 0, stdout: String(stdout), stderr: String(stderr) })
    );
  });
}

async function must(file: string, args: string[]): Promise<string> {
  const r = await run(file, args);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, p) => n * 256 + Number(p), 0);
}

/** Every IPv4 address an interface or a route of this host names: what a test network must not overlap. */
export async function usedAddresses(): Promise<number[]> {
  const shown = (await must(IP, ['-4', '-o', 'addr', 'show'])) + (await must(IP, ['-4', 'route', 'show', 'table', 'all']));
  return [...shown.matchAll(/\b(\d+\.\d+\.\d+\.\d+)\b/g)].map((m) => ipToInt(m[1]));
}

/** A random one of `candidates` (first addresses of networks of `size` addresses) that overlaps nothing in `used`. */
export function unusedNet(used: number[], candidates: string[], size: number): string {
  const free = candidates.filter((c) => !used.some((u) => u >= ipToInt(c) && u < ipToInt(c) + size));
  if (free.length === 0) throw new Error(`none of ${candidates[0]}... is unused on this host`);
  return free[Math.floor(Math.random() * free.length)];
}

export function httpGet(url: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let b = '';
      res.on('data', (d) => (b += d));
      res.on('end', () => resolve(b));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
  });
}

/**
 * Makes namespace `ns` joined by veth `hostIf` (our end `hostCidr`, theirs `farCidr`), with an HTTP server on the far
 * address, port 8080, answering `<label>seen-from <client address>`. No default route in the namespace: it answers
 * the host's end of the veth only (and what is masqueraded as it). Checks the host itself reaches it.
 * hostIf must not start with `bc` (every bc* interface is treated as a builder bridge).
 */
export async function makeOutsideHost(o: { ns: string; hostIf: string; hostCidr: string; farCidr: string; label: string }): Promise<OutsideHost> {
  const host = o.hostCidr.split('/')[0];
  const far = o.farCidr.split('/')[0];
  await must(IP, ['netns', 'add', o.ns]);
  await must(IP, ['link', 'add', o.hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', o.ns]);
  await must(IP, ['addr', 'add', o.hostCidr, 'dev', o.hostIf]);
  await must(IP, ['link', 'set', o.hostIf, 'up']);
  await must(IP, ['netns', 'exec', o.ns, IP, 'addr', 'add', o.farCidr, 'dev', 'eth0']);
  await must(IP, ['netns', 'exec', o.ns, IP, 'link', 'set', 'eth0', 'up']);
  await must(IP, ['netns', 'exec', o.ns, IP, 'link', 'set', 'lo', 'up']);
  const script =
    `require('http').createServer((q, r) => r.end(${JSON.stringify(o.label)} + 'seen-from ' + q.socket.remoteAddress + '\\n'))` +
    `.listen(8080, ${JSON.stringify(far)}, () => console.log('listening'))`;
  const server = spawn(IP, ['netns', 'exec', o.ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    server.stdout!.on('data', (d) => String(d).includes('listening') && resolve());
    server.once('exit', (code) => reject(new Error(`the server in ${o.ns} exited with ${code}`)));
  });
  const seen = await httpGet(`http://${far}:8080/`);
  if (seen !== `${o.label}seen-from ${host}\n`) throw new Error(`the host could not reach ${far} in ${o.ns}: ${seen}`);
  return { ns: o.ns, hostIf: o.hostIf, host, far, server };
}

/** Removes the namespace, its server and both ends of the veth. Never throws. */
export async function removeOutsideHost(o: Pick<OutsideHost, 'ns' | 'hostIf'> & { server?: ChildProcess }): Promise<void> {
  o.server?.kill('SIGKILL');
  await run(IP, ['netns', 'del', o.ns]);
  // The namespace takes its end of the veth (and so ours) with it, asynchronously.
  for (let i = 0; i < 50 && (await run(IP, ['link', 'show', 'dev', o.hostIf])).code === 0; i++) await new Promise((r) => setTimeout(r, 100));
  await run(IP, ['link', 'del', 'dev', o.hostIf]);
}
