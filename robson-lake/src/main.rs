//! `robson-lake`: the jobs (and `lake status`) in one executable.
//!
//! Separate binaries repeat the same ~20 MB of dependencies (arrow, parquet,
//! object_store, rustls); one multi-call binary keeps the image under 30 MB. The
//! image links `bronze-ingest`, `silver-transform`, `smoke-test`, `lake-maintain`
//! and `lake` to
//! it; it runs the job named by `argv[0]`, or by its first argument
//! (`robson-lake bronze-ingest --dry-run`). It is a glibc build with its C
//! library staged next to it (scripts/stage-rootfs.sh): a static musl build ran
//! bronze at 1.32x the time (docs/benchmarks.md).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// jemalloc, not the C library's allocator: with one arena and a short decay
/// (`.cargo/config.toml`) a container's memory follows the job's working set,
/// in less memory than glibc's allocator keeps (and musl's, which maps and
/// unmaps every block over 128 KiB, halved bronze's speed). The host binaries
/// use it too, so the benchmarks measure the allocator that ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const JOBS: [&str; 5] = [
    "bronze-ingest",
    "silver-transform",
    "smoke-test",
    "lake-maintain",
    "lake",
];

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let called_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if JOBS.contains(&called_as.as_str()) {
        args[0] = called_as.into();
    } else if !args.is_empty() {
        // `robson-lake <job> …`: the job name becomes the program name.
        args.remove(0);
    }
    let job = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match job.as_str() {
        "bronze-ingest" => bronze_ingest::cli::main_from(args),
        "silver-transform" => silver_transform::cli::main_from(args),
        "smoke-test" => smoke_test::cli::main_from(args),
        "lake-maintain" => lake_maintain::cli::main_from(args),
        "lake" => smoke_test::cli::lake_main_from(args),
        _ => {
            eprintln!(
                "robson-lake {}: run one of {} (or call this binary by one of those names)",
                env!("CARGO_PKG_VERSION"),
                JOBS.join(", ")
            );
            ExitCode::from(2)
        }
    }
}
