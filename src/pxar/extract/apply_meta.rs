//! Restoring an entry's metadata (owner, xattrs, ACLs, file capabilities, mode, mtime), in
//! the order that keeps all of it, through a descriptor or by name relative to the parent.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::safe_fs::cvt;
use super::Extractor;
use crate::pxar::acl;
use crate::pxar::metadata::Metadata;

impl Extractor<'_> {
    /// The mode to set: the archived one, without setuid/setgid on a non-directory whose
    /// owner is not restored.
    fn mode_for(&mut self, meta: &Metadata, is_dir: bool) -> libc::mode_t {
        let mode = (meta.stat.mode & 0o7777) as libc::mode_t;
        let setid = libc::S_ISUID | libc::S_ISGID;
        if self.options.restore_owner || is_dir || mode & setid == 0 {
            return mode;
        }
        self.stats.setid_cleared += 1;
        mode & !setid
    }

    /// Restores metadata through an open descriptor (files, directories), in the order that
    /// keeps everything: owner first (chown drops setuid and capabilities), mode after the
    /// ACLs, mtime last.
    pub(super) fn apply_to_fd(
        &mut self,
        fd: RawFd,
        meta: &Metadata,
        is_dir: bool,
    ) -> io::Result<()> {
        let stat = &meta.stat;
        if self.options.restore_owner {
            cvt(unsafe { libc::fchown(fd, stat.uid, stat.gid) })?;
        }
        for (name, value) in attribute_xattrs(meta, is_dir) {
            let name = CString::new(name).map_err(io::Error::other)?;
            cvt(unsafe {
                libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            })?;
        }
        let mode = self.mode_for(meta, is_dir);
        cvt(unsafe { libc::fchmod(fd, mode) })?;
        let times = mtime_spec(meta);
        cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
        Ok(())
    }

    /// Restores metadata of a node that cannot be opened for writing (symlink, device, fifo,
    /// socket) by name relative to its parent, never following a final symlink.
    pub(super) fn apply_to_node(
        &mut self,
        parent: RawFd,
        name: &CString,
        meta: &Metadata,
        is_symlink: bool,
    ) -> io::Result<()> {
        let stat = &meta.stat;
        if self.options.restore_owner {
            cvt(unsafe {
                libc::fchownat(
                    parent,
                    name.as_ptr(),
                    stat.uid,
                    stat.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        let xattrs = attribute_xattrs(meta, false);
        if !xattrs.is_empty() {
            // The descriptor's /proc link is followed; the final name is not.
            let mut path = format!("/proc/self/fd/{parent}/").into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path = CString::new(path).map_err(io::Error::other)?;
            for (xname, value) in xattrs {
                let xname = CString::new(xname).map_err(io::Error::other)?;
                cvt(unsafe {
                    libc::lsetxattr(
                        path.as_ptr(),
                        xname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                })?;
            }
        }
        if !is_symlink {
            let mode = self.mode_for(meta, false);
            cvt(unsafe { libc::fchmodat(parent, name.as_ptr(), mode, 0) })?;
        }
        let times = mtime_spec(meta);
        cvt(unsafe {
            libc::utimensat(
                parent,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }
}

/// The xattrs to set: plain ones, then ACLs (kernel format), then file capabilities.
fn attribute_xattrs(meta: &Metadata, is_dir: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = meta
        .xattrs
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Some(entries) = acl::access_entries(meta) {
        out.push((acl::XATTR_ACCESS.into(), acl::to_xattr(&entries)));
    }
    if is_dir {
        if let Some(entries) = acl::default_entries(meta) {
            out.push((acl::XATTR_DEFAULT.into(), acl::to_xattr(&entries)));
        }
    }
    if let Some(fcaps) = &meta.fcaps {
        out.push((b"security.capability".to_vec(), fcaps.clone()));
    }
    out
}

fn mtime_spec(meta: &Metadata) -> [libc::timespec; 2] {
    let mtime = libc::timespec {
        tv_sec: meta.stat.mtime.secs as libc::time_t,
        tv_nsec: meta.stat.mtime.nanos as libc::c_long,
    };
    [mtime, mtime]
}
