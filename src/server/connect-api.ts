// The Connect face of the control plane (contract/connect.ts): the same methods as the gRPC port, as unary
// `POST /buildcloud.v1.<Service>/<Method>` calls with proto3 JSON bodies on the HTTP port, for runners that name the
// control plane by an http(s):// endpoint. Requests become the messages the gRPC loader would deliver (grpc.ts), so
// both faces run the same handlers (rpc-api.ts) on the same input; replies are proto3 JSON (int64 as strings),
// encoded by protobufjs from the .proto itself.
// Connect-Timeout-Ms is not enforced on a handler, which runs to its end as it does past a gRPC deadline; a Provision
// that ends after its caller's deadline (or connection) is undone (rpc-api.ts, leases.ts abandon).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type * as protobuf from 'protobufjs';
import type { Logger } from './log';
import {
  CONNECT_PROTOCOL_VERSION,
  ContractError,
  REQUESTS,
  RPC_METHODS,
  decodeMessage,
  rpcPath,
  type ConnectErrorBody,
  type MessageSpec
} from '../contract/connect';
import { methodTypes } from '../contract/grpc';
import { Status, connectCode, httpStatusOf } from '../contract/rpc-status';
import { ApiError } from './errors';
import { rpcFailure, type RpcApi } from './rpc-api';

/** Request bodies above this are refused (the gRPC port's own limit, grpc.max_receive_message_length). */
export const MAX_CONNECT_BODY_BYTES = 1 << 20;

const JSON_OUT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, json: true };

/**
 * The request message from a JSON body, as the gRPC loader would deliver it (camelCase, enums by name, defaults
 * filled in): strict proto3 JSON (contract/connect.ts decodeMessage), no coercion of one type into another. Throws
 * ApiError INVALID_ARGUMENT naming the field and what it expects, never its value.
 */
export function requestFromJson(spec: MessageSpec, body: Buffer): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8') || '{}');
  } catch {
    throw new ApiError(Status.INVALID_ARGUMENT, `The body is not JSON. Expected a ${spec.name} message in the proto3 JSON mapping.`);
  }
  try {
    return decodeMessage(spec, json);
  } catch (err) {
    if (!(err instanceof ContractError)) throw err;
    throw new ApiError(Status.INVALID_ARGUMENT, `Invalid ${spec.name}: ${err.message}.`);
  }
}

/** Whether a request is for the Connect face (its errors then take Connect's envelope, not the metering API's). */
export function isConnectPath(url: string): boolean {
  return url.startsWith('/buildcloud.v1.');
}

/**
 * The Connect envelope for what the HTTP layer refuses before a method runs: a body over MAX_CONNECT_BODY_BYTES (413,
 * resource_exhausted, as gRPC refuses a message over its receive limit), a route that is no method or a method other
 * than POST (404 / 405, unimplemented), a malformed request (400, invalid_argument).
 */
export function sendConnectHttpError(reply: FastifyReply, status: number, method: string, url: string, detail: string): FastifyReply {
  const path = url.split('?')[0].slice(0, 120);
  const [code, message] =
    status === 413
      ? ['resource_exhausted', `The request body exceeds ${MAX_CONNECT_BODY_BYTES} bytes (1 MiB), the most a request message may be.`]
      : status === 404 || status === 405
        ? [
            'unimplemented',
            `No method ${method} ${path}: the API's methods are POST /buildcloud.v1.BuildCloud/{Provision,Release,Get} and POST /buildcloud.v1.Auth/ExchangeToken (docs/api.md).`
          ]
        : ['invalid_argument', `Malformed request to ${path}: ${detail.slice(0, 200)}`];
  return reply
    .code(status)
    .type('application/json')
    .send({ code, message } satisfies ConnectErrorBody);
}

/** A reply message as the proto3 JSON text Connect sends (int64 as strings, enums by name, defaults included). */
export function replyToJson(type: protobuf.Type, message: object): string {
  return JSON.stringify(type.toObject(type.fromObject(message), JSON_OUT));
}

function sendError(reply: FastifyReply, code: number, message: string, retryAfterSeconds?: number): FastifyReply {
  if (retryAfterSeconds !== undefined) reply.header('retry-after', String(retryAfterSeconds));
  const body: ConnectErrorBody = { code: connectCode(code), message };
  return reply.code(httpStatusOf(code)).type('application/json').send(body);
}

/** Adds a route per method of the contract to the HTTP app. */
export function addConnectApi(app: FastifyInstance, api: RpcApi, log: Logger): void {
  for (const method of RPC_METHODS) {
    const { response } = methodTypes(method);
    const name = method.split('/')[1];
    app.post(rpcPath(method), { bodyLimit: MAX_CONNECT_BODY_BYTES }, async (req: FastifyRequest, reply: FastifyReply) => {
      const type = String(req.headers['content-type'] ?? '')
        .split(';')[0]
        .trim()
        .toLowerCase();
      if (type !== 'application/json') {
        // Connect answers an unsupported codec with 415 and the ones it takes (connectrpc.com/docs/protocol#unary-request).
        reply.header('accept-post', 'application/json');
        return reply
          .code(415)
          .type('application/json')
          .send({ code: 'unimplemented', message: `Unsupported Content-Type '${type.slice(0, 60)}'. Expected application/json.` } satisfies ConnectErrorBody);
      }
      const version = req.headers['connect-protocol-version'];
      if (version !== undefined && version !== CONNECT_PROTOCOL_VERSION) {
        return sendError(
          reply,
          Status.INVALID_ARGUMENT,
          `Unsupported Connect-Protocol-Version '${String(version).slice(0, 20)}'. Expected ${CONNECT_PROTOCOL_VERSION}.`
        );
      }
      try {
        const message = requestFromJson(REQUESTS[method], Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0));
        const header = req.headers.authorization;
        // The caller is gone once its connection closed, or once its Connect-Timeout-Ms passed (a client that gave up
        // may keep the connection for its next try).
        const timeoutMs = Number(req.headers['connect-timeout-ms']);
        const deadline = Number.isFinite(timeoutMs) && timeoutMs > 0 ? Date.now() + timeoutMs : Infinity;
        // (Not req.raw.destroyed: Node destroys a request once its body has been read.)
        const gone = (): boolean => req.raw.socket?.destroyed === true || reply.raw.destroyed || Date.now() > deadline;
        const res = await api[method](message, { authorization: typeof header === 'string' ? header : undefined, peer: req.ip, gone });
        return reply.code(200).type('application/json').send(replyToJson(response, res));
      } catch (err) {
        const f = rpcFailure(err, log, name);
        return sendError(reply, f.code, f.message, f.retryAfterSeconds);
      }
    });
  }
}
