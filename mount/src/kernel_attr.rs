//! Turns our [`Attr`] into what fuser sends to the kernel.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::{Attr, Errno, Timespec};

/// The fuser attribute record for `attr`; EIO when `mode` names no known file type.
pub(crate) fn file_attr(attr: &Attr) -> Result<FileAttr, Errno> {
    let mtime = system_time(attr.mtime);
    Ok(FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(attr.mode).ok_or(Errno::EIO)?,
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: kernel_rdev(attr.rdev),
        blksize: attr.blksize,
        flags: 0,
    })
}

pub(crate) fn file_type(mode: u32) -> Option<FileType> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => return None,
    })
}

/// `SystemTime` for a possibly negative timestamp; out-of-range values saturate to the epoch
/// side they came from rather than panicking.
pub(crate) fn system_time(t: Timespec) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    let whole = Duration::from_secs(t.secs.unsigned_abs());
    let base = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    base.and_then(|b| b.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

/// The kernel reads FUSE's 32-bit rdev with `new_decode_dev` (12 bits of major, 20 of
/// minor). glibc's 64-bit `dev_t` matches that layout in its low 32 bits only while the
/// numbers fit; the split and rejoin makes the narrowing explicit.
pub(crate) fn kernel_rdev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    if major > 0xfff || minor > 0xf_ffff {
        log::warn!("device number {major}:{minor} does not fit FUSE's 32-bit rdev");
    }
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_times_keep_their_nanoseconds() {
        // 1.5 s before the epoch is secs = -2, nanos = 500_000_000.
        let t = system_time(Timespec::new(-2, 500_000_000));
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_millis(1500)
        );
        let t = system_time(Timespec::new(1_700_000_000, 7));
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 7)
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        system_time(Timespec::new(i64::MIN, 999_999_999));
        system_time(Timespec::new(i64::MAX, u32::MAX));
    }

    #[test]
    fn rdev_uses_the_kernels_new_encoding() {
        // makedev(8, 1) and makedev(1, 300): the minor's high bits move above the major.
        assert_eq!(kernel_rdev(libc::makedev(8, 1)), 0x801);
        assert_eq!(
            kernel_rdev(libc::makedev(1, 300)),
            (300 & 0xff) | (1 << 8) | (0x100 << 12)
        );
        assert_eq!(kernel_rdev(libc::makedev(4095, 0xf_ffff)), 0xffff_ffff);
    }

    #[test]
    fn unknown_file_type_is_an_error() {
        let attr = Attr {
            mode: 0o644,
            ..Attr::default()
        };
        assert_eq!(file_attr(&attr).unwrap_err(), Errno::EIO);
        let attr = Attr {
            mode: libc::S_IFLNK | 0o777,
            ..Attr::default()
        };
        assert_eq!(file_attr(&attr).unwrap().kind, FileType::Symlink);
        assert_eq!(file_attr(&attr).unwrap().perm, 0o777);
    }
}
