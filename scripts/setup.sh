#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs to run the control plane, the demo and the tests.
# Idempotent. Needs root: builders are dockerd processes with their own bridge networks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root: it installs Debian packages and builders need root." >&2
  exit 1
fi

need=()
for pair in dockerd:docker.io docker-registry:docker-registry busybox:busybox-static iptables:iptables ip:iproute2 skopeo:skopeo rsync:rsync git:git chromium:chromium shellcheck:shellcheck; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
# /bin/busybox must be the static build: it is copied into images.
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" file ca-certificates >/dev/null
fi

# The docker.io package may start a system dockerd; builders never use it. Nothing to do either way.
npm ci --no-audit --no-fund --loglevel=error
# GitHub runs actions on node24: the action tests run the bundles with it (the binary ships in an npm package).
[ -x .tools/node24/node_modules/.bin/node ] || npm install --no-save --no-audit --no-fund --loglevel=error --prefix .tools/node24 node@24
# The real GitLab CI interpreter for the component's tests and the demo (runs on node24).
[ -x .tools/gitlab-ci-local/node_modules/gitlab-ci-local/dist/index.js ] || npm install --no-save --no-audit --no-fund --loglevel=error --prefix .tools/gitlab-ci-local gitlab-ci-local@4.75.1
node scripts/build.mjs
echo "setup.sh: ready (docker client: /usr/bin/docker $(/usr/bin/docker --version 2>/dev/null | cut -d' ' -f3 | tr -d ,))"
