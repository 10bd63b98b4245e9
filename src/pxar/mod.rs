//! The pxar archive format: item constants and headers, a streaming encoder (v1 and v2
//! split), and a random-access reader over anything that implements [`crate::format::ReadAt`].
//! Knows nothing of chunks or FUSE.

pub mod accessor;
pub mod acl;
pub mod decode_error;
pub mod decoder;
pub mod dir_table;
pub mod encoder;
pub mod entry;
pub mod extract;
pub mod format;
pub mod goodbye;
pub mod items;
pub mod metadata;
pub mod pattern;
pub mod payload_sink;
pub mod table_walk;

pub use accessor::{Accessor, DirEntry};
pub use decode_error::DecodeError;
pub use decoder::{DecodedEntry, Decoder};
pub use entry::{Entry, EntryKind, FileData};
pub use metadata::{Acl, Metadata};
#[cfg(test)]
pub(crate) mod test_archive;
