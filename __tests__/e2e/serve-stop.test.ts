// A control plane stopped while its warm pool is still starting builders leaves nothing behind: the starts under
// way finish, see the stop and destroy what they made (bridge, engine cgroup, rules, run dir, data root).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import { startServer } from '../helpers/server';

function builderBridges(): string[] {
  return spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(': ')[1]?.split('@')[0])
    .filter((n): n is string => Boolean(n) && /^bc[0-9a-f]{10}$/.test(n as string));
}

const entries = (dir: string): string[] => (fs.existsSync(dir) ? fs.readdirSync(dir) : []);

test('SIGTERM while the warm pool is starting: no builder outlives the control plane', async () => {
  const before = { bridges: builderBridges(), run: entries('/run/bc'), data: entries('/var/lib/buildcloud/builders'), cgroups: entries('/sys/fs/cgroup/unified/buildcloud') };
  // Ready is printed before the pool has started its builders: stop right away, with two starts under way.
  const server = await startServer(['--warm-pool', '2']);
  expect(await server.stop()).toBe(0);
  const fresh = (now: string[], was: string[]) => now.filter((x) => !was.includes(x));
  expect(fresh(builderBridges(), before.bridges)).toEqual([]);
  expect(fresh(entries('/run/bc'), before.run)).toEqual([]);
  expect(fresh(entries('/var/lib/buildcloud/builders'), before.data)).toEqual([]);
  expect(fresh(entries('/sys/fs/cgroup/unified/buildcloud'), before.cgroups).filter((n) => n.startsWith('bc'))).toEqual([]);
  expect(server.stderr()).toMatch(/builder ready|control plane is stopping|stopping/);
  fs.rmSync(server.stateDir, { recursive: true, force: true });
});
