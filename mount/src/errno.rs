//! A plain errno value: what every filesystem operation fails with.

use std::fmt;
use std::io;

/// An errno code (positive, as in `libc::ENOENT`) returned to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);

    /// The code as fuser wants it; zero or negative values (never valid errnos) become EIO.
    pub(crate) fn to_fuser(self) -> fuser::Errno {
        if self.0 > 0 {
            fuser::Errno::from_i32(self.0)
        } else {
            fuser::Errno::EIO
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl std::error::Error for Errno {}

/// An I/O error keeps its OS code; anything else (a decode error, say) becomes EIO.
impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) if code > 0 => Errno(code),
            _ => Errno::EIO,
        }
    }
}

impl From<Errno> for io::Error {
    fn from(err: Errno) -> Self {
        io::Error::from_raw_os_error(err.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_code_and_others_become_eio() {
        let not_found = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(Errno::from(not_found), Errno::ENOENT);
        let custom = io::Error::new(io::ErrorKind::InvalidData, "bad magic");
        assert_eq!(Errno::from(custom), Errno::EIO);
    }

    #[test]
    fn invalid_codes_map_to_eio_for_the_kernel() {
        assert_eq!(Errno(0).to_fuser(), fuser::Errno::EIO);
        assert_eq!(Errno(-5).to_fuser(), fuser::Errno::EIO);
        assert_eq!(Errno::ENODATA.to_fuser().code(), libc::ENODATA);
    }
}
