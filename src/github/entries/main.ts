import { run } from '../main';

// Explicit exit: open gRPC channels or HTTP keep-alive sockets must not keep the step alive.
run().finally(() => process.exit());
