//! `silver-transform`: see the library docs and `docs/silver.md`.

fn main() -> std::process::ExitCode {
    silver_transform::cli::main_from(std::env::args_os())
}
