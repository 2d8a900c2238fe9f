//! Integration tests: the real `smoke-test` binary against a real PostgreSQL and a
//! real S3 endpoint (moto over HTTP), one deployment fault at a time. Each test
//! asserts the line of the check that must catch the fault, its status, the fix,
//! the exit code, and that the other checks are unaffected.

// Test helpers outside #[test] functions panic on purpose, like the tests.
#![allow(clippy::unwrap_used)]

mod cli;
mod cluster;
mod lake;
mod postgres;
mod s3;
mod util;
