//! Item-level parsing shared by the random-access accessor and the sequential decoder:
//! a forward cursor over the stream ([`ItemSource`]), header validation, file-name rules and
//! the decoding of one entry body (ENTRY, attributes, terminating item; pxar.md §3, §5).

use std::io::Read;

use super::decode_error::{DecodeError, Result};
use super::entry::{Entry, EntryKind, FileData};
use super::format::*;
use super::metadata::{AclDefault, AclEntry, Metadata};
use crate::format::ReadAt;

/// Most attribute items one entry may carry; a guard against endless attribute runs.
pub const MAX_ATTRIBUTE_ITEMS: usize = 65_536;
/// Most attribute bytes (xattr names and values, fcaps) one entry may carry.
pub const MAX_ATTRIBUTE_BYTES: u64 = 16 << 20;

/// A forward-only cursor over an archive stream that knows its position.
pub trait ItemSource {
    /// Offset of the next byte in the stream.
    fn position(&self) -> u64;
    /// Reads until `buf` is full or the input ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Skips `len` bytes, failing if the input ends first.
    fn skip(&mut self, len: u64) -> Result<()>;

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let start = self.position();
        if self.read_full(buf)? != buf.len() {
            return Err(DecodeError::Truncated { offset: start });
        }
        Ok(())
    }

    /// Reads the next header, or `None` at a clean end of input.
    fn read_header_or_eof(&mut self) -> Result<Option<Header>> {
        let start = self.position();
        let mut raw = [0u8; 16];
        match self.read_full(&mut raw)? {
            0 => Ok(None),
            16 => Ok(Some(Header::from_bytes(&raw))),
            _ => Err(DecodeError::Truncated { offset: start }),
        }
    }

    fn read_header(&mut self) -> Result<Header> {
        let start = self.position();
        self.read_header_or_eof()?
            .ok_or(DecodeError::Truncated { offset: start })
    }

    /// Reads `len` content bytes; `len` must already be bounded by [`check_header`].
    fn read_vec(&mut self, len: u64) -> Result<Vec<u8>> {
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data)?;
        Ok(data)
    }

    fn read_u64(&mut self) -> Result<u64> {
        let mut raw = [0u8; 8];
        self.read_exact(&mut raw)?;
        Ok(u64::from_le_bytes(raw))
    }
}

/// A sequential [`Read`] as an item source (v1 archives piped in).
pub struct SeqSource<R> {
    inner: R,
    position: u64,
}

impl<R: Read> SeqSource<R> {
    pub fn new(inner: R) -> Self {
        SeqSource { inner, position: 0 }
    }
}

impl<R: Read> ItemSource for SeqSource<R> {
    fn position(&self) -> u64 {
        self.position
    }

    fn read_full(&mut self, mut buf: &mut [u8]) -> Result<usize> {
        let wanted = buf.len();
        while !buf.is_empty() {
            match self.inner.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.position += n as u64;
                    buf = &mut buf[n..];
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(wanted - buf.len())
    }

    fn skip(&mut self, len: u64) -> Result<()> {
        let start = self.position;
        let copied = std::io::copy(&mut (&mut self.inner).take(len), &mut std::io::sink())?;
        self.position += copied;
        if copied != len {
            return Err(DecodeError::Truncated { offset: start });
        }
        Ok(())
    }
}

/// Reads ahead in windows of this size so that the small items of one entry cost one read.
const WINDOW: usize = 4096;

/// A window over `[position, end)` of a [`ReadAt`]: the accessor's cursor.
pub struct AtSource<R> {
    reader: R,
    position: u64,
    end: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<R: ReadAt> AtSource<R> {
    /// A cursor at `start` that never reads at or past `end` (clamped to the reader's size).
    pub fn new(reader: R, start: u64, end: u64) -> Self {
        let end = end.min(reader.size());
        AtSource {
            reader,
            position: start,
            end,
            window: Vec::new(),
            window_start: start,
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Moves the cursor, keeping the window if it still covers the new position.
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    fn window_has(&self, offset: u64) -> bool {
        offset >= self.window_start && offset < self.window_start + self.window.len() as u64
    }
}

impl<R: ReadAt> ItemSource for AtSource<R> {
    fn position(&self) -> u64 {
        self.position
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let available = self.end.saturating_sub(self.position);
        let len = (buf.len() as u64).min(available) as usize;
        let mut done = 0;
        while done < len {
            if !self.window_has(self.position) {
                if len - done >= WINDOW {
                    // Large reads bypass the window.
                    self.reader
                        .read_exact_at(&mut buf[done..len], self.position)
                        .map_err(|err| eof_as_truncated(err, self.position))?;
                    self.position += (len - done) as u64;
                    return Ok(len);
                }
                let fill = (self.end - self.position).min(WINDOW as u64) as usize;
                self.window.resize(fill, 0);
                if let Err(err) = self.reader.read_exact_at(&mut self.window, self.position) {
                    // Nothing of a failed fill may be served later.
                    self.window.clear();
                    return Err(eof_as_truncated(err, self.position));
                }
                self.window_start = self.position;
            }
            let at = (self.position - self.window_start) as usize;
            let n = (len - done).min(self.window.len() - at);
            buf[done..done + n].copy_from_slice(&self.window[at..at + n]);
            done += n;
            self.position += n as u64;
        }
        Ok(len)
    }

    fn skip(&mut self, len: u64) -> Result<()> {
        match self.position.checked_add(len) {
            Some(next) if next <= self.end => {
                self.position = next;
                Ok(())
            }
            _ => Err(DecodeError::Truncated {
                offset: self.position,
            }),
        }
    }
}

/// Fills `buf` from `offset` of `reader`: the end of the data is truncation, any other
/// failure stays the reader's error (a bad chunk is not a short archive).
pub(crate) fn read_exact_at(reader: &dyn ReadAt, buf: &mut [u8], offset: u64) -> Result<()> {
    reader
        .read_exact_at(buf, offset)
        .map_err(|err| eof_as_truncated(err, offset))
}

fn eof_as_truncated(err: std::io::Error, offset: u64) -> DecodeError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        DecodeError::Truncated { offset }
    } else {
        err.into()
    }
}

/// Largest content size accepted for an item type (pxar.md §2); fixed-size items must match
/// exactly (see [`exact_content_size`]).
fn max_content_size(htype: u64) -> u64 {
    match htype {
        PXAR_FILENAME => MAX_FILENAME_CONTENT,
        PXAR_SYMLINK => MAX_SYMLINK_CONTENT,
        PXAR_HARDLINK => MAX_HARDLINK_CONTENT,
        PXAR_XATTR => MAX_XATTR_CONTENT,
        PXAR_FCAPS => MAX_FCAPS_CONTENT,
        PXAR_PAYLOAD_TAIL_MARKER => HEADER_SIZE,
        _ => exact_content_size(htype).unwrap_or(u64::MAX - HEADER_SIZE),
    }
}

/// Content size of the fixed-layout items.
fn exact_content_size(htype: u64) -> Option<u64> {
    Some(match htype {
        PXAR_ENTRY => STAT_SIZE,
        PXAR_ENTRY_V1 => STAT_V1_SIZE,
        PXAR_FORMAT_VERSION => 8,
        PXAR_DEVICE => 16,
        PXAR_ACL_USER | PXAR_ACL_DEFAULT_USER | PXAR_ACL_GROUP | PXAR_ACL_DEFAULT_GROUP => 16,
        PXAR_ACL_GROUP_OBJ | PXAR_QUOTA_PROJID => 8,
        PXAR_ACL_DEFAULT => 32,
        PXAR_PAYLOAD_REF => 16,
        _ => return None,
    })
}

/// Validates a header read at `offset`; returns its content size.
pub fn check_header(header: &Header, offset: u64) -> Result<u64> {
    let content = header.content_size().ok_or_else(|| {
        DecodeError::invalid(offset, format!("item size {} < 16", header.full_size))
    })?;
    let bad_size = match exact_content_size(header.htype) {
        Some(exact) => content != exact,
        None => content > max_content_size(header.htype),
    };
    if bad_size {
        return Err(DecodeError::invalid(
            offset,
            format!(
                "item {:#018x} has invalid content size {content}",
                header.htype
            ),
        ));
    }
    Ok(content)
}

/// Reads and validates the next header.
pub fn next_header(src: &mut dyn ItemSource) -> Result<(u64, Header, u64)> {
    let offset = src.position();
    let header = src.read_header()?;
    let content = check_header(&header, offset)?;
    Ok((offset, header, content))
}

/// The file-name rules of pxar.md §3.3 (after the NUL is stripped).
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// Strips the terminating NUL of a FILENAME/SYMLINK/HARDLINK string.
fn strip_nul(mut data: Vec<u8>, offset: u64, what: &str) -> Result<Vec<u8>> {
    if data.pop() != Some(0) {
        return Err(DecodeError::invalid(
            offset,
            format!("{what} lacks its terminating NUL"),
        ));
    }
    Ok(data)
}

/// Reads the content of a FILENAME item whose header was just read; returns the valid name.
pub fn read_filename_content(
    src: &mut dyn ItemSource,
    offset: u64,
    content: u64,
) -> Result<Vec<u8>> {
    let name = strip_nul(src.read_vec(content)?, offset, "file name")?;
    if !is_valid_name(&name) {
        return Err(DecodeError::invalid(offset, "forbidden file name"));
    }
    Ok(name)
}

/// Reads a FILENAME item at the cursor; returns the name.
pub fn read_filename(src: &mut dyn ItemSource) -> Result<Vec<u8>> {
    let (offset, header, content) = next_header(src)?;
    if header.htype != PXAR_FILENAME {
        return Err(DecodeError::invalid(offset, "expected a FILENAME item"));
    }
    read_filename_content(src, offset, content)
}

/// One decoded entry body.
pub struct Body {
    pub kind: EntryKind,
    pub metadata: Metadata,
    /// Offset of the ENTRY (or HARDLINK) item.
    pub entry_offset: u64,
    /// For directories, fifos and sockets: the FILENAME or GOODBYE header that ended the
    /// body (already consumed from the source), with its offset and content size.
    pub next: Option<(u64, Header, u64)>,
}

impl Body {
    /// The entry this body describes, named `name` by the FILENAME at `filename_offset`
    /// (none for the root). A directory's end is not known yet.
    pub fn into_entry(self, name: Vec<u8>, filename_offset: Option<u64>) -> Entry {
        Entry {
            name,
            kind: self.kind,
            metadata: self.metadata,
            filename_offset,
            entry_offset: self.entry_offset,
            dir_end: None,
        }
    }
}

/// Which stream layout the body belongs to: decides whether PAYLOAD or PAYLOAD_REF is legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Unified,
    Split,
}

/// Decodes one entry body at the cursor: HARDLINK, or ENTRY + attributes + terminator.
///
/// `hardlink_base` is the FILENAME offset of this entry (to resolve a HARDLINK's backward
/// distance); `None` where a hardlink is not allowed (the root). A regular file's contents
/// are not consumed: the cursor stays at the start of the data (v1).
pub fn read_body(
    src: &mut dyn ItemSource,
    layout: Layout,
    hardlink_base: Option<u64>,
) -> Result<Body> {
    let first = next_header(src)?;
    read_body_after(src, layout, hardlink_base, first)
}

/// [`read_body`] when its first header (offset, header, content size) was already read.
pub fn read_body_after(
    src: &mut dyn ItemSource,
    layout: Layout,
    hardlink_base: Option<u64>,
    first: (u64, Header, u64),
) -> Result<Body> {
    let (entry_offset, header, content) = first;
    let stat = match header.htype {
        PXAR_HARDLINK => {
            let base = hardlink_base
                .ok_or_else(|| DecodeError::invalid(entry_offset, "hardlink at the root"))?;
            return read_hardlink(src, entry_offset, content, base);
        }
        PXAR_ENTRY => {
            let mut raw = [0u8; 40];
            src.read_exact(&mut raw)?;
            Stat::from_bytes(&raw)
        }
        PXAR_ENTRY_V1 => {
            let mut raw = [0u8; 32];
            src.read_exact(&mut raw)?;
            Stat::from_v1_bytes(&raw)
        }
        _ => return Err(DecodeError::invalid(entry_offset, "expected an ENTRY item")),
    };
    if stat.mtime.nanos >= 1_000_000_000 {
        return Err(DecodeError::invalid(
            entry_offset,
            "mtime nanoseconds out of range",
        ));
    }
    let mut metadata = Metadata {
        stat,
        ..Metadata::default()
    };
    let mut attribute_items = 0usize;
    let mut attribute_bytes = 0u64;
    loop {
        let (offset, header, content) = next_header(src)?;
        let mismatch = || DecodeError::invalid(offset, "item does not match the entry's mode");
        let kind = match header.htype {
            PXAR_SYMLINK if stat.is_symlink() => {
                let target = strip_nul(src.read_vec(content)?, offset, "symlink target")?;
                EntryKind::Symlink { target }
            }
            PXAR_DEVICE if stat.is_device() => EntryKind::Device {
                major: src.read_u64()?,
                minor: src.read_u64()?,
            },
            PXAR_PAYLOAD if stat.is_regular_file() && layout == Layout::Unified => {
                EntryKind::File {
                    size: content,
                    data: FileData::Inline {
                        data_offset: src.position(),
                    },
                }
            }
            PXAR_PAYLOAD_REF if stat.is_regular_file() && layout == Layout::Split => {
                let payload_offset = src.read_u64()?;
                let size = src.read_u64()?;
                EntryKind::File {
                    size,
                    data: FileData::PayloadRef { payload_offset },
                }
            }
            PXAR_FILENAME | PXAR_GOODBYE => {
                let kind = if stat.is_dir() {
                    EntryKind::Directory
                } else if stat.is_fifo() {
                    EntryKind::Fifo
                } else if stat.is_socket() {
                    EntryKind::Socket
                } else {
                    return Err(mismatch());
                };
                return Ok(Body {
                    kind,
                    metadata,
                    entry_offset,
                    next: Some((offset, header, content)),
                });
            }
            PXAR_SYMLINK | PXAR_DEVICE | PXAR_PAYLOAD | PXAR_PAYLOAD_REF => return Err(mismatch()),
            _ => {
                attribute_items += 1;
                // Saturating: an unknown item may claim almost 2^64 bytes.
                attribute_bytes = attribute_bytes.saturating_add(content);
                if attribute_items > MAX_ATTRIBUTE_ITEMS || attribute_bytes > MAX_ATTRIBUTE_BYTES {
                    return Err(DecodeError::invalid(offset, "too many attribute items"));
                }
                read_attribute(src, &mut metadata, offset, header.htype, content)?;
                continue;
            }
        };
        return Ok(Body {
            kind,
            metadata,
            entry_offset,
            next: None,
        });
    }
}

fn read_hardlink(
    src: &mut dyn ItemSource,
    offset: u64,
    content: u64,
    filename_offset: u64,
) -> Result<Body> {
    if content <= 8 {
        return Err(DecodeError::invalid(offset, "hardlink item too small"));
    }
    let distance = src.read_u64()?;
    let target_path = strip_nul(src.read_vec(content - 8)?, offset, "hardlink target")?;
    if distance == 0 || distance > filename_offset {
        return Err(DecodeError::invalid(
            offset,
            "hardlink offset does not point backwards",
        ));
    }
    Ok(Body {
        kind: EntryKind::Hardlink {
            target_filename_offset: filename_offset - distance,
            target_path,
        },
        metadata: Metadata::default(),
        entry_offset: offset,
        next: None,
    })
}

fn read_attribute(
    src: &mut dyn ItemSource,
    metadata: &mut Metadata,
    offset: u64,
    htype: u64,
    content: u64,
) -> Result<()> {
    let duplicate = |what: &str| DecodeError::invalid(offset, format!("duplicate {what} item"));
    let acl = &mut metadata.acl;
    match htype {
        PXAR_XATTR => {
            let mut data = src.read_vec(content)?;
            let name_len = data
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| DecodeError::invalid(offset, "xattr without name terminator"))?;
            let value = data.split_off(name_len + 1);
            data.truncate(name_len);
            metadata.xattrs.push((data, value));
        }
        PXAR_ACL_USER | PXAR_ACL_DEFAULT_USER => {
            let user = AclEntry {
                id: src.read_u64()?,
                permissions: src.read_u64()?,
            };
            if htype == PXAR_ACL_USER {
                acl.users.push(user);
            } else {
                acl.default_users.push(user);
            }
        }
        PXAR_ACL_GROUP | PXAR_ACL_DEFAULT_GROUP => {
            let group = AclEntry {
                id: src.read_u64()?,
                permissions: src.read_u64()?,
            };
            if htype == PXAR_ACL_GROUP {
                acl.groups.push(group);
            } else {
                acl.default_groups.push(group);
            }
        }
        PXAR_ACL_GROUP_OBJ => {
            if acl.group_obj.is_some() {
                return Err(duplicate("ACL_GROUP_OBJ"));
            }
            acl.group_obj = Some(src.read_u64()?);
        }
        PXAR_ACL_DEFAULT => {
            if acl.default.is_some() {
                return Err(duplicate("ACL_DEFAULT"));
            }
            acl.default = Some(AclDefault {
                user_obj: src.read_u64()?,
                group_obj: src.read_u64()?,
                other: src.read_u64()?,
                mask: src.read_u64()?,
            });
        }
        PXAR_FCAPS => {
            if metadata.fcaps.is_some() {
                return Err(duplicate("FCAPS"));
            }
            metadata.fcaps = Some(src.read_vec(content)?);
        }
        PXAR_QUOTA_PROJID => {
            if metadata.quota_project_id.is_some() {
                return Err(duplicate("QUOTA_PROJID"));
            }
            metadata.quota_project_id = Some(src.read_u64()?);
        }
        _ => {
            return Err(DecodeError::invalid(
                offset,
                format!("unexpected item {htype:#018x} in an entry"),
            ))
        }
    }
    Ok(())
}

/// Reads FORMAT_VERSION (must be 2; its header `first` was just read) and an optional
/// PRELUDE at the start of a v2 metadata stream; returns the header that follows them (the
/// root ENTRY's).
pub fn skip_version_and_prelude(
    src: &mut dyn ItemSource,
    first: (u64, Header, u64),
) -> Result<(u64, Header, u64)> {
    let (offset, header, _) = first;
    if header.htype != PXAR_FORMAT_VERSION {
        return Err(DecodeError::invalid(offset, "expected FORMAT_VERSION"));
    }
    let version = src.read_u64()?;
    if version != FORMAT_VERSION_2 {
        return Err(DecodeError::invalid(
            offset,
            format!("unsupported format version {version}"),
        ));
    }
    let next = next_header(src)?;
    if next.1.htype != PXAR_PRELUDE {
        return Ok(next);
    }
    src.skip(next.2)?;
    next_header(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::format::{mode, Stat};

    /// Found by fuzzing: an unknown item claiming a near-2^64 size after an ENTRY overflowed
    /// the attribute byte count.
    #[test]
    fn huge_unknown_item_after_entry_is_an_error() {
        let stat = Stat {
            mode: mode::IFDIR | 0o755,
            ..Stat::default()
        };
        let mut bytes = Header::new(PXAR_ENTRY, STAT_SIZE).to_bytes().to_vec();
        bytes.extend_from_slice(&stat.to_bytes());
        // An xattr, then an unknown item whose size pushes the sum past u64::MAX.
        let xattr = b"user.a\0twenty-four bytes of value";
        bytes.extend_from_slice(&Header::new(PXAR_XATTR, xattr.len() as u64).to_bytes());
        bytes.extend_from_slice(xattr);
        bytes.extend_from_slice(&0x1234_5678_u64.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut src = SeqSource::new(&bytes[..]);
        assert!(read_body(&mut src, Layout::Unified, None).is_err());
    }
}
