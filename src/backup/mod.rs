//! The pull-mode backup: reading a file system through [`fs_accessor::FileSystemAccessor`]
//! and encoding it as the official client would ([`archive`]).

pub mod acl;
pub mod archive;
pub mod fs_accessor;
pub mod fs_flags;
