//! The interactive control socket (gh-ost's protocol).

pub mod command;

pub use command::{parse, Command, TableGuard};
