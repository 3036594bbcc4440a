#!/bin/sh
# Build Cloud's CircleCI steps, one script for all three commands (CircleCI inlines one file per run step, so a step
# cannot source shared code): PARAM_STEP, set in each command's run step `environment:`, picks the step.
#
#   setup   provision the workflow's remote builder and point this job's docker client at it.
#           `buildcloud setup` appends `export NAME='value'` lines (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH,
#           DOCKER_CONFIG, DOCKER_BUILDKIT, BUILDCLOUD_SESSION and the BUILDCLOUD_* outputs) to $BASH_ENV, which
#           CircleCI's bash sources at the start of every later step (see "Shells" below for executors without bash).
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
#
# Shells: POSIX sh, so the same text runs under bash (CircleCI's default shell when the image has /bin/bash) and under
# /bin/sh (its default otherwise: busybox ash on Alpine images, where bash syntax dies with "unexpected redirection").
# `shellcheck -s sh` checks it; no arrays, [[ ]], ${!name}, printf %q, here-strings or `local`. Only bash sources
# $BASH_ENV before a step, so under any other shell every step sources it here (the file holds only POSIX `export` and
# `unset` lines); a user's own later steps there need `. "$BASH_ENV"` (or CircleCI's Alpine recipe: the job's
# `shell: /bin/sh -leo pipefail` with `BASH_ENV: /etc/profile`). pipefail is not POSIX (dash has none) and no pipe
# below needs it.
set -e

if [ -z "${BASH_VERSION:-}" ] && [ -n "${BASH_ENV:-}" ] && [ -f "$BASH_ENV" ]; then
  # shellcheck disable=SC1090 # written by the earlier steps of this job
  . "$BASH_ENV"
fi

# A value single-quoted for any POSIX shell to read back unchanged (newlines, quotes, `$` and all).
sh_quote() {
  bc_q_rest=$1
  bc_q_out=
  while :; do
    case $bc_q_rest in
      *"'"*)
        bc_q_out="$bc_q_out${bc_q_rest%%"'"*}'\\''"
        bc_q_rest=${bc_q_rest#*"'"}
        ;;
      *) break ;;
    esac
  done
  printf "'%s%s'" "$bc_q_out" "$bc_q_rest"
}

# The CLI command (the `cli` parameter): words split on blanks; no quotes, variables or globs are interpreted.
bc_cli() {
  case ${PARAM_CLI:-} in
    *"
"*)
      echo "Build Cloud: the 'cli' parameter must be one line (a command and its arguments)." >&2
      return 2
      ;;
  esac
  # Field splitting on blanks with globbing off: the words of the parameter, nothing expanded in them.
  bc_cli_argc=$#
  set -f
  # shellcheck disable=SC2086 # split on purpose
  set -- ${PARAM_CLI:-} "$@"
  set +f
  if [ "$#" -eq "$bc_cli_argc" ]; then
    echo "Build Cloud: the 'cli' parameter is empty: give the command that runs the buildcloud CLI, e.g. npx --yes @buildcloud/ci@0.1.0" >&2
    return 2
  fi
  "$@"
}

# A non-empty parameter becomes the CLI's input BUILDCLOUD_<NAME>; an empty one leaves a BUILDCLOUD_<NAME> that the
# project or a context set in effect, and otherwise the CLI's own default applies.
bc_input() {
  if [ -n "$2" ]; then
    export "BUILDCLOUD_$1=$2"
  fi
}

# What the job's docker settings were before setup, so that report can put them back: steps after report must not
# talk to a released builder with deleted certs. The names are this fixed list, so `eval` reads a variable by its name
# and nothing else; sh_quote writes values any shell reads back unchanged.
save_docker_env() {
  for bc_name in DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONFIG DOCKER_BUILDKIT; do
    bc_isset='' bc_value=''
    eval "bc_isset=\${$bc_name+set} bc_value=\${$bc_name-}"
    if [ -n "$bc_isset" ]; then
      printf 'export BUILDCLOUD_SAVED_%s=%s\n' "$bc_name" "$(sh_quote "$bc_value")"
    else
      printf 'unset BUILDCLOUD_SAVED_%s\n' "$bc_name"
    fi
  done >>"$BASH_ENV"
}

# Later steps get the job's docker settings back (as setup saved them): the builder is released and its certs are
# gone.
restore_docker_env() {
  for bc_name in DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONFIG DOCKER_BUILDKIT; do
    bc_isset='' bc_value=''
    eval "bc_isset=\${BUILDCLOUD_SAVED_$bc_name+set} bc_value=\${BUILDCLOUD_SAVED_$bc_name-}"
    if [ -n "$bc_isset" ]; then
      printf 'export %s=%s\n' "$bc_name" "$(sh_quote "$bc_value")"
    else
      printf 'unset %s\n' "$bc_name"
    fi
    printf 'unset BUILDCLOUD_SAVED_%s\n' "$bc_name"
  done >>"$BASH_ENV"
  echo 'unset BUILDCLOUD_SESSION' >>"$BASH_ENV"
}

step_setup() {
  if [ -z "${BASH_ENV:-}" ]; then
    echo "Build Cloud: BASH_ENV is not set. CircleCI sets it in every job: the orb hands DOCKER_HOST and the outputs to later steps through that file." >&2
    exit 2
  fi

  # The token parameter names the variable that holds the token (a project variable or a context), never the token.
  bc_token_var="${PARAM_TOKEN_VAR:-BUILDCLOUD_TOKEN}"
  case $bc_token_var in
    [0-9]* | *[!A-Za-z0-9_]*)
      echo "Build Cloud: invalid parameter 'token': '${PARAM_TOKEN_VAR:-}' is not an environment variable name. Expected a name such as BUILDCLOUD_TOKEN." >&2
      exit 2
      ;;
  esac
  # Empty: the CLI exchanges the job's OIDC token ($CIRCLE_OIDC_TOKEN_V2) instead. The name is checked above, so eval
  # reads that one variable.
  eval "BUILDCLOUD_TOKEN=\${$bc_token_var:-}"
  export BUILDCLOUD_TOKEN

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
  # CircleCI names the default branch in no variable (CI-REFERENCE §2.1); the core reads BUILDCLOUD_DEFAULT_BRANCH.
  bc_input DEFAULT_BRANCH "${PARAM_DEFAULT_BRANCH:-}"
  if [ -z "${BUILDCLOUD_DEFAULT_BRANCH:-}" ]; then
    echo "Build Cloud: no default branch given (the default_branch parameter or BUILDCLOUD_DEFAULT_BRANCH): a branch without a cache of its own imports the cache of 'main'."
  fi

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
  bc_input CACHE_SCOPE "${PARAM_CACHE_SCOPE:-}"
  bc_input LABELS "${PARAM_LABELS:-}"
  bc_input PUSH "${PARAM_PUSH:-}"
  bc_input LOAD "${PARAM_LOAD:-}"
  bc_input PLATFORMS "${PARAM_PLATFORMS:-}"
  bc_input NO_CACHE "${PARAM_NO_CACHE:-}"
  bc_input PULL "${PARAM_PULL:-}"
  # Empty parameters leave BUILDCLOUD_SECRETS (a project variable or a context, where secrets belong) as it is.
  bc_input SECRETS "${PARAM_SECRETS:-}"
  bc_input SECRET_FILES "${PARAM_SECRET_FILES:-}"
  bc_input SSH "${PARAM_SSH:-}"

  bc_cli build --export-file "$BASH_ENV"
}

step_report() {
  if [ -n "${PARAM_SUMMARY_FILE:-}" ]; then
    set -- --summary-file "$PARAM_SUMMARY_FILE"
  else
    set --
  fi
  bc_cli report "$@"
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
