// `setup --json`, `build --json`, `report --json` and `usage --json` (issue 12): numbers as numbers, booleans as
// booleans, one JSON Schema per command (docs/schemas/cli-<command>.json). Real outputs of the functions the CLI prints
// are validated against them here; __tests__/e2e/build-outcomes.test.ts validates the printed lines of a real run.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { cliSchema, validate } from '../helpers/json-schema';
import { reportValues, setupValues } from '../../src/cli/ci-output';
import { BUILD_COMPLETED } from '../../src/contract/metering-events';
import { computeUsage, pipelineUsage } from '../../src/server/metering/usage';
import { projectUsage } from '../../src/server/metering/project-usage';
import { usageView } from '../../src/cli/usage';
import { openSqliteStore } from '../../src/server/store/sqlite';

test('the validator: the old build --json (numbers as strings) fails, naming the field', () => {
  const old = {
    digest: '',
    'image-id': '',
    'cache-ratio': '0.6667',
    'cached-steps': '2',
    'deduplicated-steps': '0',
    'total-steps': '3',
    duration: '1.20',
    loaded: 'false',
    'push-status': 'skipped',
    'pushed-tags': [],
    'push-error': ''
  };
  expect(validate(cliSchema('build'), old)).toEqual([
    '$.cache-ratio: expected number, got string "0.6667"',
    '$.cached-steps: expected integer, got string "2"',
    '$.deduplicated-steps: expected integer, got string "0"',
    '$.total-steps: expected integer, got string "3"',
    '$.duration: expected number, got string "1.20"',
    '$.loaded: expected boolean, got string "false"'
  ]);
  expect(validate(cliSchema('build'), { ...old, 'push-status': 'lost' }).pop()).toBe(
    '$.push-status: "lost" is not one of ["pushed","failed","refused","skipped"]'
  );
});

test('setup --json: fallback a boolean, cache-from and platforms lists; the env strings', () => {
  const outputs = {
    builder: 'buildcloud-acme-1',
    'docker-host': 'tcp://127.0.0.1:23750',
    'lease-id': 'lease-1',
    'cache-from': 'reg:5000/acme/app/cache:feature\nreg:5000/acme/app/cache:main',
    'cache-to': 'reg:5000/acme/app/cache:feature',
    platforms: 'linux/amd64,linux/arm64',
    fallback: 'false'
  };
  const json = { outputs: setupValues(outputs), env: { DOCKER_HOST: 'tcp://127.0.0.1:23750', BUILDCLOUD_SESSION: '/tmp/s.json' } };
  expect(json.outputs).toEqual({
    ...outputs,
    'cache-from': ['reg:5000/acme/app/cache:feature', 'reg:5000/acme/app/cache:main'],
    platforms: ['linux/amd64', 'linux/arm64'],
    fallback: false
  });
  expect(validate(cliSchema('setup'), JSON.parse(JSON.stringify(json)))).toEqual([]);
  expect(setupValues({ ...outputs, 'cache-from': '', platforms: '', fallback: 'true' })).toMatchObject({ 'cache-from': [], platforms: [], fallback: true });
});

test('report --json: builds, billed seconds (or null), cache ratio', () => {
  const builds = [
    {
      buildId: 'b1',
      image: 'app:1',
      platform: 'linux/amd64',
      status: 'success' as const,
      durationMs: 1200,
      totalSteps: 3,
      cachedSteps: 2,
      pushStatus: 'failed' as const
    },
    {
      buildId: 'b2',
      platform: 'linux/amd64',
      status: 'failure' as const,
      durationMs: 300,
      totalSteps: 3,
      cachedSteps: 0,
      cacheMiss: { step: '[1/3] ADD rootfs.tar /', reason: 'no cache yet; this build will seed it', laterSteps: 2 }
    }
  ];
  const json = reportValues({ builds, billedSeconds: 61, warnings: [], summary: { builderShared: false } }, 2 / 6);
  expect(validate(cliSchema('report'), JSON.parse(JSON.stringify(json)))).toEqual([]);
  expect(validate(cliSchema('report'), reportValues({ builds: [], billedSeconds: null, warnings: ['w'], summary: {} }, 0))).toEqual([]);
  expect(validate(cliSchema('report'), { ...json, billedSeconds: '61' })).toEqual(['$.billedSeconds: expected number or null, got string "61"']);
});

test('usage --json: the org, project and pipeline views validate against one schema, with the same build counts', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-usage-json-'));
  const store = openSqliteStore(path.join(dir, 'state.db'));
  try {
    const NOW = Date.UTC(2026, 10, 30, 12);
    await store.createOrg('acme', NOW - 100_000);
    await store.insertUsageRecord({
      id: 'r1',
      org: 'acme',
      type: BUILD_COMPLETED,
      time: NOW - 30_000,
      receivedAt: NOW - 29_000,
      leaseId: 'l1',
      data: {
        lease_id: 'l1',
        build_id: 'b',
        platform: 'linux/amd64',
        status: 'success',
        push_status: 'failed',
        duration_ms: 900,
        total_steps: 2,
        cached_steps: 1,
        cache_ratio: 0.5,
        actor: 'ann'
      }
    });
    await store.insertLease({
      id: 'l1',
      org: 'acme',
      pipelineKey: '42/7/1',
      jobId: 'j',
      scope: 'pipeline',
      platforms: ['linux/amd64'],
      builderIds: [],
      identity: { project: 'acme/app' },
      actor: 'ann',
      certFingerprint: '00',
      registryUser: 'u',
      registryPasswordHash: 'h',
      createdAt: NOW - 60_000,
      lastActiveAt: NOW - 60_000,
      endedAt: NOW - 1_000,
      endReason: 'released',
      billedSeconds: 60
    });
    // The three views of `usage --json`, as the CLI prints them from the control plane's three answers: one schema.
    const views = [
      usageView('org', JSON.parse(JSON.stringify(await computeUsage(store, 'acme', '2026-11', NOW)))),
      usageView('project', JSON.parse(JSON.stringify(await projectUsage(store, 'acme', 'acme/app', '2026-11', NOW)))),
      usageView('pipeline', JSON.parse(JSON.stringify(await pipelineUsage(store, 'acme', '42/7/1', NOW))))
    ];
    for (const v of views) expect([v.view, validate(cliSchema('usage'), v)]).toEqual([v.view, []]);
    // The same build counts in every view: 1 build, succeeded, its push failed.
    for (const v of views) {
      expect([v.view, v.builds.count, v.builds.succeeded, v.builds.failed, v.builds.pushFailed, v.builds.pushRefused]).toEqual([v.view, 1, 1, 0, 1, 0]);
    }
    // What each view adds, present.
    expect(Object.keys(views[0])).toEqual(expect.arrayContaining(['month', 'minutes', 'seconds', 'canProvision', 'jobs', 'users']));
    expect(Object.keys(views[1])).toEqual(expect.arrayContaining(['month', 'project', 'billedSeconds', 'pipelines']));
    expect(Object.keys(views[2])).toEqual(expect.arrayContaining(['pipelineKey', 'billedSeconds', 'cacheMisses']));
    // The control plane's own org report is not the CLI's shape: it has no view.
    expect(validate(cliSchema('usage'), JSON.parse(JSON.stringify(await computeUsage(store, 'acme', '2026-11', NOW))))).toEqual(['$: missing required view']);
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
