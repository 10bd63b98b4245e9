//! Shared helpers of the integration tests.

pub mod pbs_server;
