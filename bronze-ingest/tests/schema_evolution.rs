//! Columns Django adds, retypes and drops after the contract was written (SPEC
//! §5.8): an added column of any common type is captured from the next batch
//! on and recorded in the manifest; DuckDB (`union_by_name`) and pyarrow (a
//! unified schema) read old and new files together; an unmapped type, and a
//! captured column dropped or changed to another Parquet type, stop the run
//! naming the column, and `--accept-schema` is the way on.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use arrow::datatypes::{DataType, TimeUnit};
use futures::TryStreamExt;
use lake_common::schema::PgType;
use lake_common::{Dataset, parquet_io};
use lake_testkit::error_line;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use support::*;

/// Added columns, one per mapping family, with the Arrow type each is stored as.
const ADDED: [(&str, &str, DataType); 15] = [
    ("venue", "varchar(40)", DataType::Utf8),
    ("fee", "numeric(12,4)", DataType::Decimal128(12, 4)),
    ("tags", "text[]", DataType::Utf8),
    ("Settled On", "date", DataType::Date32),
    ("ratio", "double precision", DataType::Float64),
    ("weight", "real", DataType::Float32),
    (
        "seen_local",
        "timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, None),
    ),
    ("at_time", "time", DataType::Time64(TimeUnit::Microsecond)),
    ("lots", "smallint", DataType::Int16),
    ("raw", "bytea", DataType::Binary),
    ("hold", "interval", DataType::Utf8),
    ("peer", "inet", DataType::Utf8),
    ("hedged", "boolean", DataType::Boolean),
    ("kind", "venue_kind", DataType::Utf8),
    ("meta", "jsonb", DataType::Utf8),
];

/// Copies bronze/events out of the bucket into `dir`, paths kept.
async fn download(h: &Harness, dir: &std::path::Path) {
    let lake = h.lake();
    let objects: Vec<_> = lake
        .store()
        .list(Some(&Dataset::BronzeEvents.root()))
        .try_collect()
        .await
        .unwrap();
    for o in objects {
        let target = dir.join(o.location.as_ref());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let bytes = lake
            .store()
            .get(&o.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(target, bytes).unwrap();
    }
}

fn python(script: &str) -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn added_columns_are_captured_and_read_with_the_old_files() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 2_000, 91).await;
    h.run_ok(&["--dataset", "events"]);

    let c = h.pg.client().await.unwrap();
    let adds: Vec<String> = ADDED
        .iter()
        .map(|(name, ty, _)| format!("ADD COLUMN \"{name}\" {ty}"))
        .collect();
    c.batch_execute(&format!(
        "CREATE TYPE venue_kind AS ENUM ('cex', 'dex'); ALTER TABLE stop_events {}",
        adds.join(", ")
    ))
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE captured_ids AS SELECT event_id FROM stop_events")
        .await
        .unwrap();
    generate_recent(&h.pg, 300, 92).await;
    // The new rows get values (but about one in sixteen, which keeps NULLs).
    c.batch_execute(
        "UPDATE stop_events SET venue = 'binance', fee = 1.2345 * retry_count, tags = ARRAY['a', 'b,c'], \
         \"Settled On\" = (occurred_at AT TIME ZONE 'UTC')::date, ratio = 0.1, weight = 0.5, \
         seen_local = occurred_at AT TIME ZONE 'UTC', at_time = '12:34:56.789', lots = -3, \
         raw = '\\x00ff'::bytea, hold = '1 day 02:03:04', peer = '10.0.0.1/8', hedged = true, \
         kind = 'dex', meta = '{\"a\": [1, 2]}' \
         WHERE event_id NOT IN (SELECT event_id FROM captured_ids) \
         AND right(event_id::text, 1) <> '0'"
    )
    .await
    .unwrap();
    // ±infinity has no Parquet value: NULL and a finding, not a blocked dataset.
    let infinite = c
        .execute(
            "UPDATE stop_events SET seen_local = '-infinity' \
             WHERE event_id NOT IN (SELECT event_id FROM captured_ids) \
             AND right(event_id::text, 1) = '0'",
            &[],
        )
        .await
        .unwrap();
    assert!(infinite > 0);
    let out = h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
    assert_eq!(
        dataset(&report_of(&out), "events")["findings"]["nan_to_null"]["seen_local"],
        infinite,
        "{}",
        stdout(&out)
    );

    // Reported as a finding, recorded in the manifest with its mapping.
    let events = dataset(&report_of(&out), "events");
    let reported: Vec<&str> = events["added_columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reported.len(), ADDED.len(), "{events}");
    assert!(reported.contains(&"fee (numeric(12,4))"), "{reported:?}");
    let ms = h.manifests(Dataset::BronzeEvents).await;
    assert!(ms[0].added_columns.is_empty());
    let recorded = &ms[1].added_columns;
    assert_eq!(recorded.len(), ADDED.len());
    assert_eq!(recorded[1].stored_as, PgType::Numeric(12, 4));
    assert_eq!(recorded[2].stored_as, PgType::AsText);

    // The new files hold the columns as mapped, after the contract's.
    let lake = h.lake();
    let file = &ms[1].files[0];
    let schema = parquet_io::read_all(&lake, &Path::from(file.path.as_str()))
        .await
        .unwrap()[0]
        .schema();
    for (name, _, ty) in &ADDED {
        assert_eq!(
            schema.field_with_name(name).unwrap().data_type(),
            ty,
            "{name}"
        );
    }

    // DuckDB and pyarrow read old and new files together, by name.
    let dir = tempfile::tempdir().unwrap();
    download(&h, dir.path()).await;
    let glob = format!("{}/bronze/events/*/*.parquet", dir.path().display());
    let duck = python(&format!(
        "import duckdb\n\
         r = duckdb.sql(\"\"\"SELECT count(*), count(venue), sum(fee)::VARCHAR, min(\"Settled On\")::VARCHAR, \
           max(tags), max(hold), max(peer), max(kind), count(*) FILTER (WHERE hedged), min(lots), \
           max(at_time)::VARCHAR, max(meta), max(hex(raw)) \
           FROM read_parquet('{glob}', union_by_name=true, hive_partitioning=true)\"\"\").fetchall()[0]\n\
         print('|'.join(str(x) for x in r))\n"
    ));
    let row = c
        .query_one(
            "SELECT count(*)::text, count(venue)::text, sum(fee)::text, min(\"Settled On\")::text, \
             max(tags::text), max(hold::text), max(peer::text), max(kind::text), \
             (count(*) FILTER (WHERE hedged))::text, min(lots)::text, max(at_time)::text, \
             max(meta::text), max(upper(encode(raw, 'hex'))) FROM stop_events",
            &[],
        )
        .await
        .unwrap();
    let want: Vec<String> = (0..13).map(|i| row.get::<_, String>(i)).collect();
    let n = bronze_ingest::verify::normalise_decimal;
    let got: Vec<String> = duck.split('|').map(str::to_owned).collect();
    assert_eq!(got.len(), 13, "{duck}");
    assert_eq!(n(&got[2]), n(&want[2]), "sum(fee)");
    for i in [0, 1, 3, 4, 5, 6, 7, 8, 9, 11, 12] {
        assert_eq!(
            got[i], want[i],
            "column {i} of DuckDB vs PostgreSQL: {duck}"
        );
    }
    assert!(got[10].starts_with("12:34:56.789"), "{duck}");
    let arrow = python(&format!(
        "import glob, pyarrow.dataset as ds, pyarrow.parquet as pq, pyarrow as pa\n\
         files = sorted(glob.glob('{glob}'))\n\
         schema = pa.unify_schemas([pq.read_schema(f) for f in files])\n\
         t = ds.dataset(files, schema=schema, format='parquet').to_table()\n\
         print(t.num_rows, t.column('venue').null_count, t.schema.field('fee').type)\n"
    ));
    let total: i64 = want[0].parse().unwrap();
    let with_venue: i64 = want[1].parse().unwrap();
    assert_eq!(
        arrow,
        format!("{total} {} decimal128(12, 4)", total - with_venue),
        "pyarrow"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmapped_dropped_and_retyped_columns_stop_the_run_until_accepted() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 500, 93).await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE stop_events ADD COLUMN lots smallint, ADD COLUMN note text")
        .await
        .unwrap();
    h.run_ok(&["--dataset", "events"]);

    // A type without a mapping: refused before pinning, nothing written.
    c.batch_execute("ALTER TABLE stop_events ADD COLUMN area point")
        .await
        .unwrap();
    generate_recent(&h.pg, 50, 94).await;
    let out = h.run(&["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("added column area is point, a type bronze has no mapping for"),
        "{line}"
    );
    assert_eq!(h.manifests(Dataset::BronzeEvents).await.len(), 1);
    c.batch_execute("ALTER TABLE stop_events DROP COLUMN area")
        .await
        .unwrap();

    // A name readers would take for a lineage column: refused the same way.
    c.batch_execute("ALTER TABLE stop_events ADD COLUMN \"_Batch\" integer")
        .await
        .unwrap();
    let out = h.run(&["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("added column _Batch would be read as _batch"),
        "{line}"
    );
    assert!(line.contains("RENAME COLUMN"), "{line}");
    c.batch_execute("ALTER TABLE stop_events DROP COLUMN \"_Batch\"")
        .await
        .unwrap();

    // varchar → text keeps the Parquet type: accepted without a word.
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN note TYPE varchar(80)")
        .await
        .unwrap();
    h.run_ok(&["--dataset", "events"]);

    // smallint → integer is another Parquet type; a dropped column is gone
    // from every later file: both stop the run, naming the way on.
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN lots TYPE integer, DROP COLUMN note")
        .await
        .unwrap();
    generate_recent(&h.pg, 50, 95).await;
    let batches = h.manifests(Dataset::BronzeEvents).await.len();
    let out = h.run(&["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("column lots was captured as smallint and is now integer"),
        "{line}"
    );
    assert!(
        line.contains("column note (captured as character varying(80)) was dropped or renamed"),
        "{line}"
    );
    assert!(line.contains("--accept-schema"), "{line}");
    assert_eq!(h.manifests(Dataset::BronzeEvents).await.len(), batches);
    // --verify audits the table as it is now: the same drift, the same exit.
    let out = h.run(&["--dataset", "events", "--verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("column lots was captured as smallint and is now integer"),
        "{}",
        error_line(&out)
    );

    h.run_ok(&["--dataset", "events", "--accept-schema"]);
    h.assert_lake_equals_postgres().await;
    let ms = h.manifests(Dataset::BronzeEvents).await;
    let last = ms.last().unwrap();
    assert_eq!(last.added_columns.len(), 1, "{:?}", last.added_columns);
    assert_eq!(last.added_columns[0].stored_as, PgType::Int4);
    // And the next run goes on from there without the flag.
    generate_recent(&h.pg, 20, 96).await;
    h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
}

/// The outbox compares versions on the columns both hold (row identity after a
/// rewrite): an added column changes no version by itself, an update of a
/// column the captured version holds is a new version, and so is an update of
/// the added column alone once a version holding it was captured.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_column_added_in_a_rewrite_recaptures_only_real_updates() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 1_000, 97).await;
    h.run_ok(&["--dataset", "outbox"]);
    let captured = h
        .committed_keys(Dataset::BronzeOutbox, "outbox_id")
        .await
        .len();
    let c = h.pg.client().await.unwrap();
    c.batch_execute(
        "ALTER TABLE outbox ADD COLUMN priority integer, ALTER COLUMN last_error TYPE varchar(600)",
    )
    .await
    .unwrap();
    let updated = c
        .execute(
            "UPDATE outbox SET priority = 5, retry_count = retry_count + 1 \
             WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 2)",
            &[],
        )
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "outbox"]);
    let outbox = dataset(&report_of(&out), "outbox");
    assert_eq!(
        outbox["rows"], updated,
        "only the updated versions: {outbox}"
    );
    assert_eq!(
        outbox["rewrite"]["duplicates_dropped"].as_u64(),
        Some(captured as u64 - updated),
        "{outbox}"
    );
    assert_eq!(outbox["added_columns"][0], "priority (integer)", "{outbox}");
    let again = c
        .execute(
            "UPDATE outbox SET priority = 6 \
             WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 2)",
            &[],
        )
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "outbox"]);
    assert_eq!(dataset(&report_of(&out), "outbox")["rows"], again);
    // --verify compares PostgreSQL's current versions with bronze's, added
    // column included: they agree.
    h.run_ok(&["--dataset", "outbox", "--verify"]);
}

/// A column added with a default gives every row a value no captured version
/// holds. That is no update: a volatile default (a table rewrite) re-captures
/// nothing, and a constant one (no rewrite) leaves --verify clean; an update of
/// the new column is a new version.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_column_added_with_a_default_is_no_new_version() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 800, 98).await;
    h.run_ok(&["--dataset", "outbox"]);
    let captured = h
        .committed_keys(Dataset::BronzeOutbox, "outbox_id")
        .await
        .len() as u64;
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE outbox ADD COLUMN jitter double precision DEFAULT random()")
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "outbox"]);
    let outbox = dataset(&report_of(&out), "outbox");
    assert_eq!(outbox["rows"], 0, "nothing re-captured: {outbox}");
    assert_eq!(
        outbox["rewrite"]["duplicates_dropped"].as_u64(),
        Some(captured),
        "{outbox}"
    );

    c.batch_execute("ALTER TABLE outbox ADD COLUMN tier integer NOT NULL DEFAULT 7")
        .await
        .unwrap();
    h.run_ok(&["--dataset", "outbox", "--verify"]);
    let updated = c
        .execute(
            "UPDATE outbox SET tier = 8 \
             WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 3)",
            &[],
        )
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "outbox"]);
    assert_eq!(dataset(&report_of(&out), "outbox")["rows"], updated);
    h.run_ok(&["--dataset", "outbox", "--verify"]);
}

/// Columns stored as PostgreSQL's text depend on session settings: a role
/// default (`ALTER ROLE … SET IntervalStyle`) must not change what bronze
/// writes, or two attempts of one batch and an old and a new file disagree.
#[tokio::test(flavor = "multi_thread")]
async fn role_defaults_do_not_change_the_text_forms() {
    let h = Harness::new().await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute(
        "ALTER TABLE stop_events ADD COLUMN hold interval, ADD COLUMN prices float8[], \
         ADD COLUMN blobs bytea[]; \
         ALTER ROLE lake_reader SET IntervalStyle = 'iso_8601'; \
         ALTER ROLE lake_reader SET extra_float_digits = 0; \
         ALTER ROLE lake_reader SET bytea_output = 'escape'",
    )
    .await
    .unwrap();
    generate_recent(&h.pg, 20, 99).await;
    c.batch_execute(
        "UPDATE stop_events SET hold = '1 day 02:03:04', prices = ARRAY[0.1::float8, 1/3::float8], \
         blobs = ARRAY['\\x00ff'::bytea]",
    )
    .await
    .unwrap();
    h.run_ok(&["--dataset", "events"]);
    // What bronze's fixed settings print (this client's role has no defaults).
    c.batch_execute(
        "SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'",
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT min(hold::text), min(prices::text), min(blobs::text) FROM stop_events",
            &[],
        )
        .await
        .unwrap();
    for (i, column) in ["hold", "prices", "blobs"].into_iter().enumerate() {
        let mut got = h.committed_keys(Dataset::BronzeEvents, column).await;
        got.dedup();
        assert_eq!(got, [row.get::<_, String>(i)], "{column}");
    }
}
