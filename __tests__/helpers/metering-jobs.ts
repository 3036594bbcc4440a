// The CI jobs of the metering fault scenarios (__tests__/reliability/metering-faults.test.ts): the runner CLI run as a
// shell CI job runs it (setup, build, report), its metering sent through a fault proxy named by
// BUILDCLOUD_METERING_ENDPOINT, and what the server counted, read from its usage API and from the proxy's log.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { adminSetup, cli, CLI, DOCKER, type ServerProcess } from './server';
import type { Fault, FaultProxy } from './fault-proxy';

/** Where the jobs run: the real serve, the proxy in front of its HTTP port, a work directory holding ctx/. */
export interface JobsContext {
  server: ServerProcess;
  proxy: FaultProxy;
  work: string;
}

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  endedAt: number;
}

export interface Job {
  org: string;
  home: string; // the runner's home: the spool lives under it (~/.cache/buildcloud/spool), as by default
  temp: string; // RUNNER_TEMP: the session
  token: string;
}

export interface BuildRun extends Run {
  startedAt: number;
  values: { 'total-steps': number; 'cached-steps': number };
}

export type Plan = { faults?: Fault[]; then: Fault } | 'down';

export interface Usage {
  builds: { count: number; succeeded: number; totalSteps: number; cachedSteps: number };
  jobs: { count: number };
}

/** The job helpers bound to `c`; every one throws with the CLI's stderr when a step that must succeed did not. */
export function meteringJobs(c: JobsContext) {
  // Asynchronous: the fault proxy runs in this process and must keep answering while the CLI runs.
  function run(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
    return new Promise((resolve, reject) => {
      const p = spawn(process.execPath, [CLI, ...args], { env, cwd: c.work, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('error', reject);
      p.on('close', (status) => resolve({ status, stdout, stderr, endedAt: Date.now() }));
    });
  }

  function newRunner(org: string): Job {
    const home = fs.mkdtempSync(path.join(c.work, `${org}-home-`));
    const temp = fs.mkdtempSync(path.join(c.work, `${org}-temp-`));
    return { org, home, temp, token: adminSetup(c.server.stateDir, org, 60) };
  }

  const spoolDir = (j: Job) => path.join(j.home, '.cache', 'buildcloud', 'spool', j.org);
  const spooled = (j: Job) => (fs.existsSync(spoolDir(j)) ? fs.readdirSync(spoolDir(j)).filter((f) => /^[0-9a-f]{64}\.json$/.test(f)).length : 0);

  function jobEnv(j: Job, jobId: string): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      HOME: j.home,
      RUNNER_TEMP: j.temp,
      BUILDCLOUD_ENDPOINT: c.server.info.grpc,
      BUILDCLOUD_TOKEN: j.token,
      BUILDCLOUD_METERING_ENDPOINT: c.proxy.url,
      BUILDCLOUD_PROJECT: `${j.org}/app`,
      BUILDCLOUD_BRANCH: 'main',
      BUILDCLOUD_DEFAULT_BRANCH: 'main',
      BUILDCLOUD_PIPELINE_ID: `${j.org}-${process.pid}`,
      BUILDCLOUD_JOB_ID: jobId,
      BUILDCLOUD_DOCKER: DOCKER
    };
  }

  async function setup(j: Job, jobId: string): Promise<NodeJS.ProcessEnv> {
    const env = jobEnv(j, jobId);
    const s = await run(['setup', '--json'], env);
    if (s.status !== 0) throw new Error(`setup exited ${s.status}:\n${s.stderr}`);
    const out = JSON.parse(s.stdout.trim().split('\n').pop()!);
    expect(out.outputs.fallback).toBe(false);
    return { ...env, ...out.env };
  }

  async function build(env: NodeJS.ProcessEnv): Promise<BuildRun> {
    const startedAt = Date.now();
    const b = await run(['build', '--context', 'ctx', '--json'], env);
    if (b.status !== 0) throw new Error(`build exited ${b.status}:\n${b.stderr}`);
    return { ...b, startedAt, values: JSON.parse(b.stdout.trim().split('\n').pop()!) };
  }

  /**
   * One whole job: setup, build, report. `during` is in force from setup's end to the build's end, and through the
   * report too when `throughReport`; the endpoint is healthy (pass) otherwise and afterwards.
   */
  async function job(j: Job, jobId: string, during: Plan, throughReport = false) {
    const env = await setup(j, jobId);
    const apply = async (p: Plan) => (p === 'down' ? c.proxy.down() : c.proxy.plan(p.faults ?? [], p.then));
    const heal = async () => {
      if (during === 'down') await c.proxy.up();
      c.proxy.plan([], { kind: 'pass' });
    };
    await apply(during);
    const b = await build(env);
    if (!throughReport) await heal();
    const r = await run(['report'], env);
    if (throughReport) await heal();
    return { build: b, report: r };
  }

  // The server's own count, read from its usage API (not through the proxy).
  function usage(org: string): Usage {
    const u = cli(['usage', '--org', org, '--state-dir', c.server.stateDir, '--json'], { PATH: process.env.PATH, HOME: c.work });
    if (u.status !== 0) throw new Error(`usage exited ${u.status}:\n${u.stderr}`);
    return JSON.parse(u.stdout);
  }

  /** What reached the server through the proxy since `from`: record deliveries and the server's answers. */
  function served(from: number) {
    const entries = c.proxy.log.slice(from).filter((e) => e.path.endsWith('/v1/events'));
    const answers = entries.flatMap((e) => e.results ?? []);
    const ids = new Set(entries.flatMap((e) => e.ids));
    return {
      entries,
      requests: entries.length,
      recordsSent: ids.size, // distinct records the client tried to send
      deliveries: entries.reduce((n, e) => n + e.ids.length, 0),
      accepted: answers.filter((a) => a.status === 'accepted').length,
      duplicate: answers.filter((a) => a.status === 'duplicate').length,
      acceptedIds: new Set(answers.filter((a) => a.status === 'accepted').map((a) => a.id))
    };
  }

  const warned = (r: Run) => r.stderr.split('\n').filter((l) => /Build Cloud metering:/.test(l));
  return { run, newRunner, spooled, setup, build, job, usage, served, warned };
}
