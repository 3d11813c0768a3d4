//! pg-ghost: online schema changes for PostgreSQL.
pub mod error;
pub mod lsn;

pub use error::{Error, ErrorKind, Result};
pub mod conn;
pub mod reconnect;
pub mod replication;
pub mod sql;
pub mod schema;
pub mod alter;
pub mod sqltree;
pub mod ghost;
pub mod keysql;
pub mod apply;
pub mod copy;
pub mod checksum;
pub mod cutover;
pub mod inspect;
pub mod names;
pub mod phase;
pub mod status;
pub mod cli;
pub mod config;
pub mod signals;
pub mod runner;
pub mod throttle;
pub mod control;
pub mod hooks;
