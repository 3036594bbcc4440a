#!/usr/bin/env bash
# Build Cloud report, run always (after success or failure): send the usage records, release the lease, remove the
# certs and the private docker config, and write the job's summary as markdown for store_artifacts. Its own problems
# (metering, cleanup) are warnings: `buildcloud report` exits 0 for them.
#
# Every parameter arrives as a PARAM_* variable from the step's `environment:` and is used as data only.
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

main() {
  local -a args=(report)
  if [ -n "${PARAM_SUMMARY_FILE:-}" ]; then
    args+=(--summary-file "$PARAM_SUMMARY_FILE")
  fi
  bc_cli "${args[@]}"
  if [ -n "${BUILDCLOUD_SESSION:-}" ] && [ -n "${BASH_ENV:-}" ]; then
    restore_docker_env
  fi
}

main "$@"
