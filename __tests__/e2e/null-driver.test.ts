// `serve --driver null`: the control plane alone, for benchmarks (issue 13). Leases, sharing per pipeline, certs and
// each builder's mTLS front work as with real builders; no engine is behind the front, so nobody can build there,
// and nothing is started on the host.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adminSetup, docker, dockerEnvFor, startServer, TestClient, type ServerProcess } from '../helpers/server';

let server: ServerProcess;
let client: TestClient;
let work: string;

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-null-'));
  server = await startServer(['--driver', 'null', '--warm-pool', '2']);
  client = new TestClient(server.info.grpc, adminSetup(server.stateDir, 'acme', 60));
});

afterAll(async () => {
  client?.close();
  expect(await server?.stop()).toBe(0);
  if (server) fs.rmSync(server.stateDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

test('leases of one pipeline share a null builder; its front answers, with no engine behind it; nothing starts on the host', async () => {
  expect(server.info.driver).toBe('null');
  const a = await client.provision({ pipelineKey: 'bench/1', jobId: 'a' });
  const b = await client.provision({ pipelineKey: 'bench/1', jobId: 'b' });
  expect(b.builders[0].builderId).toBe(a.builders[0].builderId);
  expect(a.builders[0].address).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
  // The lease's own cert gets through the front, and the front says there is no engine.
  const r = docker(['version', '--format', '{{.Server.Version}}'], dockerEnvFor(a, path.join(work, 'a')));
  expect(r.status).not.toBe(0);
  expect(r.out).toContain("buildcloud: the builder's engine is not answering");
  const released = await client.release(a.id);
  expect(released.state).toBe('LEASE_STATE_RELEASED');
  expect(released.builders[0].shared).toBe(true);
  await client.release(b.id);
  // No dockerd (nor its run directory and data root): a null builder is bookkeeping only.
  expect(server.stderr()).not.toContain('starting dockerd');
  expect(server.stderr()).toContain('driver null: builders are only bookkeeping');
});
