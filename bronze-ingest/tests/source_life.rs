//! Exactly once through the life of the source database (SPEC §5.1, §5.7):
//! migrations that rewrite a table, maintenance that moves rows without new
//! xids, outbox rows updated long after they were created.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use support::*;

/// `ALTER COLUMN … TYPE` with a conversion re-inserts every row under the
/// ALTER's xid. Every row of the look-back window then looks new; bronze must
/// notice the rewrite and commit none of them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_rewrite_duplicates_nothing() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 3_000, 41).await;
    h.run_ok(&["--dataset", "events"]);
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN error_message TYPE varchar(500)")
        .await
        .unwrap();
    generate_recent(&h.pg, 200, 42).await;
    let out = h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
    let events = dataset(&report_of(&out), "events");
    assert_eq!(events["rows"], 200, "only the new rows: {events}");
    assert_eq!(events["rewrite"]["duplicates_dropped"], 3_000, "{events}");

    // And again with int4 -> int8, on the rewritten table.
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN retry_count TYPE bigint")
        .await
        .unwrap();
    let out = h.run(&["--dataset", "events"]);
    // A retype to another Parquet type is schema drift: refused, nothing written.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("retry_count"), "{}", stderr(&out));
    h.assert_lake_equals_postgres().await;
}

/// `VACUUM FULL` and `CLUSTER` write a new file for the table but keep every
/// row's xmin: nothing is exported again, and nothing else changes.
#[tokio::test(flavor = "multi_thread")]
async fn vacuum_full_and_cluster_change_nothing() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 2_000, 43).await;
    h.run_ok(&["--dataset", "events"]);
    let before = h.checksums(Dataset::BronzeEvents).await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute("VACUUM FULL stop_events").await.unwrap();
    c.batch_execute("CLUSTER stop_events USING stop_events_occurred_at_idx")
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "events"]);
    let events = dataset(&report_of(&out), "events");
    assert_eq!(events["rows"].as_u64().unwrap_or(0), 0, "{events}");
    assert_eq!(h.checksums(Dataset::BronzeEvents).await, before);
    h.assert_lake_equals_postgres().await;
}

/// An outbox row created before the look-back window and published (updated)
/// after it — a broker down over a weekend: its new version is captured.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_row_updated_long_after_it_was_created_is_captured() {
    let h = Harness::new().await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute(
        "INSERT INTO outbox (outbox_id, aggregate_type, aggregate_id, event_type, correlation_id, \
         routing_key, exchange, payload, published, retry_count, created_at) VALUES \
         ('00000000-0000-0000-0000-00000000000a', 'stop', 1, 'STOP_TRIGGERED', 'corr-a', 'rk', 'ex', \
          '{}', false, 0, now() - interval '5 days')",
    )
    .await
    .unwrap();
    h.run_ok(&["--dataset", "outbox"]);
    assert_eq!(
        h.committed_keys(Dataset::BronzeOutbox, "outbox_id")
            .await
            .len(),
        1
    );
    c.batch_execute(
        "UPDATE outbox SET published = true, published_at = now(), retry_count = 3 \
         WHERE correlation_id = 'corr-a'",
    )
    .await
    .unwrap();
    h.run_ok(&["--dataset", "outbox"]);
    assert_eq!(
        h.committed_keys(Dataset::BronzeOutbox, "outbox_id").await,
        vec!["00000000-0000-0000-0000-00000000000a".to_owned(); 2],
        "both versions of the row"
    );
    // Nothing new: nothing captured twice.
    h.run_ok(&["--dataset", "outbox"]);
    assert_eq!(
        h.committed_keys(Dataset::BronzeOutbox, "outbox_id")
            .await
            .len(),
        2
    );
}

/// A rewrite of the outbox re-inserts every row version PostgreSQL holds; only
/// versions that differ from the last captured one of their `outbox_id` (a real
/// update in the same batch) are new.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_rewrite_captures_only_real_updates() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 1_000, 44).await;
    h.run_ok(&["--dataset", "outbox"]);
    let captured = h
        .committed_keys(Dataset::BronzeOutbox, "outbox_id")
        .await
        .len();
    assert!(captured > 0);
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE outbox ALTER COLUMN last_error TYPE varchar(500)")
        .await
        .unwrap();
    let updated = c
        .execute(
            "UPDATE outbox SET retry_count = retry_count + 1 \
             WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 3)",
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
        "every other version was captured already: {outbox}"
    );
    assert_eq!(
        h.committed_keys(Dataset::BronzeOutbox, "outbox_id")
            .await
            .len(),
        captured + updated as usize
    );
}

/// `VACUUM FREEZE` in every database, template0 included: after a jump of the
/// xid counter the server refuses writes unless every database was frozen.
async fn freeze_every_database(pg: &lake_testkit::TestPostgres) {
    let admin = pg.client().await.unwrap();
    admin
        .batch_execute("ALTER DATABASE template0 WITH ALLOW_CONNECTIONS true")
        .await
        .unwrap();
    for db in ["robson", "postgres", "template1", "template0"] {
        let mut config = pg.config();
        config.dbname(db);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute("VACUUM FREEZE").await.unwrap();
    }
}

/// Moves the cluster's next xid to each of `steps` in turn (`pg_resetwal -x` on
/// the stopped server), freezing every database after each. Steps are
/// segment-aligned (0x100000 xids per pg_xact segment), so the server creates
/// the new commit-log segment itself.
async fn push_xid_counter(pg: &mut lake_testkit::TestPostgres, steps: &[u64]) {
    // The rows written so far must be frozen first, or they would turn into
    // "future" transactions for PostgreSQL too.
    freeze_every_database(pg).await;
    for next in steps {
        pg.stop();
        let data_dir = pg.data_dir().display().to_string();
        pg.run_tool("pg_resetwal", &["-x", &next.to_string(), "-D", &data_dir])
            .await
            .unwrap();
        pg.restart().await.unwrap();
        freeze_every_database(pg).await;
    }
}

/// SPEC §5.2 on an old cluster: rows frozen long ago keep their raw xmin
/// (PostgreSQL ≥ 9.4), which after 2^31 more transactions looks like a *future*
/// xid to any "the 2^31 below H" rule. Push the xid counter past 2^31 beyond the
/// frozen rows (`pg_resetwal -x` in two steps, freezing every database after
/// each, as the PostgreSQL docs describe): the first batch exports them exactly
/// once, `--verify` agrees, and a backfill of their day keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn rows_frozen_two_billion_transactions_ago_are_exported_exactly_once() {
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 500, 45).await;
    push_xid_counter(&mut h.pg, &[954_u64 << 20, 2_100 << 20]).await;
    let c = h.pg.client().await.unwrap();
    let (oldest, now): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT min(xmin::text::bigint), pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 FROM stop_events",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        now - oldest > 1 << 31,
        "the counter is 2^31 past the old rows: {oldest} .. {now}"
    );
    generate_recent(&h.pg, 100, 46).await;

    h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
    let out = h.run(&["--verify", "--dataset", "events"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify agrees: {}",
        stdout(&out)
    );
    let day = c
        .query_one(
            "SELECT (min(occurred_at) AT TIME ZONE 'UTC')::date::text FROM stop_events",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    h.run_ok(&["--dataset", "events", "--date", &day]);
    h.assert_lake_equals_postgres().await;
}

/// 2^31 transactions between two batches cannot be told apart by 32-bit xmin:
/// the batch is refused before anything is pinned (exit 2) with the command to
/// run; `--rebase` then commits exactly the rows bronze does not hold yet.
#[tokio::test(flavor = "multi_thread")]
async fn a_span_of_two_billion_transactions_is_refused_and_rebase_recovers_exactly() {
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 400, 47).await;
    h.run_ok(&["--dataset", "events"]);
    push_xid_counter(&mut h.pg, &[954_u64 << 20, 2_100 << 20]).await;
    generate_recent(&h.pg, 150, 48).await;

    let out = h.run(&["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bronze-ingest --dataset events --rebase"),
        "says what to run: {}",
        stderr(&out)
    );
    assert_eq!(
        h.manifests(Dataset::BronzeEvents).await.len(),
        1,
        "nothing pinned"
    );

    let out = h.run_ok(&["--dataset", "events", "--rebase"]);
    let events = dataset(&report_of(&out), "events");
    assert_eq!(events["rows"], 150, "{events}");
    assert_eq!(events["rewrite"]["duplicates_dropped"], 400, "{events}");
    h.assert_lake_equals_postgres().await;
    // Back to incremental batches.
    generate_recent(&h.pg, 20, 49).await;
    h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
}

/// #15 item 3: the outbox audit checks that bronze holds every row PostgreSQL
/// still has, in its current version. The cleanup deleting published rows is
/// not a mismatch; a version bronze never captured is. `NaN` in
/// `stop_events.quantity` (NULL in bronze) does not fail the events audit.
#[tokio::test(flavor = "multi_thread")]
async fn verify_respects_the_outbox_cleanup_and_nan_quantities() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 1_000, 61).await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute(
        "UPDATE stop_events SET quantity = 'NaN' WHERE event_id IN \
         (SELECT event_id FROM stop_events ORDER BY event_id LIMIT 5)",
    )
    .await
    .unwrap();
    h.run_ok(&[]);
    let out = h.run_text_ok(&["--verify"]);
    assert!(stdout(&out).contains("0 mismatched"), "{}", stdout(&out));

    // The cleanup deletes published rows: bronze keeps them, no mismatch.
    let deleted = c
        .execute(
            "DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 50)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 50);
    let out = h.run_text_ok(&["--verify"]);
    assert!(stdout(&out).contains("0 mismatched"), "{}", stdout(&out));
    let before = h
        .committed_keys(Dataset::BronzeOutbox, "outbox_id")
        .await
        .len();
    h.run_ok(&[]);
    assert_eq!(
        h.committed_keys(Dataset::BronzeOutbox, "outbox_id")
            .await
            .len(),
        before,
        "the cleanup removed nothing from bronze"
    );

    // A version bronze does not hold (its batch's manifest lost a file).
    c.batch_execute(
        "UPDATE outbox SET retry_count = retry_count + 1 WHERE outbox_id = \
         (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 1)",
    )
    .await
    .unwrap();
    h.run_ok(&["--dataset", "outbox"]);
    let lake = h.lake();
    let mut ms = h.manifests(Dataset::BronzeOutbox).await;
    let mut last = ms.pop().unwrap();
    assert_eq!(last.rows, 1);
    last.files.clear();
    lake.put(&Dataset::BronzeOutbox.manifest(last.batch), last.to_bytes())
        .await
        .unwrap();
    let out = h.run_text(&["--verify", "--dataset", "outbox"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("MISMATCH bronze/outbox"),
        "{}",
        stdout(&out)
    );
}

/// SPEC §5.6: an outbox backfill never removes a captured version that
/// PostgreSQL no longer holds (the cleanup deleted it); it adds only the
/// versions bronze lacks.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_backfill_after_the_cleanup_loses_nothing() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 800, 62).await;
    h.run_ok(&[]);
    let before = h.committed_keys(Dataset::BronzeOutbox, "outbox_id").await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute("DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 40)")
        .await
        .unwrap();
    let day: String = c
        .query_one(
            "SELECT (max(created_at) AT TIME ZONE 'UTC')::date::text FROM outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = h.run_ok(&["--dataset", "outbox", "--date", &day]);
    let outbox = dataset(&report_of(&out), "outbox");
    assert_eq!(outbox["rows"], 0, "nothing new to add: {outbox}");
    assert_eq!(outbox["superseded_files"], 0, "{outbox}");
    let mut after = h.committed_keys(Dataset::BronzeOutbox, "outbox_id").await;
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "every captured version kept, none twice");
    let out = h.run_text_ok(&["--verify", "--dataset", "outbox"]);
    assert!(stdout(&out).contains("0 mismatched"), "{}", stdout(&out));
}

/// A rewrite that commits while an older transaction is still open: the batch
/// that first sees the new file node has a horizon below the rewrite's xid, so
/// the rewritten rows fall into the *next* batch, which must drop them too.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewrite_behind_an_open_transaction_duplicates_nothing() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 1_000, 63).await;
    h.run_ok(&["--dataset", "events"]);
    // Rows committed before the older transaction starts, so the next batch
    // has a range (and sees the new file node) while it is still open.
    generate_recent(&h.pg, 50, 67).await;
    let holder = h.pg.client().await.unwrap();
    holder
        .batch_execute("BEGIN; CREATE TEMP TABLE held (x int); INSERT INTO held VALUES (1)")
        .await
        .unwrap();
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN error_message TYPE varchar(500)")
        .await
        .unwrap();
    generate_recent(&h.pg, 100, 64).await;
    let out = h.run_ok(&["--dataset", "events"]);
    let events = dataset(&report_of(&out), "events");
    // Those 50 rows were rewritten too (they now carry the ALTER's xid).
    assert_eq!(events["rows"], 0, "{events}");
    assert!(
        !events["rewrite"].is_null(),
        "the new file node was seen: {events}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let out = h.run_ok(&["--dataset", "events"]);
    let events = dataset(&report_of(&out), "events");
    assert_eq!(
        events["rows"], 150,
        "only the rows never exported: {events}"
    );
    h.assert_lake_equals_postgres().await;
    generate_recent(&h.pg, 10, 65).await;
    let out = h.run_ok(&["--dataset", "events"]);
    let events = dataset(&report_of(&out), "events");
    assert!(
        events["rewrite"].is_null(),
        "past the rewrite, no dedup: {events}"
    );
    h.assert_lake_equals_postgres().await;
}

/// A backfill in the batch after a rewrite re-exports its days whole: their
/// earlier files are superseded, so they are not "already captured".
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_right_after_a_rewrite_keeps_its_days() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 1_000, 66).await;
    h.run_ok(&["--dataset", "events"]);
    let c = h.pg.client().await.unwrap();
    c.batch_execute("ALTER TABLE stop_events ALTER COLUMN error_message TYPE varchar(500)")
        .await
        .unwrap();
    let day: String = c
        .query_one(
            "SELECT (max(occurred_at) AT TIME ZONE 'UTC')::date::text FROM stop_events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    h.run_ok(&["--dataset", "events", "--date", &day]);
    h.assert_lake_equals_postgres().await;
}

/// The outbox's row-identity state is part of the checkpointed state (SPEC
/// §5.7): written with each checkpoint, pruned to the rows PostgreSQL still
/// holds, and enough on its own — a rewrite after the files of the state's
/// batches are gone (as retention will remove them) re-captures nothing, and
/// --verify agrees.
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_row_identity_state_is_checkpointed_and_outlives_its_files() {
    use lake_common::manifest::{self, CHECKPOINT_INTERVAL};
    use lake_common::parquet_io;
    use object_store::path::Path;

    let h = Harness::new().await;
    generate_recent(&h.pg, 400, 71).await;
    h.run_ok(&["--dataset", "outbox"]);
    let c = h.pg.client().await.unwrap();
    let first_files = h.manifests(Dataset::BronzeOutbox).await[0].files.clone();
    assert!(!first_files.is_empty());
    for i in 1..CHECKPOINT_INTERVAL {
        if i == CHECKPOINT_INTERVAL - 1 {
            // The outbox cleanup: these rows are never needed again.
            c.batch_execute(
                "DELETE FROM outbox WHERE outbox_id IN \
                 (SELECT outbox_id FROM outbox ORDER BY outbox_id DESC LIMIT 20)",
            )
            .await
            .unwrap();
        }
        c.execute(
            "UPDATE outbox SET retry_count = retry_count + 1 WHERE outbox_id IN \
             (SELECT outbox_id FROM outbox ORDER BY outbox_id OFFSET $1 LIMIT 3)",
            &[&(i as i64 * 3)],
        )
        .await
        .unwrap();
        h.run_ok(&["--dataset", "outbox"]);
    }
    let lake = h.lake();
    let checkpoint = manifest::read_checkpoint(&lake, Dataset::BronzeOutbox, CHECKPOINT_INTERVAL)
        .await
        .unwrap();
    let state = checkpoint
        .identity_state
        .expect("the checkpoint references a row-identity state");
    assert_eq!(state.batch, CHECKPOINT_INTERVAL);
    let held: usize = parquet_io::read_all(&lake, &Path::from(state.path.as_str()))
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let outbox_rows = h.pg_count("SELECT count(*) FROM outbox").await;
    assert_eq!(
        held as i64, outbox_rows,
        "one version per row PostgreSQL holds"
    );

    // Retention removed the first batch's files; then a migration rewrites.
    let gone: Vec<Path> = first_files
        .iter()
        .map(|f| Path::from(f.path.as_str()))
        .collect();
    lake.delete_all(gone).await.unwrap();
    c.batch_execute("ALTER TABLE outbox ALTER COLUMN last_error TYPE varchar(650)")
        .await
        .unwrap();
    let out = h.run_ok(&["--dataset", "outbox"]);
    let outbox = dataset(&report_of(&out), "outbox");
    assert_eq!(outbox["rows"], 0, "nothing re-captured: {outbox}");
    assert_eq!(
        outbox["rewrite"]["duplicates_dropped"].as_i64(),
        Some(outbox_rows),
        "{outbox}"
    );
    h.run_ok(&["--dataset", "outbox", "--verify"]);
}
