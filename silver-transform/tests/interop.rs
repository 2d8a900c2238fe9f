//! Interop: DuckDB and pyarrow read silver and quarantine as Hive-partitioned
//! Parquet, with decimals and timestamps exact.
//!
//! The readers come from the workspace venv (`.venv/bin/python`, or the Python in
//! `LAKE_TEST_PYTHON`). When neither `duckdb` nor `pyarrow` is importable the test
//! is skipped with a loud message; `pip install duckdb pyarrow` into the venv
//! enables it.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use lake_common::{Lake, LakeConfig};
use lake_testkit::glob::{has_module, python};
use support::*;

fn events() -> Vec<Ev> {
    vec![
        Ev::new(
            1,
            "2025-06-01T23:59:59.999999Z",
            Some("tok-a"),
            "STOP_TRIGGERED",
        )
        .client(7)
        .stop("123456789012.12345678")
        .qty("0.00000001"),
        Ev::new(2, "2025-06-02T00:00:00.000001Z", Some("tok-a"), "EXECUTED")
            .client(7)
            .fill("99999999999.99999999")
            .slip("-49.9999")
            .exch("EX-1"),
        Ev::new(3, "2025-06-02T10:00:00Z", None, "EXECUTED")
            .client(8)
            .op(42)
            .symbol("bad symbol"),
    ]
}

const DUCKDB: &str = r#"
import sys, duckdb
root = sys.argv[1]
con = duckdb.connect()
rel = f"read_parquet('{root}/silver/stop_executions/*/*/*.parquet', hive_partitioning = true)"
types = dict(con.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {rel})").fetchall())
print("types", types["client_id"], types["date"], types["fill_price"], types["slippage_pct"], types["first_event_at"])
for r in con.sql(f"""SELECT client_id, date, execution_key, stop_price::VARCHAR, quantity::VARCHAR,
        fill_price::VARCHAR, slippage_pct::VARCHAR, epoch_us(first_event_at), epoch_us(executed_at), status
        FROM {rel} ORDER BY execution_key""").fetchall():
    print("row", *r)
q = f"read_parquet('{root}/silver/_quarantine/stop_executions/*/*.parquet', hive_partitioning = true)"
for r in con.sql(f"SELECT date, client_id, execution_key, violation FROM {q} ORDER BY violation").fetchall():
    print("quarantine", *r)
"#;

const PYARROW: &str = r#"
import sys
import pyarrow.dataset as ds
root = sys.argv[1]
d = ds.dataset(f"{root}/silver/stop_executions", format="parquet", partitioning="hive")
t = d.to_table().sort_by("execution_key")
s = t.schema
print("types", s.field("fill_price").type, s.field("slippage_pct").type, s.field("first_event_at").type)
for r in t.to_pylist():
    print("row", r["client_id"], r["date"], r["execution_key"], r["stop_price"], r["quantity"],
          r["fill_price"], r["slippage_pct"], r["first_event_at"].isoformat(), r["status"])
"#;

#[tokio::test]
async fn duckdb_and_pyarrow_read_silver() {
    let duckdb = has_module("duckdb");
    let pyarrow = has_module("pyarrow");
    if !duckdb && !pyarrow {
        eprintln!(
            "\n!!!!!!!! SKIPPED interop test: neither duckdb nor pyarrow is importable by {}.\n\
             !!!!!!!! Install them into the workspace venv (`.venv/bin/pip install duckdb pyarrow`)\n\
             !!!!!!!! or point LAKE_TEST_PYTHON at a Python that has them.\n",
            python().display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&LakeConfig::local(dir.path())).unwrap();
    commit_batch(&lake, 1, &events()).await;
    run(&lake, &incremental()).await;

    if duckdb {
        let out = run_python(DUCKDB, dir.path());
        eprintln!("duckdb:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "types BIGINT DATE DECIMAL(20,8) DECIMAL(10,4) TIMESTAMP WITH TIME ZONE"
        );
        assert_eq!(
            lines[1],
            "row 7 2025-06-01 tok-a 123456789012.12345678 0.00000001 99999999999.99999999 -49.9999 \
             1748822399999999 1748822400000001 EXECUTED"
        );
        assert_eq!(
            lines[2],
            "quarantine 2025-06-02 8 operation:42 executed_has_fill_price"
        );
        assert_eq!(
            lines[3],
            "quarantine 2025-06-02 8 operation:42 symbol_format"
        );
        assert_eq!(lines.len(), 4);
    } else {
        eprintln!("!!!!!!!! duckdb is not importable: only pyarrow was checked");
    }
    if pyarrow {
        let out = run_python(PYARROW, dir.path());
        eprintln!("pyarrow:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "types decimal128(20, 8) decimal128(10, 4) timestamp[us, tz=UTC]"
        );
        assert_eq!(
            lines[1],
            "row 7 2025-06-01 tok-a 123456789012.12345678 1E-8 99999999999.99999999 -49.9999 \
             2025-06-01T23:59:59.999999+00:00 EXECUTED"
        );
        assert_eq!(lines.len(), 2);
    } else {
        eprintln!("!!!!!!!! pyarrow is not importable: only duckdb was checked");
    }
}
