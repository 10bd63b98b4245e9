//! Streaming pxar encoder, v1 (one stream) and v2 split (metadata + payload stream),
//! writing byte for byte what the reference encoder writes (pxar.md §5, §7, §9).
//!
//! Output goes to `std::io::Write` sinks; the encoder counts positions itself. Memory stays
//! bounded: file contents pass through one reusable copy buffer, and only the goodbye
//! records of the currently open directories are kept. Sinks are written with small
//! `write_all` calls, so callers writing to a file should pass a buffered writer.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::format::{
    pxar_hash, Header, FORMAT_VERSION_2, HEADER_SIZE, MAX_FCAPS_CONTENT, MAX_NAME_LEN,
    MAX_XATTR_CONTENT, PXAR_ACL_DEFAULT, PXAR_ACL_DEFAULT_GROUP, PXAR_ACL_DEFAULT_USER,
    PXAR_ACL_GROUP, PXAR_ACL_GROUP_OBJ, PXAR_ACL_USER, PXAR_DEVICE, PXAR_ENTRY, PXAR_FCAPS,
    PXAR_FILENAME, PXAR_FORMAT_VERSION, PXAR_HARDLINK, PXAR_PAYLOAD, PXAR_PAYLOAD_REF,
    PXAR_PAYLOAD_START_MARKER, PXAR_PAYLOAD_TAIL_MARKER, PXAR_PRELUDE, PXAR_QUOTA_PROJID,
    PXAR_SYMLINK, PXAR_XATTR,
};
use super::goodbye::{build_goodbye, ChildRecord};
use super::metadata::{Device, Metadata};

/// Longest symlink target or hardlink path (without the NUL), as the reference limits it.
pub const MAX_PATH_LEN: usize = 4096;

/// Size of the buffer file contents are copied through.
const COPY_BUFFER_SIZE: usize = 64 * 1024;

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
    #[error("write failed: {0}")]
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
    let reason = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "'.' and '..' are not entries"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(EncodeError::InvalidName {
        name: name.to_vec(),
        reason,
    })
}

fn validate_path(what: &'static str, path: &[u8]) -> Result<()> {
    let reason = if path.is_empty() {
        "empty"
    } else if path.contains(&0) {
        "contains NUL"
    } else if path.len() > MAX_PATH_LEN {
        "longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(EncodeError::InvalidPath { what, reason })
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
        let content: usize = parts.iter().map(|p| p.len()).sum();
        let mut buf = Vec::with_capacity(HEADER_SIZE as usize + content);
        buf.extend_from_slice(&Header::new(htype, content as u64).to_bytes());
        for part in parts {
            buf.extend_from_slice(part);
        }
        self.write(&buf)
    }
}

/// The streaming encoder. `W` receives the archive (v1) or the metadata stream (v2), `P` the
/// payload stream (v2 only).
pub struct Encoder<W: Write, P: Write = W> {
    meta: Sink<W>,
    payload: Option<Sink<P>>,
    /// Highest payload offset referenced so far: references must strictly increase (§9.3).
    last_payload_ref: Option<u64>,
    dirs: Vec<OpenDir>,
    copy_buffer: Vec<u8>,
    poisoned: bool,
}

impl<W: Write> Encoder<W, W> {
    /// A v1 archive: one stream, starting with the root directory's ENTRY.
    pub fn new_v1(out: W, root: &Metadata) -> Result<Self> {
        Self::start(out, None, root, None)
    }
}

impl<W: Write, P: Write> Encoder<W, P> {
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
            payload: payload_out.map(|out| Sink { out, pos: 0 }),
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
            payload.item(PXAR_PAYLOAD_START_MARKER, &[])?;
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
        self.payload.as_ref().map(|p| p.pos)
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
        let ref_offset = self.payload.as_ref().map(|p| p.pos);
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
                let offset = payload.pos;
                payload.write(&payload_header)?;
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
                Some(payload) => payload.write(chunk)?,
                None => self.meta.write(chunk)?,
            }
            remaining -= got as u64;
        }
        Ok(())
    }

    /// Adds a regular file whose payload is already in the payload stream at
    /// `payload_offset` (the position of its PAYLOAD header), e.g. inside chunks of the
    /// previous snapshot that the caller injects and accounts with [`Self::advance`].
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
        let result = self.write_entry(
            Some(metadata),
            name,
            Some((
                PXAR_PAYLOAD_REF,
                &[&payload_offset.to_le_bytes(), &size.to_le_bytes()],
            )),
        );
        if result.is_ok() {
            self.last_payload_ref = Some(payload_offset);
        }
        self.poison_on_error(result)
    }

    /// Accounts `size` bytes the caller put into the payload stream itself (reused chunks).
    pub fn advance(&mut self, size: u64) -> Result<()> {
        self.check_usable()?;
        let payload = self.payload.as_mut().ok_or(EncodeError::NotSplit)?;
        payload.pos = payload.pos.checked_add(size).ok_or(EncodeError::TooLarge {
            what: "payload stream",
            size,
            max: u64::MAX - payload.pos,
        })?;
        Ok(())
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
            payload.item(PXAR_PAYLOAD_TAIL_MARKER, &[])?;
            payload.out.flush()?;
        }
        Ok((self.meta.out, self.payload.map(|p| p.out)))
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
        let filename_offset = self.meta.pos;
        self.write_filename(name)?;
        if let Some(metadata) = metadata {
            self.write_metadata(metadata)?;
        }
        if let Some((htype, parts)) = terminator {
            self.meta.item(htype, parts)?;
        }
        let size = self.meta.pos - filename_offset;
        self.push_child(name, filename_offset, size);
        Ok(LinkOffset(filename_offset))
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
        for entry in &acl.users {
            out.item(
                PXAR_ACL_USER,
                &[&entry.id.to_le_bytes(), &entry.permissions.to_le_bytes()],
            )?;
        }
        for entry in &acl.groups {
            out.item(
                PXAR_ACL_GROUP,
                &[&entry.id.to_le_bytes(), &entry.permissions.to_le_bytes()],
            )?;
        }
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
        for entry in &acl.default_users {
            out.item(
                PXAR_ACL_DEFAULT_USER,
                &[&entry.id.to_le_bytes(), &entry.permissions.to_le_bytes()],
            )?;
        }
        for entry in &acl.default_groups {
            out.item(
                PXAR_ACL_DEFAULT_GROUP,
                &[&entry.id.to_le_bytes(), &entry.permissions.to_le_bytes()],
            )?;
        }
        if let Some(fcaps) = &metadata.fcaps {
            out.item(PXAR_FCAPS, &[fcaps])?;
        }
        if let Some(projid) = metadata.quota_project_id {
            out.item(PXAR_QUOTA_PROJID, &[&projid.to_le_bytes()])?;
        }
        Ok(())
    }

    fn check_payload_order(&self, offset: u64) -> Result<()> {
        let position = self.payload.as_ref().map_or(0, |p| p.pos);
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
