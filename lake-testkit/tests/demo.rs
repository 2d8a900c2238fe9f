//! The demo generator: shape and distributions of the data, determinism, appends.

use std::time::Instant;

use lake_testkit::{TestPostgres, demo};
use tokio_postgres::Client;

async fn fresh_db() -> (TestPostgres, Client) {
    let pg = TestPostgres::start().await.expect("start PostgreSQL");
    let client = pg.client().await.expect("connect");
    demo::create_schema(&client).await.expect("create schema");
    (pg, client)
}

async fn scalar_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn scalar_f64(client: &Client, sql: &str) -> f64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Every constraint and index definition of the two tables.
async fn schema_objects(client: &Client) -> String {
    client
        .query_one(
            "SELECT (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\\n' ORDER BY conname)
                     FROM pg_constraint WHERE conrelid IN ('stop_events'::regclass, 'outbox'::regclass))
                 || E'\\n' ||
                    (SELECT string_agg(indexdef, E'\\n' ORDER BY indexname)
                     FROM pg_indexes WHERE tablename IN ('stop_events', 'outbox'))",
            &[],
        )
        .await
        .expect("query")
        .get(0)
}

/// md5 of both tables in a fixed order, as text.
async fn fingerprint(client: &Client) -> (String, String) {
    let row = client
        .query_one(
            "SELECT (SELECT md5(string_agg(e::text, '|' ORDER BY e.event_id)) FROM stop_events e),
                    (SELECT md5(string_agg(o::text, '|' ORDER BY o.outbox_id)) FROM outbox o)",
            &[],
        )
        .await
        .expect("query");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn generates_100k_realistic_rows() {
    let (_pg, client) = fresh_db().await;
    let schema_before = schema_objects(&client).await;
    let started = Instant::now();
    let report = demo::generate(&client, 100_000, 42).await.unwrap();
    println!("generated {report:?} in {:?}", started.elapsed());
    // The bulk load re-created exactly the keys and indexes it dropped.
    assert_eq!(schema_objects(&client).await, schema_before);
    assert_eq!(report.events, 100_000);
    assert_eq!(report.first_row, 0);

    let q = |sql: &'static str| scalar_i64(&client, sql);
    assert_eq!(q("SELECT count(*) FROM stop_events").await, 100_000);
    assert_eq!(q("SELECT count(*) FROM outbox").await, report.outbox as i64);
    let outbox_share = report.outbox as f64 / 100_000.0;
    assert!(
        (0.88..0.96).contains(&outbox_share),
        "outbox share {outbox_share}"
    );

    assert_eq!(
        q("SELECT count(DISTINCT client_id) FROM stop_events").await,
        20
    );
    assert_eq!(q("SELECT min(client_id) FROM stop_events").await, 1);
    assert_eq!(q("SELECT max(client_id) FROM stop_events").await, 20);
    let symbols = q("SELECT count(DISTINCT symbol) FROM stop_events").await;
    assert!((22..=25).contains(&symbols), "{symbols} symbols");
    assert_eq!(
        q("SELECT count(*) FROM stop_events WHERE symbol !~ '^[A-Z0-9]{2,20}$'").await,
        0
    );

    let types: Vec<(String, i64)> = client
        .query(
            "SELECT event_type, count(*) FROM stop_events GROUP BY 1 ORDER BY 2 DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    println!("event types: {types:?}");
    for t in [
        "STOP_TRIGGERED",
        "EXECUTION_SUBMITTED",
        "EXECUTED",
        "FAILED",
        "BLOCKED",
        "STALE_PRICE",
        "KILL_SWITCH",
        "SLIPPAGE_BREACH",
        "CIRCUIT_BREAKER",
    ] {
        assert!(
            types.iter().any(|(name, n)| name == t && *n > 20),
            "{t} missing or rare: {types:?}"
        );
    }
    assert_eq!(types.len(), 9);

    let null_seq = scalar_f64(
        &client,
        "SELECT avg((event_seq IS NULL)::int)::float8 FROM stop_events",
    )
    .await;
    assert!(
        (0.07..=0.13).contains(&null_seq),
        "NULL event_seq share {null_seq}"
    );
    let null_token = scalar_f64(
        &client,
        "SELECT avg((execution_token IS NULL)::int)::float8 FROM stop_events",
    )
    .await;
    assert!(
        (0.02..=0.12).contains(&null_token),
        "NULL token share {null_token}"
    );

    // Executions: 2-4 events, one operation/client/symbol/side, lifecycle order
    // (the last one may be cut short by the end of the range).
    let bad_executions = q("SELECT count(*) FROM (
            SELECT execution_token FROM stop_events WHERE execution_token IS NOT NULL
                AND operation_id < (SELECT max(operation_id) FROM stop_events) GROUP BY 1
            HAVING count(*) NOT BETWEEN 2 AND 4
                OR count(DISTINCT operation_id) <> 1 OR count(DISTINCT client_id) <> 1
                OR count(DISTINCT symbol) <> 1 OR count(DISTINCT side) <> 1
                OR max(occurred_at) - min(occurred_at) > interval '15 seconds'
                OR (array_agg(event_type ORDER BY occurred_at))[1] <> 'STOP_TRIGGERED') x")
    .await;
    assert_eq!(bad_executions, 0);
    let executions = q("SELECT count(DISTINCT execution_token) FROM stop_events").await;
    assert!(executions > 25_000, "{executions} executions");
    // Terminal events come last; only the execution cut at the end of the range may be open.
    let open = q("SELECT count(*) FROM (
            SELECT execution_token, (array_agg(event_type ORDER BY occurred_at DESC))[1] AS last
            FROM stop_events WHERE execution_token IS NOT NULL GROUP BY 1) x
            WHERE last NOT IN ('EXECUTED', 'FAILED', 'BLOCKED', 'SLIPPAGE_BREACH')")
    .await;
    assert!(open <= 1, "{open} open executions");
    // Without a token, operation_id still identifies the execution.
    assert_eq!(
        q(
            "SELECT count(*) FROM (SELECT operation_id FROM stop_events GROUP BY 1
              HAVING count(DISTINCT coalesce(execution_token, '')) > 1) x"
        )
        .await,
        0
    );

    // Fills, slippage and errors where SPEC §6/§7 expect them.
    assert_eq!(
        q(
            "SELECT count(*) FROM stop_events WHERE event_type = 'EXECUTED'
              AND (fill_price IS NULL OR slippage_pct IS NULL OR exchange_order_id IS NULL)"
        )
        .await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM stop_events WHERE slippage_pct NOT BETWEEN -50 AND 50").await,
        0
    );
    let typical = scalar_f64(
        &client,
        "SELECT avg((abs(slippage_pct) <= 2)::int)::float8 FROM stop_events WHERE event_type = 'EXECUTED'",
    )
    .await;
    assert!(typical > 0.93, "share of |slippage| <= 2: {typical}");
    assert_eq!(
        q("SELECT count(*) FROM stop_events WHERE event_type = 'FAILED' AND error_message IS NULL")
            .await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM stop_events WHERE event_type IN ('STOP_TRIGGERED', 'EXECUTED')
              AND (stop_price IS NULL OR trigger_price IS NULL OR quantity IS NULL OR side NOT IN ('BUY', 'SELL'))")
        .await,
        0
    );
    assert!(
        q("SELECT count(*) FROM stop_events WHERE stop_price < 0.0001").await > 0,
        "no sub-cent prices"
    );
    assert!(q("SELECT count(*) FROM stop_events WHERE retry_count > 0").await > 0);
    assert_eq!(q("SELECT count(DISTINCT source) FROM stop_events").await, 3);
    assert_eq!(
        q(
            "SELECT count(*) FROM stop_events WHERE event_type = 'EXECUTION_SUBMITTED'
              AND length(request_payload_hash) <> 64"
        )
        .await,
        0
    );

    // Time window: 30 days ending 2025-06-30T00:00:00Z.
    let in_window = q("SELECT count(*) FROM stop_events
            WHERE occurred_at >= '2025-05-31T00:00:00Z' AND occurred_at < '2025-06-30T00:00:00Z'")
    .await;
    assert_eq!(in_window, 100_000);
    assert_eq!(
        q("SELECT count(DISTINCT occurred_at::date) FROM stop_events").await,
        30
    );

    // Nested JSON consistent with the columns.
    assert_eq!(
        q("SELECT count(*) FROM stop_events
              WHERE (payload_json #>> '{operation,client_id}')::bigint <> client_id
                 OR payload_json ->> 'event_type' <> event_type
                 OR (event_type = 'EXECUTED' AND (payload_json #>> '{fill,price}')::numeric <> fill_price)")
        .await,
        0
    );
    // UUIDs look like Django's uuid4.
    assert_eq!(
        q("SELECT count(*) FROM stop_events WHERE substr(event_id::text, 15, 1) <> '4'").await,
        0
    );

    // Outbox rows point at their event and mostly are published.
    assert_eq!(
        q("SELECT count(*) FROM outbox o JOIN stop_events e USING (event_id)
              WHERE o.aggregate_id <> e.operation_id OR o.created_at < e.occurred_at
                 OR (o.published AND o.published_at IS NULL) OR (NOT o.published AND o.last_error IS NULL)")
        .await,
        0
    );
    let published = scalar_f64(&client, "SELECT avg(published::int)::float8 FROM outbox").await;
    assert!(
        (0.95..0.99).contains(&published),
        "published share {published}"
    );
}

#[tokio::test]
async fn same_seed_is_identical_and_appends_never_collide() {
    let ((_pg_a, a), (_pg_b, b), (_pg_c, c)) = tokio::join!(fresh_db(), fresh_db(), fresh_db());

    // A: 12 001 rows at once (bulk path). B: 4 000 + 8 001 rows with the same seed
    // (row by row; the execution cut at row 4 000 is completed by the second call).
    // Both must be identical.
    let all = demo::generate(&a, 12_001, 7).await.unwrap();
    let first = demo::generate(&b, 4_000, 7).await.unwrap();
    let second = demo::generate(&b, 8_001, 7).await.unwrap();
    assert_eq!(
        (all.first_row, first.first_row, second.first_row),
        (0, 0, 4_000)
    );
    assert_eq!(first.outbox + second.outbox, all.outbox);
    let fp = fingerprint(&a).await;
    assert_eq!(fp, fingerprint(&b).await);

    // A different seed gives different data.
    demo::generate(&c, 12_001, 8).await.unwrap();
    assert_ne!(fingerprint(&c).await.0, fp.0);

    // Another seed appends after a block boundary, without collisions.
    let other = demo::generate(&a, 2_000, 8).await.unwrap();
    assert_eq!(other.first_row, 12_012);
    // A hand-inserted event far ahead in event_seq is skipped, too.
    a.batch_execute(
        "INSERT INTO stop_events (event_id, event_seq, occurred_at, operation_id, client_id, symbol,
             event_type, payload_json, source, retry_count)
         VALUES (gen_random_uuid(), 20000, now(), 1, 1, 'BTCUSDC', 'STALE_PRICE', '{}', 'manual', 0)",
    )
    .await
    .unwrap();
    let again = demo::generate(&a, 2_000, 7).await.unwrap();
    assert_eq!(again.first_row, 20_004);
    let q = |sql: &'static str| scalar_i64(&a, sql);
    assert_eq!(q("SELECT count(*) FROM stop_events").await, 16_002);
    assert_eq!(
        q("SELECT count(*) FROM outbox").await as u64,
        all.outbox + other.outbox + again.outbox
    );
    // Tokens never repeat across calls.
    assert_eq!(
        q("SELECT count(DISTINCT execution_token) FROM stop_events").await,
        q(
            "SELECT count(*) FROM (SELECT DISTINCT execution_token, operation_id FROM stop_events
               WHERE execution_token IS NOT NULL) x"
        )
        .await
    );
}

#[tokio::test]
async fn large_load_does_not_wait_for_a_busy_table() {
    let pg = TestPostgres::start().await.unwrap();
    let client = pg.client().await.unwrap();
    demo::create_schema(&client).await.unwrap();
    // Another session reads the (empty) table in an open transaction, as an ingest
    // run would: the bulk path cannot lock it and must fall back, not wait.
    let reader = pg.client().await.unwrap();
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM stop_events")
        .await
        .unwrap();
    let started = Instant::now();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        demo::generate(&client, 12_000, 3),
    )
    .await
    .expect("generate waited for the reader")
    .unwrap();
    println!("generated {report:?} in {:?}", started.elapsed());
    assert_eq!(report.events, 12_000);
    let seen: i64 = reader
        .query_one("SELECT count(*) FROM stop_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "the reader's snapshot predates the load");
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        scalar_i64(&client, "SELECT count(*) FROM stop_events").await,
        12_000
    );
    // Foreign keys hold although the per-row checks were skipped.
    assert_eq!(
        scalar_i64(
            &client,
            "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT FROM stop_events e WHERE e.event_id = o.event_id)"
        )
        .await,
        0
    );
}

/// Measures the 1M-row load (prints the report):
/// `cargo nextest run -p lake-testkit --run-ignored only --no-capture`.
#[tokio::test]
#[ignore = "benchmark"]
async fn loads_one_million_rows() {
    let (_pg, client) = fresh_db().await;
    let report = demo::generate(&client, 1_000_000, 1).await.unwrap();
    println!("1M rows: {report:?}");
    assert_eq!(
        scalar_i64(&client, "SELECT count(*) FROM stop_events").await,
        1_000_000
    );
}
