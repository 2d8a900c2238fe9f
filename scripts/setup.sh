#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on a fresh Debian
# machine, idempotently (a second run takes well under a second):
#   - PostgreSQL server binaries (the test harness starts throwaway servers);
#   - Prometheus' promtool (alert rule tests) and the Pushgateway (the metrics
#     round trip);
#   - a Python virtualenv at .venv with moto (the S3 endpoint of the tests),
#     DuckDB and pyarrow (independent readers), pytest + kubernetes-validate
#     (manifest tests) and just (the task runner).
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.setup-v1
have_servers() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 &&
    command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null &&
    command -v openssl >/dev/null
}
if [ -f "$stamp" ] && have_servers; then
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! have_servers; then
  echo "==> installing the PostgreSQL server, promtool, the Pushgateway and openssl (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
    postgresql prometheus prometheus-pushgateway openssl >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating the Python virtualenv .venv"
  python3 -m venv .venv
fi
echo "==> installing Python tools into .venv (moto, DuckDB, pyarrow, pytest, kubernetes-validate, just)"
.venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
touch "$stamp"
