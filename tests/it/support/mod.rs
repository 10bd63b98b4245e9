//! Shared helpers of the integration tests.

pub mod cli;
pub mod pbs_server;
