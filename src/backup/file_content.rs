//! A regular file's content as the archive stores it (the walker's reading side).

use std::io::{self, Read};
use std::path::Path;

/// A regular file's content as the archive stores it: exactly its `lstat` size. A file
/// that grew while being read is cut at that size, one that shrank is padded with zeros,
/// one whose reading fails part-way gets zeros in place of the rest; each with a warning.
pub(super) struct FileContent<'p, R> {
    inner: R,
    size: u64,
    /// Bytes handed out so far.
    delivered: u64,
    /// The first bytes, read by `start`; handed out first.
    head: Vec<u8>,
    head_pos: usize,
    /// The file gave out early: the rest is zeros.
    padding: bool,
    /// Whether reading on after `size` bytes was tried (to notice a file that grew).
    end_checked: bool,
    path: &'p Path,
    pub(super) warnings: u64,
    /// Reading failed part-way.
    pub(super) incomplete: bool,
}

impl<'p, R: Read> FileContent<'p, R> {
    /// Bytes `start` reads ahead. A file up to this size is read whole, with a look past
    /// its end, before anything of it is archived.
    const HEAD: u64 = 64 * 1024;

    /// Reads the first bytes: a file that cannot be read at all fails here, before
    /// anything of it is written, and can be left out.
    pub(super) fn start(mut inner: R, size: u64, path: &'p Path) -> io::Result<Self> {
        let whole = size <= Self::HEAD;
        // One byte more than a small file has, to see whether it grew.
        let want = if whole { size + 1 } else { Self::HEAD } as usize;
        let mut head = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match inner.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        head.truncate(got);
        let mut content = FileContent {
            inner,
            size,
            delivered: 0,
            head,
            head_pos: 0,
            padding: false,
            end_checked: whole,
            path,
            warnings: 0,
            incomplete: false,
        };
        if got as u64 > size {
            content.head.truncate(size as usize);
            content.warn_grew();
        } else if (got as u64) < size.min(Self::HEAD) {
            content.padding = true;
            content.warn_shrank(got as u64);
        }
        Ok(content)
    }

    fn warn(&mut self, message: String) {
        self.warnings += 1;
        log::warn!("{message}");
    }

    fn warn_grew(&mut self) {
        let message = format!(
            "{:?} grew while being read; stored its first {} bytes",
            self.path, self.size
        );
        self.warn(message);
    }

    fn warn_shrank(&mut self, got: u64) {
        let message = format!(
            "{:?} shrank while being read; stored its first {got} bytes and {} zero bytes",
            self.path,
            self.size - got
        );
        self.warn(message);
    }

    /// All `size` bytes were handed out: a file with more to read grew.
    fn check_end(&mut self) {
        self.end_checked = true;
        let mut probe = [0u8; 1];
        if matches!(self.inner.read(&mut probe), Ok(n) if n > 0) {
            self.warn_grew();
        }
    }
}

impl<R: Read> Read for FileContent<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.size - self.delivered) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = if self.head_pos < self.head.len() {
            let n = want.min(self.head.len() - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            n
        } else if self.padding {
            buf[..want].fill(0);
            want
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    self.padding = true;
                    self.warn_shrank(self.delivered);
                    return self.read(buf);
                }
                Ok(n) => n.min(want),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
                Err(err) => {
                    self.padding = true;
                    self.incomplete = true;
                    let message = format!(
                        "{:?} could not be read past byte {} ({err}); stored {} zero bytes \
                         in place of the rest",
                        self.path,
                        self.delivered,
                        self.size - self.delivered
                    );
                    self.warn(message);
                    return self.read(buf);
                }
            }
        };
        self.delivered += n as u64;
        if self.delivered == self.size && !self.end_checked && !self.padding {
            self.check_end();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a `FileContent` of `size` over `data` to the end.
    fn content_of(data: &[u8], size: u64) -> (Vec<u8>, u64) {
        let mut content = FileContent::start(data, size, Path::new("f")).unwrap();
        let mut out = Vec::new();
        content.read_to_end(&mut out).unwrap();
        (out, content.warnings)
    }

    #[test]
    fn file_content_pads_and_cuts_with_a_warning() {
        // Small files (read whole by `start`) and big ones (read on after the head).
        for len in [3usize, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8 | 1).collect();
            let size = len as u64;
            assert_eq!(content_of(&data, size), (data.clone(), 0));
            // Shrank: padded.
            let mut padded = data[..len - 1].to_vec();
            padded.push(0);
            assert_eq!(content_of(&data[..len - 1], size), (padded, 1));
            // Grew: cut, and said so.
            let mut grown = data.clone();
            grown.push(7);
            assert_eq!(content_of(&grown, size), (data.clone(), 1));
        }
        assert_eq!(content_of(b"", 0), (Vec::new(), 0));
        assert_eq!(content_of(b"x", 0), (Vec::new(), 1));
    }

    #[test]
    fn file_content_fails_early_or_pads_after_a_read_error() {
        /// `good` bytes, then errors.
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let path = Path::new("f");
        // Nothing readable: `start` fails, the caller leaves the file out.
        assert!(FileContent::start(Failing(0), 10, path).is_err());
        assert!(FileContent::start(Failing(5), 10, path).is_err());
        // Failing after the head: the rest is zeros and the file is marked incomplete.
        let size = 3 * FileContent::<Failing>::HEAD;
        let good = 2 * FileContent::<Failing>::HEAD as usize;
        let mut content = FileContent::start(Failing(good), size, path).unwrap();
        let mut out = Vec::new();
        content.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, size);
        assert!(out[..good].iter().all(|&b| b == 1));
        assert!(out[good..].iter().all(|&b| b == 0));
        assert!(content.incomplete);
        assert_eq!(content.warnings, 1);
    }
}
