#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need, idempotently (a
# second run takes well under a second). On Debian (apt-get):
#   - PostgreSQL server binaries (the test harness starts throwaway servers);
#   - Prometheus' promtool (alert rule tests) and the Pushgateway (the metrics
#     round trip);
#   - a Python virtualenv at .venv with moto (the S3 endpoint of the tests),
#     DuckDB and pyarrow (independent readers), pytest + kubernetes-validate
#     (manifest tests) and just (the task runner);
#   - cargo-nextest (the test runner), from crates.io, when it is missing.
# Rust itself is the one prerequisite it does not install (rustup owns it).
#
# Without apt-get (macOS, other distributions) but with a Docker engine that
# answers, it installs only the virtualenv and cargo-nextest: lake-testkit then
# runs PostgreSQL and moto in containers (LAKE_TESTKIT=auto), and promtool and
# prometheus-pushgateway, which a few tests need, come from the machine's own
# packages (README, "Without Debian").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not on PATH: install Rust with rustup (https://rustup.rs), open a new shell, and run ./dev again" >&2
  exit 1
fi

stamp=.venv/.setup-v1
have_servers() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 &&
    command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null &&
    command -v openssl >/dev/null && python3 -c 'import ensurepip' >/dev/null 2>&1
}
# No apt-get, but a Docker engine (the docker CLI answers, or DOCKER_HOST's or
# the default socket exists): the servers run in containers.
containers_only() {
  command -v apt-get >/dev/null && return 1
  command -v docker >/dev/null && docker info >/dev/null 2>&1 && return 0
  local socket=${DOCKER_HOST:-unix:///var/run/docker.sock}
  [ -S "${socket#unix://}" ]
}
if [ -f "$stamp" ] && { have_servers || containers_only; } && cargo nextest --version >/dev/null 2>&1; then
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if have_servers; then
  :
elif command -v apt-get >/dev/null; then
  echo "==> installing the PostgreSQL server, promtool, the Pushgateway and openssl (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
    postgresql prometheus prometheus-pushgateway openssl python3-venv >/dev/null
elif containers_only; then
  echo "==> no apt-get; a Docker engine answers: PostgreSQL and moto will run in containers (LAKE_TESTKIT=auto)"
  command -v promtool >/dev/null && { command -v prometheus-pushgateway || command -v pushgateway; } >/dev/null ||
    echo "    the alert-rule and metrics tests also need promtool and prometheus-pushgateway on PATH (macOS: brew install prometheus pushgateway)"
else
  echo "error: no apt-get and no Docker engine answers (docker info): start Docker (Docker Desktop, colima, podman), or install PostgreSQL 15's server binaries, promtool and prometheus-pushgateway, then run ./dev again" >&2
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest (cargo install, a few minutes once)"
  cargo install --locked cargo-nextest
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating the Python virtualenv .venv"
  python3 -m venv .venv
fi
echo "==> installing Python tools into .venv (moto, DuckDB, pyarrow, pytest, kubernetes-validate, just)"
.venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
touch "$stamp"
