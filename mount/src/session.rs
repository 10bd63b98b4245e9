//! Mounting, serving and unmounting.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fuser::{BackgroundSession, Session};

use crate::adapter::FuseAdapter;
use crate::readahead::raise_readahead;
use crate::{MountOptions, ReadOnlyFs};

/// A filesystem mounted but not yet served: requests queue up until [`MountedFs::run`] or
/// [`MountedFs::spawn`]. Dropping it unmounts.
pub struct MountedFs<F: ReadOnlyFs> {
    session: Session<FuseAdapter<F>>,
    mountpoint: PathBuf,
}

/// Mounts `fs` at `mountpoint` (which must be an existing directory).
pub fn mount<F: ReadOnlyFs>(
    fs: F,
    mountpoint: impl AsRef<Path>,
    opts: &MountOptions,
) -> io::Result<MountedFs<F>> {
    let mountpoint = mountpoint.as_ref().canonicalize()?;
    let config = opts.fuser_config()?;
    let session = Session::new(FuseAdapter::new(fs, opts.tuning()), &mountpoint, &config)?;
    raise_readahead(&mountpoint, opts.max_readahead);
    Ok(MountedFs {
        session,
        mountpoint,
    })
}

impl<F: ReadOnlyFs> MountedFs<F> {
    /// Canonical path of the mount, as [`unmount`] wants it.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves requests on this thread until the filesystem is unmounted, e.g. by
    /// [`unmount`] from a signal-handling thread or by `umount` from outside.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }

    /// Serves requests on background threads.
    pub fn spawn(self) -> io::Result<BackgroundMount> {
        let session = self.session.spawn()?;
        Ok(BackgroundMount {
            session: Some(session),
            mountpoint: self.mountpoint,
        })
    }
}

/// Mounts `fs` and serves it on this thread until it is unmounted.
pub fn mount_foreground<F: ReadOnlyFs>(
    fs: F,
    mountpoint: impl AsRef<Path>,
    opts: &MountOptions,
) -> io::Result<()> {
    mount(fs, mountpoint, opts)?.run()
}

/// Mounts `fs` and serves it in the background until the returned handle is unmounted
/// or dropped.
pub fn mount_background<F: ReadOnlyFs>(
    fs: F,
    mountpoint: impl AsRef<Path>,
    opts: &MountOptions,
) -> io::Result<BackgroundMount> {
    mount(fs, mountpoint, opts)?.spawn()
}

/// A mount served by background threads.
#[derive(Debug)]
pub struct BackgroundMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl BackgroundMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads to finish. If the mount is busy the
    /// error is returned and the mount is detached lazily instead (see `Drop`).
    pub fn unmount(mut self) -> io::Result<()> {
        unmount(&self.mountpoint)?;
        match self.session.take() {
            Some(session) => session.join(),
            None => Ok(()),
        }
    }
}

/// Unmounts; when the mount is busy, detaches it lazily and leaves the serving threads
/// to answer the files still open (they end when the last one is closed).
impl Drop for BackgroundMount {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        match unmount(&self.mountpoint) {
            Ok(()) => {
                if let Err(err) = session.join() {
                    log::warn!(
                        "FUSE session at {} ended with {err}",
                        self.mountpoint.display()
                    );
                }
            }
            // Unmounted from outside already: nothing left but the finished threads.
            Err(_) if session.guard.is_finished() => {
                let _ = session.join();
            }
            Err(err) => {
                log::warn!(
                    "unmount of {} failed ({err}); detaching",
                    self.mountpoint.display()
                );
                if let Err(err) = unmount_lazy(&self.mountpoint) {
                    log::error!(
                        "lazy unmount of {} failed: {err}",
                        self.mountpoint.display()
                    );
                }
            }
        }
    }
}

/// Unmounts the filesystem at `mountpoint` (`umount2`, or `fusermount3 -u` when not
/// permitted). Callable from any thread, e.g. a signal-handling thread ending a foreground
/// mount on SIGTERM (not from inside a signal handler: the fallback spawns a process).
pub fn unmount(mountpoint: impl AsRef<Path>) -> io::Result<()> {
    unmount_with(mountpoint.as_ref(), false)
}

/// Detaches the filesystem at `mountpoint` now; it goes away once its open files close.
pub fn unmount_lazy(mountpoint: impl AsRef<Path>) -> io::Result<()> {
    unmount_with(mountpoint.as_ref(), true)
}

fn unmount_with(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        return fusermount_unmount(mountpoint, lazy);
    }
    Err(err)
}

/// The setuid helper unmounts FUSE filesystems the caller mounted without being root.
fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    for helper in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(helper);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg(mountpoint).status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => return Err(io::Error::other(format!("{helper} -u failed: {status}"))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EPERM))
}
