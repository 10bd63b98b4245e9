//! The pxar archive format: item constants and headers, a streaming encoder (v1 and v2
//! split), and a random-access reader over anything that implements [`crate::format::ReadAt`].
//! Knows nothing of chunks or FUSE.

pub mod encoder;
pub mod format;
pub mod goodbye;
pub mod metadata;
