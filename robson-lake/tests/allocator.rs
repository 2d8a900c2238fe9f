//! The image's binary allocates with jemalloc, set up as `.cargo/config.toml`
//! says, whichever job it runs (robson-lake's `main.rs` says why it matters).

use std::path::Path;

use lake_testkit::jemalloc_settings;

/// The settings `.cargo/config.toml` compiles in (cargo passes its `[env]` to
/// rustc too, so a build without them fails here rather than passing).
const CONFIGURED: &str = env!("JEMALLOC_SYS_WITH_MALLOC_CONF");

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_robson-lake"))
}

#[test]
fn every_job_runs_on_jemalloc_with_the_configured_settings() {
    for job in ["bronze-ingest", "silver-transform", "smoke-test"] {
        let settings = jemalloc_settings(bin(), &[job, "--help"], None).unwrap();
        assert_eq!(settings.malloc_conf, CONFIGURED, "{job}");
        assert_eq!(settings.narenas, 1, "{job}: one arena, as configured");
    }
}

#[test]
fn operators_override_the_settings_at_run_time() {
    // docs/deploy.md tells operators to tune with `_RJEM_MALLOC_CONF`; it must
    // win over the compiled-in settings.
    let settings =
        jemalloc_settings(bin(), &["bronze-ingest", "--help"], Some("narenas:3")).unwrap();
    assert_eq!(settings.narenas, 3);
    assert_eq!(settings.malloc_conf, CONFIGURED);
}
