// The package the GitLab component and the CircleCI orb run by default (`npx --yes @buildcloud/ci@VERSION`): packed
// from the runner CLI (dist/runner.js and the dist/runner-steps.js it loads) with no dependencies, installed by npx
// into an empty home and run from there.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ROOT } from '../helpers/server';

test('the CI package has the runner CLI and nothing else, and npx runs it with no dependencies', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-cipkg-'));
  const tgz = execFileSync(process.execPath, [path.join(ROOT, 'scripts/pack-ci-package.mjs'), out], { encoding: 'utf8' }).trim();
  const files = execFileSync('tar', ['tzf', tgz], { encoding: 'utf8' }).trim().split('\n').sort();
  expect(files).toEqual([
    'package/README.md',
    'package/bin/buildcloud.js',
    'package/bin/grpc-transport.js', // the gRPC client, loaded only for a gRPC endpoint
    'package/bin/runner-steps.js',
    'package/licenses.txt',
    'package/package.json'
  ]);
  // The runner only: no control-plane, admin or demo code rides along to every CI job.
  const bin = execFileSync('tar', ['xzOf', tgz, 'package/bin/buildcloud.js', 'package/bin/runner-steps.js', 'package/bin/grpc-transport.js'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20
  });
  for (const marker of ['fastify', 'better-sqlite3', 'pino', 'gitlab-ci-local']) expect(bin).not.toContain(marker);
  const pkg = JSON.parse(execFileSync('tar', ['xzOf', tgz, 'package/package.json'], { encoding: 'utf8' }));
  expect(pkg).toMatchObject({ name: '@buildcloud/ci', bin: { buildcloud: 'bin/buildcloud.js' } });
  expect(pkg.dependencies).toBeUndefined();

  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-cipkg-home-'));
  const env = { PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin`, HOME: home, npm_config_cache: path.join(home, '.npm') };
  const r = spawnSync('npx', ['--yes', `file:${tgz}`, 'setup', '--help'], { cwd: home, env, encoding: 'utf8' });
  expect(r.stderr).not.toMatch(/ERR!/);
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/--endpoint <value>/);
  expect(r.stdout).toMatch(/BUILDCLOUD_TOKEN/);
  // An operator command is not there to run.
  const serve = spawnSync('npx', ['--yes', `file:${tgz}`, 'serve'], { cwd: home, env, encoding: 'utf8' });
  expect(serve.status).not.toBe(0);
  // The runner CLI says where the operator commands are (the full CLI), rather than a bare unknown command.
  expect(serve.stderr).toMatch(/'serve' is an operator command of the full CLI \(dist\/cli.js\), not of this runner CLI/);
  // npx installed the package alone: no dependency came with it.
  const npx = path.join(home, '.npm', '_npx');
  const installed = fs.readdirSync(npx).flatMap((h) => fs.readdirSync(path.join(npx, h, 'node_modules')).filter((n) => !n.startsWith('.')));
  expect(installed).toEqual(['@buildcloud']);
});
