//! PostgreSQL faults: login, schema drift, privileges.

use crate::util::{Green, with};

#[tokio::test]
async fn wrong_password_fails_the_connect_line_only() {
    let green = Green::start().await;
    let env = with(&green.env(), "DJANGO_DB_PASSWORD", Some("wrong-pw-3b9e0d"));
    let out = smoke(&env).await;
    out.assert_code(1);
    out.assert_line(
        "postgres.connect",
        "FAIL",
        &[
            "password authentication failed for user \"lake_reader\"",
            "28P01",
            "fix: check DJANGO_DB_PASSWORD",
        ],
    );
    for name in [
        "postgres.version",
        "postgres.select",
        "postgres.contract",
        "postgres.snapshot",
        "postgres.privileges",
    ] {
        out.assert_line(name, "SKIP", &["not run: postgres.connect failed"]);
    }
    // S3 and the lake do not depend on PostgreSQL.
    out.assert_others_pass(&[
        ("postgres.connect", "FAIL"),
        ("postgres.version", "SKIP"),
        ("postgres.select", "SKIP"),
        ("postgres.contract", "SKIP"),
        ("postgres.snapshot", "SKIP"),
        ("postgres.privileges", "SKIP"),
        ("lake.bronze_freshness", "WARN"),
        ("lake.silver_freshness", "WARN"),
    ]);
    out.assert_never_shows("wrong-pw-3b9e0d");
}

async fn smoke(env: &[(String, String)]) -> crate::util::Outcome {
    crate::util::smoke(env, &[]).await
}

const FRESHNESS: [(&str, &str); 2] = [
    ("lake.bronze_freshness", "WARN"),
    ("lake.silver_freshness", "WARN"),
];

#[tokio::test]
async fn missing_table_is_named_by_select_and_contract() {
    let green = Green::start().await;
    green
        .sql("ALTER TABLE outbox RENAME TO outbox_archive")
        .await;
    let out = smoke(&green.env()).await;
    out.assert_code(1);
    out.assert_line(
        "postgres.select",
        "FAIL",
        &[
            "outbox does not exist in database robson",
            "fix: point DJANGO_DB_NAME at Django's database",
        ],
    );
    out.assert_line(
        "postgres.contract",
        "FAIL",
        &["outbox: table is missing", "bronze-ingest stops"],
    );
    out.assert_line("postgres.privileges", "PASS", &["read-only on stop_events"]);
    out.assert_others_pass(&[
        ("postgres.select", "FAIL"),
        ("postgres.contract", "FAIL"),
        FRESHNESS[0],
        FRESHNESS[1],
    ]);
}

#[tokio::test]
async fn dropped_retyped_and_nullable_columns_are_named() {
    let green = Green::start().await;
    green
        .sql(
            "ALTER TABLE stop_events DROP COLUMN slippage_pct; \
             ALTER TABLE stop_events ALTER COLUMN quantity TYPE double precision; \
             ALTER TABLE outbox ALTER COLUMN routing_key DROP NOT NULL",
        )
        .await;
    let out = smoke(&green.env()).await;
    out.assert_code(1);
    out.assert_line(
        "postgres.contract",
        "FAIL",
        &[
            "stop_events: column quantity is double precision, the contract needs numeric(20,8)",
            "column slippage_pct is missing",
            "outbox: column routing_key allows NULL",
            "fix: bronze-ingest stops on this schema",
        ],
    );
    // The tables are still readable: only the contract line fails.
    out.assert_others_pass(&[("postgres.contract", "FAIL"), FRESHNESS[0], FRESHNESS[1]]);
}

#[tokio::test]
async fn a_role_that_can_write_is_a_warning_and_no_select_a_failure() {
    let green = Green::start().await;
    green
        .sql("GRANT INSERT, DELETE ON stop_events TO lake_reader; CREATE ROLE nobody LOGIN PASSWORD 'nobody-pw'")
        .await;
    let out = smoke(&green.env()).await;
    out.assert_code(0);
    out.assert_line(
        "postgres.privileges",
        "WARN",
        &[
            "role lake_reader can INSERT, DELETE on stop_events",
            "fix: least privilege: REVOKE",
        ],
    );
    out.assert_others_pass(&[("postgres.privileges", "WARN"), FRESHNESS[0], FRESHNESS[1]]);

    // The superuser: everything works, and the warning says what it is.
    let out = smoke(&[green.pg.env(), green.s3.env(&green.bucket)].concat()).await;
    out.assert_code(0);
    out.assert_line(
        "postgres.privileges",
        "WARN",
        &["role postgres is a superuser", "read-only role"],
    );
    out.assert_never_shows(green.pg.password());

    // A role without SELECT: the ingest cannot read, the fix is the GRANT.
    let env = with(
        &with(&green.env(), "DJANGO_DB_USER", Some("nobody")),
        "DJANGO_DB_PASSWORD",
        Some("nobody-pw"),
    );
    let out = smoke(&env).await;
    out.assert_code(1);
    out.assert_line(
        "postgres.select",
        "FAIL",
        &[
            "role nobody has no SELECT on stop_events and outbox",
            "GRANT SELECT ON stop_events, outbox TO nobody",
        ],
    );
}
