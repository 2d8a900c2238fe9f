//! The whole pipeline runs with exactly the runbook's database role, nothing more.
//!
//! The role SQL, the function grants and the `pg_hba.conf` line are taken from
//! docs/deploy.md ("The database role"), so the runbook and what is proven cannot
//! drift. Before they are applied, PUBLIC loses what a fresh cluster gives every
//! role by default and the jobs would otherwise lean on without saying so:
//! `CONNECT` on the database, `USAGE` on schema `public`, and `EXECUTE` on the
//! snapshot, control, WAL, file-node and advisory-lock functions. The jobs run
//! through the image's multi-call binary, as in production.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use lake_testkit::{Fault, FaultProxy, Rule, TestPostgres, TestS3, demo};

const PASSWORD: &str = "least-privilege-pw";

/// The function grants of the runbook are checked against this list: every one
/// of them is revoked from PUBLIC first (and a few more the jobs must not need).
const REVOKED_FROM_PUBLIC: &[&str] = &[
    "pg_current_snapshot()",
    "pg_snapshot_xmin(pg_snapshot)",
    "pg_snapshot_xmax(pg_snapshot)",
    "pg_snapshot_xip(pg_snapshot)",
    "pg_current_xact_id()",
    "pg_control_system()",
    "pg_control_checkpoint()",
    "pg_control_recovery()",
    "pg_is_in_recovery()",
    "pg_current_wal_lsn()",
    "pg_current_wal_insert_lsn()",
    "pg_last_wal_replay_lsn()",
    "pg_last_wal_receive_lsn()",
    "pg_walfile_name(pg_lsn)",
    "pg_relation_filenode(regclass)",
    "pg_try_advisory_lock(integer, integer)",
    "pg_try_advisory_lock(bigint)",
    "pg_advisory_lock(integer, integer)",
];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_robson-lake"))
}

/// The body of the fenced block that follows `<!-- least-privilege: NAME -->`.
fn runbook_block(name: &str) -> String {
    let runbook = include_str!("../../docs/deploy.md");
    let marker = format!("<!-- least-privilege: {name} -->");
    let after = runbook
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/deploy.md has no {marker}"))
        .1;
    let fence = after.find("```").expect("a fenced block after the marker");
    let body = &after[fence..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// The signatures a `GRANT EXECUTE ON FUNCTION a(…), b(…) TO …` names.
fn granted_functions(sql: &str) -> Vec<String> {
    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let list = sql
        .split_once("ON FUNCTION ")
        .and_then(|(_, rest)| rest.rsplit_once(" TO "))
        .expect("GRANT EXECUTE ON FUNCTION … TO …")
        .0;
    let (mut out, mut depth, mut current) = (vec![], 0, String::new());
    for c in list.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_owned());
    out
}

#[test]
fn the_runbook_grants_exactly_the_functions_the_jobs_call() {
    assert_eq!(
        granted_functions(&runbook_block("functions")),
        lake_common::postgres::FUNCTIONS,
        "docs/deploy.md and lake_common::postgres::FUNCTIONS differ"
    );
    for f in lake_common::postgres::FUNCTIONS {
        assert!(
            REVOKED_FROM_PUBLIC.contains(f),
            "{f} is not revoked by the least-privilege test"
        );
    }
}

fn run(env: &[(String, String)], args: &[&str]) -> Output {
    let out = Command::new(bin())
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn robson-lake");
    eprintln!(
        "robson-lake {args:?} -> {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The smoke test fails; its first FAIL line.
fn first_failed_check(env: &[(String, String)]) -> String {
    let out = run(env, &["smoke-test"]);
    assert_ne!(out.status.code(), Some(0), "the smoke test must fail");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a failed check")
        .to_owned()
}

fn assert_success(env: &[(String, String)], args: &[&str]) -> Output {
    let out = run(env, args);
    assert_eq!(out.status.code(), Some(0), "robson-lake {args:?} failed");
    out
}

/// PostgreSQL as a hardened production server: PUBLIC's defaults revoked, then
/// the runbook's role, grants and `pg_hba.conf` line, nothing else for the role.
async fn hardened_source() -> TestPostgres {
    let pg = TestPostgres::start_native().await.expect("postgres");
    let client = pg.client().await.expect("superuser");
    demo::create_schema(&client).await.expect("schema");
    let recent = demo::GenerateOptions::new(3_000, 11)
        .window_end(SystemTime::now())
        .window(Duration::from_secs(3 * 86_400));
    demo::generate_with(&client, &recent).await.expect("rows");
    let mut revoke = format!(
        "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        db = pg.database()
    );
    for f in REVOKED_FROM_PUBLIC {
        revoke.push_str(&format!("REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC;"));
    }
    client.batch_execute(&revoke).await.expect("revoking");
    let role = runbook_block("role").replace("'…'", &format!("'{PASSWORD}'"));
    client
        .batch_execute(&role)
        .await
        .expect("the runbook's role SQL");
    // pg_hba.conf: the superuser keeps its own lines, the role gets only the
    // runbook's (its pod CIDR replaced by the loopback the test connects from).
    let line = runbook_block("pg_hba").replace("10.42.0.0/16", "127.0.0.1/32");
    let hba = format!(
        "local all all trust\nhost all {su} 127.0.0.1/32 scram-sha-256\n{line}",
        su = pg.user()
    );
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).expect("writing pg_hba.conf");
    let reloaded: bool = client
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .expect("reload")
        .get(0);
    assert!(reloaded);
    // The file parses (a line with an error would be skipped, not applied).
    let errors: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
            &[],
        )
        .await
        .expect("pg_hba_file_rules")
        .get(0);
    assert_eq!(errors, 0, "pg_hba.conf has errors");
    pg
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_with_exactly_the_runbooks_role() {
    let (pg, s3) = tokio::join!(hardened_source(), TestS3::start());
    let s3 = s3.expect("moto");
    let bucket = s3.new_bucket().await.expect("bucket");
    let mut env = pg.env_as("lake_reader", PASSWORD);
    env.extend(s3.env(&bucket));
    env.push(("LOG_FORMAT".into(), "json".into()));

    // The pg_hba line admits the role to its database only (the reload is
    // asynchronous: wait for the new rules to be in force).
    let mut refused = None;
    for _ in 0..50 {
        refused = tokio_postgres::Config::new()
            .host(pg.host())
            .port(pg.port())
            .dbname("postgres")
            .user("lake_reader")
            .password(PASSWORD)
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.message().to_owned()));
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("pg_hba.conf")),
        "the runbook's pg_hba line must not admit the role to another database: {refused:?}"
    );

    // Without the runbook's function grants, bronze stops and says which one.
    let out = run(&env, &["bronze-ingest"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing grant is configuration: no retry"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rfind(|l| l.contains("\"ERROR\""))
        .expect("an error line");
    assert!(
        error.contains("permission denied for function pg_")
            && error.contains("GRANT EXECUTE ON FUNCTION pg_")
            && error.contains(") TO lake_reader")
            && error.contains("docs/deploy.md"),
        "the error names the function and the fix: {error}"
    );

    // The smoke gate says the same, with the fix.
    let failed = first_failed_check(&env);
    assert!(
        failed.contains("GRANT EXECUTE ON FUNCTION pg_current_snapshot()"),
        "{failed}"
    );

    // With only the snapshot's functions back, the smoke gate names the rest.
    let client = pg.client().await.expect("superuser");
    client
        .batch_execute(
            "GRANT EXECUTE ON FUNCTION pg_current_snapshot(), pg_snapshot_xmin(pg_snapshot), \
             pg_snapshot_xmax(pg_snapshot), pg_control_system(), pg_is_in_recovery() TO lake_reader",
        )
        .await
        .expect("grant");
    let failed = first_failed_check(&env);
    assert!(
        failed.contains("postgres.snapshot")
            && failed.contains("pg_control_checkpoint()")
            && failed.contains("GRANT EXECUTE ON FUNCTION"),
        "{failed}"
    );

    client
        .batch_execute(&runbook_block("functions"))
        .await
        .expect("the runbook's function grants");

    // The smoke gate passes with no warning about the database.
    let out = assert_success(&env, &["smoke-test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with("postgres."))
    });
    let mut seen = 0;
    for line in checks {
        assert!(
            line.starts_with("PASS"),
            "every postgres check passes: {line}"
        );
        seen += 1;
    }
    assert!(
        seen >= 5,
        "the smoke test ran its postgres checks:\n{stdout}"
    );

    // First batch, an incremental one, the audit, silver, status.
    assert_success(&env, &["bronze-ingest"]);
    let more = demo::GenerateOptions::new(500, 12)
        .window_end(SystemTime::now())
        .window(Duration::from_secs(86_400));
    demo::generate_with(&client, &more).await.expect("rows");
    assert_success(&env, &["bronze-ingest"]);
    assert_success(&env, &["bronze-ingest", "--verify", "--last-days", "7"]);
    assert_success(&env, &["silver-transform"]);
    assert_success(&env, &["lake", "status"]);

    // The no-conditional-writes mode takes PostgreSQL advisory locks as the role.
    let fallback_bucket = s3.new_bucket().await.expect("bucket");
    let proxy = FaultProxy::start(&s3, 1).expect("proxy");
    proxy.add_rule(Rule::new(Fault::StripConditionalHeaders));
    let mut env = pg.env_as("lake_reader", PASSWORD);
    env.extend(s3.env(&fallback_bucket));
    env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
    env.push(("S3_CONDITIONAL_WRITES".into(), "disabled".into()));
    env.push(("LOG_FORMAT".into(), "json".into()));
    assert_success(&env, &["bronze-ingest"]);
    assert_success(&env, &["silver-transform"]);
    assert_success(&env, &["bronze-ingest", "--verify", "--last-days", "7"]);
}
