import { engineEndSummary } from '../../src/server/drivers/dockerd';

// The shape of a Go runtime crash of Docker Engine 20.10 (moby/moby#42422: concurrent builds importing a registry cache):
// the fatal line, the crashing goroutine, then a dump of every other goroutine that a tail alone would show instead.
const crash = [
  'time="2026-12-01T01:26:40Z" level=info msg="pushing layer"',
  'fatal error: concurrent map writes',
  '',
  'goroutine 315831 [running]:',
  'runtime.throw(0x56422be17657, 0x15)',
  'github.com/docker/docker/vendor/github.com/moby/buildkit/cache/remotecache/v1.(*item).LinkFrom(0xc00389e7e0)',
  ...Array.from({ length: 400 }, (_, i) => `goroutine ${i} [select]:\ngithub.com/docker/docker/distribution/xfer.(*transfer).Watch.func1()`)
].join('\n');

test('a Go crash: the fatal line and the crashing goroutine come first, then the tail', () => {
  const s = engineEndSummary(crash);
  expect(s.split('\n')[0]).toBe('fatal error: concurrent map writes');
  expect(s).toContain('remotecache/v1.(*item).LinkFrom');
  expect(s).toContain('\n...\n');
  expect(s.endsWith('github.com/docker/docker/distribution/xfer.(*transfer).Watch.func1()')).toBe(true);
  expect(s.split('\n').length).toBeLessThanOrEqual(16 + 1 + 12);
});

test('a panic at the very start of the log is found too; a log without a crash gives its last lines', () => {
  expect(engineEndSummary('panic: runtime error: index out of range\n\ngoroutine 1 [running]:\nmain.main()').split('\n')[0]).toBe(
    'panic: runtime error: index out of range'
  );
  const plain = Array.from({ length: 30 }, (_, i) => `line ${i}`).join('\n');
  expect(engineEndSummary(plain)).toBe(Array.from({ length: 12 }, (_, i) => `line ${i + 18}`).join('\n'));
  expect(engineEndSummary('')).toBe('(empty)');
});
