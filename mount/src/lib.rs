//! A generic read-only FUSE adapter over a small filesystem trait.
//! It knows nothing of pxar or PBS.
//!
//! Implement [`ReadOnlyFs`] (stable inode numbers, root = [`ROOT_INO`]) and mount it with
//! [`mount_foreground`], [`mount_background`] or [`mount`]. The adapter is tuned for data
//! that never changes while mounted: entries, absences and attributes are cached for
//! [`MountOptions::ttl`] (attributes the filesystem marks [`Attr::provisional`], such as a
//! count still being made, only for [`MountOptions::provisional_ttl`]), file pages and
//! directory listings stay cached across opens, listings use readdirplus, reads go up to
//! 1 MiB and several requests are served at once. Kernel `forget` counts are ignored
//! because inode numbers are never reused.

mod adapter;
mod errno;
mod fs;
mod kernel_attr;
mod mount_table;
mod options;
mod readahead;
mod session;
mod xattr;

pub use errno::Errno;
pub use fs::{
    readdir_from, AddDirItem, Attr, DirItem, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO,
};
pub use mount_table::{mount_at, MountEntry};
pub use options::MountOptions;
pub use session::{
    mount, mount_background, mount_foreground, unmount, unmount_lazy, BackgroundMount, MountedFs,
};
