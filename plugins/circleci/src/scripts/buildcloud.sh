#!/usr/bin/env bash
# Build Cloud's CircleCI steps, one script for all three commands (CircleCI inlines one file per run step, so a step
# cannot source shared code): PARAM_STEP, set in each command's run step `environment:`, picks the step.
#
#   setup   provision the workflow's remote builder and point this job's docker client at it.
#           `buildcloud setup` appends `export NAME='value'` lines (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH,
#           DOCKER_CONFIG, DOCKER_BUILDKIT, BUILDCLOUD_SESSION and the BUILDCLOUD_* outputs) to $BASH_ENV, which
#           CircleCI's bash sources at the start of every later step.
#   build   build an image on the builder that setup provisioned, with the org-wide layer cache (and with load,
#           stream it into the job's own Docker engine). `buildcloud build` appends BUILDCLOUD_DIGEST,
#           BUILDCLOUD_IMAGE_ID, BUILDCLOUD_CACHE_RATIO, BUILDCLOUD_CACHED_STEPS, BUILDCLOUD_TOTAL_STEPS,
#           BUILDCLOUD_DURATION and BUILDCLOUD_LOADED to $BASH_ENV for later steps, and exits non-zero when the build
#           or the load fails.
#   report  run always (after success or failure): send the usage records, release the lease, remove the certs and
#           the private docker config, and write the job's summary as markdown for store_artifacts. Its own problems
#           (metering, cleanup) are warnings: `buildcloud report` exits 0 for them.
#
# Every parameter arrives as a PARAM_* variable from the step's `environment:` and is used as data only: it is never
# part of the shell text CircleCI runs, so quotes, `$(...)`, backticks or newlines in a value (tags, build arguments,
# labels...) reach the CLI unchanged and execute nothing.
set -eo pipefail

# The CLI command (the `cli` parameter): words split on blanks; no quotes, variables or globs are interpreted.
bc_cli() {
  local -a cli
  if [[ "${PARAM_CLI:-}" == *$'\n'* ]]; then
    echo "Build Cloud: the 'cli' parameter must be one line (a command and its arguments)." >&2
    return 2
  fi
  read -r -a cli <<<"${PARAM_CLI:-}"
  if [ "${#cli[@]}" -eq 0 ]; then
    echo "Build Cloud: the 'cli' parameter is empty: give the command that runs the buildcloud CLI, e.g. npx --yes @buildcloud/ci@0.1.0" >&2
    return 2
  fi
  "${cli[@]}" "$@"
}

# A non-empty parameter becomes the CLI's input BUILDCLOUD_<NAME>; an empty one leaves a BUILDCLOUD_<NAME> that the
# project or a context set in effect, and otherwise the CLI's own default applies.
bc_input() {
  if [ -n "$2" ]; then
    export "BUILDCLOUD_$1=$2"
  fi
}

# What the job's docker settings were before setup, so that report can put them back: steps after report must not
# talk to a released builder with deleted certs. printf %q writes values bash reads back unchanged.
save_docker_env() {
  local name
  for name in DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONFIG DOCKER_BUILDKIT; do
    if [ -n "${!name+set}" ]; then
      printf 'export BUILDCLOUD_SAVED_%s=%q\n' "$name" "${!name}"
    else
      printf 'unset BUILDCLOUD_SAVED_%s\n' "$name"
    fi
  done >>"$BASH_ENV"
}

# Later steps get the job's docker settings back (as setup saved them): the builder is released and its certs are
# gone. printf %q writes values bash reads back unchanged.
restore_docker_env() {
  local name saved
  for name in DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONFIG DOCKER_BUILDKIT; do
    saved="BUILDCLOUD_SAVED_${name}"
    if [ -n "${!saved+set}" ]; then
      printf 'export %s=%q\n' "$name" "${!saved}"
    else
      printf 'unset %s\n' "$name"
    fi
    printf 'unset %s\n' "$saved"
  done >>"$BASH_ENV"
  echo 'unset BUILDCLOUD_SESSION' >>"$BASH_ENV"
}

step_setup() {
  if [ -z "${BASH_ENV:-}" ]; then
    echo "Build Cloud: BASH_ENV is not set. This orb runs in CircleCI's bash, which sources \$BASH_ENV before each step." >&2
    exit 2
  fi

  # The token parameter names the variable that holds the token (a project variable or a context), never the token.
  local token_var="${PARAM_TOKEN_VAR:-BUILDCLOUD_TOKEN}"
  if [[ ! "$token_var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "Build Cloud: invalid parameter 'token': '$token_var' is not an environment variable name. Expected a name such as BUILDCLOUD_TOKEN." >&2
    exit 2
  fi
  # Empty: the CLI exchanges the job's OIDC token ($CIRCLE_OIDC_TOKEN_V2) instead.
  export BUILDCLOUD_TOKEN="${!token_var:-}"

  bc_input ENDPOINT "${PARAM_ENDPOINT:-}"
  bc_input ORG "${PARAM_ORG:-}"
  bc_input OIDC_AUDIENCE "${PARAM_OIDC_AUDIENCE:-}"
  bc_input PLATFORMS "${PARAM_PLATFORMS:-}"
  bc_input SCOPE "${PARAM_SCOPE:-}"
  bc_input CACHE "${PARAM_CACHE:-}"
  bc_input FALLBACK "${PARAM_FALLBACK:-}"
  bc_input SUMMARY "${PARAM_SUMMARY:-}"
  bc_input JOB_ID "${PARAM_JOB_ID:-}"
  bc_input METERING_ENDPOINT "${PARAM_METERING_ENDPOINT:-}"
  bc_input PROVISION_TIMEOUT "${PARAM_PROVISION_TIMEOUT:-}"

  if [ -z "${BUILDCLOUD_SESSION:-}" ]; then
    save_docker_env
  fi
  bc_cli setup --export-file "$BASH_ENV"
}

step_build() {
  if [ -z "${BUILDCLOUD_SESSION:-}" ]; then
    echo "Build Cloud: no builder in this job: run the setup command (buildcloud/setup) in an earlier step of the same job." >&2
    exit 2
  fi

  bc_input CONTEXT "${PARAM_CONTEXT:-}"
  bc_input FILE "${PARAM_FILE:-}"
  bc_input TAGS "${PARAM_TAGS:-}"
  bc_input BUILD_ARGS "${PARAM_BUILD_ARGS:-}"
  bc_input TARGET "${PARAM_TARGET:-}"
  bc_input LABELS "${PARAM_LABELS:-}"
  bc_input PUSH "${PARAM_PUSH:-}"
  bc_input LOAD "${PARAM_LOAD:-}"
  bc_input PLATFORMS "${PARAM_PLATFORMS:-}"
  bc_input NO_CACHE "${PARAM_NO_CACHE:-}"
  bc_input PULL "${PARAM_PULL:-}"

  bc_cli build --export-file "$BASH_ENV"
}

step_report() {
  local -a args=(report)
  if [ -n "${PARAM_SUMMARY_FILE:-}" ]; then
    args+=(--summary-file "$PARAM_SUMMARY_FILE")
  fi
  bc_cli "${args[@]}"
  if [ -n "${BUILDCLOUD_SESSION:-}" ] && [ -n "${BASH_ENV:-}" ]; then
    restore_docker_env
  fi
}

main() {
  case "${PARAM_STEP:-}" in
    setup) step_setup "$@" ;;
    build) step_build "$@" ;;
    report) step_report "$@" ;;
    *)
      echo "Build Cloud: unknown step '${PARAM_STEP:-}' (PARAM_STEP): expected setup, build or report." >&2
      exit 2
      ;;
  esac
}

main "$@"
