//! Check 3: PostgreSQL as bronze-ingest uses it.
//!
//! One connection, made the way the jobs make it (`lake_common::postgres`:
//! same sslmode handling, TLS set-up and `application_name`), then what the
//! ingest needs, each as its own line: a server new enough for
//! `pg_current_snapshot()`, SELECT on the source tables, their columns matching
//! the bronze contract (the same comparison the ingest runs,
//! `lake_common::contract`), a `REPEATABLE READ READ ONLY` snapshot with its
//! horizon and the cluster's `system_identifier`, and least privilege: a role
//! that can write to Django's tables gets a warning.

use std::time::Duration;

use lake_common::PostgresConfig;
use lake_common::config::SslMode;
use lake_common::contract::{self, Drift};
use lake_common::schema::SOURCE_TABLES;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{error_chain, join_and, timed};
use crate::report::{CheckResult, Report};

/// Connect with the configured sslmode and credentials.
pub const CONNECT: &str = "postgres.connect";
/// Server version (13+ for `pg_current_snapshot()`).
pub const VERSION: &str = "postgres.version";
/// SELECT on the source tables.
pub const SELECT: &str = "postgres.select";
/// Source columns against the bronze contract.
pub const CONTRACT: &str = "postgres.contract";
/// `pg_current_snapshot()` and `system_identifier` in a read-only snapshot.
pub const SNAPSHOT: &str = "postgres.snapshot";
/// The role cannot write to the source tables.
pub const PRIVILEGES: &str = "postgres.privileges";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[CONNECT, VERSION, SELECT, CONTRACT, SNAPSHOT, PRIVILEGES];

/// `application_name` of the smoke test's session (visible in `pg_stat_activity`).
const APPLICATION_NAME: &str = "smoke-test";

const NETWORK_FIX: &str = "PostgreSQL does not answer: check DJANGO_DB_HOST/DJANGO_DB_PORT and that the \
                           allow-postgres NetworkPolicy lets the pod reach the database (namespace and pod \
                           selector, port 5432)";
const QUERY_TIMEOUT_FIX: &str = "the server is slow or blocked: check its load and locks on the source tables \
                                 (pg_stat_activity)";

/// Runs the PostgreSQL checks, one result per name in [`NAMES`].
pub async fn run(config: &PostgresConfig, limit: Duration, report: &mut Report) {
    let client = match tokio::time::timeout(limit, connect(config)).await {
        Ok(Ok(client)) => client,
        Ok(Err(result)) => {
            report.push(*result);
            report.skip_all(&NAMES[1..], &format!("not run: {CONNECT} failed"));
            return;
        }
        Err(_) => {
            report.push(CheckResult::fail(
                CONNECT,
                format!(
                    "no answer from {}:{} within {}",
                    config.host,
                    config.port,
                    super::human_duration(limit)
                ),
                NETWORK_FIX,
            ));
            report.skip_all(&NAMES[1..], &format!("not run: {CONNECT} failed"));
            return;
        }
    };
    report.push(timed(CONNECT, limit, QUERY_TIMEOUT_FIX, session(&client, config)).await);
    report.push(timed(VERSION, limit, QUERY_TIMEOUT_FIX, version(&client, config)).await);
    report.push(timed(SELECT, limit, QUERY_TIMEOUT_FIX, select(&client, config)).await);
    report.push(timed(CONTRACT, limit, QUERY_TIMEOUT_FIX, contract_check(&client)).await);
    report.push(
        timed(
            SNAPSHOT,
            limit,
            QUERY_TIMEOUT_FIX,
            snapshot(&client, config),
        )
        .await,
    );
    report.push(
        timed(
            PRIVILEGES,
            limit,
            QUERY_TIMEOUT_FIX,
            privileges(&client, config),
        )
        .await,
    );
}

/// Connects like the jobs do; the error is the `postgres.connect` result.
async fn connect(config: &PostgresConfig) -> Result<Client, Box<CheckResult>> {
    let tls = lake_common::postgres::tls_connector(config).map_err(|e| {
        Box::new(CheckResult::fail(
            CONNECT,
            format!("cannot set up TLS: {e}"),
            "check DJANGO_DB_SSLMODE and DJANGO_DB_SSLROOTCERT (a readable PEM file of the server's CA)",
        ))
    })?;
    let pg = lake_common::postgres::pg_config(config, APPLICATION_NAME);
    match pg.connect(tls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%err, "Smoke-test PostgreSQL connection ended");
                }
            });
            Ok(client)
        }
        Err(err) => {
            let (detail, fix) = explain_connect(config, &err);
            Err(Box::new(CheckResult::fail(CONNECT, detail, fix)))
        }
    }
}

/// One line for a failed connection: what happened, and the fix.
fn explain_connect(config: &PostgresConfig, err: &tokio_postgres::Error) -> (String, String) {
    let at = format!("{}:{}", config.host, config.port);
    if let Some(db) = err.as_db_error() {
        let detail = format!(
            "{at} refused the login: {} ({})",
            db.message(),
            db.code().code()
        );
        let fix = lake_common::postgres::login_refusal_hint(config, db.code(), db.message())
            .unwrap_or_else(|| "check the DJANGO_DB_* settings against the server log".to_owned());
        return (detail, fix);
    }
    let text = error_chain(err);
    let lower = text.to_ascii_lowercase();
    let fix = if lower.contains("does not support tls") || lower.contains("does not support ssl") {
        "the server offers no TLS: enable ssl on the server, or (only on a trusted network) set \
         DJANGO_DB_SSLMODE=prefer"
            .to_owned()
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        format!(
            "the TLS handshake failed with sslmode={}: check DJANGO_DB_SSLROOTCERT (the CA of the server's \
             certificate) and that DJANGO_DB_HOST is a name on the certificate",
            config.sslmode.as_str()
        )
    } else if lower.contains("refused")
        || lower.contains("timed out")
        || lower.contains("timeout")
        || lower.contains("unreachable")
    {
        NETWORK_FIX.to_owned()
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        "check DJANGO_DB_HOST and cluster DNS".to_owned()
    } else {
        "check the DJANGO_DB_* settings and the network path to the database".to_owned()
    };
    (format!("cannot connect to {at}: {text}"), fix)
}

/// The `postgres.connect` result of a working session: who, where, and whether TLS is on.
async fn session(client: &Client, config: &PostgresConfig) -> CheckResult {
    let tls = client
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await;
    let who = format!("connected to {config}");
    match tls {
        Ok(Some(row)) => {
            let version: Option<String> = row.get(0);
            let verified = if config.sslmode == SslMode::VerifyFull {
                "certificate verified"
            } else {
                "certificate not verified"
            };
            CheckResult::pass(
                CONNECT,
                format!(
                    "{who}, TLS on ({}, {verified})",
                    version.unwrap_or_default()
                ),
            )
        }
        Ok(None) if config.sslmode == SslMode::Prefer => CheckResult::warn(
            CONNECT,
            format!(
                "{who}, but without TLS: the server offers none and sslmode=prefer fell back to plain text"
            ),
            "enable TLS on the server and set DJANGO_DB_SSLMODE=require (or verify-full)",
        ),
        Ok(None) => CheckResult::pass(CONNECT, format!("{who}, TLS off")),
        Err(err) => CheckResult::fail(
            CONNECT,
            format!("{who}, but the first query failed: {}", error_chain(&err)),
            "check the server log; the session was closed right after login",
        ),
    }
}

/// The fix for a function the role may not call: grant every one the jobs use.
fn function_grant_fix(config: &PostgresConfig) -> String {
    format!(
        "as a superuser: GRANT EXECUTE ON FUNCTION {} TO {} (docs/deploy.md, \"The database role\")",
        lake_common::postgres::FUNCTIONS.join(", "),
        config.user
    )
}

async fn version(client: &Client, config: &PostgresConfig) -> CheckResult {
    let row = match client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             pg_is_in_recovery()",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => {
            let fix = match err.code() {
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => function_grant_fix(config),
                _ => "check the server log".to_owned(),
            };
            return CheckResult::fail(
                VERSION,
                format!(
                    "cannot read the server version and whether it is a standby: {}",
                    error_chain(&err)
                ),
                fix,
            );
        }
    };
    let num: i32 = row.get(0);
    let text: String = row.get(1);
    let standby: bool = row.get(2);
    let role = if standby { "standby" } else { "primary" };
    if num < 130_000 {
        CheckResult::fail(
            VERSION,
            format!("PostgreSQL {text} ({role}): pg_current_snapshot() needs 13 or later"),
            "upgrade the database to PostgreSQL 13 or later; bronze-ingest's transaction horizons depend on it",
        )
    } else {
        CheckResult::pass(VERSION, format!("PostgreSQL {text} ({role})"))
    }
}

async fn select(client: &Client, config: &PostgresConfig) -> CheckResult {
    let mut ok = Vec::new();
    let mut missing = Vec::new();
    let mut denied = Vec::new();
    let mut other = Vec::new();
    for table in SOURCE_TABLES {
        // The names are the contract's own constants, plain identifiers; they
        // resolve through search_path exactly as in the ingest's queries.
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.table);
        match client.query_one(&sql, &[]).await {
            Ok(row) => {
                let has_rows: bool = row.get(0);
                ok.push(format!(
                    "{} ({})",
                    table.table,
                    if has_rows { "has rows" } else { "empty" }
                ));
            }
            Err(err) => match err.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE => missing.push(table.table.to_owned()),
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                    denied.push(table.table.to_owned())
                }
                _ => other.push(format!("{}: {}", table.table, error_chain(&err))),
            },
        }
    }
    if missing.is_empty() && denied.is_empty() && other.is_empty() {
        return CheckResult::pass(SELECT, format!("SELECT works on {}", ok.join(", ")));
    }
    let search_path = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} {} not exist in database {} (search_path {search_path})",
            join_and(&missing),
            if missing.len() == 1 { "does" } else { "do" },
            config.dbname
        ));
        fixes.push(format!(
            "point DJANGO_DB_NAME at Django's database (the one with {}, migrations applied)",
            join_and(&missing)
        ));
    }
    if !denied.is_empty() {
        problems.push(format!(
            "role {} has no SELECT on {}",
            config.user,
            join_and(&denied)
        ));
        fixes.push(format!(
            "as the tables' owner: GRANT USAGE ON SCHEMA public TO {0}; GRANT SELECT ON {1} TO {0}",
            config.user,
            denied.join(", ")
        ));
    }
    if !other.is_empty() {
        problems.push(other.join("; "));
        fixes.push("check the server log".to_owned());
    }
    CheckResult::fail(SELECT, problems.join("; "), fixes.join("; "))
}

async fn contract_check(client: &Client) -> CheckResult {
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    for table in &SOURCE_TABLES {
        match contract::check(client, table).await {
            Ok(Ok(added)) if added.is_empty() => {
                ok.push(format!("{} ({} columns)", table.table, table.columns.len()));
            }
            Ok(Ok(added)) => {
                let names: Vec<String> = added
                    .iter()
                    .map(|c| format!("{} as {}", c.name, c.stored_as.describe()))
                    .collect();
                ok.push(format!(
                    "{} ({} columns, and {} the contract does not name, captured: {})",
                    table.table,
                    table.columns.len(),
                    added.len(),
                    names.join(", ")
                ));
            }
            Ok(Err(e)) => {
                let drift: Vec<String> = e
                    .drift
                    .iter()
                    .map(|d| match d {
                        Drift::MissingTable => "table is missing".to_owned(),
                        other => other.to_string(),
                    })
                    .collect();
                problems.push(format!("{}: {}", table.table, drift.join(", ")));
            }
            Err(err) => {
                return CheckResult::fail(
                    CONTRACT,
                    format!(
                        "cannot read the catalog of {}: {}",
                        table.table,
                        error_chain(&err)
                    ),
                    "check the server log",
                );
            }
        }
    }
    if problems.is_empty() {
        CheckResult::pass(
            CONTRACT,
            format!("{} match the bronze contract", join_and(&ok)),
        )
    } else {
        CheckResult::fail(
            CONTRACT,
            format!(
                "source schema breaks the bronze contract: {}",
                problems.join("; ")
            ),
            "bronze-ingest stops on this schema (exit 2, nothing written): restore the columns with a Django \
             migration, or change the contract in lake-common/src/schema.rs in a new release",
        )
    }
}

async fn snapshot(client: &Client, config: &PostgresConfig) -> CheckResult {
    // The ingest's first statements, in the ingest's kind of transaction.
    let result = async {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = client
            .query_one(
                "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, now()::text \
                 FROM pg_current_snapshot() AS s",
                &[],
            )
            .await?;
        let id = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await?;
        // The other functions the jobs call, without calling them (an advisory
        // lock taken here could collide with a running job's).
        let functions: Vec<String> = lake_common::postgres::FUNCTIONS
            .iter()
            .map(|f| (*f).to_owned())
            .collect();
        let denied = client
            .query(
                "SELECT f FROM unnest($1::text[]) WITH ORDINALITY AS t(f, i) \
                 WHERE NOT has_function_privilege(f, 'EXECUTE') ORDER BY i",
                &[&functions],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>();
        Ok::<_, tokio_postgres::Error>((
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            id.get::<_, String>(0),
            denied,
        ))
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    match result {
        Ok((_, _, _, denied)) if !denied.is_empty() => CheckResult::fail(
            SNAPSHOT,
            format!(
                "role {} may not call {} (PUBLIC's EXECUTE was revoked): bronze-ingest stops on it",
                config.user,
                denied.join(", ")
            ),
            format!(
                "as a superuser: GRANT EXECUTE ON FUNCTION {} TO {} (docs/deploy.md, \"The database role\")",
                denied.join(", "),
                config.user
            ),
        ),
        Ok((xmin, xmax, system_id, _)) => CheckResult::pass(
            SNAPSHOT,
            format!(
                "REPEATABLE READ READ ONLY snapshot: pg_current_snapshot() horizon {xmin} (xmax {xmax}), \
                 system identifier {system_id}; the role may call the {} functions the jobs use",
                lake_common::postgres::FUNCTIONS.len()
            ),
        ),
        Err(err) => {
            let fix = match err.code() {
                Some(c) if *c == SqlState::UNDEFINED_FUNCTION => {
                    "pg_current_snapshot() needs PostgreSQL 13 or later: upgrade the database"
                        .to_owned()
                }
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => function_grant_fix(config),
                _ => "check the server log".to_owned(),
            };
            CheckResult::fail(
                SNAPSHOT,
                format!("the ingest's snapshot queries fail: {}", error_chain(&err)),
                fix,
            )
        }
    }
}

async fn privileges(client: &Client, config: &PostgresConfig) -> CheckResult {
    let tables: Vec<String> = SOURCE_TABLES.iter().map(|t| t.table.to_owned()).collect();
    let result = async {
        let superuser: bool = client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        let rows = client
            .query(
                "SELECT t, has_table_privilege(c, 'INSERT'), has_table_privilege(c, 'UPDATE'), \
                        has_table_privilege(c, 'DELETE'), has_table_privilege(c, 'TRUNCATE') \
                 FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n), LATERAL to_regclass(t) AS c \
                 WHERE c IS NOT NULL ORDER BY n",
                &[&tables],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>((superuser, rows))
    }
    .await;
    let (superuser, rows) = match result {
        Ok(r) => r,
        Err(err) => {
            return CheckResult::fail(
                PRIVILEGES,
                format!("cannot read the role's privileges: {}", error_chain(&err)),
                "check the server log",
            );
        }
    };
    if rows.is_empty() {
        return CheckResult::skip(PRIVILEGES, "no source table exists (see postgres.select)");
    }
    let mut writable = Vec::new();
    let mut verbs = Vec::new();
    for row in &rows {
        let table: String = row.get(0);
        let mut any = false;
        for (i, verb) in ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
            .iter()
            .enumerate()
        {
            if row.get::<_, bool>(i + 1) {
                any = true;
                if !verbs.contains(verb) {
                    verbs.push(*verb);
                }
            }
        }
        if any {
            writable.push(table);
        }
    }
    let checked: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    if superuser {
        return CheckResult::warn(
            PRIVILEGES,
            format!(
                "role {} is a superuser: it can change or drop Django's tables",
                config.user
            ),
            format!(
                "give the jobs a read-only role: CREATE ROLE lake_reader LOGIN PASSWORD '...'; GRANT USAGE ON \
                 SCHEMA public TO lake_reader; GRANT SELECT ON {} TO lake_reader; then set DJANGO_DB_USER and \
                 DJANGO_DB_PASSWORD (docs/deploy.md section 4)",
                checked.join(", ")
            ),
        );
    }
    if writable.is_empty() {
        CheckResult::pass(
            PRIVILEGES,
            format!(
                "role {} is read-only on {} (no INSERT, UPDATE, DELETE or TRUNCATE)",
                config.user,
                join_and(&checked)
            ),
        )
    } else {
        CheckResult::warn(
            PRIVILEGES,
            format!(
                "role {} can {} on {}: the jobs only read",
                config.user,
                verbs.join(", "),
                join_and(&writable)
            ),
            format!(
                "least privilege: REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {} (or use a role with \
                 SELECT only)",
                writable.join(", "),
                config.user
            ),
        )
    }
}
