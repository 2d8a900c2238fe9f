//! `lake`: the lake's operator commands (`lake status`); see `smoke_test::status`.

/// jemalloc, as in every binary of the jobs (robson-lake's `main.rs` says why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    smoke_test::cli::lake_main_from(std::env::args_os())
}
