//! Talking to a Proxmox Backup Server (spec: protocol.md): HTTPS with certificate pinning,
//! token or ticket authentication, the admin API for browsing, the reader protocol as a
//! [`ChunkSource`](crate::store::ChunkSource) and the backup protocol for writing snapshots.

pub mod access;
pub mod admin;
pub mod backup;
pub mod client;
pub mod datastore;
pub mod error;
pub mod options;
pub mod query;
pub mod reader;
pub mod runtime;
pub mod session;
pub mod target;
mod tls;
pub mod wire;

pub use admin::{RemoteGcStatus, RemotePruneItem, TaskLogPage};
pub use backup::{RemoteBackupSession, RemoteIndexSummary, RemoteIndexWriter};
pub use client::HttpClient;
pub use datastore::{RemoteDatastore, RemoteFile, RemoteGroup, RemoteSnapshot};
pub use error::RemoteError;
pub use options::{ConnectOptions, Fingerprint, Secret};
pub use reader::RemoteReader;
pub use target::RemoteTarget;
