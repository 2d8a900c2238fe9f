#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on a fresh Debian
# machine, idempotently (a second run takes well under a second):
#   - PostgreSQL server binaries (the test harness starts throwaway servers);
#   - Prometheus' promtool (alert rule tests) and the Pushgateway (the metrics
#     round trip);
#   - a Python virtualenv at .venv with moto (the S3 endpoint of the tests),
#     DuckDB and pyarrow (independent readers), pytest + kubernetes-validate
#     (manifest tests) and just (the task runner);
#   - cargo-nextest (the test runner), from crates.io, when it is missing.
# Rust itself is the one prerequisite it does not install (rustup owns it).
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
if [ -f "$stamp" ] && have_servers && cargo nextest --version >/dev/null 2>&1; then
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! have_servers; then
  echo "==> installing the PostgreSQL server, promtool, the Pushgateway and openssl (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
    postgresql prometheus prometheus-pushgateway openssl python3-venv >/dev/null
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
