//! Prints the data dictionary (`just tables` writes it to docs/tables.md).

fn main() {
    print!("{}", lake_common::dictionary::render());
}
