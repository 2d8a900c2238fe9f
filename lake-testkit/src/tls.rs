//! A throwaway certificate authority for TLS tests, made with the `openssl`
//! command line (Debian's `openssl` package; `scripts/setup.sh` installs it).
//!
//! Server certificates are issued with `openssl ca`, which can back-date them:
//! an expired certificate is one whose validity ended in the past, not one a
//! test waits for.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// A CA (EC P-256 key, valid 30 days) in its own temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
    name: String,
}

/// A server certificate and its key, PEM files in the CA's directory.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Creates the CA; `name` is its common name and tells two CAs apart.
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-ca-")
            .tempdir()
            .context("creating a directory for the test CA")?;
        let ca = Self {
            dir,
            name: name.to_owned(),
        };
        std::fs::write(ca.path("index.txt"), "").context("CA index")?;
        std::fs::write(ca.path("serial"), "1000\n").context("CA serial")?;
        std::fs::write(ca.path("ca.cnf"), ca.config()).context("CA config")?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &ca.path_str("ca.key"),
            "-out",
            &ca.path_str("ca.crt"),
        ])?;
        Ok(ca)
    }

    /// The CA certificate (what a client's `sslrootcert` points at).
    pub fn cert(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// Issues a server certificate for `san` (an `openssl` subjectAltName value,
    /// e.g. `IP:127.0.0.1` or `DNS:db.example`), valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`; `None`: from an hour ago for 30 days).
    pub fn server_cert(
        &self,
        label: &str,
        san: &str,
        validity: Option<(&str, &str)>,
    ) -> Result<ServerCert> {
        let key = self.path(&format!("{label}.key"));
        let csr = self.path(&format!("{label}.csr"));
        let cert = self.path(&format!("{label}.crt"));
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={label}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-keyout",
            &key.display().to_string(),
            "-out",
            &csr.display().to_string(),
        ])?;
        let now = chrono::Utc::now();
        let default_start = (now - chrono::Duration::hours(1))
            .format("%Y%m%d%H%M%SZ")
            .to_string();
        let default_end = (now + chrono::Duration::days(30))
            .format("%Y%m%d%H%M%SZ")
            .to_string();
        let (start, end) = validity.unwrap_or((&default_start, &default_end));
        openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &self.path_str("ca.cnf"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-in",
            &csr.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ])?;
        Ok(ServerCert { cert, key })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn config(&self) -> String {
        format!(
            "[ca]\ndefault_ca = test_ca\n\n\
             [test_ca]\ndir = {dir}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir\n\
             certificate = $dir/ca.crt\nprivate_key = $dir/ca.key\nserial = $dir/serial\n\
             default_md = sha256\npolicy = any_name\ncopy_extensions = copy\n\
             unique_subject = no\nx509_extensions = server_ext\n\n\
             [any_name]\ncommonName = supplied\n\n\
             [server_ext]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n\
             # {name}\n",
            dir = self.dir.path().display(),
            name = self.name,
        )
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (apt-get install openssl; scripts/setup.sh does)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
