// What a lease may ask of its builder's Docker Engine: the calls a build client makes, nothing else.
//
// A lease gets a build service, not a machine. The engine's API can create containers with host mounts, publish
// ports on the host, run `exec`, make volumes and networks: each of those reaches past the builder. The builder's
// TLS front (tls-proxy.ts) asks `checkEngineRequest` about every request before any byte of it reaches the engine.
//
// The allow-list follows what the build clients send (docker/cli 20.10+ `docker build` with BuildKit, `docker push`,
// `docker save`, `docker image inspect|tag`, docker buildx's docker and remote drivers): routes as registered by
// moby's API server (api/server/router/{build,image,distribution,system,session,grpc}), each with or without the
// `/v<major>.<minor>` prefix the client adds (moby api/server/server.go versionMatcher).

/**
 * A request as the front sees it: the method, the request target (path and query, not decoded) and every
 * Content-Type header it carries (raw values, in order; none when absent).
 */
export interface EngineRequest {
  method: string;
  url: string;
  contentTypes?: string[];
}

/** `allowed: false` carries the message the docker CLI prints as "Error response from daemon: <message>". */
export type EngineDecision = { allowed: true; route: string } | { allowed: false; status: 400 | 403; message: string };

const PREFIX = 'Build Cloud builders run builds only';
const LOAD_HINT = 'use `load: true` (buildcloud build --load) to bring the image into this job, then run it there';

interface Route {
  method: string | string[];
  path: RegExp; // matched against the path without the version prefix
  name: string;
  check?: (query: URLSearchParams) => string | null; // a reason to refuse, or null
}

// An image reference as moby's router captures it ({name:.*}): any characters but the route's fixed suffix.
const NAME = '[^?#]+';

const ROUTES: Route[] = [
  { method: ['GET', 'HEAD'], path: /^\/_ping$/, name: 'ping' },
  { method: 'GET', path: /^\/version$/, name: 'version' },
  { method: 'GET', path: /^\/info$/, name: 'info' },
  { method: 'GET', path: /^\/system\/df$/, name: 'system df' },
  { method: 'POST', path: /^\/auth$/, name: 'auth' },
  { method: 'POST', path: /^\/build$/, name: 'build', check: checkBuildQuery },
  { method: 'POST', path: /^\/build\/cancel$/, name: 'build cancel' },
  { method: 'POST', path: /^\/build\/prune$/, name: 'build prune' },
  // BuildKit: the client's session (file sync, auth, secrets) and, for buildx, BuildKit's own gRPC API.
  { method: 'POST', path: /^\/session$/, name: 'session' },
  { method: 'POST', path: /^\/grpc$/, name: 'grpc' },
  { method: 'GET', path: /^\/images\/json$/, name: 'image list' },
  { method: 'GET', path: /^\/images\/get$/, name: 'image save' },
  { method: 'GET', path: new RegExp(`^/images/${NAME}/get$`), name: 'image save' },
  { method: 'GET', path: new RegExp(`^/images/${NAME}/json$`), name: 'image inspect' },
  { method: 'GET', path: new RegExp(`^/images/${NAME}/history$`), name: 'image history' },
  { method: 'POST', path: new RegExp(`^/images/${NAME}/tag$`), name: 'image tag' },
  { method: 'POST', path: new RegExp(`^/images/${NAME}/push$`), name: 'image push' },
  { method: 'GET', path: new RegExp(`^/distribution/${NAME}/json$`), name: 'distribution inspect' }
];

// What a refused call was for, so the message names the command the user typed and what to do instead.
const REFUSALS: Array<{ path: RegExp; refused: string; hint: string }> = [
  { path: /^\/(containers|exec)(\/|$)/, refused: 'containers (`docker run`, `docker exec`, `docker create`) are', hint: LOAD_HINT },
  { path: /^\/commit$/, refused: 'containers (`docker commit`) are', hint: LOAD_HINT },
  { path: /^\/volumes(\/|$)/, refused: 'volumes (`docker volume`) are', hint: 'a build needs none: use RUN --mount=type=cache for caches' },
  { path: /^\/networks(\/|$)/, refused: 'networks (`docker network`) are', hint: "RUN steps get the builder's own network; --network none also works" },
  { path: /^\/images\/create$/, refused: '`docker pull` and `docker import` are', hint: 'a build pulls its base images itself (FROM)' },
  { path: /^\/images\/load$/, refused: '`docker load` is', hint: 'a build pulls its base images itself (FROM)' },
  { path: /^\/(swarm|services|tasks|nodes|secrets|configs)(\/|$)/, refused: 'swarm commands are', hint: 'a builder is not a swarm node' },
  { path: /^\/plugins(\/|$)/, refused: 'engine plugins (`docker plugin`) are', hint: 'builders run with the plugins they have' }
];

// Only the request's own network (the default bridge of the builder) or none: `host` would put RUN steps in the
// host's network namespace, past every egress rule of the builder.
const BUILD_NETWORK_MODES = new Set(['', 'default', 'bridge', 'none']);

function checkBuildQuery(q: URLSearchParams): string | null {
  const network = q.get('networkmode') ?? '';
  if (!BUILD_NETWORK_MODES.has(network)) {
    return `${PREFIX}: --network ${printable(network)} is not allowed; RUN steps use the builder's own network (the default) or --network none.`;
  }
  // The classic builder runs each step as a container of the engine and knows neither entitlements nor BuildKit's
  // cache: every build here is a BuildKit build (the CLI sends version=2 for those).
  if (q.get('version') !== '2') {
    return `${PREFIX} with BuildKit: set DOCKER_BUILDKIT=1 (or use docker buildx); the classic builder is not available.`;
  }
  if (q.get('cgroupparent')) return `${PREFIX}: --cgroup-parent is not allowed.`;
  return null;
}

/** Strips moby's optional API version prefix: `/v1.41/build` → `/build`. */
export function stripVersion(path: string): string {
  const m = /^\/v\d+(?:\.\d+)?(\/.*)$/.exec(path);
  return m ? m[1] : path;
}

// Paths the engine's router would clean (`..`, `.`, `//`) or decode into another route (`%2e`, `%2f`) are
// refused outright: what we check must be exactly what the engine routes.
const UNCLEAN = /\/\.{1,2}(\/|$)|\/\/|%2e|%2f|%5c|\\/i;

// The engine reads its options with Go's Request.FormValue, which prefers values from a form-encoded body over the
// query string (net/http parsePostForm: Content-Type application/x-www-form-urlencoded, media type compared
// lower-cased and trimmed, the first header only; multipart/form-data through ParseMultipartForm). A body like
// `version=1&networkmode=host` would then override a query the policy checked. No build client sends form bodies:
// refuse them, and any request whose Content-Type is ambiguous.
const FORM_MEDIA_TYPES = new Set(['application/x-www-form-urlencoded', 'multipart/form-data']);

function checkContentType(contentTypes: string[]): string | null {
  if (contentTypes.length > 1) return `${PREFIX}: a request may carry one Content-Type header, not ${contentTypes.length}.`;
  if (contentTypes.length === 0) return null;
  // Only printable ASCII: Go lower-cases with Unicode rules (strings.ToLower maps the Kelvin sign to 'k'), so a
  // media type with other characters could read as a form type there and as something else here.
  if (/[^\x20-\x7e\t]/.test(contentTypes[0])) return `${PREFIX}: a Content-Type of other than printable ASCII characters is not accepted.`;
  const media = contentTypes[0].split(';')[0].trim().toLowerCase();
  if (FORM_MEDIA_TYPES.has(media)) return `${PREFIX}: form-encoded request bodies (${media}) are not accepted; options go in the query string.`;
  return null;
}

/** Decides one request. Pure: no I/O; the same request always gets the same answer. */
export function checkEngineRequest(req: EngineRequest): EngineDecision {
  const method = req.method.toUpperCase();
  const badType = checkContentType(req.contentTypes ?? []);
  if (badType) return { allowed: false, status: 400, message: badType };
  const q = req.url.indexOf('?');
  const rawPath = q < 0 ? req.url : req.url.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1));
  if (!rawPath.startsWith('/') || UNCLEAN.test(rawPath)) {
    return { allowed: false, status: 400, message: `${PREFIX}: the request path ${printable(rawPath)} is not a plain API path.` };
  }
  const path = stripVersion(rawPath);
  for (const r of ROUTES) {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    if (!methods.includes(method) || !r.path.test(path)) continue;
    const reason = r.check?.(query) ?? null;
    if (reason) return { allowed: false, status: 403, message: reason };
    return { allowed: true, route: r.name };
  }
  const known = REFUSALS.find((r) => r.path.test(path));
  if (known) return { allowed: false, status: 403, message: `${PREFIX}: ${known.refused} not available on a remote builder; ${known.hint}.` };
  return { allowed: false, status: 403, message: `${PREFIX}: ${method} ${printable(path)} is not available on a remote builder.` };
}

// The request's own path, bounded and without control characters: never a secret (those travel in headers), but
// a message must not carry a terminal escape or a megabyte.
function printable(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?');
  return JSON.stringify(clean.length > 120 ? `${clean.slice(0, 117)}...` : clean);
}
