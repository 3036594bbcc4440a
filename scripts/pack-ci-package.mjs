// Makes the npm package the GitLab component and the CircleCI orb run by default (`npx --yes @buildcloud/ci@VERSION`):
// the runner CLI (dist/runner.js, which loads dist/runner-steps.js beside it once it has work to do, and
// dist/grpc-transport.js only for a gRPC endpoint) and the licences
// of what they bundle; no dependencies, no control-plane code, so a runner needs only Node.js and a docker client.
// Usage: node scripts/pack-ci-package.mjs [OUT_DIR]  → prints the path of the .tgz (publish it with npm publish).
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync, mkdirSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(new URL('..', import.meta.url).pathname);
const out = resolve(process.argv[2] || mkdtempSync(join(tmpdir(), 'buildcloud-ci-pkg-')));
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
const dir = mkdtempSync(join(tmpdir(), 'buildcloud-ci-src-'));
mkdirSync(join(dir, 'bin'));
copyFileSync(join(root, 'dist/runner.js'), join(dir, 'bin/buildcloud.js'));
chmodSync(join(dir, 'bin/buildcloud.js'), 0o755);
copyFileSync(join(root, 'dist/runner-steps.js'), join(dir, 'bin/runner-steps.js'));
copyFileSync(join(root, 'dist/grpc-transport.js'), join(dir, 'bin/grpc-transport.js'));
copyFileSync(join(root, 'dist/licenses.txt'), join(dir, 'licenses.txt'));
writeFileSync(
  join(dir, 'package.json'),
  JSON.stringify(
    {
      name: '@buildcloud/ci',
      version,
      description: 'The Build Cloud CLI for CI jobs (setup, build, report): no dependencies, Node.js 20+ and a docker client.',
      license: 'Apache-2.0',
      bin: { buildcloud: 'bin/buildcloud.js' }, // one bin: `npx @buildcloud/ci ARGS` runs it
      files: ['bin/', 'licenses.txt'],
      engines: { node: '>=20' }
    },
    null,
    2
  ) + '\n'
);
writeFileSync(
  join(dir, 'README.md'),
  '# @buildcloud/ci\n\nThe `buildcloud` command for CI jobs: `setup`, `build`, `report`. See the Build Cloud repository README.\n'
);
mkdirSync(out, { recursive: true });
const file = execFileSync('npm', ['pack', '--silent', '--pack-destination', out], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop();
process.stdout.write(join(out, file) + '\n');
