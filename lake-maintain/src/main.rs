//! `lake-maintain`: see the library docs and `docs/maintenance.md`.

/// jemalloc, as in every build of the jobs (see robson-lake's `main.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    lake_maintain::cli::main_from(std::env::args_os())
}
