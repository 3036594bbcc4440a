import type { Counter, Gauge, Histogram } from 'prom-client';

// The metrics the lease manager and builder pool update (made by createMetrics in http.ts).
export interface ServerMetrics {
  provisions: Counter<'result'>;
  provisionLatency: Histogram<'warm'>;
  activeLeases: Gauge;
  activeBuilders: Gauge;
  warmBuilders: Gauge;
  reapedLeases: Counter<'reason'>;
}
