// `buildcloud build` reads each input as a flag or its BUILDCLOUD_* variable, the flag first: the same names the
// action, the GitLab component and the CircleCI orb pass (the orb and the component through the variables).
import { Command } from 'commander';
import { addInputs, getter } from '../../src/cli/ci';
import { BUILD_INPUTS } from '../../src/core/inputs';
import { buildSettings, InputError } from '../../src/core/settings';

function parse(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const cmd = new Command('build').exitOverride();
  addInputs(cmd, BUILD_INPUTS);
  cmd.parse(argv, { from: 'user' });
  return buildSettings(getter(cmd.opts(), env));
}

describe('load', () => {
  test.each<[string[], NodeJS.ProcessEnv, boolean]>([
    [[], {}, false],
    [['--load'], {}, true],
    [['--load', 'true'], {}, true],
    [['--load', 'false'], {}, false],
    [[], { BUILDCLOUD_LOAD: 'true' }, true],
    [[], { BUILDCLOUD_LOAD: ' true' }, true], // the GitLab component's " $[[ inputs.load ]]"
    [['--load', 'false'], { BUILDCLOUD_LOAD: 'true' }, false], // the flag wins
    [['--push', '--load', '--tags', 'acme/app:1'], {}, true]
  ])('%j with %j → %s', (argv, env, load) => {
    expect(parse(argv, env).load).toBe(load);
  });

  test('a value that is not a boolean names the input', () => {
    expect(() => parse([], { BUILDCLOUD_LOAD: 'maybe' })).toThrow(InputError);
    expect(() => parse([], { BUILDCLOUD_LOAD: 'sometimes' })).toThrow(
      "Invalid BUILDCLOUD_LOAD: 'sometimes'. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no)."
    );
    // A flag's value is checked as the command line is read, naming the flag and the accepted values.
    expect(() => parse(['--load', 'sometimes'])).toThrow(
      "error: option '--load [bool]' argument 'sometimes' is invalid. Expected true or false (also True, TRUE, 1, yes, False, FALSE, 0, no), or --load alone for true."
    );
  });

  test('every build input is a flag, load among them, but secrets: a value on a command line is readable by any process', () => {
    const cmd = new Command('build');
    addInputs(cmd, BUILD_INPUTS);
    expect(cmd.options.map((o) => o.long)).toEqual([
      ...BUILD_INPUTS.filter((d) => d.name !== 'secrets').map((d) => `--${d.name}`),
      // docker build's spellings (issue 12)
      '--tag',
      '--build-arg',
      '--label',
      '--platform',
      '--secret'
    ]);
    expect(parse([], { BUILDCLOUD_SECRETS: '"NPM_TOKEN=a\nb"' }).secrets).toEqual([{ id: 'NPM_TOKEN', value: 'a\nb' }]);
    expect(() => parse(['--secrets', 'A=1'])).toThrow(/unknown option '--secrets'/);
  });
});
