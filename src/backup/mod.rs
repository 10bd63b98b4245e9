//! The pull-mode backup: a server ([`server`]) reads a client's file system through a
//! [`client::ClientProvider`], encodes it as the official client would ([`archive`]), cuts
//! and uploads chunks ([`upload`]) and writes a snapshot through a [`crate::store::target::BackupSession`].

pub mod acl;
pub mod archive;
pub mod archive_options;
mod capture;
pub mod client;
mod dir_warmer;
pub mod exclude;
mod file_content;
pub mod fs_accessor;
pub mod fs_flags;
mod image;
mod lookahead;
#[cfg(test)]
mod mem_fs;
#[cfg(test)]
mod metadata_mode_tests;
pub mod payload;
pub mod protection;
mod pxar_archives;
mod read_ahead;
pub mod reuse;
pub mod server;
pub mod spec;
pub mod upload;
