#!/usr/bin/env bash
# README command 2: runs every test on a fresh Debian/Ubuntu host.
#
# Installs system dependencies, starts the dev Ceph cluster and the dev dockerd (or reuses
# running ones), then runs: fmt check, clippy -D warnings, every test of the workspace,
# and rustdoc with -D warnings. Whatever this script started, it stops on exit, even on
# failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

step "system dependencies"
"$here/install-deps.sh"

started_cluster=0
started_docker=0
cleanup() {
  local rc=$?
  set +e
  if [ "$started_docker" = 1 ]; then step "stopping dev dockerd"; "$here/dev-docker.sh" down; fi
  if [ "$started_cluster" = 1 ]; then step "stopping dev cluster"; "$here/dev-cluster.sh" down; fi
  exit $rc
}
trap cleanup EXIT

step "dev Ceph cluster"
if ! "$here/dev-cluster.sh" status >/dev/null 2>&1; then started_cluster=1; fi
eval "$("$here/dev-cluster.sh" up)"

step "dev dockerd"
if ! "$here/dev-docker.sh" status >/dev/null 2>&1; then started_docker=1; fi
eval "$("$here/dev-docker.sh" up)"

export CEPH_CONF DOCKER_HOST
# This script provides the cluster and dockerd, so no test may skip for want of them:
# under CI=true the testkit gates fail instead of skipping.
export CI=true
export RUST_BACKTRACE=1

failed=()
check() {
  local name=$1; shift
  step "$name"
  if "$@"; then echo "--> $name: ok"; else echo "--> $name: FAILED"; failed+=("$name"); fi
}

# Every test is bounded, so a hung test fails the run instead of stalling CI: nextest
# terminates a test per .config/nextest.toml (slow-timeout / terminate-after); the whole
# cargo test fallback, and the doctests, run under `timeout`.
run_tests() {
  if command -v cargo-nextest >/dev/null 2>&1; then
    # nextest runs each test in its own process; doctests need cargo test.
    cargo nextest run --workspace --locked --no-fail-fast --test-threads "${TEST_THREADS:-4}" \
        --config-file "$repo/.config/nextest.toml" &&
      timeout -k 30 "${DOCTEST_TIMEOUT:-1800}" cargo test --workspace --locked --doc
  else
    timeout -k 60 "${TEST_TIMEOUT:-10800}" cargo test --workspace --locked --no-fail-fast
  fi
}

# Every check runs even when an earlier one fails, so one run shows every problem.
check "cargo fmt --check" cargo fmt --all -- --check
check "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
check "cargo test (workspace)" run_tests
check "cargo doc -D warnings" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

if [ "${#failed[@]}" -gt 0 ]; then
  step "FAILED: ${failed[*]}"
  exit 1
fi
step "all checks passed"
