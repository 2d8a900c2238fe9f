//! Harness of the integration tests: a green deployment (real PostgreSQL with the
//! Django tables and a read-only role, a real S3 endpoint with a bucket), the real
//! binary run as a child with a cleared environment, and assertions on its lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lake_testkit::{TestPostgres, TestS3, demo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The read-only role of the green deployment.
pub const READER: &str = "lake_reader";
/// Its password (asserted never to appear in the output).
pub const READER_PASSWORD: &str = "reader-pw-7d1c95";

/// Every check name of a run without `--cluster`, in order.
pub const ALL_CHECKS: &[&str] = &[
    "config",
    "dns.postgres",
    "dns.s3",
    "postgres.connect",
    "postgres.version",
    "postgres.select",
    "postgres.contract",
    "postgres.snapshot",
    "postgres.privileges",
    "s3.bucket",
    "s3.objects",
    "s3.multipart",
    "s3.conditional",
    "s3.read_after_write",
    "lake.manifests",
    "lake.bronze_freshness",
    "lake.silver_freshness",
    "network.egress_blocked",
];

/// A deployment on which every check passes (freshness aside: the lake is empty).
pub struct Green {
    pub pg: TestPostgres,
    pub s3: TestS3,
    pub bucket: String,
}

impl Green {
    /// Starts PostgreSQL and moto side by side, creates the Django tables with a
    /// little demo data, the read-only role and a bucket.
    pub async fn start() -> Green {
        let (pg, s3) =
            tokio::try_join!(TestPostgres::start(), TestS3::start()).expect("test servers start");
        let client = pg.client().await.expect("superuser connection");
        demo::create_schema(&client).await.expect("schema");
        demo::generate(&client, 120, 7).await.expect("demo data");
        pg.create_role(READER, READER_PASSWORD, true)
            .await
            .expect("read-only role");
        let bucket = s3.new_bucket().await.expect("bucket");
        Green { pg, s3, bucket }
    }

    /// The jobs' environment: the read-only role and the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            self.pg.env_as(READER, READER_PASSWORD),
            self.s3.env(&self.bucket),
            blocked_api_server(),
        ]
        .concat()
    }

    /// Runs SQL as the superuser.
    pub async fn sql(&self, sql: &str) {
        let client = self.pg.client().await.expect("superuser connection");
        client.batch_execute(sql).await.expect(sql);
    }
}

/// A pod's API-server variables pointing at a port nobody listens on: what the
/// smoke test sees when a NetworkPolicy rejects the connection.
pub fn blocked_api_server() -> Vec<(String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
    ]
}

/// `env` with `key` set to `value` (or removed with `None`).
pub fn with(env: &[(String, String)], key: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    if let Some(v) = value {
        out.push((key.to_owned(), v.to_owned()));
    }
    out
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Line {
    pub status: String,
    /// The whole line, for `contains` assertions.
    pub text: String,
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The table's lines by check name.
    pub fn lines(&self) -> BTreeMap<String, Line> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let status = words.next()?;
                let name = words.next()?;
                ["PASS", "WARN", "FAIL", "SKIP"].contains(&status).then(|| {
                    (
                        name.to_owned(),
                        Line {
                            status: status.to_owned(),
                            text: l.to_owned(),
                        },
                    )
                })
            })
            .collect()
    }

    /// The check names in output order.
    pub fn names(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let status = w.next()?;
                ["PASS", "WARN", "FAIL", "SKIP"]
                    .contains(&status)
                    .then(|| w.next().map(str::to_owned))?
            })
            .collect()
    }

    /// Asserts that check `name` has `status` and its line contains every `needle`.
    #[track_caller]
    pub fn assert_line(&self, name: &str, status: &str, needles: &[&str]) {
        let lines = self.lines();
        let line = lines
            .get(name)
            .unwrap_or_else(|| panic!("no line for {name} in:\n{}", self.stdout));
        assert_eq!(
            line.status, status,
            "{name}: {}\n\nfull output:\n{}",
            line.text, self.stdout
        );
        for needle in needles {
            assert!(
                line.text.contains(needle),
                "{name}: {needle:?} not in {:?}\n\nfull output:\n{}",
                line.text,
                self.stdout
            );
        }
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    /// Asserts that every check not named in `expected` (name → status) passed.
    #[track_caller]
    pub fn assert_others_pass(&self, expected: &[(&str, &str)]) {
        for (name, line) in self.lines() {
            let want = expected
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("PASS", |(_, s)| *s);
            assert_eq!(
                line.status, want,
                "{name}: {}\n\nfull output:\n{}",
                line.text, self.stdout
            );
        }
    }

    /// Asserts that `secret` appears nowhere in stdout or stderr.
    #[track_caller]
    pub fn assert_never_shows(&self, secret: &str) {
        assert!(
            !self.stdout.contains(secret),
            "secret in stdout:\n{}",
            self.stdout
        );
        assert!(
            !self.stderr.contains(secret),
            "secret in stderr:\n{}",
            self.stderr
        );
    }
}

/// Runs the real binary with exactly `env` (nothing inherited) and `args`.
pub async fn smoke(env: &[(String, String)], args: &[&str]) -> Outcome {
    let started = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smoke-test"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), child)
        .await
        .expect("smoke-test finishes within 90 s")
        .expect("smoke-test runs");
    // Shown by the test runner when a test fails.
    eprintln!(
        "$ smoke-test {} -> exit {:?}\n{}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
    );
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Switches moto's IAM authentication on from the next request: unknown access
/// keys are refused from then on (`InvalidAccessKeyId`), as a real endpoint does.
///
/// moto checks no credentials by default; its `/moto-api/reset-auth` endpoint sets
/// `INITIAL_NO_AUTH_ACTION_COUNT` at run time (here 0) and restarts the count.
pub async fn enable_moto_auth(s3: &TestS3) {
    let response = raw_http(
        s3.port(),
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\
         Connection: close\r\n\r\n0",
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "moto reset-auth: {response}"
    );
}

/// Creates an IAM user with full S3 access in moto and returns its access key id
/// and secret. Call before [`enable_moto_auth`] (these requests are unsigned).
pub async fn moto_s3_user(s3: &TestS3) -> (String, String) {
    let iam = |body: String| {
        // The credential scope routes the request to moto's IAM; nothing checks
        // the signature before auth is enabled.
        format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=x/20250101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    for body in [
        "Action=CreateUser&UserName=lake&Version=2010-05-08".to_owned(),
        format!(
            "Action=PutUserPolicy&UserName=lake&PolicyName=s3&PolicyDocument={}&Version=2010-05-08",
            percent_encode(policy)
        ),
    ] {
        let response = raw_http(s3.port(), &iam(body)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "moto IAM: {response}");
    }
    let response = raw_http(
        s3.port(),
        &iam("Action=CreateAccessKey&UserName=lake&Version=2010-05-08".to_owned()),
    )
    .await;
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = response
            .find(&open)
            .unwrap_or_else(|| panic!("{tag} in {response}"))
            + open.len();
        let end = response[start..].find('<').unwrap() + start;
        response[start..end].to_owned()
    };
    (field("AccessKeyId"), field("SecretAccessKey"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn raw_http(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// An HTTP proxy in front of an S3 endpoint that drops `If-None-Match` and
/// `If-Match` from every request: a store that silently ignores conditional
/// writes, like an old gateway or a caching proxy can. One request per
/// connection (`Connection: close` both ways), which every S3 client handles.
pub struct IgnoringProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IgnoringProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IgnoringProxy {
    pub async fn start(upstream: u16) -> IgnoringProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = forward(client, upstream).await;
                });
            }
        });
        IgnoringProxy { port, task }
    }
}

/// Rewrites a request or response head: drops `drop` headers (lower case) and any
/// `Connection` header, then adds `Connection: close`.
fn rewrite_head(head: &str, drop: &[&str]) -> String {
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "connection" || drop.contains(&name.as_str())) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

async fn forward(mut client: TcpStream, upstream: u16) -> std::io::Result<()> {
    // Read the request head, then exactly Content-Length bytes of body.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    server
        .write_all(rewrite_head(&head, &["if-none-match", "if-match"]).as_bytes())
        .await?;
    server.write_all(&body).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => {
            let head = String::from_utf8_lossy(&response[..pos]).into_owned();
            client
                .write_all(rewrite_head(&head, &[]).as_bytes())
                .await?;
            client.write_all(&response[pos + 4..]).await?;
        }
        None => client.write_all(&response).await?,
    }
    client.shutdown().await
}
