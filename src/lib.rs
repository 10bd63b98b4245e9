//! pbsfs: read and write Proxmox Backup Server snapshots.
//!
//! Layers (see ARCHITECTURE.md): `format` (pure codecs) → `pxar` (archive format) →
//! `store` (datastores, chunk sources, range reader) → `cli`.

pub mod alloc;
pub mod backup;
pub mod format;
pub mod pxar;
pub mod remote;
pub mod repository;
pub mod snapfs;
pub mod store;

/// Unit tests run on the allocator the program uses: big buffers are page-aligned
/// mappings, which direct chunk reads rely on.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: alloc::BigBufferAlloc = alloc::BigBufferAlloc;
