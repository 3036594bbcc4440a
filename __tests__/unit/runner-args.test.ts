// The runner's fastParse reads a well-formed command line exactly as commander does (ci.ts registers the same
// grammar), and hands everything it is not sure of to commander.
import { Command } from 'commander';
import { registerCi } from '../../src/cli/ci';
import { fastParse } from '../../src/cli/runner-args';

function viaCommander(argv: string[]): { command: string; opts: Record<string, unknown> } {
  const p = new Command('buildcloud').exitOverride();
  registerCi(p);
  let seen: { command: string; opts: Record<string, unknown> } | null = null;
  for (const c of p.commands) c.action((o: Record<string, unknown>) => void (seen = { command: c.name(), opts: { ...o } }));
  p.parse(argv, { from: 'user' });
  if (!seen) throw new Error('no command ran');
  return seen;
}

describe('a well-formed command line: the same options as commander', () => {
  test.each<[string[]]>([
    [['setup']],
    [['setup', '--endpoint', '127.0.0.1:7070', '--token', 't0k']],
    [['setup', '--endpoint=grpcs://cp.example:443', '--json']],
    [['setup', '--export-file', 'env.sh', '--dotenv', 'setup.env', '--scope', 'job', '--fallback', 'local']],
    [['setup', '--cache', '--summary', 'false']],
    [['setup', '--cache', 'false', '--platforms', 'linux/amd64,linux/arm64', '--provision-timeout', '5']],
    [['setup', '--cache', '--json']],
    [['setup', '--org', 'acme', '--org', 'other']], // the last one wins
    [['build', '--tags', 'acme/app:1', '--push', '--load', 'true', '--no-cache']],
    [['build', '--session', '/tmp/s.json', '--build-args', 'A=1\nB=2', '--pull']],
    [['build', '--file', 'Dockerfile.ci', '--target', 'test', '--dotenv', 'b.env', '--export-file', 'e.sh', '--json']],
    [['report']],
    [['report', '--summary-file', 's.md', '--metrics', 'm.txt', '--dotenv', 'r.env', '--session', 'x.json']]
  ])('%j', (args) => {
    const fast = fastParse(['node', 'buildcloud', ...args]);
    expect(fast).not.toBeNull();
    expect(fast).toEqual(viaCommander(args));
  });
});

describe('left to commander (help, errors, anything unsure)', () => {
  test.each<[string[]]>([
    [[]],
    [['serve']],
    [['setup', '--help']],
    [['setup', '-h']],
    [['--version']],
    [['setup', '--bogus']],
    [['setup', '--scope', 'galaxy']], // not one of the choices
    [['setup', '--scope=galaxy']],
    [['setup', '--endpoint']], // no value
    [['setup', '--endpoint', '--json']], // a flag where the value should be
    [['setup', 'extra']],
    [['setup', '--', '--json']],
    [['setup', '--json=yes']],
    [['build', '--pr-comment']], // GitHub-only input: not a CLI flag
    [['constructor']]
  ])('%j', (args) => {
    expect(fastParse(['node', 'buildcloud', ...args])).toBeNull();
  });
});
