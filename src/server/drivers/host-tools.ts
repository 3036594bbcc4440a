// The host's own tools (ip, iptables), by absolute path when we can find them: a service's PATH often lacks
// /usr/sbin, where `ip` lives.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';

const toolPaths = new Map<string, string>();
export function hostTool(name: string): string {
  let p = toolPaths.get(name);
  if (!p) {
    p = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].map((d) => `${d}/${name}`).find((c) => fs.existsSync(c)) ?? name;
    toolPaths.set(name, p);
  }
  return p;
}

export function runCommand(file: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

export async function linkExists(name: string): Promise<boolean> {
  try {
    await runCommand(hostTool('ip'), ['link', 'show', 'dev', name]);
    return true;
  } catch {
    return false;
  }
}
