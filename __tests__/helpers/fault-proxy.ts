// A small HTTP proxy between the runner and the real serve's HTTP port that injects metering faults (issue 14): it
// answers 5xx or 429 itself, holds a request past the client's timeout, resets the connection, or is down (nothing
// listens on its port). Every request is logged with its time, the record ids it carried, the fault applied and,
// when it was forwarded, what the server answered for each record: the server's word, whatever reached the client.
import * as http from 'node:http';
import type * as net from 'node:net';

/**
 * What the proxy does with one request:
 * - pass: forward it and return the server's reply;
 * - status: answer `status` itself (never forwarded), with `Retry-After: retryAfter` when given;
 * - hang: forward it (the server stores it), then never answer: the client times out;
 * - reset: forward it (the server stores it), then reset the client's connection (TCP RST) instead of answering.
 */
export type Fault = { kind: 'pass' } | { kind: 'status'; status: number; retryAfter?: string } | { kind: 'hang' } | { kind: 'reset' };

/** One request as the proxy saw it. `at` is ms since the epoch when the request's body had arrived. */
export interface ProxyEntry {
  at: number;
  path: string;
  ids: string[]; // the record ids of the batch, in order
  fault: Fault['kind'];
  upstreamStatus?: number; // the server's status, when forwarded
  results?: { id: string; status: string }[]; // the server's per-record answers, when forwarded and 2xx
}

/** The proxy: `url` is what the runner is given (BUILDCLOUD_METERING_ENDPOINT); `log` grows with every request. */
export interface FaultProxy {
  url: string;
  log: ProxyEntry[];
  /** Faults for the next requests, in order; afterwards `then` (default pass). Replaces any earlier plan. */
  plan(faults: Fault[], then?: Fault): void;
  /** Stops listening and drops every open connection: the endpoint is down (connection refused). */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
  close(): Promise<void>;
}

/** Starts a proxy on 127.0.0.1 (a free port) to `upstream` (http://host:port of serve's HTTP API). */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const log: ProxyEntry[] = [];
  let queue: Fault[] = [];
  let then: Fault = { kind: 'pass' };
  const sockets = new Set<net.Socket>();

  const forward = (req: http.IncomingMessage, body: Buffer): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> =>
    new Promise((resolve, reject) => {
      const headers = { ...req.headers, host: target.host, 'content-length': String(body.length) };
      const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      up.on('error', reject);
      up.end(body);
    });

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const body = Buffer.concat(chunks);
        const fault = queue.shift() ?? then;
        const entry: ProxyEntry = { at: Date.now(), path: req.url ?? '', ids: idsOf(body), fault: fault.kind };
        log.push(entry);
        if (fault.kind === 'status') {
          res.writeHead(fault.status, {
            'content-type': 'application/json',
            ...(fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {})
          });
          res.end(JSON.stringify({ error: { code: 'injected', message: `fault proxy: injected ${fault.status}` } }));
          return;
        }
        let reply: Awaited<ReturnType<typeof forward>>;
        try {
          reply = await forward(req, body);
        } catch (err) {
          res.writeHead(502, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 'proxy', message: `fault proxy: upstream failed: ${(err as Error).message}` } }));
          return;
        }
        entry.upstreamStatus = reply.status;
        entry.results = resultsOf(reply.body, entry.ids);
        if (fault.kind === 'hang') return; // the client's own timeout ends it; close() drops the socket
        if (fault.kind === 'reset') {
          req.socket.resetAndDestroy();
          return;
        }
        const headers = { ...reply.headers };
        delete headers['transfer-encoding'];
        delete headers.connection;
        res.writeHead(reply.status, headers);
        res.end(reply.body);
      })();
    });
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  await listen(0);
  const port = (server.address() as net.AddressInfo).port;
  const down = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      if (!server.listening) return resolve();
      server.close(() => resolve());
    });
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    plan(faults, next = { kind: 'pass' }) {
      queue = [...faults];
      then = next;
    },
    down,
    up: () => listen(port),
    close: down
  };
}

function idsOf(body: Buffer): string[] {
  try {
    const v = JSON.parse(body.toString('utf8')) as unknown;
    const list = Array.isArray(v) ? v : [v];
    return list.map((e) => String((e as { id?: unknown })?.id ?? ''));
  } catch {
    return [];
  }
}

function resultsOf(body: Buffer, ids: string[]): { id: string; status: string }[] | undefined {
  try {
    const r = (JSON.parse(body.toString('utf8')) as { results?: { index: number; id?: string; status: string }[] }).results;
    return Array.isArray(r) ? r.map((x) => ({ id: x.id ?? ids[x.index] ?? '', status: x.status })) : undefined;
  } catch {
    return undefined;
  }
}
