//! `bronze-ingest`: see the library docs and the README.

/// jemalloc rather than the C library's allocator, in every build of the jobs
/// (see robson-lake's `main.rs` for why; settings in `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    bronze_ingest::cli::main_from(std::env::args_os())
}
