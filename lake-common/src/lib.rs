//! Shared plumbing of the Robson lake jobs.
//!
//! Everything two jobs must agree on lives here, so they cannot disagree: the
//! environment they read ([`config`]), where files go ([`paths`]), what the files
//! hold ([`schema`]), how the store and the database are reached ([`store`],
//! [`postgres`]), and how a run ends ([`telemetry`]).

pub mod commit;
pub mod config;
pub mod contract;
pub mod manifest;
pub mod parquet_io;
pub mod paths;
pub mod postgres;
pub mod report;
pub mod schema;
pub mod store;
pub mod telemetry;

pub use config::{Config, ConfigError, LakeConfig, PostgresConfig, Secret, SslMode};
pub use paths::{Dataset, Partition};
pub use store::Lake;
pub use telemetry::{Classified, ExitStatus};
