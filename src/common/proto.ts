// Moved to src/contract/grpc.ts. This path stays only while src/core/setup.ts (edited by others at the time of the
// move) still imports it; point it at ../contract/grpc and delete this file.
export * from '../contract/grpc';
