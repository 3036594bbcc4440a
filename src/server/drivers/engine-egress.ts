// What a builder's engine itself may reach. dockerd runs in the host's network namespace, and a Dockerfile makes it
// fetch on its own: base images (FROM), `ADD <url>`, Git and URL build contexts, cache imports, pushes to the tags
// a job names. Left alone, `ADD http://169.254.169.254/...` would put the cloud metadata service's answer (the
// host's cloud credentials) into a tenant's image, and `ADD http://127.0.0.1:<port>/` anything on the host's
// loopback. So each engine runs in a cgroup of its own, and iptables' `cgroup` match (xt_cgroup, cgroup v2 paths;
// iptables-extensions(8)) holds its outbound traffic to the same policy as its RUN steps: the public internet, the
// org-cache registry proxy, the host's resolvers, and the ranges the operator allows. Nothing else of the host.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** An address:port a builder's engine must reach although it is on the host (the org-cache registry proxy). */
export interface EngineEndpoint {
  address: string; // IPv4
  port: number;
}

// IPv6 destinations an engine never reaches: loopback and every address of the host (addrtype LOCAL, a separate
// rule), link-local, unique-local (RFC 4193), multicast, IPv4-mapped (RFC 4291) and NAT64 (RFC 6052, which maps to
// IPv4 addresses, private ones included). From the IANA IPv6 Special-Purpose Address Registry.
export const BLOCKED_IPV6_RANGES: readonly string[] = ['fe80::/10', 'fc00::/7', 'ff00::/8', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48'];

/** Where cgroup v2 is mounted (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one), or null. */
export function cgroup2Mount(mountinfo: string): string | null {
  for (const line of mountinfo.split('\n')) {
    // "36 25 0:30 / /sys/fs/cgroup/unified rw,... shared:10 - cgroup2 cgroup2 rw,..."
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fstype = line.slice(sep + 3).split(' ')[0];
    const fields = line.slice(0, sep).split(' ');
    // Only a mount of the hierarchy's root: the path iptables matches is relative to it.
    if (fstype === 'cgroup2' && fields[3] === '/') return fields[4].replace(/\\040/g, ' ');
  }
  return null;
}

/** The cgroup of one builder's engine, relative to the cgroup v2 root (what `iptables -m cgroup --path` takes). */
export function engineCgroupPath(bridge: string): string {
  return `buildcloud/${bridge}`;
}

// One place on the host for every control plane's engines: the parent is created once and never removed.
export class EngineCgroups {
  private mountPoint: string | null | undefined;

  constructor(private readonly mountinfoFile = '/proc/self/mountinfo') {}

  /** The cgroup v2 mount, or null when the host has none (then engines cannot be filtered). */
  mount(): string | null {
    if (this.mountPoint === undefined) {
      let info = '';
      try {
        info = fs.readFileSync(this.mountinfoFile, 'utf8');
      } catch {
        // no /proc: not Linux
      }
      this.mountPoint = cgroup2Mount(info);
    }
    return this.mountPoint;
  }

  /** Creates the builder's cgroup; returns the file a process writes its pid to in order to join it. */
  async create(bridge: string): Promise<string> {
    const root = this.mount();
    if (!root) throw new Error('no cgroup v2 hierarchy is mounted');
    const dir = path.join(root, engineCgroupPath(bridge));
    await fs.promises.mkdir(dir, { recursive: true });
    return path.join(dir, 'cgroup.procs');
  }

  /**
   * Removes the builder's cgroup. Whatever still runs in it (the engine's own helpers, which name none of the
   * builder's paths) is killed first. Never throws for one that is already gone; throws if it cannot be emptied.
   */
  async remove(bridge: string): Promise<void> {
    const root = this.mount();
    if (!root) return;
    const dir = path.join(root, engineCgroupPath(bridge));
    for (let attempt = 0; ; attempt++) {
      let procs: string;
      try {
        procs = await fs.promises.readFile(path.join(dir, 'cgroup.procs'), 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      for (const pid of procs.split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
      try {
        await fs.promises.rmdir(dir);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return;
        if (code !== 'EBUSY' || attempt >= 50) throw new Error(`cgroup ${dir} not removed: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 100)); // killed processes leave the cgroup once reaped
      }
    }
  }

  /** Builder cgroups on this host (bridge names), of every control plane. */
  async list(): Promise<string[]> {
    const root = this.mount();
    if (!root) return [];
    const names = await fs.promises.readdir(path.join(root, 'buildcloud')).catch(() => [] as string[]);
    return names.filter((n) => /^bc[0-9a-f]{10}$/.test(n));
  }
}
