//! PostgreSQL connections: a deadpool pool with TLS through rustls.
//!
//! `DJANGO_DB_SSLMODE` keeps libpq's meaning so the cluster's existing secrets
//! behave as they do for Django: `prefer`/`require` encrypt without checking the
//! certificate, `verify-full` checks the chain (against `DJANGO_DB_SSLROOTCERT` or
//! the system roots) *and* the host name. Every connection carries
//! `application_name` (so a DBA sees which job holds a snapshot) and a statement
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PostgresConfig, SslMode};

/// Errors of setting up PostgreSQL access.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The CA file of `DJANGO_DB_SSLROOTCERT` is unusable.
    #[error("DJANGO_DB_SSLROOTCERT {path}: {message}")]
    RootCert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No root certificate is available for `verify-full`.
    #[error(
        "DJANGO_DB_SSLMODE=verify-full but no CA certificate was found: set DJANGO_DB_SSLROOTCERT to the CA's PEM file"
    )]
    NoRoots,
    /// TLS set-up failed.
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
}

/// A pool of connections to the source database.
pub type PgPool = Pool;

/// The functions the jobs call beyond `SELECT` on the source tables: bronze's
/// snapshot, identity, timeline and WAL position, the tables' file nodes, and
/// the advisory lock of the no-conditional-writes mode. PUBLIC may call them on
/// a fresh cluster; where an administrator revoked that, the role needs each
/// granted (docs/deploy.md, "The database role", lists exactly these, and the
/// smoke test checks them; robson-lake/tests/least_privilege.rs keeps the three
/// equal).
pub const FUNCTIONS: &[&str] = &[
    "pg_current_snapshot()",
    "pg_snapshot_xmin(pg_snapshot)",
    "pg_snapshot_xmax(pg_snapshot)",
    "pg_control_system()",
    "pg_control_checkpoint()",
    "pg_is_in_recovery()",
    "pg_current_wal_lsn()",
    "pg_last_wal_replay_lsn()",
    "pg_walfile_name(pg_lsn)",
    "pg_relation_filenode(regclass)",
    "pg_try_advisory_lock(integer, integer)",
];

/// A call of one of [`FUNCTIONS`] the role may not make (an administrator
/// revoked PUBLIC's default `EXECUTE`) as exit 2 with the `GRANT` that fixes
/// it: retrying cannot help. Any other error is returned unchanged.
///
/// The function is recognised by its name in the server's message (names are
/// not translated; the rest of the message may be).
pub fn missing_function_grant(err: tokio_postgres::Error, role: &str) -> anyhow::Error {
    let Some(db) = err.as_db_error() else {
        return err.into();
    };
    if *db.code() != tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
        return err.into();
    }
    let message = db.message();
    let named = |signature: &&&str| {
        let name = signature.split('(').next().unwrap_or(signature);
        message.match_indices(name).any(|(at, _)| {
            !message[at + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    // The role as an identifier: quoted unless it is a plain lowercase name.
    let plain = role
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !role.starts_with(|c: char| c.is_ascii_digit());
    let role = if plain {
        role.to_owned()
    } else {
        format!("\"{}\"", role.replace('"', "\"\""))
    };
    match FUNCTIONS.iter().find(named) {
        Some(signature) => anyhow::Error::new(crate::Classified::new(
            crate::ExitStatus::Usage,
            format!(
                "{message}: role {role} may not call {signature}, which the jobs need (PUBLIC's \
                 EXECUTE was revoked); as a superuser: GRANT EXECUTE ON FUNCTION {signature} TO \
                 {role} (docs/deploy.md, \"The database role\", lists every function)"
            ),
        )),
        None => err.into(),
    }
}

/// Builds the `tokio_postgres` configuration (no I/O).
pub fn pg_config(config: &PostgresConfig, application_name: &str) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .dbname(&config.dbname)
        .user(&config.user)
        .password(config.password.expose())
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10))
        // A dead server or path is an error within ~30 s, not the kernel's
        // ~15 minutes: idle probes after 15 s, every 5 s, 3 misses; and data
        // left unacknowledged for 30 s (TCP_USER_TIMEOUT).
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30))
        .options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            config.statement_timeout.as_millis(),
            config.statement_timeout.as_millis()
        ))
        .ssl_mode(match config.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    pg
}

/// The rustls connector for the configured sslmode.
pub fn tls_connector(config: &PostgresConfig) -> Result<MakeRustlsConnect, PostgresError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let tls = match config.sslmode {
        SslMode::VerifyFull => builder
            .with_root_certificates(root_store(config)?)
            .with_no_client_auth(),
        // libpq's prefer/require encrypt but do not authenticate the server.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(tls))
}

fn root_store(config: &PostgresConfig) -> Result<RootCertStore, PostgresError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &config.sslrootcert {
        let err = |message: String| PostgresError::RootCert {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(err("holds no usable PEM certificate".into()));
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if roots.is_empty() {
        return Err(PostgresError::NoRoots);
    }
    Ok(roots)
}

/// Builds a small pool: the jobs need one connection for the snapshot and
/// occasionally one for the advisory lock.
pub fn pool(config: &PostgresConfig, application_name: &str) -> Result<PgPool, PostgresError> {
    let manager = Manager::from_config(
        pg_config(config, application_name),
        tls_connector(config)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(4)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(15)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// Accepts any server certificate (libpq `sslmode=require` semantics) while still
/// checking that the handshake signatures are valid.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to fix when the server refused a login with `code` (`message` is its
/// text, for the one case the code does not tell apart), or `None` when the
/// code says nothing a setting could fix. Shared with the smoke test.
pub fn login_refusal_hint(
    config: &PostgresConfig,
    code: &tokio_postgres::error::SqlState,
    message: &str,
) -> Option<String> {
    use tokio_postgres::error::SqlState;
    let (user, db) = (&config.user, &config.dbname);
    Some(if *code == SqlState::INVALID_PASSWORD {
        format!(
            "check DJANGO_DB_PASSWORD: it must be the password of role {user} (and DJANGO_DB_USER the role)"
        )
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        format!(
            "check DJANGO_DB_NAME: database {db} does not exist on {}:{}",
            config.host, config.port
        )
    } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        && message.contains("pg_hba.conf")
    {
        format!(
            "the server's pg_hba.conf has no line admitting role {user} to database {db} from this \
             address: add one such as `host {db} {user} <pod CIDR> scram-sha-256` and reload \
             (docs/deploy.md, \"The database role\")"
        )
    } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        format!(
            "check DJANGO_DB_USER: role {user} does not exist or may not log in, or pg_hba.conf does \
             not admit it from this address with sslmode={}",
            config.sslmode.as_str()
        )
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        format!(
            "role {user} may not connect to database {db}: as its owner, GRANT CONNECT ON DATABASE \"{db}\" TO \"{user}\""
        )
    } else if *code == SqlState::TOO_MANY_CONNECTIONS {
        "the server's connection limit is reached (max_connections, or the role's or the database's \
         CONNECTION LIMIT; a job needs up to 2 connections): the Job retries, and a limit of 0 is a \
         setting to fix"
            .to_owned()
    } else if *code == SqlState::CANNOT_CONNECT_NOW {
        "the server is starting up or shutting down (the Job retries), or it is a standby with \
         hot_standby = off, which accepts no connections (point DJANGO_DB_HOST at one that does)"
            .to_owned()
    } else {
        return None;
    })
}

/// Explains a connection failure in one actionable line (no secrets: tokio-postgres
/// errors never contain the password).
pub fn explain_connect_error(
    config: &PostgresConfig,
    err: &(dyn std::error::Error + 'static),
) -> String {
    // deadpool's wrapper says nothing the person at the terminal can use.
    let text = error_chain(err).replace("Error occurred while creating a new object: ", "");
    let code = {
        let mut cur = Some(err);
        let mut code = None;
        while let Some(e) = cur {
            if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
                code = pg.code().cloned();
                break;
            }
            cur = e.source();
        }
        code
    };
    // The server's SQLSTATE first: its message text is translated by lc_messages.
    let refusal = code
        .as_ref()
        .and_then(|c| login_refusal_hint(config, c, &text));
    let hint = if let Some(hint) = refusal {
        hint
    } else if text.contains("server does not support TLS") {
        match config.sslmode {
            // Falling back is only an answer where the network is the cluster's own.
            SslMode::Require => "the server offers no TLS: turn ssl on in the server, or, for a server \
                                 inside the cluster only, set DJANGO_DB_SSLMODE=prefer"
                .to_owned(),
            _ => "the server offers no TLS and DJANGO_DB_SSLMODE=verify-full requires it: turn ssl on in \
                  the server"
                .to_owned(),
        }
    } else if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        "the server's certificate is not signed by a CA the job trusts: point DJANGO_DB_SSLROOTCERT at \
         the CA certificate that signed it"
            .to_owned()
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!(
            "the server's certificate is not valid for {}: set DJANGO_DB_HOST to a name the \
             certificate lists, or have the certificate reissued for it",
            config.host
        )
    } else if text.contains("certificate expired") || text.contains("Expired") {
        "the server's certificate has expired: renew it on the server (DJANGO_DB_SSLMODE=verify-full \
         refuses it)"
            .to_owned()
    } else if text.contains("no password") {
        // The client's own refusal (no SQLSTATE): the server asked for one.
        "check DJANGO_DB_PASSWORD".to_owned()
    } else if text.contains("refused") || text.contains("timed out") || text.contains("timeout") {
        "check DJANGO_DB_HOST/DJANGO_DB_PORT and the NetworkPolicy egress to PostgreSQL".to_owned()
    } else if text.contains("failed to lookup")
        || text.contains("resolve")
        || text.contains("Name or service")
    {
        "check DJANGO_DB_HOST and cluster DNS".to_owned()
    } else if text.contains("certificate")
        || text.contains("tls")
        || text.contains("TLS")
        || text.contains("ssl")
    {
        "check DJANGO_DB_SSLMODE and DJANGO_DB_SSLROOTCERT".to_owned()
    } else {
        "check the DJANGO_DB_* settings".to_owned()
    };
    format!("cannot connect to PostgreSQL at {config}: {text} ({hint})")
}

/// Flattens an error and its sources into one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg(sslmode: SslMode) -> PostgresConfig {
        PostgresConfig {
            host: "db.internal".into(),
            port: 5432,
            dbname: "robson".into(),
            user: "reader".into(),
            password: Secret::new("pw-never-shown"),
            sslmode,
            sslrootcert: None,
            statement_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn config_carries_name_timeout_and_mode() {
        let pg = pg_config(&cfg(SslMode::VerifyFull), "bronze-ingest");
        assert_eq!(pg.get_application_name(), Some("bronze-ingest"));
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert!(
            pg.get_options()
                .unwrap()
                .contains("statement_timeout=60000")
        );
        let pg = pg_config(&cfg(SslMode::Disable), "x");
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        // tokio_postgres::Config redacts the password in Debug.
        assert!(!format!("{pg:?}").contains("pw-never-shown"));
    }

    #[test]
    fn bad_root_cert_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let mut c = cfg(SslMode::VerifyFull);
        c.sslrootcert = Some(file);
        let e = tls_connector(&c).err().expect("must fail");
        assert!(e.to_string().contains("DJANGO_DB_SSLROOTCERT"), "{e}");
    }

    #[test]
    fn pools_build_for_every_mode() {
        for m in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            pool(&cfg(m), "t").unwrap();
        }
    }
}
