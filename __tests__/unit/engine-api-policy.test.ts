import { checkEngineRequest, stripVersion } from '../../src/server/engine-api-policy';

// Requests as the docker CLI (20.10 and 28.x), buildx and docker/build-push-action send them.
const ALLOWED: Array<[string, string]> = [
  ['GET', '/_ping'],
  ['HEAD', '/_ping'],
  ['GET', '/v1.41/version'],
  ['GET', '/v1.41/info'],
  ['GET', '/v1.41/system/df'],
  ['POST', '/v1.41/auth'],
  ['POST', '/v1.41/session'],
  ['POST', '/grpc'],
  ['POST', '/v1.41/build?buildargs=%7B%7D&dockerfile=Dockerfile&networkmode=default&session=abc&t=app%3A1&version=2'],
  ['POST', '/v1.41/build?networkmode=none&version=2'],
  ['POST', '/v1.41/build?version=2'],
  ['POST', '/v1.41/build/cancel?id=xyz'],
  ['POST', '/v1.41/build/prune?all=1'],
  ['GET', '/v1.41/images/json'],
  ['GET', '/v1.41/images/127.0.0.1:7645/acme/app/cache:main/json'],
  ['GET', '/v1.41/images/sha256:0123abcd/history'],
  ['POST', '/v1.41/images/app:1/tag?repo=registry.example.com%2Facme%2Fapp&tag=2'],
  ['POST', '/v1.41/images/registry.example.com/acme/app/push?tag=1'],
  ['GET', '/v1.41/images/get?names=app%3A1'],
  ['GET', '/v1.41/images/app:1/get'],
  ['GET', '/v1.41/distribution/registry.example.com/acme/app:1/json']
];

// What a hostile job tries; each with the words its message must contain.
const REFUSED: Array<[string, string, number, RegExp]> = [
  [
    'POST',
    '/v1.41/containers/create',
    403,
    /^Build Cloud builders run builds only: containers \(`docker run`, `docker exec`, `docker create`\) are not available on a remote builder; use `load: true`/
  ],
  ['POST', '/containers/create?name=x', 403, /`docker run`/],
  ['POST', '/v1.41/containers/abc/start', 403, /`docker run`/],
  ['POST', '/v1.41/containers/abc/attach?stream=1', 403, /`docker run`/],
  ['GET', '/v1.41/containers/json', 403, /`docker run`/],
  ['POST', '/v1.41/containers/abc/exec', 403, /containers \(.*`docker exec`/],
  ['POST', '/v1.41/exec/abc/start', 403, /containers \(.*`docker exec`/],
  ['POST', '/v1.41/volumes/create', 403, /volumes \(`docker volume`\) are not available/],
  ['POST', '/v1.41/networks/create', 403, /`docker network`/],
  ['POST', '/v1.41/networks/br/connect', 403, /`docker network`/],
  ['POST', '/v1.41/images/create?fromImage=alpine', 403, /`docker pull` and `docker import` are not available/],
  ['POST', '/v1.41/images/load', 403, /`docker load`/],
  ['POST', '/v1.41/swarm/init', 403, /swarm/],
  ['POST', '/v1.41/plugins/pull?remote=x', 403, /`docker plugin`/],
  ['POST', '/v1.41/commit?container=abc', 403, /containers \(`docker commit`\) are not available/],
  ['GET', '/v1.41/events', 403, /GET "\/events" is not available/],
  ['POST', '/v1.41/images/prune', 403, /not available/],
  ['DELETE', '/v1.41/images/app:1', 403, /not available/],
  ['POST', '/v1.41/system/prune', 403, /not available/],
  // A build's own options.
  ['POST', '/v1.41/build?networkmode=host&version=2', 403, /--network "host" is not allowed/],
  ['POST', '/v1.41/build?networkmode=container%3Aabc&version=2', 403, /--network "container:abc"/],
  ['POST', '/v1.41/build?networkmode=default', 403, /BuildKit.*DOCKER_BUILDKIT=1/],
  ['POST', '/v1.41/build?version=1', 403, /classic builder/],
  ['POST', '/v1.41/build?version=2&cgroupparent=%2F', 403, /--cgroup-parent/],
  // The right route with the wrong method.
  ['GET', '/v1.41/build', 403, /not available/],
  ['DELETE', '/_ping', 403, /not available/],
  // Paths the engine's router would clean or decode into another route.
  ['POST', '/v1.41/images/../containers/create', 400, /not a plain API path/],
  ['POST', '/v1.41/build/../containers/create?version=2', 400, /not a plain API path/],
  ['GET', '/v1.41/images/x/..', 400, /not a plain API path/],
  ['POST', '//containers/create', 400, /not a plain API path/],
  ['POST', '/v1.41/images/a%2F..%2F..%2Fcontainers%2Fcreate/tag', 400, /not a plain API path/],
  ['POST', '/v1.41/images/%2e%2e/containers/create/push', 400, /not a plain API path/],
  ['GET', '/v1.41/images/.\\./json', 400, /not a plain API path/],
  ['GET', '*', 400, /not a plain API path/],
  ['GET', 'http://127.0.0.1/_ping', 400, /not a plain API path/]
];

describe('checkEngineRequest', () => {
  test.each(ALLOWED)('allows %s %s', (method, url) => {
    expect(checkEngineRequest({ method, url })).toMatchObject({ allowed: true });
  });

  test.each(REFUSED)('refuses %s %s', (method, url, status, message) => {
    const d = checkEngineRequest({ method, url });
    expect(d.allowed).toBe(false);
    if (d.allowed) return;
    expect(d.status).toBe(status);
    expect(d.message).toMatch(message);
    expect(d.message).toMatch(/^Build Cloud builders run builds only/);
  });

  // Go's FormValue prefers a form-encoded body over the query: a body must never carry options past the policy.
  test.each([
    ['application/x-www-form-urlencoded'],
    ['Application/X-WWW-Form-URLEncoded ; charset=utf-8'],
    ['  application/x-www-form-urlencoded'],
    ['multipart/form-data; boundary=x']
  ])('refuses a form-encoded body (%j) on an allowed route', (ct) => {
    const d = checkEngineRequest({ method: 'POST', url: '/v1.41/build?version=2', contentTypes: [ct] });
    expect(d).toMatchObject({ allowed: false, status: 400 });
    if (!d.allowed) expect(d.message).toMatch(/form-encoded request bodies .* are not accepted; options go in the query string/);
  });

  // As Node reads them (latin1): "applİcation/..." and "multİpart/..." (U+0130), "application/x-www-form-urlencoded" with
  // a Kelvin sign, which Go's strings.ToLower turns into 'k'; a break-it run got the first two past a deny-list.
  test.each([
    ['appl\u00c4\u00b0cation/x-www-form-urlencoded'],
    ['mult\u00c4\u00b0part/form-data; boundary=x'],
    ['\u212aapplication/json'],
    ['text/plain\u0000']
  ])('refuses a Content-Type that is not printable ASCII (%j)', (ct) => {
    const d = checkEngineRequest({ method: 'POST', url: '/v1.41/build?version=2', contentTypes: [ct] });
    expect(d).toMatchObject({ allowed: false, status: 400 });
    if (!d.allowed) expect(d.message).toContain('printable ASCII');
  });

  it('refuses two Content-Type headers, and allows what build clients send', () => {
    expect(
      checkEngineRequest({ method: 'POST', url: '/v1.41/build?version=2', contentTypes: ['application/x-tar', 'application/x-www-form-urlencoded'] })
    ).toMatchObject({ allowed: false, status: 400 });
    for (const ct of ['application/x-tar', 'application/json', 'text/plain', 'application/octet-stream']) {
      expect(checkEngineRequest({ method: 'POST', url: '/v1.41/build?version=2', contentTypes: [ct] })).toMatchObject({ allowed: true });
    }
    expect(checkEngineRequest({ method: 'POST', url: '/v1.41/build?version=2', contentTypes: [] })).toMatchObject({ allowed: true });
  });

  it('names the upgradable BuildKit routes so the front may switch protocols for them only', () => {
    expect(checkEngineRequest({ method: 'POST', url: '/v1.41/session' })).toEqual({ allowed: true, route: 'session' });
    expect(checkEngineRequest({ method: 'POST', url: '/grpc' })).toEqual({ allowed: true, route: 'grpc' });
    expect(checkEngineRequest({ method: 'GET', url: '/_ping' })).toEqual({ allowed: true, route: 'ping' });
  });

  it('keeps control characters and long paths out of its messages', () => {
    const d = checkEngineRequest({ method: 'GET', url: `/x\u001b[31m${'a'.repeat(500)}` });
    expect(d.allowed).toBe(false);
    if (d.allowed) return;
    expect(d.message).not.toContain('\u001b');
    expect(d.message.length).toBeLessThan(260);
  });

  test.each([
    ['/v1.41/build', '/build'],
    ['/v1/_ping', '/_ping'],
    ['/build', '/build'],
    ['/v1.41', '/v1.41'],
    ['/vx/build', '/vx/build']
  ])('stripVersion(%s) = %s', (input, out) => {
    expect(stripVersion(input)).toBe(out);
  });
});
