//! Streaming pxar encoder, v1 (one stream) and v2 split (metadata + payload stream),
//! writing byte for byte what the reference encoder writes (pxar.md §5, §7, §9).
//!
//! Output goes to a `std::io::Write` sink (and a [`PayloadSink`] in v2, which keeps its own
//! position); the encoder counts the metadata stream's position itself. Memory stays
//! bounded: file contents pass through one reusable copy buffer, and only the goodbye
//! records of the currently open directories are kept. Sinks are written with small
//! `write_all` calls, so callers writing to a file should pass a buffered writer.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::format::{
    pxar_hash, Header, FORMAT_VERSION_2, MAX_FCAPS_CONTENT, MAX_NAME_LEN, MAX_XATTR_CONTENT,
    PXAR_ACL_DEFAULT, PXAR_ACL_DEFAULT_GROUP, PXAR_ACL_DEFAULT_USER, PXAR_ACL_GROUP,
    PXAR_ACL_GROUP_OBJ, PXAR_ACL_USER, PXAR_DEVICE, PXAR_ENTRY, PXAR_FCAPS, PXAR_FILENAME,
    PXAR_FORMAT_VERSION, PXAR_HARDLINK, PXAR_PAYLOAD, PXAR_PAYLOAD_REF, PXAR_PAYLOAD_START_MARKER,
    PXAR_PAYLOAD_TAIL_MARKER, PXAR_PRELUDE, PXAR_QUOTA_PROJID, PXAR_SYMLINK, PXAR_XATTR,
};
use super::goodbye::{build_goodbye, ChildRecord};
use super::metadata::{AclEntry, Device, Metadata};
use super::payload_sink::write_item;
pub use super::payload_sink::{NoPayload, PayloadSink};

/// Longest symlink target or hardlink path (without the NUL), as the reference limits it.
pub const MAX_PATH_LEN: usize = 4096;

/// Size of the buffer file contents are copied through: big reads mean few system calls
/// and let the kernel read ahead in big pieces.
const COPY_BUFFER_SIZE: usize = 512 * 1024;

/// Offset of an entry's FILENAME item in the (metadata) stream; what a later hardlink to it
/// needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkOffset(u64);

impl LinkOffset {
    pub fn raw(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("write failed")]
    Io(#[from] io::Error),
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: Vec<u8>, reason: &'static str },
    #[error("invalid {what}: {reason}")]
    InvalidPath {
        what: &'static str,
        reason: &'static str,
    },
    #[error("invalid extended attribute name {0:?}")]
    InvalidXattrName(Vec<u8>),
    #[error("{what} too large ({size} > {max} bytes)")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
    #[error("metadata mode {mode:#o} is not a {expected}")]
    WrongKind { expected: &'static str, mode: u64 },
    #[error("hardlink target offset {target} does not lie before the current position {current}")]
    HardlinkNotBackwards { target: u64, current: u64 },
    #[error("payload references need a split (v2) archive")]
    NotSplit,
    #[error("payload offset {offset} is not past the payload position {min}")]
    PayloadOrder { offset: u64, min: u64 },
    #[error("file content ended after {got} of {expected} bytes")]
    ShortRead { expected: u64, got: u64 },
    #[error("no open directory to finish")]
    NoOpenDirectory,
    #[error("{0} directories are still open")]
    DirectoriesOpen(usize),
    #[error("the encoder is unusable after an earlier write error")]
    Poisoned,
}

pub type Result<T> = std::result::Result<T, EncodeError>;

/// Rejects names the format forbids (pxar.md §3.3), and NUL which would cut the name short.
pub fn validate_filename(name: &[u8]) -> Result<()> {
    let reason = if name == b"." || name == b".." {
        Some("'.' and '..' are not entries")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else {
        bytes_problem(name, MAX_NAME_LEN)
    };
    match reason {
        Some(reason) => Err(EncodeError::InvalidName {
            name: name.to_vec(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_path(what: &'static str, path: &[u8]) -> Result<()> {
    match bytes_problem(path, MAX_PATH_LEN) {
        Some(reason) => Err(EncodeError::InvalidPath { what, reason }),
        None => Ok(()),
    }
}

/// What names and paths have in common: not empty, no NUL, at most `max` (4096) bytes.
fn bytes_problem(bytes: &[u8], max: usize) -> Option<&'static str> {
    if bytes.is_empty() {
        Some("empty")
    } else if bytes.contains(&0) {
        Some("contains NUL")
    } else if bytes.len() > max {
        Some("longer than 4096 bytes")
    } else {
        None
    }
}

fn validate_metadata(metadata: &Metadata) -> Result<()> {
    for (name, value) in &metadata.xattrs {
        if name.is_empty() || name.contains(&0) {
            return Err(EncodeError::InvalidXattrName(name.clone()));
        }
        let size = name.len() as u64 + 1 + value.len() as u64;
        if size > MAX_XATTR_CONTENT {
            return Err(EncodeError::TooLarge {
                what: "extended attribute",
                size,
                max: MAX_XATTR_CONTENT,
            });
        }
    }
    if let Some(fcaps) = &metadata.fcaps {
        if fcaps.len() as u64 > MAX_FCAPS_CONTENT {
            return Err(EncodeError::TooLarge {
                what: "file capabilities",
                size: fcaps.len() as u64,
                max: MAX_FCAPS_CONTENT,
            });
        }
    }
    Ok(())
}

fn require_kind(metadata: &Metadata, ok: bool, expected: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(EncodeError::WrongKind {
            expected,
            mode: metadata.stat.mode,
        })
    }
}

/// A directory whose goodbye table is not written yet.
struct OpenDir {
    /// Position of the directory's ENTRY (the tail item points there).
    entry_offset: u64,
    /// Position of its FILENAME and its name hash (unused for the root).
    filename_offset: u64,
    hash: u64,
    children: Vec<ChildRecord>,
}

/// A counting sink.
struct Sink<T> {
    out: T,
    pos: u64,
}

impl<T: Write> Sink<T> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// One item: header and content in a single write.
    fn item(&mut self, htype: u64, parts: &[&[u8]]) -> io::Result<()> {
        self.pos += write_item(&mut self.out, htype, parts)?;
        Ok(())
    }
}

/// The streaming encoder. `W` receives the archive (v1) or the metadata stream (v2), `P` the
/// payload stream (v2 only).
pub struct Encoder<W: Write, P: PayloadSink = NoPayload> {
    meta: Sink<W>,
    payload: Option<P>,
    /// Highest payload offset referenced so far: references must strictly increase (§9.3).
    last_payload_ref: Option<u64>,
    dirs: Vec<OpenDir>,
    copy_buffer: Vec<u8>,
    poisoned: bool,
}

impl<W: Write> Encoder<W, NoPayload> {
    /// A v1 archive: one stream, starting with the root directory's ENTRY.
    pub fn new_v1(out: W, root: &Metadata) -> Result<Self> {
        Self::start(out, None, root, None)
    }
}

impl<W: Write, P: PayloadSink> Encoder<W, P> {
    /// A v2 split archive: FORMAT_VERSION (and PRELUDE, if given) open the metadata stream,
    /// PAYLOAD_START_MARKER opens the payload stream.
    pub fn new_v2(
        meta_out: W,
        payload_out: P,
        root: &Metadata,
        prelude: Option<&[u8]>,
    ) -> Result<Self> {
        Self::start(meta_out, Some(payload_out), root, prelude)
    }

    fn start(
        meta_out: W,
        payload_out: Option<P>,
        root: &Metadata,
        prelude: Option<&[u8]>,
    ) -> Result<Self> {
        require_kind(root, root.is_dir(), "directory")?;
        validate_metadata(root)?;
        let mut encoder = Encoder {
            meta: Sink {
                out: meta_out,
                pos: 0,
            },
            payload: payload_out,
            last_payload_ref: None,
            // The reference uses offset 0 as the root's ENTRY even in v2, where the ENTRY
            // really follows FORMAT_VERSION (pxar.md §7.2).
            dirs: vec![OpenDir {
                entry_offset: 0,
                filename_offset: 0,
                hash: 0,
                children: Vec::new(),
            }],
            copy_buffer: Vec::new(),
            poisoned: false,
        };
        if let Some(payload) = encoder.payload.as_mut() {
            write_item(payload, PXAR_PAYLOAD_START_MARKER, &[])?;
            encoder
                .meta
                .item(PXAR_FORMAT_VERSION, &[&FORMAT_VERSION_2.to_le_bytes()])?;
            if let Some(prelude) = prelude {
                encoder.meta.item(PXAR_PRELUDE, &[prelude])?;
            }
        }
        encoder.write_metadata(root)?;
        Ok(encoder)
    }

    /// Current position in the archive (v1) or metadata stream (v2).
    pub fn position(&self) -> u64 {
        self.meta.pos
    }

    /// Current position in the payload stream (v2 only).
    pub fn payload_position(&self) -> Option<u64> {
        self.payload.as_ref().map(|p| p.position())
    }

    /// The payload sink (v2 only), for putting bytes into the stream that do not pass
    /// through the encoder (re-used chunks); its position moves with them.
    pub fn payload_sink(&mut self) -> Option<&mut P> {
        self.payload.as_mut()
    }

    pub fn is_split(&self) -> bool {
        self.payload.is_some()
    }

    /// Number of open directories, the root included.
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    /// Adds a regular file whose `size` bytes are read from `content`. Returns what a later
    /// hardlink to it needs. A `content` that ends early is an error (callers that must cope
    /// with shrinking files pad themselves).
    pub fn add_file(
        &mut self,
        metadata: &Metadata,
        name: &[u8],
        size: u64,
        content: &mut dyn Read,
    ) -> Result<LinkOffset> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_regular_file(), "regular file")?;
        validate_filename(name)?;
        validate_metadata(metadata)?;
        if size > u64::MAX / 2 {
            return Err(EncodeError::TooLarge {
                what: "file",
                size,
                max: u64::MAX / 2,
            });
        }
        let ref_offset = self.payload_position();
        if let Some(offset) = ref_offset {
            self.check_payload_order(offset)?;
        }
        let result = self.write_file(metadata, name, size, content);
        self.poison_on_error(result)
    }

    fn write_file(
        &mut self,
        metadata: &Metadata,
        name: &[u8],
        size: u64,
        content: &mut dyn Read,
    ) -> Result<LinkOffset> {
        let filename_offset = self.meta.pos;
        self.write_filename(name)?;
        self.write_metadata(metadata)?;
        let payload_header = Header::new(PXAR_PAYLOAD, size).to_bytes();
        match self.payload.as_mut() {
            Some(payload) => {
                payload.suggest_boundary()?;
                let offset = payload.position();
                payload.write_all(&payload_header)?;
                self.last_payload_ref = Some(offset);
                self.meta.item(
                    PXAR_PAYLOAD_REF,
                    &[&offset.to_le_bytes(), &size.to_le_bytes()],
                )?;
            }
            None => self.meta.write(&payload_header)?,
        }
        // The reference counts the file's bytes into its goodbye size even when they went to
        // the payload stream (pxar.md §7.1).
        let meta_size = self.meta.pos - filename_offset;
        self.copy_content(size, content)?;
        self.push_child(name, filename_offset, meta_size + size);
        Ok(LinkOffset(filename_offset))
    }

    fn copy_content(&mut self, size: u64, content: &mut dyn Read) -> Result<()> {
        if self.copy_buffer.is_empty() {
            self.copy_buffer = vec![0u8; COPY_BUFFER_SIZE];
        }
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.copy_buffer.len() as u64) as usize;
            let got = match content.read(&mut self.copy_buffer[..want]) {
                Ok(0) => {
                    return Err(EncodeError::ShortRead {
                        expected: size,
                        got: size - remaining,
                    })
                }
                Ok(got) => got.min(want),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            };
            let chunk = &self.copy_buffer[..got];
            match self.payload.as_mut() {
                Some(payload) => payload.write_all(chunk)?,
                None => self.meta.write(chunk)?,
            }
            remaining -= got as u64;
        }
        Ok(())
    }

    /// Adds a regular file whose payload is already in the payload stream at
    /// `payload_offset` (the position of its PAYLOAD header), e.g. inside chunks of the
    /// previous snapshot that the caller injects into [`Self::payload_sink`].
    /// Offsets must be at or past the current payload position and strictly increase.
    pub fn add_payload_ref(
        &mut self,
        metadata: &Metadata,
        name: &[u8],
        size: u64,
        payload_offset: u64,
    ) -> Result<LinkOffset> {
        self.check_usable()?;
        if self.payload.is_none() {
            return Err(EncodeError::NotSplit);
        }
        require_kind(metadata, metadata.is_regular_file(), "regular file")?;
        validate_filename(name)?;
        validate_metadata(metadata)?;
        self.check_payload_order(payload_offset)?;
        let result = self.write_payload_ref(metadata, name, size, payload_offset);
        if result.is_ok() {
            self.last_payload_ref = Some(payload_offset);
        }
        self.poison_on_error(result)
    }

    fn write_payload_ref(
        &mut self,
        metadata: &Metadata,
        name: &[u8],
        size: u64,
        payload_offset: u64,
    ) -> Result<LinkOffset> {
        let (filename_offset, meta_size) = self.write_entry_items(
            Some(metadata),
            name,
            Some((
                PXAR_PAYLOAD_REF,
                &[&payload_offset.to_le_bytes(), &size.to_le_bytes()],
            )),
        )?;
        // Deliberately the size a freshly written file gets (metadata plus file size), where
        // the reference encoder writes only the metadata size for re-used files. Both forms
        // are valid (pxar.md §7.1: PBS and the official reader accept either), and this one
        // makes the metadata archive of an unchanged tree byte-identical to the previous
        // one, so a second metadata-mode push stores no new chunk at all.
        self.push_child(name, filename_offset, meta_size + size);
        Ok(LinkOffset(filename_offset))
    }

    pub fn add_symlink(&mut self, metadata: &Metadata, name: &[u8], target: &[u8]) -> Result<()> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_symlink(), "symlink")?;
        validate_filename(name)?;
        validate_path("symlink target", target)?;
        validate_metadata(metadata)?;
        let result = self.write_entry(Some(metadata), name, Some((PXAR_SYMLINK, &[target, &[0]])));
        self.poison_on_error(result).map(drop)
    }

    /// Adds a second name for a file added earlier: `target_path` is the target's path
    /// relative to the archive root, `target` what `add_file` returned for it.
    pub fn add_hardlink(
        &mut self,
        name: &[u8],
        target_path: &[u8],
        target: LinkOffset,
    ) -> Result<()> {
        self.check_usable()?;
        validate_filename(name)?;
        validate_path("hardlink target", target_path)?;
        let current = self.meta.pos;
        if target.0 >= current {
            return Err(EncodeError::HardlinkNotBackwards {
                target: target.0,
                current,
            });
        }
        let distance = (current - target.0).to_le_bytes();
        let result = self.write_entry(
            None,
            name,
            Some((PXAR_HARDLINK, &[&distance, target_path, &[0]])),
        );
        self.poison_on_error(result).map(drop)
    }

    pub fn add_device(&mut self, metadata: &Metadata, name: &[u8], device: Device) -> Result<()> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_device(), "device")?;
        validate_filename(name)?;
        validate_metadata(metadata)?;
        let result = self.write_entry(
            Some(metadata),
            name,
            Some((
                PXAR_DEVICE,
                &[&device.major.to_le_bytes(), &device.minor.to_le_bytes()],
            )),
        );
        self.poison_on_error(result).map(drop)
    }

    pub fn add_fifo(&mut self, metadata: &Metadata, name: &[u8]) -> Result<()> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_fifo(), "fifo")?;
        self.add_bare(metadata, name)
    }

    pub fn add_socket(&mut self, metadata: &Metadata, name: &[u8]) -> Result<()> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_socket(), "socket")?;
        self.add_bare(metadata, name)
    }

    fn add_bare(&mut self, metadata: &Metadata, name: &[u8]) -> Result<()> {
        validate_filename(name)?;
        validate_metadata(metadata)?;
        let result = self.write_entry(Some(metadata), name, None);
        self.poison_on_error(result).map(drop)
    }

    /// Opens a subdirectory; its children follow until [`Self::finish_directory`].
    pub fn create_directory(&mut self, name: &[u8], metadata: &Metadata) -> Result<()> {
        self.check_usable()?;
        require_kind(metadata, metadata.is_dir(), "directory")?;
        validate_filename(name)?;
        validate_metadata(metadata)?;
        let result = (|| {
            let filename_offset = self.meta.pos;
            self.write_filename(name)?;
            let entry_offset = self.meta.pos;
            self.write_metadata(metadata)?;
            self.dirs.push(OpenDir {
                entry_offset,
                filename_offset,
                hash: pxar_hash(name),
                children: Vec::new(),
            });
            Ok(())
        })();
        self.poison_on_error(result)
    }

    /// Writes the goodbye table of the innermost open subdirectory and closes it.
    pub fn finish_directory(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.dirs.len() < 2 {
            return Err(EncodeError::NoOpenDirectory);
        }
        let result = self.write_goodbye().map(|dir| {
            let size = self.meta.pos - dir.filename_offset;
            self.dirs
                .last_mut()
                .expect("the root stays open")
                .children
                .push(ChildRecord {
                    hash: dir.hash,
                    filename_offset: dir.filename_offset,
                    size,
                });
        });
        self.poison_on_error(result)
    }

    /// Closes the root directory (and in v2 the payload stream), flushes, and hands back the
    /// sinks.
    pub fn finish(mut self) -> Result<(W, Option<P>)> {
        self.check_usable()?;
        if self.dirs.len() != 1 {
            return Err(EncodeError::DirectoriesOpen(self.dirs.len() - 1));
        }
        self.write_goodbye()?;
        self.meta.out.flush()?;
        if let Some(payload) = self.payload.as_mut() {
            write_item(payload, PXAR_PAYLOAD_TAIL_MARKER, &[])?;
            payload.flush()?;
        }
        Ok((self.meta.out, self.payload))
    }

    fn write_goodbye(&mut self) -> Result<OpenDir> {
        let mut dir = self.dirs.pop().ok_or(EncodeError::NoOpenDirectory)?;
        let children = std::mem::take(&mut dir.children);
        let table = build_goodbye(children, self.meta.pos, dir.entry_offset);
        self.meta.write(&table)?;
        Ok(dir)
    }

    /// FILENAME, then (unless a hardlink) ENTRY and attributes, then the terminating item.
    fn write_entry(
        &mut self,
        metadata: Option<&Metadata>,
        name: &[u8],
        terminator: Option<(u64, &[&[u8]])>,
    ) -> Result<LinkOffset> {
        let (filename_offset, size) = self.write_entry_items(metadata, name, terminator)?;
        self.push_child(name, filename_offset, size);
        Ok(LinkOffset(filename_offset))
    }

    /// FILENAME, metadata and the terminating item of an entry; returns where it starts and
    /// how many bytes it took.
    fn write_entry_items(
        &mut self,
        metadata: Option<&Metadata>,
        name: &[u8],
        terminator: Option<(u64, &[&[u8]])>,
    ) -> Result<(u64, u64)> {
        let filename_offset = self.meta.pos;
        self.write_filename(name)?;
        if let Some(metadata) = metadata {
            self.write_metadata(metadata)?;
        }
        if let Some((htype, parts)) = terminator {
            self.meta.item(htype, parts)?;
        }
        Ok((filename_offset, self.meta.pos - filename_offset))
    }

    fn push_child(&mut self, name: &[u8], filename_offset: u64, size: u64) {
        self.dirs
            .last_mut()
            .expect("the root stays open until finish")
            .children
            .push(ChildRecord {
                hash: pxar_hash(name),
                filename_offset,
                size,
            });
    }

    fn write_filename(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.meta.item(PXAR_FILENAME, &[name, &[0]])?)
    }

    /// ENTRY, XATTR*, ACL items, FCAPS, QUOTA_PROJID in the reference order (pxar.md §5).
    fn write_metadata(&mut self, metadata: &Metadata) -> Result<()> {
        let out = &mut self.meta;
        out.item(PXAR_ENTRY, &[&metadata.stat.to_bytes()])?;
        for (name, value) in &metadata.xattrs {
            out.item(PXAR_XATTR, &[name, &[0], value])?;
        }
        let acl = &metadata.acl;
        // Named entries: (id, permissions) pairs, in the order the official encoder writes them.
        let named = |out: &mut Sink<W>, htype: u64, entries: &[AclEntry]| {
            entries.iter().try_for_each(|entry| {
                out.item(
                    htype,
                    &[&entry.id.to_le_bytes(), &entry.permissions.to_le_bytes()],
                )
            })
        };
        named(out, PXAR_ACL_USER, &acl.users)?;
        named(out, PXAR_ACL_GROUP, &acl.groups)?;
        if let Some(permissions) = acl.group_obj {
            out.item(PXAR_ACL_GROUP_OBJ, &[&permissions.to_le_bytes()])?;
        }
        if let Some(default) = &acl.default {
            out.item(
                PXAR_ACL_DEFAULT,
                &[
                    &default.user_obj.to_le_bytes(),
                    &default.group_obj.to_le_bytes(),
                    &default.other.to_le_bytes(),
                    &default.mask.to_le_bytes(),
                ],
            )?;
        }
        named(out, PXAR_ACL_DEFAULT_USER, &acl.default_users)?;
        named(out, PXAR_ACL_DEFAULT_GROUP, &acl.default_groups)?;
        if let Some(fcaps) = &metadata.fcaps {
            out.item(PXAR_FCAPS, &[fcaps])?;
        }
        if let Some(projid) = metadata.quota_project_id {
            out.item(PXAR_QUOTA_PROJID, &[&projid.to_le_bytes()])?;
        }
        Ok(())
    }

    fn check_payload_order(&self, offset: u64) -> Result<()> {
        let position = self.payload_position().unwrap_or(0);
        let min = match self.last_payload_ref {
            Some(last) => position.max(last + 1),
            None => position,
        };
        if offset < min {
            return Err(EncodeError::PayloadOrder { offset, min });
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(EncodeError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// After a failure halfway through an item the streams are inconsistent: refuse to go on.
    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::format::{mode, PXAR_GOODBYE, PXAR_GOODBYE_TAIL_MARKER};
    use crate::pxar::goodbye::GoodbyeItem;
    use crate::pxar::test_archive::test_stat;

    fn meta(file_mode: u64) -> Metadata {
        Metadata::from_stat(test_stat(file_mode))
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// (offset, type, full size) of each item, walking headers from `start`. PAYLOAD items
    /// are stepped over as a whole.
    fn items(bytes: &[u8], start: usize) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        while at < bytes.len() {
            let (htype, size) = (u64_at(bytes, at), u64_at(bytes, at + 8));
            out.push((at, htype, size));
            at += size as usize;
        }
        out
    }

    fn goodbye_items(bytes: &[u8], at: usize) -> Vec<GoodbyeItem> {
        let size = u64_at(bytes, at + 8) as usize;
        bytes[at + 16..at + size]
            .chunks(24)
            .map(|c| GoodbyeItem::from_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// The tree of pxar.md §12: a.txt = "hello", d/l -> a.txt, h hardlink to a.txt.
    fn encode_example<W: Write, P: PayloadSink>(encoder: &mut Encoder<W, P>) {
        let file = meta(mode::IFREG | 0o644);
        let target = encoder
            .add_file(&file, b"a.txt", 5, &mut &b"hello"[..])
            .unwrap();
        encoder
            .create_directory(b"d", &meta(mode::IFDIR | 0o755))
            .unwrap();
        encoder
            .add_symlink(&meta(mode::IFLNK | 0o777), b"l", b"a.txt")
            .unwrap();
        encoder.finish_directory().unwrap();
        encoder.add_hardlink(b"h", b"a.txt", target).unwrap();
    }

    #[test]
    fn v1_matches_the_worked_example() {
        let mut encoder = Encoder::new_v1(Vec::new(), &meta(mode::IFDIR | 0o755)).unwrap();
        encode_example(&mut encoder);
        let (bytes, payload) = encoder.finish().unwrap();
        assert!(payload.is_none());
        assert_eq!(bytes.len(), 549);
        assert_eq!(
            hex::encode(&bytes[..56]),
            "efac88e5746495d53800000000000000ed410000000000000000000000000000\
             e8030000e803000000f15365000000000500000000000000"
        );
        let layout: Vec<(usize, u64, u64)> = items(&bytes, 0);
        let expected = [
            (0, PXAR_ENTRY, 56),
            (56, PXAR_FILENAME, 22),
            (78, PXAR_ENTRY, 56),
            (134, PXAR_PAYLOAD, 21),
            (155, PXAR_FILENAME, 18),
            (173, PXAR_ENTRY, 56),
            (229, PXAR_FILENAME, 18),
            (247, PXAR_ENTRY, 56),
            (303, PXAR_SYMLINK, 22),
            (325, PXAR_GOODBYE, 64),
            (389, PXAR_FILENAME, 18),
            (407, PXAR_HARDLINK, 30),
            (437, PXAR_GOODBYE, 112),
        ];
        assert_eq!(layout, expected);
        assert_eq!(u64_at(&bytes, 407 + 16), 333);
        assert_eq!(&bytes[407 + 24..437], b"a.txt\0");

        let inner = goodbye_items(&bytes, 325);
        assert_eq!(
            inner,
            vec![
                GoodbyeItem {
                    hash: 0x53720446c9172559,
                    offset: 96,
                    size: 96
                },
                GoodbyeItem {
                    hash: PXAR_GOODBYE_TAIL_MARKER,
                    offset: 152,
                    size: 64
                },
            ]
        );
        let root = goodbye_items(&bytes, 437);
        assert_eq!(
            root,
            vec![
                GoodbyeItem {
                    hash: 0xdc392d66b611aa72,
                    offset: 381,
                    size: 99
                },
                GoodbyeItem {
                    hash: 0x25b61d6cbc2f47c3,
                    offset: 282,
                    size: 234
                },
                GoodbyeItem {
                    hash: 0xfcb517b2b2698000,
                    offset: 48,
                    size: 48
                },
                GoodbyeItem {
                    hash: PXAR_GOODBYE_TAIL_MARKER,
                    offset: 437,
                    size: 112
                },
            ]
        );
    }

    #[test]
    fn v2_matches_the_worked_example() {
        let prelude = br#"{"exclude-patterns":"*.tmp\n"}"#;
        let mut encoder = Encoder::new_v2(
            Vec::new(),
            Vec::new(),
            &meta(mode::IFDIR | 0o755),
            Some(&prelude[..]),
        )
        .unwrap();
        encode_example(&mut encoder);
        let (bytes, payload) = encoder.finish().unwrap();
        let payload = payload.unwrap();
        assert_eq!(bytes.len(), 630);
        assert_eq!(payload.len(), 53);

        let layout: Vec<(usize, u64)> = items(&bytes, 0).iter().map(|i| (i.0, i.1)).collect();
        assert_eq!(
            &layout[..4],
            &[
                (0, PXAR_FORMAT_VERSION),
                (24, PXAR_PRELUDE),
                (70, PXAR_ENTRY),
                (126, PXAR_FILENAME)
            ]
        );
        assert_eq!(u64_at(&bytes, 16), 2);
        assert_eq!(&bytes[40..70], prelude);
        // PAYLOAD_REF {16, 5}
        assert_eq!(layout[5], (204, PXAR_PAYLOAD_REF));
        assert_eq!((u64_at(&bytes, 220), u64_at(&bytes, 228)), (16, 5));
        assert_eq!(u64_at(&bytes, 488 + 16), 344);

        let root = goodbye_items(&bytes, 518);
        assert_eq!(
            root[0],
            GoodbyeItem {
                hash: 0xdc392d66b611aa72,
                offset: 392,
                size: 115
            }
        );
        assert_eq!(
            root[3],
            GoodbyeItem {
                hash: PXAR_GOODBYE_TAIL_MARKER,
                offset: 518,
                size: 112
            }
        );

        let payload_items = items(&payload, 0);
        assert_eq!(
            payload_items,
            vec![
                (0, PXAR_PAYLOAD_START_MARKER, 16),
                (16, PXAR_PAYLOAD, 21),
                (37, PXAR_PAYLOAD_TAIL_MARKER, 16)
            ]
        );
        assert_eq!(&payload[32..37], b"hello");
    }

    #[test]
    fn bad_names_are_rejected_without_writing() {
        let mut encoder = Encoder::new_v1(Vec::new(), &meta(mode::IFDIR | 0o755)).unwrap();
        let long = vec![b'x'; MAX_NAME_LEN + 1];
        for name in [&b""[..], b".", b"..", b"a/b", b"/", b"nul\0", &long] {
            let before = encoder.position();
            let err = encoder
                .add_fifo(&meta(mode::IFIFO | 0o644), name)
                .unwrap_err();
            assert!(
                matches!(err, EncodeError::InvalidName { .. }),
                "{name:?}: {err}"
            );
            assert_eq!(encoder.position(), before);
        }
        assert!(validate_filename(&vec![b'x'; MAX_NAME_LEN]).is_ok());
        assert!(validate_filename(b"...").is_ok());
        assert!(validate_filename(b"\xe9\xff latin1").is_ok());
        // Still usable after validation errors.
        encoder.add_fifo(&meta(mode::IFIFO | 0o644), b"ok").unwrap();
        encoder.finish().unwrap();
    }

    #[test]
    fn misuse_is_rejected() {
        let dir = meta(mode::IFDIR | 0o755);
        assert!(matches!(
            Encoder::new_v1(Vec::new(), &meta(mode::IFREG | 0o644)),
            Err(EncodeError::WrongKind { .. })
        ));
        let mut encoder = Encoder::new_v1(Vec::new(), &dir).unwrap();
        assert!(matches!(
            encoder.add_fifo(&dir, b"x"),
            Err(EncodeError::WrongKind { .. })
        ));
        assert!(matches!(
            encoder.finish_directory(),
            Err(EncodeError::NoOpenDirectory)
        ));
        assert!(matches!(
            encoder.add_hardlink(b"h", b"t", LinkOffset(encoder.position())),
            Err(EncodeError::HardlinkNotBackwards { .. })
        ));
        assert!(matches!(
            encoder.add_payload_ref(&meta(mode::IFREG), b"f", 1, 0),
            Err(EncodeError::NotSplit)
        ));
        assert!(encoder.payload_sink().is_none());
        let mut big = meta(mode::IFREG | 0o644);
        big.xattrs.push((b"user.big".to_vec(), vec![0; 70_000]));
        assert!(matches!(
            encoder.add_file(&big, b"f", 0, &mut io::empty()),
            Err(EncodeError::TooLarge { .. })
        ));
        big.xattrs[0] = (b"user\0x".to_vec(), Vec::new());
        assert!(matches!(
            encoder.add_file(&big, b"f", 0, &mut io::empty()),
            Err(EncodeError::InvalidXattrName(_))
        ));
        encoder.create_directory(b"open", &dir).unwrap();
        assert!(matches!(
            encoder.finish(),
            Err(EncodeError::DirectoriesOpen(1))
        ));
    }

    #[test]
    fn short_content_poisons_the_encoder() {
        let mut encoder = Encoder::new_v1(Vec::new(), &meta(mode::IFDIR | 0o755)).unwrap();
        let err = encoder
            .add_file(&meta(mode::IFREG | 0o644), b"f", 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(
            matches!(
                err,
                EncodeError::ShortRead {
                    expected: 10,
                    got: 3
                }
            ),
            "{err}"
        );
        assert!(matches!(
            encoder.add_fifo(&meta(mode::IFIFO), b"x"),
            Err(EncodeError::Poisoned)
        ));
        assert!(matches!(encoder.finish(), Err(EncodeError::Poisoned)));
    }

    #[test]
    fn payload_references_must_move_forward() {
        let file = meta(mode::IFREG | 0o644);
        let mut encoder =
            Encoder::new_v2(Vec::new(), Vec::new(), &meta(mode::IFDIR | 0o755), None).unwrap();
        assert_eq!(encoder.payload_position(), Some(16));
        // Below the payload position.
        assert!(matches!(
            encoder.add_payload_ref(&file, b"a", 1, 15),
            Err(EncodeError::PayloadOrder {
                offset: 15,
                min: 16
            })
        ));
        // References into bytes the caller injects next, through the payload sink.
        encoder.add_payload_ref(&file, b"a", 1, 100).unwrap();
        assert!(matches!(
            encoder.add_payload_ref(&file, b"b", 1, 100),
            Err(EncodeError::PayloadOrder { .. })
        ));
        encoder.add_payload_ref(&file, b"b", 1, 117).unwrap();
        encoder
            .payload_sink()
            .unwrap()
            .extend_from_slice(&[7u8; 200]);
        assert_eq!(encoder.payload_position(), Some(216));
        encoder.add_file(&file, b"c", 2, &mut &b"xy"[..]).unwrap();
        assert_eq!(encoder.payload_position(), Some(216 + 18));
        let (meta_bytes, payload) = encoder.finish().unwrap();
        // The injected bytes sit between the start marker and the fresh file.
        let payload = payload.unwrap();
        assert_eq!(payload.len(), 16 + 200 + 18 + 16);
        assert_eq!(&payload[216 + 16..216 + 18], b"xy");
        // Every file's goodbye size is its metadata plus its file size, re-used or new.
        let goodbye_at = meta_bytes.len() - (16 + 24 * 4);
        let sizes: Vec<u64> = goodbye_items(&meta_bytes, goodbye_at)
            .iter()
            .map(|i| i.size)
            .collect();
        let entry_size = 18 + 56 + 32;
        assert_eq!(sizes.iter().filter(|&&s| s == entry_size + 1).count(), 2);
        assert!(sizes.contains(&(entry_size + 2)));
    }

    /// Yields `remaining` zero bytes without holding any data itself, and records the largest
    /// read request.
    struct Zeros {
        remaining: u64,
        largest_request: usize,
    }

    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest_request = self.largest_request.max(buf.len());
            let n = (buf.len() as u64).min(self.remaining) as usize;
            buf[..n].fill(0);
            self.remaining -= n as u64;
            Ok(n)
        }
    }

    /// Counts bytes and records the largest single write.
    #[derive(Default)]
    struct Counter {
        total: u64,
        largest_write: usize,
    }

    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.total += buf.len() as u64;
            self.largest_write = self.largest_write.max(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl PayloadSink for Counter {
        fn position(&self) -> u64 {
            self.total
        }
    }

    /// Encodes one big file of zeros; returns the two sinks.
    fn encode_big_file<P: PayloadSink>(
        mut encoder: Encoder<Counter, P>,
        size: u64,
    ) -> (Counter, Option<P>) {
        let mut zeros = Zeros {
            remaining: size,
            largest_request: 0,
        };
        encoder
            .add_file(&meta(mode::IFREG | 0o644), b"big", size, &mut zeros)
            .unwrap();
        let sinks = encoder.finish().unwrap();
        assert_eq!(zeros.remaining, 0);
        assert!(zeros.largest_request <= COPY_BUFFER_SIZE);
        sinks
    }

    #[test]
    fn large_files_stream_through_a_small_buffer() {
        const SIZE: u64 = 200 << 20;
        let root = meta(mode::IFDIR | 0o755);
        let (v1_out, _) =
            encode_big_file(Encoder::new_v1(Counter::default(), &root).unwrap(), SIZE);
        let split = Encoder::new_v2(Counter::default(), Counter::default(), &root, None).unwrap();
        let (meta_out, payload_out) = encode_big_file(split, SIZE);
        let payload_out = payload_out.unwrap();
        for (data_sink, meta_sink) in [(&v1_out, &v1_out), (&payload_out, &meta_out)] {
            assert!(data_sink.total > SIZE);
            // Nothing is gathered up: the biggest write is one copy buffer.
            assert!(data_sink.largest_write <= COPY_BUFFER_SIZE);
            assert!(meta_sink.largest_write <= COPY_BUFFER_SIZE);
        }
    }
}
