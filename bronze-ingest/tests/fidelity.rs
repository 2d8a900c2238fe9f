//! Type fidelity (values read back from Parquet equal PostgreSQL's exactly) and
//! interoperability with an independent reader (DuckDB).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use arrow::array::{
    Array, Decimal128Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::DataType;
use bronze_ingest::verify::format_decimal;
use lake_common::manifest;
use lake_common::{Dataset, parquet_io};
use object_store::path::Path;
use support::*;

const ROWS_SQL: &str = r#"
INSERT INTO stop_events (event_id, event_seq, occurred_at, operation_id, client_id, symbol, event_type,
  trigger_price, stop_price, quantity, side, execution_token, payload_json, request_payload_hash,
  exchange_order_id, fill_price, slippage_pct, source, error_message, retry_count)
VALUES
 ('00000000-0000-0000-0000-0000000000a1', 9223372036854775807, '2026-03-01 23:59:59.999999+00', 1, 1, 'BTCUSDC',
  'EXECUTED', 999999999999.99999999, -999999999999.99999999, 0.00000001, 'BUY', 'tok-1',
  '{"a": {"b": [1, 2.5, "ü"], "c": null}, "emoji": "🚀"}', 'h', 'ex-1', 123.45678901, -49.9999, 'ws', NULL, 0),
 ('00000000-0000-0000-0000-0000000000a2', NULL, '2026-03-02 00:00:00+00', 2, 2, 'ETHUSDC',
  'FAILED', 'NaN', NULL, 1, 'SELL', NULL, '[]', NULL, NULL, NULL, NULL, 'cron', 'Überlauf – ошибка 错误', 2147483647),
 ('00000000-0000-0000-0000-0000000000a3', -1, '1999-12-31 23:59:59.5+00', 3, 3, 'X1',
  'BLOCKED', 0, 0, 0, NULL, '', '{}', NULL, NULL, 0, 0, 'manual', '', 0)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn values_round_trip_exactly() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    // Non-UTC session and database time zones must not shift anything.
    client
        .batch_execute("ALTER DATABASE robson SET timezone = 'Asia/Kathmandu'")
        .await
        .unwrap();
    client
        .batch_execute(&format!("SET timezone = 'America/St_Johns'; {ROWS_SQL}"))
        .await
        .unwrap();

    let out = h.run_text_ok(&["--dataset", "events"]);
    assert!(
        stdout(&out).contains("finding: 1 NaN or infinite values in trigger_price stored as NULL"),
        "{}",
        stdout(&out)
    );

    // Expected values, as PostgreSQL renders them.
    let expected = client
        .query(
            "SELECT event_id::text, event_seq, (extract(epoch FROM occurred_at) * 1000000)::bigint, symbol,
                    trigger_price::text, stop_price::text, quantity::text, fill_price::text, slippage_pct::text,
                    payload_json::text, error_message, retry_count, execution_token
             FROM stop_events ORDER BY occurred_at, event_id",
            &[],
        )
        .await
        .unwrap();

    let lake = h.lake();
    let ms = h.manifests(Dataset::BronzeEvents).await;
    let files = manifest::live_files(&ms);
    assert_eq!(
        files.iter().map(|f| f.date.to_string()).collect::<Vec<_>>(),
        ["1999-12-31", "2026-03-01", "2026-03-02"]
    );
    let mut batches = Vec::new();
    for f in &files {
        batches.extend(
            parquet_io::read_all(&lake, &Path::from(f.path.as_str()))
                .await
                .unwrap(),
        );
    }
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), expected.len());
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    let s = |name: &str| {
        col(name)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let dec = |name: &str| {
        let a = col(name);
        let DataType::Decimal128(_, scale) = a.data_type().clone() else {
            panic!("{name} not decimal")
        };
        let a = a
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap()
            .clone();
        (0..a.len())
            .map(|i| (!a.is_null(i)).then(|| format_decimal(a.value(i), scale)))
            .collect::<Vec<_>>()
    };
    let ts = col("occurred_at");
    assert_eq!(ts.data_type(), &lake_common::schema::utc_micros());
    let ts = ts
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap()
        .clone();
    let seq = col("event_seq")
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .clone();
    let retry = col("retry_count")
        .as_any()
        .downcast_ref::<Int32Array>()
        .unwrap()
        .clone();
    let norm = |v: Option<String>| v.map(|s| bronze_ingest::verify::normalise_decimal(&s));
    for (i, row) in expected.iter().enumerate() {
        assert_eq!(s("event_id").value(i), row.get::<_, String>(0));
        assert_eq!(
            (!seq.is_null(i)).then(|| seq.value(i)),
            row.get::<_, Option<i64>>(1)
        );
        assert_eq!(ts.value(i), row.get::<_, i64>(2), "row {i} occurred_at");
        assert_eq!(s("symbol").value(i), row.get::<_, String>(3));
        let nan_to_null = |v: Option<String>| v.filter(|s| s != "NaN");
        assert_eq!(
            dec("trigger_price")[i],
            norm(nan_to_null(row.get(4))),
            "row {i} trigger_price"
        );
        assert_eq!(dec("stop_price")[i], norm(row.get(5)));
        assert_eq!(dec("quantity")[i], norm(row.get(6)));
        assert_eq!(dec("fill_price")[i], norm(row.get(7)));
        assert_eq!(dec("slippage_pct")[i], norm(row.get(8)));
        assert_eq!(s("payload_json").value(i), row.get::<_, String>(9));
        let em = s("error_message");
        assert_eq!(
            (!em.is_null(i)).then(|| em.value(i).to_owned()),
            row.get::<_, Option<String>>(10)
        );
        assert_eq!(retry.value(i), row.get::<_, i32>(11));
        let tok = s("execution_token");
        assert_eq!(
            (!tok.is_null(i)).then(|| tok.value(i).to_owned()),
            row.get::<_, Option<String>>(12)
        );
    }
    // The 23:59:59.999999 row is in its own day, the midnight row in the next.
    assert_eq!(ts.value(1) % 86_400_000_000, 86_399_999_999);
}

/// DuckDB (from the test virtualenv) reads bronze/events with Hive partitioning
/// and agrees with PostgreSQL on count, decimal sums and timestamp bounds.
#[tokio::test(flavor = "multi_thread")]
async fn duckdb_reads_bronze_like_postgres() {
    use lake_testkit::glob::{has_module, python};
    assert!(
        has_module("duckdb"),
        "DuckDB is missing from {}: run `just setup` (pip install duckdb)",
        python().display()
    );
    let h = Harness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 30_000, 11)
        .await
        .unwrap();
    let env = h.local_lake_env(dir.path());
    let out = h
        .command_with(&env, &["--dataset", "events"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let script = format!(
        "import duckdb\n\
         r = duckdb.sql(\"SELECT count(*), sum(quantity)::VARCHAR, sum(fill_price)::VARCHAR, \
             epoch_us(min(occurred_at)), epoch_us(max(occurred_at)), count(DISTINCT date) \
             FROM read_parquet('{}/bronze/events/*/*.parquet', hive_partitioning=true)\").fetchall()[0]\n\
         print('|'.join(str(x) for x in r))\n",
        dir.path().display()
    );
    let out = std::process::Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let got = stdout(&out).trim().to_owned();
    let row = client
        .query_one(
            "SELECT count(*)::text, sum(quantity)::text, sum(fill_price)::text,
                    (extract(epoch FROM min(occurred_at)) * 1000000)::bigint::text,
                    (extract(epoch FROM max(occurred_at)) * 1000000)::bigint::text,
                    count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date)::text
             FROM stop_events",
            &[],
        )
        .await
        .unwrap();
    let n = bronze_ingest::verify::normalise_decimal;
    let want: Vec<String> = (0..6).map(|i| n(&row.get::<_, String>(i))).collect();
    let got: Vec<String> = got.split('|').map(n).collect();
    assert_eq!(
        got, want,
        "DuckDB vs PostgreSQL: count, sum(quantity), sum(fill_price), min, max, days"
    );
}
