//! The kernel caps FUSE readahead at its backing device's current setting (128 KiB by
//! default) during INIT; a larger window has to be set afterwards through sysfs.

use std::fs;
use std::path::Path;

/// Best effort: sets the readahead of the mount at `mountpoint` to `bytes`.
pub(crate) fn raise_readahead(mountpoint: &Path, bytes: u32) {
    let Some(dev) = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| device_of(&info, mountpoint))
    else {
        log::debug!("no mountinfo entry for {}", mountpoint.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(err) = fs::write(&knob, (bytes / 1024).max(1).to_string()) {
        log::debug!("cannot raise readahead via {knob}: {err}");
    }
}

/// The "major:minor" of the last (topmost) mount at `mountpoint` in a mountinfo text.
fn device_of(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let wanted = mountpoint.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let point = fields.nth(1)?;
        (unescape(point) == wanted).then(|| dev.to_string())
    })
}

/// mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:0 / / rw,relatime - ext4 /dev/vda rw
40 22 0:51 / /tmp/a\\040b rw,nosuid,nodev - fuse /dev/fuse rw,user_id=0
41 22 0:52 / /tmp/x rw - fuse snap rw
42 41 0:53 / /tmp/x rw - fuse snap rw
";

    #[test]
    fn finds_the_topmost_mount_and_unescapes_spaces() {
        assert_eq!(
            device_of(INFO, Path::new("/tmp/x")).as_deref(),
            Some("0:53")
        );
        assert_eq!(
            device_of(INFO, Path::new("/tmp/a b")).as_deref(),
            Some("0:51")
        );
        assert_eq!(device_of(INFO, Path::new("/tmp/none")), None);
    }

    #[test]
    fn unescape_leaves_odd_backslashes_alone() {
        assert_eq!(unescape("a\\134b\\9"), "a\\b\\9");
    }
}
