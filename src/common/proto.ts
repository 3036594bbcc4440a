// Moved to src/contract/grpc.ts. This path stays only while src/core/setup.ts, session.ts and build.ts (edited by
// others at the time of the move) still import it; point them at ../contract/grpc and delete this file.
export * from '../contract/grpc';
