//! The interactive control socket (gh-ost's protocol).

pub mod command;
mod coordinates;
mod report;

pub use command::{parse, Command, TableGuard};
pub use coordinates::{Coordinates, CoordinatesSource, SlotPosition};
pub use report::{status_report, HELP};
