//! The integration tests, built as one binary (one link instead of one per file, and one
//! copy of the helpers): fixtures from `../shared/fixtures`, push → mount/restore round trips,
//! FUSE end-to-end, and the protocols against the in-process PBS test server (`common::pbs_server`).
//! Run one part with `cargo test --test it MODULE::`.

mod common;

mod catalog_fixtures;
mod chunker_fixtures;
mod cli_fixtures;
mod cli_help;
mod crypto_cli;
mod crypto_fixtures;
mod diff_find_cat;
mod format_fixtures;
mod lifecycle;
mod lifecycle_remote;
mod mount_fixtures;
mod mount_points;
mod mount_refresh;
mod packaging;
mod progress_terminal;
mod pull;
mod push_change_detection;
mod push_encrypted;
mod push_fixtures;
mod push_incremental;
mod push_interrupt;
mod push_mount;
mod pxar_encode_fixtures;
mod pxar_mutation;
mod pxar_read_fixtures;
mod pxar_roundtrip_prop;
mod read_ahead;
mod remote;
mod remote_backup;
mod remote_cli;
mod remote_push;
mod restore_extract;
mod storefs;
mod sync;
mod sync_interrupt;
