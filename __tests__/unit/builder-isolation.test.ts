// serve --builder-isolation: the flag's values and messages, and the daemon.json each mode gives a builder.
import { BUILDER_ISOLATION_SETTINGS, daemonConfig, parseDockerdVersion, resolveIsolation } from '../../src/server/drivers/builder-isolation';
import { ConfigError, DEFAULTS, parseBuilderIsolation } from '../../src/server/config';

describe('parseBuilderIsolation', () => {
  test.each([
    ['userns', 'userns'],
    ['none', 'none'],
    ['auto', 'auto'],
    [' userns ', 'userns']
  ])('%j -> %s', (value, expected) => {
    expect(parseBuilderIsolation(value)).toBe(expected);
  });

  test('rootless is refused with the reason', () => {
    expect(() => parseBuilderIsolation('rootless')).toThrow(ConfigError);
    expect(() => parseBuilderIsolation('rootless')).toThrow(/'rootless': not supported.*slirp4netns.*registry/);
  });

  test.each(['', 'USERNS', 'gvisor'])('%j names the accepted values', (value) => {
    expect(() => parseBuilderIsolation(value)).toThrow(`Invalid --builder-isolation '${value}'. Expected auto, userns, none.`);
  });

  test('the default is auto', () => {
    expect(DEFAULTS.builderIsolation).toBe('auto');
    expect(BUILDER_ISOLATION_SETTINGS).toContain(DEFAULTS.builderIsolation);
  });
});

describe('daemonConfig', () => {
  const entitlements = { 'network-host': false, 'security-insecure': false };
  test.each([
    ['userns', { features: { buildkit: true }, builder: { entitlements }, 'userns-remap': 'default' }],
    ['none', { features: { buildkit: true }, builder: { entitlements } }]
  ] as const)('%s', (mode, expected) => {
    expect(daemonConfig(mode)).toEqual(expected);
  });
});

describe('resolveIsolation', () => {
  test.each([
    ['Docker version 20.10.24+dfsg1, build 5d6db84', { major: 20, minor: 10 }],
    ['Docker version 26.1.3, build b72abbb', { major: 26, minor: 1 }],
    ['dockerd: command not found', null],
    ['', null]
  ])('parseDockerdVersion(%j)', (out, expected) => {
    expect(parseDockerdVersion(out)).toEqual(expected);
  });

  test.each([
    // auto: user namespaces only where the engine's BuildKit extracts ADD archives as the remapped root.
    ['auto', 'Docker version 20.10.24+dfsg1, build 5d6db84', 'none', /dockerd 20\.10 empties the layers of ADD <local archive>.*moby\/buildkit#4708/],
    ['auto', 'Docker version 25.0.5, build e63daec', 'none', /dockerd 25\.0/],
    ['auto', 'Docker version 26.0.0, build 2ae903e', 'userns', /dockerd 26\.0 builds correctly/],
    ['auto', 'Docker version 27.3.1, build 41ca978', 'userns', /27\.3/],
    ['auto', 'garbage', 'none', /unknown version/],
    // An explicit choice is kept whatever the engine.
    ['userns', 'Docker version 20.10.24+dfsg1, build 5d6db84', 'userns', /--builder-isolation userns/],
    ['none', 'Docker version 27.3.1, build 41ca978', 'none', /--builder-isolation none/]
  ] as const)('%s with %j runs %s', (setting, version, mode, reason) => {
    const r = resolveIsolation(setting, version);
    expect(r.mode).toBe(mode);
    expect(r.reason).toMatch(reason);
  });
});
