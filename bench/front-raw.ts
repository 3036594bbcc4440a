// Raw throughput of a builder's mTLS front (issue 13), without BuildKit: bytes a lease's client streams into an
// upgraded `/session` connection through BuilderTlsProxy to an engine stand-in on a unix socket that only counts them,
// against the same bytes straight into that unix socket and into a bare Node TLS server (what loopback TLS carries in
// one Node process). Client, front and sink share this one process and core, so the figures are what one event loop
// carries, a floor for what the front costs on a busy machine. Prints JSON and writes bench/results/front-raw.json.
// Env: BENCH_MB (200), BENCH_ROUNDS (3).
import 'reflect-metadata';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as tls from 'tls';
import { Pki } from '../src/server/pki';
import { BuilderTlsProxy } from '../src/server/tls-proxy';
import { commitOf, machine, resultsDir } from './run-info';

const MB = Number(process.env.BENCH_MB || 200);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 3);
const BYTES = MB * 1024 * 1024;

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-front-raw-'));
  const pki = await Pki.loadOrCreate(path.join(dir, 'pki'));
  const serverCert = await pki.issueServer(['127.0.0.1']);
  const lease = await pki.issueClient('lease', 3600_000);
  const socket = path.join(dir, 'engine.sock');
  let received = 0;
  let done: () => void = () => undefined;
  const count = (d: Buffer): void => {
    received += d.length;
    if (received >= BYTES) done();
  };
  // The engine stand-in: switches /session to the stream protocol and counts what arrives.
  const engine = http.createServer();
  engine.on('upgrade', (_req, s: net.Socket) => {
    s.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    s.on('data', count);
  });
  await new Promise<void>((r) => engine.listen(socket, r));
  const front = new BuilderTlsProxy({ socketPath: socket, server: serverCert, caPem: pki.caPem });
  const frontPort = await front.listen();
  front.allow(lease.fingerprint);
  const bare = tls.createServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (s) => s.on('data', count));
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  const barePort = (bare.address() as net.AddressInfo).port;

  const chunk = Buffer.alloc(64 * 1024, 7);
  async function once(connect: () => net.Socket, ready: string, upgrade: boolean): Promise<number> {
    received = 0;
    const s = connect();
    await new Promise<void>((r) => s.once(ready, () => r()));
    if (upgrade) {
      s.write('POST /session HTTP/1.1\r\nHost: builder\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
      await new Promise<void>((r) => s.once('data', () => r()));
    }
    const finished = new Promise<void>((r) => (done = r));
    const t = performance.now();
    let sent = 0;
    const pump = (): void => {
      while (sent < BYTES) {
        sent += chunk.length;
        if (!s.write(chunk)) {
          s.once('drain', pump);
          return;
        }
      }
    };
    pump();
    await finished;
    const ms = performance.now() - t;
    s.destroy();
    return ms;
  }
  const tlsOpts = { host: '127.0.0.1', ca: pki.caPem };
  const cases = {
    unixSocket: () => once(() => net.connect(socket), 'connect', true),
    front: () => once(() => tls.connect({ ...tlsOpts, port: frontPort, cert: lease.certPem, key: lease.keyPem }), 'secureConnect', true),
    bareTls: () => once(() => tls.connect({ ...tlsOpts, port: barePort }), 'secureConnect', false)
  };
  const ms: Record<string, number[]> = { unixSocket: [], front: [], bareTls: [] };
  for (let i = 0; i < ROUNDS; i++) for (const [name, run] of Object.entries(cases)) ms[name].push(await run());
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const mbps = (xs: number[]) => Math.round(MB / (median(xs) / 1000));
  const result = {
    bench: 'front-raw',
    machine: machine(),
    commit: commitOf(process.env.BUILDCLOUD_ROOT || process.cwd(), ['src', 'bench']),
    when: new Date().toISOString(),
    mb: MB,
    rounds: ROUNDS,
    ms: Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, v.map(Math.round)])),
    mbPerSecond: { unixSocket: mbps(ms.unixSocket), front: mbps(ms.front), bareTls: mbps(ms.bareTls) },
    frontOverBareTls: Math.round((median(ms.front) / median(ms.bareTls)) * 100) / 100
  };
  await front.close();
  engine.close();
  bare.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const json = JSON.stringify(result, null, 2);
  process.stdout.write(json + '\n');
  fs.writeFileSync(path.join(resultsDir(), 'front-raw.json'), json + '\n');
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
