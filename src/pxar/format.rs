//! pxar item types, header and fixed-size item layouts (spec: pxar.md §1–§4).
//!
//! Every type value is the SipHash-2-4 of a fixed string under [`HASH_KEY_0`]/[`HASH_KEY_1`];
//! a unit test re-derives them so a typo cannot hide here.

/// SipHash-2-4 keys shared by item types and the goodbye-table file-name hash.
pub const HASH_KEY_0: u64 = 0x83ac_3f1c_fbb4_50db;
pub const HASH_KEY_1: u64 = 0xaa4f_1b68_7936_9fbd;

pub const PXAR_FORMAT_VERSION: u64 = 0x730f_6c75_df16_a40d;
pub const PXAR_PRELUDE: u64 = 0xe309_d79d_9f7b_771b;
pub const PXAR_ENTRY: u64 = 0xd595_6474_e588_acef;
pub const PXAR_ENTRY_V1: u64 = 0x11da_850a_1c1c_ceff;
pub const PXAR_FILENAME: u64 = 0x1670_1121_0639_17b3;
pub const PXAR_SYMLINK: u64 = 0x27f9_71e7_dbf5_dc5f;
pub const PXAR_HARDLINK: u64 = 0x5126_9c84_22bd_7275;
pub const PXAR_DEVICE: u64 = 0x9fc9_e906_586d_5ce9;
pub const PXAR_XATTR: u64 = 0x0dab_0229_b57d_cd03;
pub const PXAR_ACL_USER: u64 = 0x2ce8_540a_457d_55b8;
pub const PXAR_ACL_GROUP: u64 = 0x136e_3ece_b04c_03ab;
pub const PXAR_ACL_GROUP_OBJ: u64 = 0x1086_8031_e958_2876;
pub const PXAR_ACL_DEFAULT: u64 = 0xbbbb_1341_5a68_96f5;
pub const PXAR_ACL_DEFAULT_USER: u64 = 0xc893_57b4_0532_cd1f;
pub const PXAR_ACL_DEFAULT_GROUP: u64 = 0xf90a_8a58_1603_8ffe;
pub const PXAR_FCAPS: u64 = 0x2da9_dd9d_b5f7_fb67;
pub const PXAR_QUOTA_PROJID: u64 = 0xe075_40e8_2f7d_1cbb;
pub const PXAR_PAYLOAD: u64 = 0x2814_7a1b_0b7c_1a25;
pub const PXAR_PAYLOAD_REF: u64 = 0x419d_3d6b_c4ba_977e;
pub const PXAR_GOODBYE: u64 = 0x2fec_4fa6_42d5_731d;
pub const PXAR_GOODBYE_TAIL_MARKER: u64 = 0xef5e_ed5b_753e_1555;
pub const PXAR_PAYLOAD_START_MARKER: u64 = 0x834c_68c2_194a_4ed2;
pub const PXAR_PAYLOAD_TAIL_MARKER: u64 = 0x6c72_b78b_984c_81b5;

/// Size of every item header: u64 type + u64 full size (header included).
pub const HEADER_SIZE: u64 = 16;
/// Size of the ENTRY (Stat) content.
pub const STAT_SIZE: u64 = 40;
/// Size of the legacy ENTRY_V1 content.
pub const STAT_V1_SIZE: u64 = 32;
/// Size of one goodbye-table item (hash, offset, size).
pub const GOODBYE_ITEM_SIZE: u64 = 24;

/// Limits the reference decoder enforces on content sizes (pxar.md §2).
pub const MAX_FILENAME_CONTENT: u64 = 4097;
pub const MAX_SYMLINK_CONTENT: u64 = 4097;
pub const MAX_HARDLINK_CONTENT: u64 = 4105;
pub const MAX_XATTR_CONTENT: u64 = 255 + 65536;
pub const MAX_FCAPS_CONTENT: u64 = 255 + 65536;
/// Longest file name (without the terminating NUL).
pub const MAX_NAME_LEN: usize = 4096;

/// The only v2 format version.
pub const FORMAT_VERSION_2: u64 = 2;

/// ACL permission bits and the "not set" marker.
pub const ACL_READ: u64 = 4;
pub const ACL_WRITE: u64 = 2;
pub const ACL_EXECUTE: u64 = 1;
pub const ACL_NO_MASK: u64 = u64::MAX;

/// `st_mode` file type bits.
pub mod mode {
    pub const IFMT: u64 = 0o170000;
    pub const IFSOCK: u64 = 0o140000;
    pub const IFLNK: u64 = 0o120000;
    pub const IFREG: u64 = 0o100000;
    pub const IFBLK: u64 = 0o060000;
    pub const IFDIR: u64 = 0o040000;
    pub const IFCHR: u64 = 0o020000;
    pub const IFIFO: u64 = 0o010000;
    pub const ISUID: u64 = 0o004000;
    pub const ISGID: u64 = 0o002000;
    pub const ISVTX: u64 = 0o001000;
}

/// Per-file attribute flags stored in ENTRY (pxar.md §4.2).
pub mod flags {
    pub const WITH_FLAG_HIDDEN: u64 = 0x2000;
    pub const WITH_FLAG_SYSTEM: u64 = 0x4000;
    pub const WITH_FLAG_ARCHIVE: u64 = 0x8000;
    pub const WITH_FLAG_APPEND: u64 = 0x10000;
    pub const WITH_FLAG_NOATIME: u64 = 0x20000;
    pub const WITH_FLAG_COMPR: u64 = 0x40000;
    pub const WITH_FLAG_NOCOW: u64 = 0x80000;
    pub const WITH_FLAG_NODUMP: u64 = 0x100000;
    pub const WITH_FLAG_DIRSYNC: u64 = 0x200000;
    pub const WITH_FLAG_IMMUTABLE: u64 = 0x400000;
    pub const WITH_FLAG_SYNC: u64 = 0x800000;
    pub const WITH_FLAG_NOCOMP: u64 = 0x1000000;
    pub const WITH_FLAG_PROJINHERIT: u64 = 0x2000000;
}

/// An item header as it appears in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub htype: u64,
    pub full_size: u64,
}

impl Header {
    pub fn new(htype: u64, content_size: u64) -> Self {
        Header {
            htype,
            full_size: content_size + HEADER_SIZE,
        }
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.htype.to_le_bytes());
        out[8..].copy_from_slice(&self.full_size.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; 16]) -> Self {
        Header {
            htype: u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            full_size: u64::from_le_bytes(bytes[8..].try_into().unwrap()),
        }
    }

    /// Content size, or `None` for a malformed header (`full_size < 16`).
    pub fn content_size(&self) -> Option<u64> {
        self.full_size.checked_sub(HEADER_SIZE)
    }
}

/// Modification time, floor-normalised: `nanos` is always in `0..1_000_000_000`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MTime {
    pub secs: i64,
    pub nanos: u32,
}

impl MTime {
    /// Builds a floor-normalised time from any (secs, nsec) pair as `lstat` reports it.
    pub fn from_secs_nanos(secs: i64, nanos: i64) -> Self {
        let total = secs as i128 * 1_000_000_000 + nanos as i128;
        MTime {
            secs: total.div_euclid(1_000_000_000) as i64,
            nanos: total.rem_euclid(1_000_000_000) as u32,
        }
    }

    pub fn as_nanos(&self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }
}

/// The ENTRY item: an entry's metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u64,
    pub flags: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: MTime,
}

impl Stat {
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[0..8].copy_from_slice(&self.mode.to_le_bytes());
        out[8..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..20].copy_from_slice(&self.uid.to_le_bytes());
        out[20..24].copy_from_slice(&self.gid.to_le_bytes());
        out[24..32].copy_from_slice(&self.mtime.secs.to_le_bytes());
        out[32..36].copy_from_slice(&self.mtime.nanos.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; 40]) -> Self {
        let nanos = u32::from_le_bytes(bytes[32..36].try_into().unwrap());
        Self::with_mtime(bytes, |secs| MTime {
            secs: secs as i64,
            nanos,
        })
    }

    /// Converts the legacy 32-byte ENTRY_V1 (mtime in nanoseconds since the epoch).
    pub fn from_v1_bytes(bytes: &[u8; 32]) -> Self {
        Self::with_mtime(bytes, |mtime_ns| MTime {
            secs: (mtime_ns / 1_000_000_000) as i64,
            nanos: (mtime_ns % 1_000_000_000) as u32,
        })
    }

    /// The fields both layouts share (mode, flags, uid, gid), with the mtime made from the
    /// 64-bit word at offset 24.
    fn with_mtime(bytes: &[u8], mtime: impl FnOnce(u64) -> MTime) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        Stat {
            mode: u64_at(0),
            flags: u64_at(8),
            uid: u32_at(16),
            gid: u32_at(20),
            mtime: mtime(u64_at(24)),
        }
    }

    pub fn file_type(&self) -> u64 {
        self.mode & mode::IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == mode::IFDIR
    }
    pub fn is_regular_file(&self) -> bool {
        self.file_type() == mode::IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == mode::IFLNK
    }
    pub fn is_device(&self) -> bool {
        matches!(self.file_type(), mode::IFCHR | mode::IFBLK)
    }
    pub fn is_fifo(&self) -> bool {
        self.file_type() == mode::IFIFO
    }
    pub fn is_socket(&self) -> bool {
        self.file_type() == mode::IFSOCK
    }
}

/// SipHash-2-4 under the pxar keys: item type derivation and goodbye-table name hash.
pub fn pxar_hash(data: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = siphasher::sip::SipHasher24::new_with_keys(HASH_KEY_0, HASH_KEY_1);
    hasher.write(data);
    hasher.finish()
}

/// Splits a Linux `dev_t` into (major, minor) the glibc way.
pub fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// Joins (major, minor) into a Linux `dev_t` the glibc way.
pub fn join_dev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_constants_are_the_siphash_of_their_names() {
        let table = [
            (PXAR_FORMAT_VERSION, "__PROXMOX_FORMAT_VERSION__"),
            (PXAR_PRELUDE, "__PROXMOX_FORMAT_PRELUDE__"),
            (PXAR_ENTRY, "__PROXMOX_FORMAT_ENTRY_V2__"),
            (PXAR_ENTRY_V1, "__PROXMOX_FORMAT_ENTRY__"),
            (PXAR_FILENAME, "__PROXMOX_FORMAT_FILENAME__"),
            (PXAR_SYMLINK, "__PROXMOX_FORMAT_SYMLINK__"),
            (PXAR_HARDLINK, "__PROXMOX_FORMAT_HARDLINK__"),
            (PXAR_DEVICE, "__PROXMOX_FORMAT_DEVICE__"),
            (PXAR_XATTR, "__PROXMOX_FORMAT_XATTR__"),
            (PXAR_ACL_USER, "__PROXMOX_FORMAT_ACL_USER__"),
            (PXAR_ACL_GROUP, "__PROXMOX_FORMAT_ACL_GROUP__"),
            (PXAR_ACL_GROUP_OBJ, "__PROXMOX_FORMAT_ACL_GROUP_OBJ__"),
            (PXAR_ACL_DEFAULT, "__PROXMOX_FORMAT_ACL_DEFAULT__"),
            (PXAR_ACL_DEFAULT_USER, "__PROXMOX_FORMAT_ACL_DEFAULT_USER__"),
            (
                PXAR_ACL_DEFAULT_GROUP,
                "__PROXMOX_FORMAT_ACL_DEFAULT_GROUP__",
            ),
            (PXAR_FCAPS, "__PROXMOX_FORMAT_FCAPS__"),
            (PXAR_QUOTA_PROJID, "__PROXMOX_FORMAT_QUOTA_PROJID__"),
            (PXAR_PAYLOAD, "__PROXMOX_FORMAT_PXAR_PAYLOAD__"),
            (PXAR_PAYLOAD_REF, "__PROXMOX_FORMAT_PXAR_PAYLOAD_REF__"),
            (PXAR_GOODBYE, "__PROXMOX_FORMAT_GOODBYE__"),
            (
                PXAR_GOODBYE_TAIL_MARKER,
                "__PROXMOX_FORMAT_PXAR_GOODBYE_TAIL_MARKER__",
            ),
            (
                PXAR_PAYLOAD_START_MARKER,
                "__PROXMOX_FORMAT_PXAR_PAYLOAD_START_MARKER__",
            ),
            (
                PXAR_PAYLOAD_TAIL_MARKER,
                "__PROXMOX_FORMAT_PXAR_PAYLOAD_TAIL_MARKER__",
            ),
        ];
        for (value, name) in table {
            assert_eq!(value, pxar_hash(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn mtime_is_floor_normalised() {
        assert_eq!(
            MTime::from_secs_nanos(0, -500_000_000),
            MTime {
                secs: -1,
                nanos: 500_000_000
            }
        );
        assert_eq!(MTime::from_secs_nanos(5, 7), MTime { secs: 5, nanos: 7 });
    }

    #[test]
    fn stat_round_trips() {
        let stat = Stat {
            mode: mode::IFREG | 0o644,
            flags: 0,
            uid: 1000,
            gid: 100,
            mtime: MTime {
                secs: -86400,
                nanos: 123,
            },
        };
        assert_eq!(Stat::from_bytes(&stat.to_bytes()), stat);
    }

    #[test]
    fn dev_split_and_join_agree() {
        for dev in [
            0u64,
            0x0103,
            0x0801,
            (259u64 << 8) | 7,
            join_dev(4095, 1 << 20),
        ] {
            let (major, minor) = split_dev(dev);
            assert_eq!(join_dev(major, minor), dev);
        }
    }
}
