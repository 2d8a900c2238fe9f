//! `smoke-test`: see the library docs and the README.

fn main() -> std::process::ExitCode {
    smoke_test::cli::main_from(std::env::args_os())
}
