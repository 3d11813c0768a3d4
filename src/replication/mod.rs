//! Logical replication in three layers: `transport` speaks the walsender protocol over a
//! socket, `pgoutput` turns message bytes into typed messages without any I/O, and `slot`
//! manages publications and slots over ordinary SQL.

pub mod failover;
pub mod origins;
pub mod pgoutput;
pub mod slot;
pub mod transport;
