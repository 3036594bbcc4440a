#!/usr/bin/env bash
# Build Cloud build: build an image on the builder that setup provisioned, with the org-wide layer cache.
#
# Every parameter arrives as a PARAM_* variable from the step's `environment:` and is used as data only: tags,
# build arguments and labels holding quotes, `$(...)` or newlines reach the CLI unchanged and execute nothing.
# `buildcloud build` appends BUILDCLOUD_DIGEST, BUILDCLOUD_IMAGE_ID, BUILDCLOUD_CACHE_RATIO, BUILDCLOUD_CACHED_STEPS,
# BUILDCLOUD_TOTAL_STEPS and BUILDCLOUD_DURATION to $BASH_ENV for later steps, and exits non-zero when the build fails.
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

main() {
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
  bc_input PLATFORMS "${PARAM_PLATFORMS:-}"
  bc_input NO_CACHE "${PARAM_NO_CACHE:-}"
  bc_input PULL "${PARAM_PULL:-}"

  bc_cli build --export-file "$BASH_ENV"
}

main "$@"
