import { familiarImageName, ImageNameLedger, imageAccess, normaliseImageName, parseImageRef, takenNameMessage } from '../../src/server/image-names';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const C = 'c'.repeat(64);
const ID1 = `sha256:${'1'.repeat(64)}`;
const ID2 = `sha256:${'2'.repeat(64)}`;

describe('normaliseImageName: names as docker normalises them', () => {
  test.each([
    ['app', 'docker.io/library/app:latest'],
    ['app:test', 'docker.io/library/app:test'],
    ['library/app:test', 'docker.io/library/app:test'],
    ['docker.io/library/app:test', 'docker.io/library/app:test'],
    ['docker.io/app:test', 'docker.io/library/app:test'],
    ['index.docker.io/library/app:test', 'docker.io/library/app:test'],
    ['acme/app', 'docker.io/acme/app:latest'],
    ['localhost:5000/app:1', 'localhost:5000/app:1'],
    ['localhost:5000/app', 'localhost:5000/app:latest'],
    ['localhost/app', 'localhost/app:latest'],
    ['registry.example.com/team/app:v1.2', 'registry.example.com/team/app:v1.2'],
    ['127.0.0.1:5000/a/b/c:x', '127.0.0.1:5000/a/b/c:x'],
    ['my_app-1.x:t', 'docker.io/library/my_app-1.x:t']
  ])('%s → %s', (raw, want) => {
    expect(normaliseImageName(raw)).toBe(want);
  });

  test.each([
    [`sha256:${A}`, 'id'],
    ['sha256:abc', 'id'],
    [A, 'id'],
    [`app@sha256:${A}`, 'digest'],
    [`localhost:5000/app:1@sha256:${A}`, 'digest']
  ])('%s is an image %s, never a name', (raw, kind) => {
    expect(parseImageRef(raw)).toEqual({ kind });
    expect(normaliseImageName(raw)).toBeNull();
  });

  test.each(['', 'App:test', 'app:', 'app:-x', 'a//b', '/app', 'app/', 'x'.repeat(600)])('%j is no valid name', (raw) => {
    expect(normaliseImageName(raw)).toBeNull();
  });

  test('registry hosts stay apart: localhost:5000/app is not app', () => {
    expect(normaliseImageName('localhost:5000/app:t')).not.toBe(normaliseImageName('app:t'));
    expect(normaliseImageName('registry.example.com/app:t')).not.toBe(normaliseImageName('app:t'));
  });

  test.each([
    ['docker.io/library/app:test', 'app:test'],
    ['docker.io/acme/app:test', 'acme/app:test'],
    ['localhost:5000/app:1', 'localhost:5000/app:1'],
    ['docker.io/library/a/b:1', 'library/a/b:1']
  ])('familiarImageName(%s) = %s', (name, want) => {
    expect(familiarImageName(name)).toBe(want);
  });
});

describe('imageAccess: what a request reads and sets', () => {
  const app = 'docker.io/library/app:test';
  test.each([
    [
      'POST',
      '/v1.41/build?t=app:test&t=docker.io/library/app:test&t=x&version=2',
      { reads: [], readsAllTagsOf: null, sets: [app, 'docker.io/library/x:latest'] }
    ],
    ['POST', `/build?t=${encodeURIComponent('localhost:5000/app:1')}`, { reads: [], readsAllTagsOf: null, sets: ['localhost:5000/app:1'] }],
    ['POST', '/build?version=2', { reads: [], readsAllTagsOf: null, sets: [] }],
    ['GET', '/v1.41/images/app:test/json', { reads: [app], readsAllTagsOf: null, sets: [] }],
    ['GET', '/images/app:test/history', { reads: [app], readsAllTagsOf: null, sets: [] }],
    ['GET', '/images/app:test/get', { reads: [app], readsAllTagsOf: null, sets: [] }],
    ['GET', '/v1.41/images/get?names=app%3Atest&names=other', { reads: [app, 'docker.io/library/other:latest'], readsAllTagsOf: null, sets: [] }],
    ['POST', '/v1.41/images/app/push?tag=test', { reads: [app], readsAllTagsOf: null, sets: [] }],
    ['POST', '/v1.41/images/app:test/push?tag=', { reads: [app], readsAllTagsOf: null, sets: [] }],
    ['POST', '/v1.41/images/localhost:5000/app/push?tag=', { reads: [], readsAllTagsOf: 'localhost:5000/app', sets: [] }],
    ['POST', '/v1.41/images/app:test/tag?repo=x&tag=1', { reads: [app], readsAllTagsOf: null, sets: ['docker.io/library/x:1'] }],
    ['POST', '/v1.41/images/app:test/tag?repo=x', { reads: [app], readsAllTagsOf: null, sets: ['docker.io/library/x:latest'] }],
    ['POST', `/v1.41/images/sha256:${A}/tag?repo=app&tag=test`, { reads: [], readsAllTagsOf: null, sets: [app] }],
    ['GET', `/v1.41/images/sha256:${A}/json`, { reads: [], readsAllTagsOf: null, sets: [] }],
    ['GET', `/v1.41/images/app@sha256:${A}/json`, { reads: [], readsAllTagsOf: null, sets: [] }],
    ['POST', `/v1.41/images/app@sha256:${A}/push?tag=`, { reads: [], readsAllTagsOf: null, sets: [] }],
    ['GET', '/v1.41/images/json', { reads: [], readsAllTagsOf: null, sets: [] }],
    ['POST', '/v1.41/images/app:test/json', { reads: [], readsAllTagsOf: null, sets: [] }],
    ['GET', '/v1.41/_ping', { reads: [], readsAllTagsOf: null, sets: [] }]
  ])('%s %s', (method, url, want) => {
    expect(imageAccess(method, url)).toEqual(want);
  });
});

describe('ImageNameLedger: the ownership decision', () => {
  const app = 'docker.io/library/app:test';
  const reads = (...names: string[]) => ({ reads: names, readsAllTagsOf: null });

  test('A sets, B takes over: A must verify and is refused while the name holds B’s image; B and a third lease read', () => {
    const l = new ImageNameLedger();
    expect(l.recordSet(A, app, ID1)).toBe(true);
    expect(l.toVerify(A, reads(app))).toEqual([]); // its own: no engine call
    expect(l.recordSet(B, app, ID2)).toBe(true);
    expect(l.toVerify(A, reads(app))).toEqual([app]);
    expect(l.refused(A, [app], new Map([[app, ID2]]))).toEqual([app]);
    expect(l.toVerify(B, reads(app))).toEqual([]);
    expect(l.toVerify(C, reads(app))).toEqual([]); // never set it: may read what another job built
  });

  test('the engine is asked at read time: the lease’s own image under the name, or no image, is not refused', () => {
    const l = new ImageNameLedger();
    l.recordSet(A, app, ID1);
    l.recordSet(B, app, ID2);
    expect(l.refused(A, [app], new Map([[app, ID1]]))).toEqual([]);
    expect(l.refused(A, [app], new Map([[app, null]]))).toEqual([]);
    expect(l.refused(A, [app], new Map([[app, `sha256:${'9'.repeat(64)}`]]))).toEqual([app]);
  });

  test('a build that did not change the image (failed, or identical) changes nothing', () => {
    const l = new ImageNameLedger();
    l.recordSet(A, app, ID1);
    expect(l.recordSet(B, app, ID1)).toBe(false);
    expect(l.toVerify(A, reads(app))).toEqual([]);
    expect(l.toVerify(B, reads(app))).toEqual([]);
  });

  test('building the name again makes the lease its setter again', () => {
    const l = new ImageNameLedger();
    l.recordSet(A, app, ID1);
    l.recordSet(B, app, ID2);
    expect(l.recordSet(A, app, ID1)).toBe(true);
    expect(l.toVerify(A, reads(app))).toEqual([]);
    expect(l.toVerify(B, reads(app))).toEqual([app]);
  });

  test('a push of every tag checks each tag of the repository the lease set', () => {
    const l = new ImageNameLedger();
    const one = 'localhost:5000/app:1';
    const two = 'localhost:5000/app:2';
    l.recordSet(A, one, ID1);
    l.recordSet(A, two, ID1);
    l.recordSet(A, 'localhost:5000/app-other:1', ID1);
    l.recordSet(B, two, ID2);
    expect(l.toVerify(A, { reads: [], readsAllTagsOf: 'localhost:5000/app' })).toEqual([two]);
  });

  test('forget drops the lease’s names and keeps who set each name', () => {
    const l = new ImageNameLedger();
    l.recordSet(A, app, ID1);
    l.recordSet(B, app, ID2);
    l.forget(A);
    expect(l.toVerify(A, reads(app))).toEqual([]);
    l.forget(B);
    expect(l.recordSet(C, app, ID2)).toBe(false); // still recorded: the same image is no new setter
  });
});

describe('takenNameMessage', () => {
  test('names the tag as the user wrote it, says what to do, and nothing about the other lease', () => {
    const m = takenNameMessage(['docker.io/library/app:test']);
    expect(m).toBe(
      "Build Cloud: 'app:test' on the pipeline's shared builder now names another job's image (built after this job's). " +
        "Give parallel jobs tags of their own (for example with the job name), or set scope: job for a builder of the job's own."
    );
    expect(takenNameMessage(['docker.io/library/a:1', 'localhost:5000/b:2'])).toMatch(/^Build Cloud: 'a:1', 'localhost:5000\/b:2' on .* now name another/);
  });
});
