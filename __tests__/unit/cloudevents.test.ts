import { EventsBodyError, isRfc3339, mediaType, stableId } from '../../src/contract/cloudevents';
import {
  BUILD_COMPLETED,
  JOB_COMPLETED,
  buildCompletedEvent,
  buildRecordId,
  jobCompletedEvent,
  parseEventsBody,
  validateEvent
} from '../../src/contract/metering-events';

const buildData = {
  lease_id: 'lease-1',
  build_id: 'build-1',
  platform: 'linux/amd64',
  status: 'success',
  duration_ms: 1234,
  total_steps: 4,
  cached_steps: 3,
  cache_ratio: 0.75
};
const jobData = {
  lease_id: 'lease-1',
  wall_seconds: 12.5,
  builds: 2,
  actor: 'ann',
  provider: 'github',
  project: 'acme/api',
  pipeline_key: '1/2/1',
  job_id: 'build'
};
const ev = (over: Record<string, unknown> = {}, data: Record<string, unknown> = {}) => ({
  specversion: '1.0',
  id: 'id-1',
  source: '/buildcloud/github',
  type: BUILD_COMPLETED,
  subject: 'acme',
  time: '2025-01-31T12:00:00Z',
  datacontenttype: 'application/json',
  data: { ...buildData, ...data },
  ...over
});
const errorOf = (c: unknown) => {
  const r = validateEvent(c);
  return 'error' in r ? r.error : null;
};

describe('envelope', () => {
  test('a valid build event and a valid job event', () => {
    expect(errorOf(ev())).toBeNull();
    expect(errorOf(ev({ type: JOB_COMPLETED, data: jobData }))).toBeNull();
    expect(errorOf(ev({ time: undefined, datacontenttype: undefined }))).toBeNull();
    expect(errorOf(ev({ source: 'urn:buildcloud:ci' }))).toBeNull();
    expect(errorOf(ev({ source: 'https://ci.example/acme' }))).toBeNull();
  });

  test.each<[string, unknown, RegExp]>([
    ['not an object', [1], /event must be a JSON object/],
    ['null', null, /event must be a JSON object/],
    ['specversion', ev({ specversion: '0.3' }), /specversion/],
    ['missing id', ev({ id: undefined }), /^id must be a non-empty string/],
    ['empty id', ev({ id: '' }), /^id must be a non-empty string/],
    ['id too long', ev({ id: 'x'.repeat(257) }), /at most 256/],
    ['numeric id', ev({ id: 5 }), /^id/],
    ['source with spaces', ev({ source: 'not a uri' }), /source must be a URI-reference/],
    ['empty source', ev({ source: '' }), /source/],
    ['missing type', ev({ type: undefined }), /^type must be a non-empty string/],
    ['unknown type', ev({ type: 'com.example.other' }), /type must be one of dev.buildcloud.build.completed/],
    ['missing subject', ev({ subject: undefined }), /subject must be a non-empty string: the org/],
    ['subject too long', ev({ subject: 's'.repeat(257) }), /subject must be at most 256/],
    ['bad time', ev({ time: '31/01/2025' }), /time must be an RFC 3339/],
    ['time without zone', ev({ time: '2025-01-31T12:00:00' }), /time/],
    ['datacontenttype', ev({ datacontenttype: 'text/plain' }), /datacontenttype/],
    ['data_base64', ev({ data_base64: 'AAAA' }), /data_base64/],
    ['data not object', ev({ data: 'x' }), /data must be a JSON object/]
  ])('%s is rejected', (_n, candidate, want) => {
    expect(errorOf(candidate)).toMatch(want);
  });

  test('helpers', () => {
    expect(mediaType('Application/CloudEvents+JSON; charset=utf-8')).toBe('application/cloudevents+json');
    expect(isRfc3339('2025-01-31T12:00:00.123+02:00')).toBe(true);
    expect(isRfc3339('2025-13-31T12:00:00Z')).toBe(false);
  });
});

describe('build.completed data', () => {
  test.each<[string, Record<string, unknown>, RegExp]>([
    ['missing lease_id', { lease_id: undefined }, /data.lease_id must be a string \(required\)/],
    ['empty build_id', { build_id: '' }, /data.build_id must not be empty/],
    ['platform number', { platform: 1 }, /data.platform/],
    ['status', { status: 'ok' }, /data.status must be one of success, failure, cancelled/],
    ['negative duration', { duration_ms: -1 }, /data.duration_ms must be an integer >= 0/],
    ['fractional steps', { total_steps: 1.5 }, /data.total_steps/],
    ['string steps', { cached_steps: '3' }, /data.cached_steps/],
    ['cached > total', { cached_steps: 5, cache_ratio: 1 }, /data.cached_steps \(5\) must not exceed data.total_steps \(4\)/],
    ['ratio > 1', { cache_ratio: 1.5 }, /data.cache_ratio must be a number from 0 to 1/],
    ['ratio disagrees', { cache_ratio: 0.5 }, /data.cache_ratio \(0.5\) must equal cached_steps\/total_steps \(0.7500\)/],
    ['deduplicated not an integer', { deduplicated_steps: '1' }, /^data.deduplicated_steps must be an integer >= 0$/],
    ['deduplicated negative', { deduplicated_steps: -1 }, /data.deduplicated_steps must be an integer >= 0/],
    [
      'cached + deduplicated > total',
      { deduplicated_steps: 2 },
      /data.cached_steps \+ data.deduplicated_steps \(3 \+ 2\) must not exceed data.total_steps \(4\)/
    ],
    ['cache_miss not a string', { cache_miss: 3 }, /data.cache_miss must be a string/],
    ['cache_miss too long', { cache_miss: 'x'.repeat(257) }, /data.cache_miss must be at most 256 characters/],
    ['digest', { image_digest: 'latest' }, /data.image_digest/],
    ['actor not string', { actor: 7 }, /data.actor must be a string/],
    ['huge data', { project: 'x'.repeat(300) }, /data.project must be at most 256/]
  ])('%s', (_n, data, want) => {
    expect(errorOf(ev({}, data))).toMatch(want);
  });

  test.each<[string, Record<string, unknown>]>([
    ['rounded ratio within 0.001', { total_steps: 3, cached_steps: 1, cache_ratio: 0.333 }],
    ['no steps', { total_steps: 0, cached_steps: 0, cache_ratio: 0 }],
    ['all deduplicated, none cached', { total_steps: 6, cached_steps: 0, deduplicated_steps: 6, cache_ratio: 0 }],
    ['without deduplicated_steps (a client from before it)', { deduplicated_steps: undefined }],
    ['digest and identity', { image_digest: 'sha256:' + 'a'.repeat(64), actor: '', provider: 'gitlab', job_id: '7' }],
    ['unknown extra field kept', { future_field: true }]
  ])('%s is valid', (_n, data) => {
    expect(errorOf(ev({}, data))).toBeNull();
  });
});

describe('job.completed data', () => {
  const job = (data: Record<string, unknown>) => ev({ type: JOB_COMPLETED, data: { ...jobData, ...data } });
  test.each<[string, Record<string, unknown>, RegExp]>([
    ['negative wall', { wall_seconds: -1 }, /data.wall_seconds must be a number >= 0/],
    ['builds fractional', { builds: 1.5 }, /data.builds must be an integer/],
    ['missing job_id', { job_id: undefined }, /data.job_id/],
    ['missing actor', { actor: undefined }, /data.actor must be a string \(required\)/]
  ])('%s', (_n, data, want) => {
    expect(errorOf(job(data))).toMatch(want);
  });
  test('empty actor and project are allowed', () => {
    expect(errorOf(job({ actor: '', project: '' }))).toBeNull();
  });
});

describe('parseEventsBody', () => {
  const thrown = (fn: () => unknown): EventsBodyError => {
    try {
      fn();
    } catch (err) {
      if (err instanceof EventsBodyError) return err;
      throw err;
    }
    throw new Error('did not throw');
  };

  test('structured mode: one event', () => {
    const r = parseEventsBody('application/cloudevents+json', JSON.stringify(ev()));
    expect(r.events).toHaveLength(1);
    expect(r.events[0]).toMatchObject({ index: 0, id: 'id-1' });
    expect(r.events[0].event?.data).toMatchObject({ build_id: 'build-1' });
  });

  test('batch mode: one bad record is rejected alone', () => {
    const body = Buffer.from(JSON.stringify([ev({ id: 'a' }), ev({ id: 'b' }, { status: 'weird' }), 42, ev({ id: 'a' })]));
    const r = parseEventsBody('application/cloudevents-batch+json; charset=utf-8', body);
    expect(r.events.map((e) => [e.index, e.id, !!e.event, e.error ?? null])).toEqual([
      [0, 'a', true, null],
      [1, 'b', false, expect.stringMatching(/data.status/)],
      [2, undefined, false, 'event must be a JSON object'],
      [3, 'a', true, null] // a repeated id is valid here; the store makes it a duplicate
    ]);
  });

  test('application/json takes an object or an array', () => {
    expect(parseEventsBody('application/json', JSON.stringify(ev())).events).toHaveLength(1);
    expect(parseEventsBody('application/json', JSON.stringify([ev(), ev()])).events).toHaveLength(2);
  });

  test.each<[string, string | undefined, string, number, string]>([
    ['wrong content type', 'text/plain', '{}', 400, 'unsupported_content_type'],
    ['no content type', undefined, '{}', 400, 'unsupported_content_type'],
    ['bad JSON', 'application/json', '{"specversion":', 400, 'invalid_json'],
    ['empty body', 'application/json', '  ', 400, 'invalid_json'],
    ['array in structured mode', 'application/cloudevents+json', '[]', 400, 'invalid_body'],
    ['object in batch mode', 'application/cloudevents-batch+json', '{}', 400, 'invalid_body']
  ])('%s → %p %s', (_n, ct, body, status, code) => {
    const err = thrown(() => parseEventsBody(ct, body));
    expect([err.status, err.code]).toEqual([status, code]);
  });

  test('batch over the cap is refused as a whole with 413', () => {
    const body = JSON.stringify([ev({ id: '1' }), ev({ id: '2' }), ev({ id: '3' })]);
    expect(parseEventsBody('application/json', body, { maxBatch: 3 }).events).toHaveLength(3);
    const err = thrown(() => parseEventsBody('application/json', body, { maxBatch: 2 }));
    expect(err.status).toBe(413);
    expect(err.message).toMatch(/3 events, the limit is 2/);
  });

  test('default cap is 1000', () => {
    const one = ev();
    expect(parseEventsBody('application/json', JSON.stringify(Array(1000).fill(one))).events).toHaveLength(1000);
    expect(thrown(() => parseEventsBody('application/json', JSON.stringify(Array(1001).fill(one)))).status).toBe(413);
  });
});

describe('builders and stable ids', () => {
  test('stableId is a deterministic RFC 9562 v8 UUID', () => {
    const id = stableId('a', 'b');
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(stableId('a', 'b')).toBe(id);
    expect(stableId('a/b')).not.toBe(stableId('a', 'b'));
    expect(stableId('a', 'b/c')).not.toBe(stableId('a/b', 'c'));
  });

  test('buildCompletedEvent: same lease and build, same id, and it validates', () => {
    const { cache_ratio: _r, ...noRatio } = buildData;
    const data = { ...noRatio, status: 'success' as const };
    const e1 = buildCompletedEvent('acme', data, { time: 0 });
    const e2 = buildCompletedEvent('acme', data, { time: 1000, source: '/buildcloud/gitlab' });
    expect(e1.id).toBe(e2.id);
    expect(e1.id).toBe(buildRecordId('lease-1', 'build-1'));
    expect(buildCompletedEvent('acme', { ...data, build_id: 'build-2' }).id).not.toBe(e1.id);
    expect(e1).toMatchObject({ specversion: '1.0', subject: 'acme', type: BUILD_COMPLETED, time: '1970-01-01T00:00:00.000Z' });
    expect(e1.data.cache_ratio).toBe(0.75);
    expect(errorOf(e1)).toBeNull();
  });

  test('jobCompletedEvent: id from lease and job, never equal to a build id', () => {
    const e = jobCompletedEvent('acme', jobData);
    expect(e.id).toBe(jobCompletedEvent('acme', jobData).id);
    expect(e.id).not.toBe(buildRecordId('lease-1', 'build'));
    expect(errorOf(e)).toBeNull();
  });
});
