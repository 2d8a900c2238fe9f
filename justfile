# The task menu. On a fresh machine use `./dev <recipe>` (it installs just and
# the test tools first); afterwards `just <recipe>` works the same.

set shell := ["bash", "-euo", "pipefail", "-c"]

import 'deploy/deploy.just'

export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")

# List the recipes.
default:
    @just --list

# Install PostgreSQL and the Python tools (moto, DuckDB, pyarrow, pytest) if missing.
setup:
    bash scripts/setup.sh

# (`demo` names each binary with its own `--bin`: `-p X --bin Y` would build
# only Y, and the fresh-clone demo would find no jobs to run.)

# The main job end to end on embedded defaults: throwaway PostgreSQL with demo data → bronze → silver → ./lake.
demo rows=env_var_or_default("DEMO_ROWS", "200000"): setup
    cargo build -q --bin bronze-ingest --bin silver-transform --bin lake-demo
    target/debug/lake-demo --rows {{rows}} --lake lake

# Everything CI checks: formatting, lints, all tests (Rust, deployment manifests, the container image, lake-testkit's container backend).
test: setup lint test-rust test-fallback test-deploy test-image test-containers

# cargo fmt --check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# All Rust tests (real PostgreSQL and a real S3 endpoint, started by lake-testkit).
test-rust:
    cargo nextest run --workspace --no-fail-fast

# bronze-ingest's and silver-transform's whole suites again against a store that ignores conditional
# writes (a proxy strips them; S3_CONDITIONAL_WRITES=disabled): runs serialise
# on PostgreSQL advisory locks.
test-fallback:
    LAKE_TEST_STORE=no-conditional-writes cargo nextest run -p bronze-ingest -p silver-transform --no-fail-fast

# lake-testkit's container backend where no Docker engine or registry exists: podman's Docker API and
# images built here (scripts/testkit-containers.sh); the demo, then every test binary's first test of each three.
test-containers: setup
    cargo build -q --bin bronze-ingest --bin silver-transform --bin lake-demo
    scripts/testkit-containers.sh bash -c 'target/debug/lake-demo --rows 5000 --lake target/containers-demo-lake \
        && cargo nextest run --workspace --no-fail-fast --partition count:1/3'

# The fault soak: rounds of source activity with both jobs retried under ~10 % injected S3 faults
# (CI runs 4 rounds as part of test-rust; more rounds or another rate here).
test-faults rounds="20" rate="0.10": setup
    SOAK_ROUNDS={{rounds}} SOAK_FAULT_RATE={{rate}} cargo nextest run -p lake-testkit --test soak --no-capture

# Benchmark bronze-ingest against PostgreSQL's own binary COPY (writes docs/benchmarks.md).
bench-bronze rows="1000000": setup
    cargo build -q --release -p bronze-ingest -p lake-testkit --bin bronze-ingest --bin lake-bench
    target/release/lake-bench bronze --rows {{rows}} --report docs/benchmarks.md

# The image's binary (staged by scripts/stage-rootfs.sh, glibc) against the host build, interleaved on one server (section of docs/benchmarks.md).
bench-bronze-image rows="1000000": setup
    cargo build -q --release -p robson-lake -p bronze-ingest -p lake-testkit --bin robson-lake --bin bronze-ingest --bin lake-bench
    scripts/stage-rootfs.sh target/release/robson-lake target/bench-rootfs
    target/release/lake-bench binaries --rows {{rows}} --bin host=target/release/bronze-ingest \
        --bin image=target/bench-rootfs/usr/local/bin/bronze-ingest --report docs/benchmarks.md

# Benchmark silver-transform against DuckDB running benches/silver_duckdb.sql on the same bronze (1M events).
bench-silver: setup
    SILVER_BENCH_REPORT={{justfile_directory()}}/docs/benchmarks-silver.md cargo bench -p silver-transform --bench silver

# The same with all events in one UTC day (the fold's time windows; writes docs/benchmarks-silver-one-day.md).
bench-silver-day events="1000000": setup
    SILVER_BENCH_EVENTS={{events}} SILVER_BENCH_DAYS=1 SILVER_BENCH_REPORT={{justfile_directory()}}/docs/benchmarks-silver-one-day.md cargo bench -p silver-transform --bench silver

# What a run costs after 1 month, 1 year and 3 years of history: requests, bytes, time, memory (writes docs/benchmarks-history.md).
bench-history months="1,12,36" per_day="3000": setup
    cargo build -q --release -p bronze-ingest --bin bronze-ingest -p lake-maintain --bin lake-maintain
    HISTORY_BENCH_MONTHS={{months}} HISTORY_BENCH_EVENTS_PER_DAY={{per_day}} HISTORY_BENCH_REPORT={{justfile_directory()}}/docs/benchmarks-history.md cargo bench -p silver-transform --bench history

# Compacting a month of hourly bronze files: time, peak RSS, files, DuckDB query times before and after (writes docs/benchmarks-compaction.md).
bench-compact per_hour="1400": setup
    COMPACT_BENCH_EVENTS_PER_HOUR={{per_hour}} COMPACT_BENCH_REPORT={{justfile_directory()}}/docs/benchmarks-compaction.md cargo bench -p lake-maintain --bench compact

# All benchmarks.
bench: bench-bronze bench-silver bench-silver-day bench-history bench-compact

# Run the smoke test against the configured environment (add --cluster for the cluster checks, --json for JSON).
smoke *ARGS:
    cargo run -q -p smoke-test -- {{ARGS}}

# Lake maintenance against the configured lake (garbage collection; --dry-run deletes nothing).
maintain *ARGS:
    cargo run -q -p lake-maintain -- {{ARGS}}

# Regenerate the data dictionary docs/tables.md from the contracts (a test fails when it is stale).
tables:
    @cargo run -q -p lake-common --example tables > docs/tables.md
