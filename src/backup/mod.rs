//! The pull-mode backup: a server ([`server`]) reads a client's file system through a
//! [`client::ClientProvider`], encodes it as the official client would ([`archive`]), cuts
//! and uploads chunks ([`upload`]) and writes a snapshot through a [`crate::store::target::BackupSession`].

pub mod acl;
pub mod archive;
pub mod client;
pub mod exclude;
pub mod fs_accessor;
pub mod fs_flags;
pub mod protection;
pub mod reuse;
pub mod server;
pub mod upload;
