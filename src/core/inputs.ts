// The one definition of every input and output of the CI wrappers. action.yml and build/action.yml are generated
// from it (scripts/generate.mjs), the GitLab component's spec:inputs and the CircleCI orb's parameters are generated
// or checked against it, and the CLI reads the same names as flags and BUILDCLOUD_* variables.

export type InputType = 'string' | 'boolean' | 'number' | 'enum' | 'list';

export interface InputDef {
  name: string; // kebab-case, as in action.yml
  description: string;
  type: InputType;
  default: string; // as text, the way every CI passes it
  options?: string[]; // for enum
  secret?: boolean; // masked; never echoed
  // GitHub's own default where it differs (an expression the runner evaluates), e.g. ${{ github.token }}.
  githubDefault?: string;
  only?: 'github'; // inputs that make sense on GitHub only
}

export interface OutputDef {
  name: string;
  description: string;
}

export const SETUP_INPUTS: InputDef[] = [
  {
    name: 'endpoint',
    type: 'string',
    default: '',
    description:
      'Where the Build Cloud control plane answers: the http:// or https:// URL of its HTTP port (fastest start: plain HTTP/JSON), or its gRPC port as host:port, grpc://host:port or grpcs://host:port. Falls back to the BUILDCLOUD_ENDPOINT variable.'
  },
  {
    name: 'token',
    type: 'string',
    default: '',
    secret: true,
    description:
      "Org token (buildcloud admin token create). Leave empty to exchange the CI job's OIDC token instead. Falls back to the BUILDCLOUD_TOKEN variable."
  },
  { name: 'org', type: 'string', default: '', description: "Org to act for. Empty: the token's own org." },
  {
    name: 'oidc-audience',
    type: 'string',
    default: 'buildcloud',
    description: "Audience of the OIDC token exchanged for an access token; must match the org's trust rule."
  },
  {
    name: 'platforms',
    type: 'list',
    default: '',
    description: "Platforms to get a builder for, comma- or newline-separated (e.g. linux/amd64). Empty: the control plane's native platform."
  },
  {
    name: 'scope',
    type: 'enum',
    options: ['pipeline', 'job'],
    default: 'pipeline',
    description: 'pipeline: every job of the pipeline shares one builder per platform; job: this job gets its own.'
  },
  { name: 'cache', type: 'boolean', default: 'true', description: 'Import and export the org-wide layer cache (forks only import).' },
  {
    name: 'fallback',
    type: 'enum',
    options: ['none', 'local'],
    default: 'none',
    description: "none: fail when no builder can be had; local: build on the runner's own Docker instead, with a warning."
  },
  { name: 'summary', type: 'boolean', default: 'true', description: 'Write a summary of builds, cached steps and minutes for the job.' },
  {
    name: 'pr-comment',
    type: 'boolean',
    default: 'false',
    only: 'github',
    description: "Keep one comment on the pull request with the pipeline's build minutes and cache ratio, updated in place."
  },
  {
    name: 'github-token',
    type: 'string',
    default: '',
    githubDefault: '${{ github.token }}',
    secret: true,
    only: 'github',
    description: 'Token for the pull request comment (needs pull-requests: write).'
  },
  {
    name: 'job-id',
    type: 'string',
    default: '',
    githubDefault: '${{ github.job }}-${{ strategy.job-index }}-${{ job.check_run_id }}',
    description: "Id of this job within the pipeline, unique across matrix and parallel legs. Empty: derived from the CI's variables."
  },
  {
    name: 'metering-endpoint',
    type: 'string',
    default: '',
    description: "Where usage records (CloudEvents) are sent. Empty: the control plane's own metering endpoint."
  },
  { name: 'provision-timeout', type: 'number', default: '120', description: 'Seconds to keep retrying while the control plane is unavailable or at capacity.' }
];

export const SETUP_OUTPUTS: OutputDef[] = [
  {
    name: 'builder',
    description: 'Name of the docker context (and buildx builder where buildx exists) for the remote builder: pass it as builder to docker/build-push-action.'
  },
  { name: 'docker-host', description: 'DOCKER_HOST of the remote builder (tcp://...); DOCKER_TLS_VERIFY and DOCKER_CERT_PATH are exported too.' },
  { name: 'lease-id', description: 'Id of the lease on the builder.' },
  {
    name: 'cache-from',
    description:
      "The project's org cache refs to import, one per line, for your own docker commands (the build step also imports the image's own cache scope, see cache-scope)."
  },
  {
    name: 'cache-to',
    description:
      "The project's org cache ref for your own docker commands to export to; empty for forks and read-only leases. The build step exports to the image's own cache scope instead."
  },
  { name: 'platforms', description: 'Platforms the builder serves, comma-separated.' },
  { name: 'fallback', description: "true when the build runs on the runner's own Docker because no builder could be had." }
];

export const BUILD_INPUTS: InputDef[] = [
  { name: 'context', type: 'string', default: '.', description: 'Build context directory.' },
  { name: 'file', type: 'string', default: '', description: 'Path to the Dockerfile. Empty: Dockerfile in the context.' },
  { name: 'tags', type: 'list', default: '', description: 'Image tags, comma- or newline-separated.' },
  {
    name: 'build-args',
    type: 'list',
    default: '',
    description:
      'Build arguments, one KEY=VALUE per line. A value that spans lines: put the whole entry in double quotes ("KEY=line 1<newline>line 2", "" for a quote inside), as docker/build-push-action reads it. Build arguments land in the image history and the org cache: pass tokens as secrets.'
  },
  { name: 'target', type: 'string', default: '', description: 'Target stage to build.' },
  {
    name: 'cache-scope',
    type: 'string',
    default: '',
    description:
      "Name of this image's own cache within the project's org cache, so images of one project never overwrite each other's cache. Empty: derived from the Dockerfile's path and the target (e.g. docker/api.Dockerfile#runtime)."
  },
  {
    name: 'labels',
    type: 'list',
    default: '',
    description:
      'Image labels, one KEY=VALUE per line. A value that spans lines (a commit message): put the whole entry in double quotes, "" for a quote inside.'
  },
  { name: 'push', type: 'boolean', default: 'false', description: 'Push the tags after the build.' },
  {
    name: 'load',
    type: 'boolean',
    default: 'false',
    description:
      "Load the built image into the runner's own Docker engine after the build (docker save on the builder piped into docker load), so later steps can docker run it there. Needs a Docker engine on the runner; one platform only."
  },
  { name: 'platforms', type: 'list', default: '', description: "Platforms to build for. Empty: the builder's platform." },
  { name: 'no-cache', type: 'boolean', default: 'false', description: 'Build without using any cache.' },
  { name: 'pull', type: 'boolean', default: 'false', description: 'Always pull newer base images.' },
  {
    name: 'secrets',
    type: 'list',
    default: '',
    secret: true,
    description:
      'BuildKit secrets, one ID=VALUE per line (a value that spans lines: the whole entry in double quotes), for RUN --mount=type=secret,id=ID. Each value goes to the build in a 0600 file that is removed after it, never into the image, its history or the org cache; it is masked in the log.'
  },
  {
    name: 'secret-files',
    type: 'list',
    default: '',
    description: 'BuildKit secrets read from files, one ID=PATH per line, for RUN --mount=type=secret,id=ID.'
  },
  {
    name: 'ssh',
    type: 'list',
    default: '',
    description:
      'SSH agent sockets or keys for RUN --mount=type=ssh, one per line: default (the agent at SSH_AUTH_SOCK), or ID=PATH[,PATH] (a socket or private key files).'
  }
];

export const BUILD_OUTPUTS: OutputDef[] = [
  { name: 'digest', description: 'Image digest of the pushed image (sha256:...), when pushed.' },
  { name: 'image-id', description: 'Image id, when known.' },
  { name: 'cache-ratio', description: 'Cached steps divided by total steps, 0 to 1.' },
  { name: 'cached-steps', description: 'Build steps BuildKit served from a cache (reported CACHED).' },
  {
    name: 'deduplicated-steps',
    description: "Build steps this build did not run because another job's build on the same builder ran them while this one waited; never counted as cached."
  },
  { name: 'total-steps', description: 'Build steps in the build.' },
  { name: 'duration', description: 'Build duration in seconds.' },
  { name: 'loaded', description: "true when the image was loaded into the runner's own Docker engine (load: true), else false." },
  {
    name: 'push-status',
    description:
      'What became of the push, apart from the build: pushed, failed (the build succeeded, the push did not), refused (another job of the pipeline took the tag) or skipped (no push asked, or the build did not succeed).'
  },
  { name: 'pushed-tags', description: 'The tags that were pushed, one per line.' },
  { name: 'push-error', description: "Why the push failed or was refused (the job's error); empty otherwise." }
];

export function envName(input: string): string {
  return `BUILDCLOUD_${input.toUpperCase().replace(/-/g, '_')}`;
}
