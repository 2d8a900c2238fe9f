//! `robson-lake`: the three jobs (and `lake status`) in one static executable.
//!
//! Three static binaries repeat the same ~20 MB of dependencies (arrow, parquet,
//! object_store, rustls); one multi-call binary keeps the image well under the
//! 50 MB budget (SPEC §10). The image links `bronze-ingest`, `silver-transform`,
//! `smoke-test` and `lake` to it; it runs the job named by `argv[0]`, or by its first
//! argument (`robson-lake bronze-ingest --dry-run`).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// jemalloc, not the C library's allocator. The image is static musl, whose
/// allocator maps and unmaps every block over 128 KiB and takes one global
/// lock: the bronze export ran at half speed there (1 M rows: 6.3 s against
/// 3.6 s with glibc), nearly all of it in `mmap`/`munmap` system time. With
/// jemalloc the musl binary runs as fast as the glibc one, and in less memory
/// than glibc's allocator keeps. In the musl build it also serves the C code's
/// `malloc` (zstd's contexts; `Cargo.toml`). The host binaries use it too, so
/// the benchmarks measure the allocator that ships. Settings: `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const JOBS: [&str; 4] = ["bronze-ingest", "silver-transform", "smoke-test", "lake"];

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
