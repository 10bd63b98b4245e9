//! What the kernel's mount table says about a path: whether something is mounted exactly
//! there, and what (`/proc/self/mountinfo`). Used to refuse a mount over a live mount of the
//! same filesystem, to recognise a dead one, and to unmount only what is there.

use std::io;
use std::path::{Path, PathBuf};

/// The topmost mount at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// File system type as the kernel names it, e.g. `fuse.pbsfs`.
    pub fstype: String,
    /// The mount's source (`fsname`), e.g. `pbsfs:host/a/2026-01-01T00:00:00Z`.
    pub source: String,
}

/// The topmost mount whose mount point is `path` (absolute, as the kernel shows it), if any.
pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mount_at(&table, path))
}

/// Later lines are mounted later, so the last match is the one on top.
fn parse_mount_at(table: &str, path: &Path) -> Option<MountEntry> {
    table
        .lines()
        .rev()
        .filter_map(parse_line)
        .find(|(point, _)| point == path)
        .map(|(_, entry)| entry)
}

/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Option<(PathBuf, MountEntry)> {
    let (head, tail) = line.split_once(" - ")?;
    let point = head.split(' ').nth(4)?;
    let mut tail = tail.split(' ');
    let fstype = tail.next()?;
    let source = tail.next().unwrap_or("");
    Some((
        PathBuf::from(unescape(point)),
        MountEntry {
            fstype: unescape(fstype),
            source: unescape(source),
        },
    ))
}

/// The kernel writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/my\\040snap rw,nosuid - fuse.pbsfs pbsfs:host/a/2026 ro,user_id=0
41 40 0:51 / /mnt/my\\040snap rw,nosuid - fuse.pbsfs pbsfs:host/b/2026 ro,user_id=0
";

    #[test]
    fn the_topmost_mount_at_a_path_is_found_with_escapes_undone() {
        let entry = parse_mount_at(TABLE, Path::new("/mnt/my snap")).unwrap();
        assert_eq!(entry.fstype, "fuse.pbsfs");
        assert_eq!(entry.source, "pbsfs:host/b/2026");
        assert_eq!(parse_mount_at(TABLE, Path::new("/mnt")), None);
        assert_eq!(
            parse_mount_at(TABLE, Path::new("/")).unwrap().fstype,
            "ext4"
        );
    }
}
