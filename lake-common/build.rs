//! Records the git commit the jobs are built from, for `--version` and the run
//! reports: `LAKE_GIT_COMMIT` if the build sets it (an image build without
//! `.git`), else `git rev-parse`, else "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LAKE_GIT_COMMIT");
    // Only paths that exist: a missing one would rerun this script (and
    // rebuild every crate above lake-common) on every build.
    for f in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let commit = std::env::var("LAKE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LAKE_GIT_COMMIT={commit}");
}
