//! The getxattr/listxattr size-probe protocol: a request with size 0 asks how big the
//! answer is; a buffer too small for it gets ERANGE.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::Errno;

/// Largest value or name list the kernel passes through (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
pub(crate) const XATTR_MAX: usize = 65536;

/// What to send for an answer of `data` when the caller offered a buffer of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrReply<'a> {
    Size(u32),
    Data(&'a [u8]),
    Error(Errno),
}

pub(crate) fn xattr_reply(data: &[u8], size: u32) -> XattrReply<'_> {
    if data.len() > XATTR_MAX {
        XattrReply::Error(Errno::E2BIG)
    } else if size == 0 {
        XattrReply::Size(data.len() as u32)
    } else if (size as usize) < data.len() {
        XattrReply::Error(Errno::ERANGE)
    } else {
        XattrReply::Data(data)
    }
}

/// The listxattr wire form: each name followed by a NUL. Names that are empty or contain a
/// NUL cannot be represented and are left out.
pub(crate) fn encode_names(names: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&0) {
            log::warn!("skipping unrepresentable xattr name {name:?}");
            continue;
        }
        out.extend_from_slice(bytes);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_probe_then_exact_then_too_small() {
        let data = b"user.a\0user.bb\0";
        assert_eq!(xattr_reply(data, 0), XattrReply::Size(15));
        assert_eq!(xattr_reply(data, 15), XattrReply::Data(&data[..]));
        assert_eq!(xattr_reply(data, 4096), XattrReply::Data(&data[..]));
        assert_eq!(xattr_reply(data, 14), XattrReply::Error(Errno::ERANGE));
    }

    #[test]
    fn empty_value_probes_as_zero() {
        assert_eq!(xattr_reply(b"", 0), XattrReply::Size(0));
        assert_eq!(xattr_reply(b"", 10), XattrReply::Data(b""));
    }

    #[test]
    fn oversized_answers_are_e2big() {
        let big = vec![1u8; XATTR_MAX + 1];
        assert_eq!(xattr_reply(&big, 0), XattrReply::Error(Errno::E2BIG));
        let max = vec![1u8; XATTR_MAX];
        assert_eq!(xattr_reply(&max, 0), XattrReply::Size(XATTR_MAX as u32));
    }

    #[test]
    fn names_are_nul_terminated_and_bad_names_skipped() {
        let names: Vec<OsString> = ["user.x", "", "bad\0name", "trusted.y"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(encode_names(&names), b"user.x\0trusted.y\0");
    }
}
