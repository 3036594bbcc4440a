import * as grpc from '@grpc/grpc-js';

// An error meant for the caller: a gRPC status and a message that names what to fix.
export class ApiError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const invalid = (msg: string) => new ApiError(grpc.status.INVALID_ARGUMENT, msg);
export const unauthenticated = (msg: string) => new ApiError(grpc.status.UNAUTHENTICATED, msg);
export const denied = (msg: string) => new ApiError(grpc.status.PERMISSION_DENIED, msg);
export const notFound = (msg: string) => new ApiError(grpc.status.NOT_FOUND, msg);
export const exhausted = (msg: string) => new ApiError(grpc.status.RESOURCE_EXHAUSTED, msg);
export const unavailable = (msg: string) => new ApiError(grpc.status.UNAVAILABLE, msg);
export const precondition = (msg: string) => new ApiError(grpc.status.FAILED_PRECONDITION, msg);
