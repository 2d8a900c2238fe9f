//! `bronze-ingest`: see the library docs and the README.

fn main() -> std::process::ExitCode {
    bronze_ingest::cli::main_from(std::env::args_os())
}
