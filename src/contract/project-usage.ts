// Per-project usage over HTTP: the route and its answer, as both the control plane and `buildcloud usage --project`
// see them. Beside http-api.ts (the other routes) so that this route's shape has one home; the prose is in
// docs/operations.md ("Usage").

/** GET: one project's leases, minutes and builds in a month (`month` YYYY-MM, UTC). Answers ProjectUsage. */
export function projectUsagePath(org: string, project: string, month: string): string {
  return `/v1/orgs/${encodeURIComponent(org)}/projects/usage?project=${encodeURIComponent(project)}&month=${encodeURIComponent(month)}`;
}

/**
 * GET /v1/orgs/:org/projects/usage?project=&month=: the org's leases whose identity names the project (compared
 * case-insensitively, as cache refs are), and the builds they recorded in the month.
 */
export interface ProjectUsage {
  org: string;
  project: string;
  month: string; // YYYY-MM (UTC)
  leases: { count: number; active: number }; // leases that ended in the month, plus active ones in the current month
  billedSeconds: number; // those leases as billed (active ones up to now)
  builds: {
    count: number;
    succeeded: number;
    failed: number;
    cancelled: number;
    pushFailed: number; // builds that succeeded and whose push failed
    pushRefused: number; // builds that succeeded and whose push was refused (the tag is taken)
    totalSteps: number;
    cachedSteps: number; // steps BuildKit reported CACHED
    deduplicatedSteps: number; // run by another job's build at the same time: not cache hits
    avgCacheRatio: number; // 0..1
    withCachedStepShare: number; // 0..1
  };
  pipelines: number; // distinct pipeline keys among the leases
}
