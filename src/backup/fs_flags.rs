//! What the official client captures per file system, and how per-file attribute bits map
//! to pxar flags (PBS4 pbs-client/src/pxar/flags.rs; pxar.md §4.2, §6.2).

use crate::pxar::format::flags::*;

/// Feature bits (never stored per file) steering what is captured.
pub mod feature {
    pub const WITH_XATTRS: u64 = 0x1000_0000;
    pub const WITH_ACL: u64 = 0x2000_0000;
    pub const WITH_FCAPS: u64 = 0x8000_0000;
    pub const WITH_QUOTA_PROJID: u64 = 0x1_0000_0000;
    /// The capture-relevant part of the client's default feature set.
    pub const DEFAULT: u64 = WITH_XATTRS | WITH_ACL | WITH_FCAPS | WITH_QUOTA_PROJID;
}

/// `statfs` magic numbers the official client distinguishes.
pub mod magic {
    pub const MSDOS: i64 = 0x4d44;
    pub const EXT4: i64 = 0xef53;
    pub const XFS: i64 = 0x5846_5342;
    pub const ZFS: i64 = 0x2fc1_2fc1;
    pub const BTRFS: i64 = 0x9123_683e;
    pub const TMPFS: i64 = 0x0102_1994;
    pub const FUSE: i64 = 0x6573_5546;

    /// Pseudo file systems whose contents are never archived.
    pub const VIRTUAL: [i64; 18] = [
        0x4249_4e4d, // binfmt_misc
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x6265_6570, // configfs
        0x6462_6720, // debugfs
        0x1cd1,      // devpts
        0xde5e_81e4, // efivarfs
        0x6573_5543, // fusectl
        0x9584_58f6, // hugetlbfs
        0x1980_0202, // mqueue
        0x6e66_7364, // nfsd
        0x9fa0,      // proc
        0x6165_676c, // pstore
        0x6759_6969, // rpc_pipefs
        0x7363_6673, // securityfs
        0xf97c_ff8c, // selinuxfs
        0x4341_5d53, // smackfs
        0x6265_6572, // sysfs
    ];
}

pub fn is_virtual_file_system(fs_magic: i64) -> bool {
    magic::VIRTUAL.contains(&fs_magic)
}

/// The capture features a file system supports (`Flags::from_magic`, restricted to the bits
/// that change what is read).
pub fn features_of(fs_magic: i64) -> u64 {
    use feature::*;
    match fs_magic {
        magic::MSDOS | magic::TMPFS => 0,
        magic::EXT4 | magic::XFS | magic::ZFS => {
            WITH_XATTRS | WITH_ACL | WITH_FCAPS | WITH_QUOTA_PROJID
        }
        magic::BTRFS => WITH_XATTRS | WITH_ACL | WITH_FCAPS,
        magic::FUSE => WITH_XATTRS,
        _ => WITH_XATTRS | WITH_ACL | WITH_FCAPS,
    }
}

/// Whether the file system's project quota id is read (dirs and regular files only).
pub fn has_quota_project_ids(fs_magic: i64) -> bool {
    matches!(
        fs_magic,
        magic::EXT4 | magic::XFS | magic::FUSE | magic::ZFS
    )
}

/// Whether FAT attributes are read.
pub fn has_fat_attributes(fs_magic: i64) -> bool {
    matches!(fs_magic, magic::MSDOS | magic::FUSE)
}

const CHATTR_MAP: [(u64, u64); 10] = [
    (WITH_FLAG_APPEND, 0x20),
    (WITH_FLAG_NOATIME, 0x80),
    (WITH_FLAG_COMPR, 0x4),
    (WITH_FLAG_NOCOW, 0x80_0000),
    (WITH_FLAG_NODUMP, 0x40),
    (WITH_FLAG_DIRSYNC, 0x1_0000),
    (WITH_FLAG_IMMUTABLE, 0x10),
    (WITH_FLAG_SYNC, 0x8),
    (WITH_FLAG_NOCOMP, 0x400),
    (WITH_FLAG_PROJINHERIT, 0x2000_0000),
];

const FAT_MAP: [(u64, u64); 3] = [
    (WITH_FLAG_HIDDEN, 0x2),
    (WITH_FLAG_SYSTEM, 0x4),
    (WITH_FLAG_ARCHIVE, 0x20),
];

/// pxar flags for `FS_IOC_GETFLAGS` bits; unmapped bits (extents, ...) are dropped.
pub fn from_chattr(attr: u64) -> u64 {
    map_bits(&CHATTR_MAP, attr)
}

/// pxar flags for FAT attribute bits.
pub fn from_fat_attr(attr: u64) -> u64 {
    map_bits(&FAT_MAP, attr)
}

fn map_bits(map: &[(u64, u64)], attr: u64) -> u64 {
    map.iter()
        .filter(|(_, bit)| attr & bit != 0)
        .fold(0, |flags, (flag, _)| flags | flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chattr_bits_map_to_pxar_flags() {
        // immutable + append + extents (0x80000, not stored)
        assert_eq!(
            from_chattr(0x10 | 0x20 | 0x8_0000),
            WITH_FLAG_IMMUTABLE | WITH_FLAG_APPEND
        );
        assert_eq!(from_chattr(0x2000_0000), WITH_FLAG_PROJINHERIT);
        assert_eq!(
            from_fat_attr(0x2 | 0x20),
            WITH_FLAG_HIDDEN | WITH_FLAG_ARCHIVE
        );
    }

    #[test]
    fn tmpfs_captures_no_xattrs_but_ext4_does() {
        assert_eq!(features_of(magic::TMPFS) & feature::WITH_XATTRS, 0);
        assert_ne!(features_of(magic::EXT4) & feature::WITH_ACL, 0);
        assert_eq!(features_of(magic::BTRFS) & feature::WITH_QUOTA_PROJID, 0);
        assert!(is_virtual_file_system(0x9fa0));
        assert!(!is_virtual_file_system(magic::EXT4));
    }
}
