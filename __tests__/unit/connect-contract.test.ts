// The contract over HTTP/JSON (src/contract/connect.ts): the client's field tables are held to the .proto, its
// decoding gives what the gRPC client delivers for the same message, and the transport turns what an HTTP reply can
// be (a Connect error, a proxy's page, a reply that does not fit, a closed port) into the status a gRPC client reports.
import * as http from 'http';
import * as net from 'net';
import type * as protobuf from 'protobufjs';
import { EXCHANGE_TOKEN_RESPONSE, LEASE, REPLIES, REQUESTS, ContractError, leaseFromJson, protoFieldName, type MessageSpec } from '../../src/contract/connect';
import { LOADER_OPTIONS, messageType, methodTypes } from '../../src/contract/grpc';
import { Status, connectCode, httpStatusOf, statusOfConnectCode, statusOfHttp } from '../../src/contract/rpc-status';
import { ApiClient, ControlPlaneError } from '../../src/core/api-client';
import { replyToJson, requestFromJson } from '../../src/server/connect-api';
import { leaseFor } from '../fixtures/fake-control-plane';

function kindOf(f: protobuf.Field): string {
  if (f.resolvedType && 'fieldsArray' in f.resolvedType) return 'message';
  if (f.resolvedType) return 'enum';
  return f.type === 'int64' ? 'int64' : f.type;
}

function expectSpecMatches(spec: MessageSpec): void {
  const type = messageType(spec.name);
  type.resolveAll();
  expect(spec.fields.map((f) => f.name)).toEqual(type.fieldsArray.map((f) => f.name));
  for (const f of type.fieldsArray) {
    const s = spec.fields.find((x) => x.name === f.name)!;
    expect([f.name, s.kind, !!s.repeated]).toEqual([f.name, kindOf(f), f.repeated]);
    expect(protoFieldName(f.name)).toBe(f.name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
    if (s.kind === 'enum') {
      const values = (f.resolvedType as protobuf.Enum).values;
      expect([...(s.enumValues ?? [])]).toEqual(Object.keys(values).sort((a, b) => values[a] - values[b]));
    }
    if (s.kind === 'message') expectSpecMatches(s.message!);
  }
}

describe('field tables follow the .proto', () => {
  test.each([LEASE, EXCHANGE_TOKEN_RESPONSE, ...Object.values(REQUESTS)])('$name: every field, in order, with its kind', (spec) => expectSpecMatches(spec));
  test.each(Object.keys(REQUESTS))("%s: the request and reply tables are the method's own types", (method) => {
    const { request, response } = methodTypes(method);
    expect([REQUESTS[method as keyof typeof REQUESTS].name, REPLIES[method as keyof typeof REPLIES].name]).toEqual([request.name, response.name]);
  });
});

describe('a reply decodes to what the gRPC client delivers', () => {
  const lease = messageType('Lease');
  const viaGrpc = (msg: object) => lease.toObject(lease.decode(lease.encode(lease.fromObject(msg)).finish()), LOADER_OPTIONS);
  const req = { org: 'acme', pipelineKey: '1/2/3', jobId: 'b', platforms: ['linux/amd64', 'linux/arm64'], scope: 'SCOPE_JOB' as const, identity: null };

  test('a full lease: int64 as strings on the wire, numbers once decoded', () => {
    const full = { ...leaseFor(req), billedSeconds: 9_007_199_254, endReason: 'released', endMessage: 'done' };
    const wire = JSON.parse(replyToJson(lease, full));
    expect(wire.createdAtMs).toBe('1736942400000'); // proto3 JSON: int64 is a string
    expect(leaseFromJson(wire)).toEqual(viaGrpc(full));
  });

  test('an almost empty lease: defaults filled in, absent messages null', () => {
    expect(leaseFromJson({ id: 'l1' })).toEqual(viaGrpc({ id: 'l1' }));
    expect(leaseFromJson({ id: 'l1' })).toMatchObject({ tls: null, cache: null, builders: [], createdAtMs: 0, state: 'LEASE_STATE_UNSPECIFIED' });
  });

  test('the .proto field names and numbers are accepted as the mapping says parsers must', () => {
    const d = leaseFromJson({ id: 'l1', created_at_ms: 5, state: 2, builders: [{ builder_id: 'b1', kind: 1 }] });
    expect(d).toMatchObject({ createdAtMs: 5, state: 'LEASE_STATE_RELEASED', builders: [{ builderId: 'b1', kind: 'ENDPOINT_KIND_DOCKER' }] });
  });

  test.each([
    ['a string where a list is', { builders: 'x' }, 'Lease.builders: expected a JSON array'],
    ['an object where a string is', { id: {} }, 'Lease.id: expected a string'],
    ['a fraction where an int64 is', { createdAtMs: 1.5 }, 'Lease.createdAtMs: expected an integer'],
    ['an unknown enum name', { state: 'LEASE_STATE_GONE' }, 'Lease.state: expected one of'],
    ['a nested field', { cache: { importRefs: [1] } }, 'Lease.cache.importRefs[0]: expected a string'],
    ['not an object', [], 'Lease: expected a JSON object']
  ])('%s is a ContractError naming the field, never the value', (_what, json, message) => {
    expect(() => leaseFromJson(json)).toThrow(ContractError);
    expect(() => leaseFromJson(json)).toThrow(message);
  });
});

describe('requests: the server reads JSON as the gRPC loader delivers messages', () => {
  const provision = REQUESTS['BuildCloud/Provision'];
  const viaGrpc = (msg: object) => {
    const t = messageType('ProvisionRequest');
    return t.toObject(t.decode(t.encode(t.fromObject(msg)).finish()), LOADER_OPTIONS);
  };
  test('a full request: what the gRPC loader would deliver', () => {
    const msg = {
      org: 'acme',
      pipelineKey: '1/2/3',
      jobId: 'build',
      platforms: ['linux/amd64'],
      scope: 'SCOPE_JOB',
      identity: { provider: 'github', project: 'acme/app', branch: 'main', defaultBranch: 'main', fork: true, actor: 'me', runUrl: 'u' }
    };
    expect(requestFromJson(provision, Buffer.from(JSON.stringify(msg)))).toEqual(viaGrpc(msg));
    expect(requestFromJson(provision, Buffer.from('{}'))).toEqual(viaGrpc({}));
  });
  test('camelCase and snake_case names, defaults filled in', () => {
    const m = requestFromJson(provision, Buffer.from(JSON.stringify({ org: 'acme', pipeline_key: 'p', identity: { default_branch: 'main' } })));
    expect(m).toMatchObject({
      org: 'acme',
      pipelineKey: 'p',
      jobId: '',
      platforms: [],
      scope: 'SCOPE_UNSPECIFIED',
      identity: { defaultBranch: 'main', fork: false }
    });
  });
  test.each([
    ['not JSON', '{', 'The body is not JSON'],
    ['not an object', '[1]', 'Invalid ProvisionRequest: ProvisionRequest: expected a JSON object'],
    ['a string where a list is', '{"platforms":"linux/amd64"}', 'Invalid ProvisionRequest: ProvisionRequest.platforms: expected a JSON array'],
    ['a list where a string is (no coercion)', '{"org":["acme"]}', 'Invalid ProvisionRequest: ProvisionRequest.org: expected a string'],
    ['an enum number out of range', '{"scope":7}', 'Invalid ProvisionRequest: ProvisionRequest.scope: expected one of SCOPE_UNSPECIFIED']
  ])('%s: INVALID_ARGUMENT that says what is expected', (_what, body, message) => {
    let err: unknown;
    try {
      requestFromJson(provision, Buffer.from(body));
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: Status.INVALID_ARGUMENT });
    expect((err as Error).message).toContain(message);
  });
});

describe('hostile bodies', () => {
  test('__proto__ and constructor keys are ignored as unknown fields: nothing reaches any prototype', () => {
    const body = Buffer.from('{"leaseId":"l1","__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}}}');
    const m = requestFromJson(REQUESTS['BuildCloud/Get'], body);
    expect(m).toEqual({ leaseId: 'l1' });
    expect(Object.getPrototypeOf(m)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('status codes', () => {
  test('every code has a Connect name that maps back, and an HTTP status', () => {
    for (const code of Object.values(Status).filter((c) => c !== Status.OK)) {
      expect(statusOfConnectCode(connectCode(code))).toBe(code);
      expect(httpStatusOf(code)).toBeGreaterThanOrEqual(400);
    }
    expect(connectCode(Status.CANCELLED)).toBe('canceled');
    expect([httpStatusOf(Status.RESOURCE_EXHAUSTED), httpStatusOf(Status.UNAUTHENTICATED), httpStatusOf(Status.UNAVAILABLE)]).toEqual([429, 401, 503]);
    expect(statusOfConnectCode('no_such_code')).toBeUndefined();
    expect(statusOfConnectCode('constructor')).toBeUndefined();
    expect([502, 503, 504, 429, 404, 418].map(statusOfHttp)).toEqual([
      Status.UNAVAILABLE,
      Status.UNAVAILABLE,
      Status.UNAVAILABLE,
      Status.UNAVAILABLE,
      Status.UNIMPLEMENTED,
      Status.UNKNOWN
    ]);
  });
});

describe('the Connect transport against replies that are not the control plane', () => {
  let server: http.Server;
  let url: string;
  let answer: (res: http.ServerResponse) => void;
  let hits = 0;
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      hits++;
      req.resume();
      req.on('end', () => answer(res));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });
  beforeEach(() => (hits = 0));

  const fail = (endpoint: string, attempts = 3) =>
    new ApiClient({ endpoint, token: 't', attempts, baseDelayMs: 1, maxDelayMs: 2 }).get('l1').then(
      () => {
        throw new Error('expected a failure');
      },
      (e: ControlPlaneError) => e
    );

  test("a proxy's 502 page is UNAVAILABLE: retried, and said to be no Connect reply", async () => {
    answer = (res) => res.writeHead(502, { 'content-type': 'text/html' }).end('<html>Bad Gateway</html>');
    const err = await fail(url);
    expect(err).toBeInstanceOf(ControlPlaneError);
    expect([err.code, err.attempts, hits]).toEqual([Status.UNAVAILABLE, 3, 3]);
    expect(err.message).toContain(`HTTP 502 from ${url} (not a Connect reply: is this the control plane's HTTP port?)`);
  });

  test('a 200 whose body does not fit the contract is INTERNAL, not retried, and names the field', async () => {
    answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"l1","builders":{"secret":"s3cr3t"}}');
    const err = await fail(url);
    expect([err.code, hits]).toEqual([Status.INTERNAL, 1]);
    expect(err.message).toContain('Lease.builders: expected a JSON array');
    expect(err.message).not.toContain('s3cr3t');
  });

  test('a port nobody listens on is UNAVAILABLE, retried', async () => {
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise<void>((r) => free.close(() => r()));
    const err = await fail(`http://127.0.0.1:${port}`, 2);
    expect([err.code, err.attempts]).toEqual([Status.UNAVAILABLE, 2]);
    expect(err.message).toContain('ECONNREFUSED');
  });

  test('a path prefix is kept: calls go to <prefix>/buildcloud.v1.<Service>/<Method>', async () => {
    const paths: string[] = [];
    const s = http.createServer((req, res) => {
      paths.push(String(req.url));
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"l1"}');
    });
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(s.address() as net.AddressInfo).port}/buildcloud/`;
    expect((await new ApiClient({ endpoint: base, token: 't' }).get('l1')).id).toBe('l1');
    s.closeAllConnections();
    s.close();
    expect(paths).toEqual(['/buildcloud/buildcloud.v1.BuildCloud/Get']);
  });
});
