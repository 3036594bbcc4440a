// Metering under faults (issue 14), against the real `buildcloud serve`, its dockerd builders and the runner CLI run
// as a shell CI job runs it. A fault proxy (helpers/fault-proxy.ts) sits between the runner and serve's HTTP port,
// named to the runner as a user would: BUILDCLOUD_METERING_ENDPOINT. Each scenario: the user's build succeeds (exit
// 0, a warning when metering had trouble), and every usage record reached the server exactly once, as the server's
// usage API counts them (builds and jobs), whatever the client printed; the proxy's log says what the server answered
// each time a record reached it (accepted, duplicate) and when the client retried.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { startServer, type ServerProcess } from '../helpers/server';
import { meteringJobs, type Plan } from '../helpers/metering-jobs';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy';
import { reportScenario } from '../helpers/reliability';
import { BUILD_END_DEADLINE_MS } from '../../src/core/metering-send';

let server: ServerProcess;
let proxy: FaultProxy;
let work: string;
let ctx: string;
let jobs: ReturnType<typeof meteringJobs>;

const DOCKERFILE = `FROM scratch
COPY a.txt /a.txt
COPY b.txt /b.txt
`;

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-metering-faults-'));
  server = await startServer(['--idle-timeout', '60s', '--grace', '1s', '--warm-pool', '0']);
  proxy = await startFaultProxy(server.info.http);
  jobs = meteringJobs({ server, proxy, work });
  ctx = path.join(work, 'ctx');
  fs.mkdirSync(ctx);
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(ctx, 'a.txt'), `a ${process.pid}\n`);
  fs.writeFileSync(path.join(ctx, 'b.txt'), `b ${process.pid}\n`);
});

afterAll(async () => {
  await proxy?.close();
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

// A fault for the whole first job; a later job of the same runner (its setup) sends what the first one kept.
/** The figures every "fault in one job, a healthy later job" scenario reports: records, exit codes, final usage. */
function laterJobFigures(s: Awaited<ReturnType<typeof faultThenLaterJob>>, all: ReturnType<typeof jobs.served>) {
  return {
    recordsSent: all.recordsSent,
    recordsAccepted: all.accepted,
    recordsDuplicate: all.duplicate,
    recordsPending: s.leftovers,
    buildExitCodes: `${s.first.build.status},${s.second.build.status}`,
    usageBuilds: s.final.builds.count,
    usageJobs: s.final.jobs.count
  };
}

async function faultThenLaterJob(org: string, during: Plan) {
  const j = jobs.newRunner(org);
  const from = proxy.log.length;
  const first = await jobs.job(j, 'first', during, true);
  const afterFirst = jobs.usage(org);
  const keptInSpool = jobs.spooled(j);
  const mid = proxy.log.length;
  const second = await jobs.job(j, 'second', { then: { kind: 'pass' } });
  return { j, from, mid, first, second, afterFirst, keptInSpool, final: jobs.usage(org), leftovers: jobs.spooled(j) };
}

test('metering endpoint answers 500 for a whole job: the build succeeds, a later job sends every record once', async () => {
  const s = await faultThenLaterJob('m500', { then: { kind: 'status', status: 500 } });
  const during = proxy.log.slice(s.from, s.mid);
  const all = jobs.served(s.from);
  reportScenario({
    scenario: 'metering endpoint answers 500',
    injected:
      'every metering request of a job answered 500 by a proxy in front of the real serve (build end and report); the next job of the same runner home has a healthy endpoint',
    checked:
      'both builds exit 0 (the first with a metering warning); nothing stored during the fault; afterwards the usage API counts 2 builds and 2 jobs, none twice; spool empty',
    figures: {
      requestsDuringFault: during.length,
      ...laterJobFigures(s, all)
    }
  });
  expect([s.first.build.status, s.first.report.status, s.second.build.status, s.second.report.status]).toEqual([0, 0, 0, 0]);
  expect(jobs.warned(s.first.build).join('\n')).toMatch(/1 usage record not sent yet to .*HTTP 500/);
  expect(during.length).toBeGreaterThanOrEqual(2); // the build end's and the report's tries all met the fault
  expect(during.every((e) => e.fault === 'status' && e.upstreamStatus === undefined)).toBe(true);
  expect(s.afterFirst.builds.count).toBe(0);
  expect(s.keptInSpool).toBe(2); // the first job's build and job records
  expect(s.final.builds.count).toBe(2);
  expect(s.final.jobs.count).toBe(2);
  expect(all.accepted).toBe(4);
  expect(all.acceptedIds.size).toBe(4);
  expect(s.leftovers).toBe(0);
});

test('metering endpoint answers 429 with Retry-After: the client waits it out, then the record is stored once', async () => {
  const j = jobs.newRunner('m429');
  const from = proxy.log.length;
  const r = await jobs.job(j, 'only', { faults: [{ kind: 'status', status: 429, retryAfter: '2' }], then: { kind: 'pass' } });
  const u = jobs.usage('m429');
  const s = jobs.served(from);
  const [limited, next] = s.entries;
  const gapMs = next && limited ? next.at - limited.at : -1;
  reportScenario({
    scenario: 'metering endpoint answers 429 with Retry-After',
    injected: "the build end's first metering request answered 429 with Retry-After: 2 by the proxy",
    checked: 'the next try of the same records came at least 2 s later (proxy log); build exit 0; the usage API counts 1 build and 1 job',
    figures: {
      retryAfterSeconds: 2,
      retryGapMs: gapMs,
      recordsSent: s.recordsSent,
      recordsAccepted: s.accepted,
      recordsDuplicate: s.duplicate,
      recordsPending: jobs.spooled(j),
      buildExitCode: r.build.status ?? -1,
      usageBuilds: u.builds.count,
      usageJobs: u.jobs.count
    }
  });
  expect(r.build.status).toBe(0);
  expect(r.report.status).toBe(0);
  expect(limited.fault).toBe('status');
  expect(next.ids).toEqual(limited.ids);
  expect(gapMs).toBeGreaterThanOrEqual(2000);
  expect(gapMs).toBeLessThan(BUILD_END_DEADLINE_MS);
  expect(jobs.warned(r.build)).toEqual([]); // it went through within the build end's deadline
  expect(u.builds.count).toBe(1);
  expect(u.jobs.count).toBe(1);
  expect([s.accepted, s.duplicate]).toEqual([2, 0]);
  expect(jobs.spooled(j)).toBe(0);
});

test('metering endpoint answers 429 with a Retry-After past every deadline: no early retry, a later job sends every record once', async () => {
  const s = await faultThenLaterJob('m429long', { then: { kind: 'status', status: 429, retryAfter: '60' } });
  const during = proxy.log.slice(s.from, s.mid);
  const all = jobs.served(s.from);
  reportScenario({
    scenario: 'metering endpoint answers 429 with a Retry-After past the deadlines',
    injected:
      "every metering request of a job answered 429 with Retry-After: 60 by the proxy (longer than the build end's and the report's budgets); the next job of the same runner home has a healthy endpoint",
    checked:
      'the client never retried before the 60 s (one request at build end, one at report, proxy log); both builds exit 0 (the first with a warning naming the Retry-After); afterwards the usage API counts 2 builds and 2 jobs; spool empty',
    figures: {
      requestsDuringFault: during.length,
      ...laterJobFigures(s, all)
    }
  });
  expect([s.first.build.status, s.first.report.status, s.second.build.status, s.second.report.status]).toEqual([0, 0, 0, 0]);
  expect(jobs.warned(s.first.build).join('\n')).toMatch(/1 usage record not sent yet to .*HTTP 429.*retry after 60 s, past the flush deadline/);
  expect(during.map((e) => e.fault)).toEqual(['status', 'status']); // the build end's try and the report's, no more
  expect(s.afterFirst.builds.count).toBe(0);
  expect(s.keptInSpool).toBe(2);
  expect(s.final.builds.count).toBe(2);
  expect(s.final.jobs.count).toBe(2);
  expect([all.accepted, all.acceptedIds.size, all.duplicate]).toEqual([4, 4, 0]);
  expect(s.leftovers).toBe(0);
});

test('metering endpoint hangs past the client timeout (after storing): the build ends within the deadline, nothing counted twice', async () => {
  const j = jobs.newRunner('mhang');
  const from = proxy.log.length;
  const r = await jobs.job(j, 'only', { then: { kind: 'hang' } });
  const u = jobs.usage('mhang');
  const s = jobs.served(from);
  const firstTry = s.entries[0];
  const heldMs = firstTry ? r.build.endedAt - firstTry.at : -1;
  reportScenario({
    scenario: 'metering endpoint hangs past the client timeout',
    injected: "the proxy forwarded every metering request of the build step to serve (which stored it) and never answered; the report's requests pass",
    checked: `the build exits 0 with a metering warning no later than the build-end deadline (${BUILD_END_DEADLINE_MS} ms) after its first metering request; the report resends and the server answers duplicate; the usage API counts 1 build and 1 job`,
    figures: {
      buildHeldByMeteringMs: heldMs,
      recordsSent: s.recordsSent,
      recordsAccepted: s.accepted,
      recordsDuplicate: s.duplicate,
      recordsPending: jobs.spooled(j),
      buildExitCode: r.build.status ?? -1,
      usageBuilds: u.builds.count,
      usageJobs: u.jobs.count
    }
  });
  expect(r.build.status).toBe(0);
  expect(r.report.status).toBe(0);
  expect(jobs.warned(r.build).join('\n')).toMatch(/1 usage record not sent yet to .*no reply within \d+ ms/);
  expect(firstTry.fault).toBe('hang');
  expect(heldMs).toBeLessThan(BUILD_END_DEADLINE_MS + 1500);
  expect(s.duplicate).toBeGreaterThanOrEqual(1); // the build record reached the server more than once
  expect(s.acceptedIds.size).toBe(s.accepted); // ...and was accepted once
  expect(s.accepted).toBe(2);
  expect(u.builds.count).toBe(1);
  expect(u.jobs.count).toBe(1);
  expect(jobs.spooled(j)).toBe(0);
});

test('metering endpoint resets connections (after storing): the build succeeds, records counted once', async () => {
  const j = jobs.newRunner('mreset');
  const from = proxy.log.length;
  const r = await jobs.job(j, 'only', { then: { kind: 'reset' } });
  const u = jobs.usage('mreset');
  const s = jobs.served(from);
  const resets = s.entries.filter((e) => e.fault === 'reset');
  reportScenario({
    scenario: 'metering endpoint resets connections',
    injected:
      "the proxy forwarded every metering request of the build step to serve (which stored it), then reset the client's connection; the report's requests pass",
    checked: 'build exit 0 with a metering warning; every retry reached the server and was answered duplicate; the usage API counts 1 build and 1 job',
    figures: {
      resets: resets.length,
      recordsSent: s.recordsSent,
      recordsAccepted: s.accepted,
      recordsDuplicate: s.duplicate,
      recordsPending: jobs.spooled(j),
      buildExitCode: r.build.status ?? -1,
      usageBuilds: u.builds.count,
      usageJobs: u.jobs.count
    }
  });
  expect(r.build.status).toBe(0);
  expect(r.report.status).toBe(0);
  expect(jobs.warned(r.build).join('\n')).toMatch(/1 usage record not sent yet to .*(ECONNRESET|socket hang up)/);
  expect(resets.length).toBeGreaterThanOrEqual(2);
  expect(resets.every((e) => e.upstreamStatus === 200)).toBe(true);
  expect(s.duplicate).toBe(resets.length); // every later delivery of the build record: the resets after the first, the report's
  expect(s.accepted).toBe(2);
  expect(s.acceptedIds.size).toBe(2);
  expect(u.builds.count).toBe(1);
  expect(u.jobs.count).toBe(1);
  expect(jobs.spooled(j)).toBe(0);
});

test('metering endpoint down for a whole job: the build succeeds, a later job sends every record once', async () => {
  const s = await faultThenLaterJob('mdown', 'down');
  const all = jobs.served(s.from);
  const fromFirstJob = all.entries.filter((e) => e.at < s.first.report.endedAt);
  reportScenario({
    scenario: 'metering endpoint down for a whole job',
    injected:
      'nothing listened on the metering endpoint from the end of setup to the end of the report (connection refused); the next job of the same runner home has it back',
    checked:
      'both builds exit 0 (the first with a metering warning); nothing stored during the fault; afterwards the usage API counts 2 builds and 2 jobs, none twice; spool empty',
    figures: {
      ...laterJobFigures(s, all)
    }
  });
  expect([s.first.build.status, s.first.report.status, s.second.build.status, s.second.report.status]).toEqual([0, 0, 0, 0]);
  expect(jobs.warned(s.first.build).join('\n')).toMatch(/1 usage record not sent yet to .*ECONNREFUSED/);
  expect(fromFirstJob).toEqual([]);
  expect(s.afterFirst.builds.count).toBe(0);
  expect(s.keptInSpool).toBe(2);
  expect(s.final.builds.count).toBe(2);
  expect(s.final.jobs.count).toBe(2);
  expect([all.accepted, all.acceptedIds.size, all.duplicate]).toEqual([4, 4, 0]);
  expect(s.leftovers).toBe(0);
});

test("a job cancelled after its build: the build's record was sent when the build ended, the report never counts it twice", async () => {
  const j = jobs.newRunner('mcancel');
  const from = proxy.log.length;
  const env = await jobs.setup(j, 'cancelled');
  const b = await jobs.build(env);
  const sentAtBuildEnd = jobs.served(from);
  // The job is cancelled here: no report, and the runner's home (the spool with it) is thrown away.
  fs.rmSync(j.home, { recursive: true, force: true });
  const u = jobs.usage('mcancel');
  // A report that does run later (its session survived in RUNNER_TEMP) sends the job record only.
  const r = await jobs.run(['report'], env);
  const after = jobs.usage('mcancel');
  const s = jobs.served(from);
  const buildRecordId = sentAtBuildEnd.entries[0]?.ids[0];
  const buildRecordDeliveries = s.entries.filter((e) => e.ids.includes(buildRecordId)).length;
  reportScenario({
    scenario: 'job cancelled after its build, home thrown away',
    injected: "setup and build, then no report step and the runner's home (the spool) deleted; then a late report",
    checked:
      "the usage API shows the build (builds 1, its total and cached steps) before any report; the late report adds the job and does not count the build again (the build's record reached the server once)",
    figures: {
      recordsSentAtBuildEnd: sentAtBuildEnd.recordsSent,
      recordsAccepted: s.accepted,
      recordsDuplicate: s.duplicate,
      buildRecordDeliveries,
      buildExitCode: b.status ?? -1,
      usageBuildsBeforeReport: u.builds.count,
      usageBuildsAfterReport: after.builds.count,
      usageJobsAfterReport: after.jobs.count
    }
  });
  expect(b.status).toBe(0);
  expect(jobs.warned(b)).toEqual([]);
  expect(sentAtBuildEnd.entries.map((e) => e.upstreamStatus)).toEqual([200]);
  expect(u.builds).toMatchObject({ count: 1, succeeded: 1, totalSteps: b.values['total-steps'], cachedSteps: b.values['cached-steps'] });
  expect(u.builds.totalSteps).toBeGreaterThan(0);
  expect(u.jobs.count).toBe(0);
  expect(r.status).toBe(0);
  expect(after.builds.count).toBe(1);
  expect(after.jobs.count).toBe(1);
  expect(buildRecordDeliveries).toBe(1);
  expect([s.accepted, s.duplicate]).toEqual([2, 0]);
});
