//! pbsfs: read and write Proxmox Backup Server snapshots.
//!
//! Layers (see ARCHITECTURE.md): `format` (pure codecs) → `pxar` (archive format) →
//! `store` (datastores, chunk sources, range reader) → `cli`.

pub mod agent;
pub mod backup;
pub mod format;
pub mod pxar;
pub mod remote;
pub mod repository;
pub mod snapfs;
pub mod store;
