// The status codes of the control plane's RPCs, as both transports carry them: gRPC sends the number in the
// `grpc-status` trailer, the Connect protocol (HTTP/JSON) the snake_case name in its error body plus an HTTP status.
// Numbers and names: grpc/grpc doc/statuscodes.md (the same as google.rpc.Code); the HTTP status of each Connect code
// and the Connect code a bare HTTP status stands for: https://connectrpc.com/docs/protocol#error-codes and
// #http-to-error-code. No gRPC library is loaded for them: the runner reads them on its fast path (issue 10).

/** gRPC status codes (statuscodes.md); numerically equal to @grpc/grpc-js's `status` enum. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16
} as const;

export type StatusCode = (typeof Status)[keyof typeof Status];

const NAMES = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k])) as Record<number, string>;

/** The status's name, e.g. UNAVAILABLE for 14; `STATUS_<n>` for a number outside the table. */
export function statusName(code: number): string {
  return NAMES[code] ?? `STATUS_${code}`;
}

// Connect names the codes in snake_case, and spells CANCELLED "canceled".
const CONNECT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Status)
    .filter(([k]) => k !== 'OK')
    .map(([k, v]) => [v, k === 'CANCELLED' ? 'canceled' : k.toLowerCase()])
);
const FROM_CONNECT: Record<string, StatusCode> = Object.fromEntries(Object.entries(CONNECT_NAMES).map(([v, k]) => [k, Number(v) as StatusCode]));

/** The Connect error code of a status, e.g. `resource_exhausted` for 8; `unknown` for OK or a number outside the table. */
export function connectCode(code: number): string {
  return CONNECT_NAMES[code] ?? 'unknown';
}

/** The status a Connect error code names; undefined for a name the protocol does not define. */
export function statusOfConnectCode(name: string): StatusCode | undefined {
  return Object.prototype.hasOwnProperty.call(FROM_CONNECT, name) ? FROM_CONNECT[name] : undefined;
}

// The HTTP status a Connect server answers each code with (connectrpc.com/docs/protocol#error-codes).
const HTTP_OF: Record<number, number> = {
  [Status.CANCELLED]: 499,
  [Status.UNKNOWN]: 500,
  [Status.INVALID_ARGUMENT]: 400,
  [Status.DEADLINE_EXCEEDED]: 504,
  [Status.NOT_FOUND]: 404,
  [Status.ALREADY_EXISTS]: 409,
  [Status.PERMISSION_DENIED]: 403,
  [Status.RESOURCE_EXHAUSTED]: 429,
  [Status.FAILED_PRECONDITION]: 400,
  [Status.ABORTED]: 409,
  [Status.OUT_OF_RANGE]: 400,
  [Status.UNIMPLEMENTED]: 501,
  [Status.INTERNAL]: 500,
  [Status.UNAVAILABLE]: 503,
  [Status.DATA_LOSS]: 500,
  [Status.UNAUTHENTICATED]: 401
};

/** The HTTP status of an error reply with this code (500 for a number outside the table). */
export function httpStatusOf(code: number): number {
  return HTTP_OF[code] ?? 500;
}

/**
 * The status an HTTP reply stands for when it carries no Connect error body (a proxy's or load balancer's page):
 * 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429, 502, 503 and 504 UNAVAILABLE,
 * anything else UNKNOWN (connectrpc.com/docs/protocol#http-to-error-code).
 */
export function statusOfHttp(httpStatus: number): StatusCode {
  switch (httpStatus) {
    case 400:
      return Status.INTERNAL;
    case 401:
      return Status.UNAUTHENTICATED;
    case 403:
      return Status.PERMISSION_DENIED;
    case 404:
      return Status.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return Status.UNAVAILABLE;
    default:
      return Status.UNKNOWN;
  }
}

/**
 * A rate limit's wait as ms, from gRPC's `retry-after` metadata or HTTP's Retry-After header: whole seconds only
 * (the control plane sends no HTTP dates); undefined when absent or not a number of seconds.
 */
export function retryAfterMs(value: unknown): number | undefined {
  const s = typeof value === 'string' ? value.trim() : '';
  return /^\d{1,6}$/.test(s) ? Number(s) * 1000 : undefined;
}
