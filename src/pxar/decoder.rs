//! Sequential decoding: every entry of an archive in archive order, with its path, in one
//! forward pass (pxar.md §5). Reads a v1 archive from any [`Read`], or a v2 pair through
//! [`ReadAt`] (the payload stream is only touched through payload references, §9.4).

use std::io::Read;
use std::sync::Arc;

use super::decode_error::{DecodeError, Result};
use super::entry::{Entry, EntryKind, FileData};
use super::format::{
    HEADER_SIZE, PXAR_FILENAME, PXAR_FORMAT_VERSION, PXAR_GOODBYE, PXAR_PAYLOAD,
    PXAR_PAYLOAD_START_MARKER,
};
use super::items::{self, AtSource, ItemSource, Layout, SeqSource};
use crate::format::ReadAt;

/// Deepest directory nesting the decoder accepts.
pub const MAX_DEPTH: usize = 4096;

/// An entry with its place in the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedEntry {
    /// Path relative to the root, components joined by `/` (empty for the root).
    pub path: Vec<u8>,
    /// Number of path components (0 for the root).
    pub depth: usize,
    pub entry: Entry,
}

/// The unread part of the current regular file.
struct OpenFile {
    data: FileData,
    size: u64,
    read: u64,
}

/// The decoder over a [`ReadAt`] (v1 archive, or v2 metadata + payload).
pub type ReadAtDecoder = Decoder<AtSource<Arc<dyn ReadAt>>>;

/// Walks an archive entry by entry. Call [`Decoder::next_entry`] (or iterate); after a
/// regular file, [`Decoder::read_contents`] reads its bytes until the next call.
pub struct Decoder<S> {
    src: S,
    payload: Option<Arc<dyn ReadAt>>,
    /// A v2 metadata stream: file entries carry payload references.
    split: bool,
    /// Path length (bytes) of each open directory, root first.
    open_dirs: Vec<usize>,
    path: Vec<u8>,
    /// A FILENAME/GOODBYE header that ended the previous body: (offset, header, content).
    pending: Option<(u64, super::format::Header, u64)>,
    file: Option<OpenFile>,
    /// End of the payload consumed so far (references must not go backwards, §9.3).
    payload_consumed: u64,
    started: bool,
    done: bool,
}

impl<R: Read> Decoder<SeqSource<R>> {
    /// A v1 archive from a sequential reader.
    pub fn from_read(reader: R) -> Self {
        Self::with_source(SeqSource::new(reader), None)
    }
}

impl ReadAtDecoder {
    /// A v1 archive (payload `None`) or a v2 metadata + payload pair.
    pub fn from_read_at(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) -> Self {
        Self::with_source(AtSource::new(meta, 0, u64::MAX), payload)
    }

    /// Entries and metadata only, never a byte of the payload stream: a v1 archive
    /// (`split` false) or the metadata stream of a v2 pair. Payload references are taken as
    /// written (not checked against the payload stream) and file contents cannot be read.
    pub fn metadata_only(meta: Arc<dyn ReadAt>, split: bool) -> Self {
        let mut decoder = Self::with_source(AtSource::new(meta, 0, u64::MAX), None);
        decoder.split = split;
        decoder
    }
}

impl<S: ItemSource> Decoder<S> {
    fn with_source(src: S, payload: Option<Arc<dyn ReadAt>>) -> Self {
        Decoder {
            src,
            split: payload.is_some(),
            payload,
            open_dirs: Vec::new(),
            path: Vec::new(),
            pending: None,
            file: None,
            payload_consumed: HEADER_SIZE,
            started: false,
            done: false,
        }
    }

    fn layout(&self) -> Layout {
        if self.split {
            Layout::Split
        } else {
            Layout::Unified
        }
    }

    /// The next entry, or `None` after the root's GOODBYE. After an error the decoder stops.
    pub fn next_entry(&mut self) -> Result<Option<DecodedEntry>> {
        if self.done {
            return Ok(None);
        }
        let result = self.advance();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    fn advance(&mut self) -> Result<Option<DecodedEntry>> {
        self.finish_file()?;
        if !self.started {
            self.started = true;
            return self.read_root().map(Some);
        }
        loop {
            let (offset, header, content) = match self.pending.take() {
                Some(pending) => pending,
                None => items::next_header(&mut self.src)?,
            };
            match header.htype {
                PXAR_FILENAME => {
                    let name = items::read_filename_content(&mut self.src, offset, content)?;
                    return self.read_child(offset, name).map(Some);
                }
                PXAR_GOODBYE => {
                    // Tables are for random access; the walk only needs to leave the directory.
                    self.src.skip(content)?;
                    self.open_dirs.pop();
                    match self.open_dirs.last() {
                        Some(&len) => self.path.truncate(len),
                        None => return Ok(None),
                    }
                    self.pending = Some(items::next_header(&mut self.src)?);
                }
                _ => {
                    return Err(DecodeError::invalid(offset, "expected FILENAME or GOODBYE"));
                }
            }
        }
    }

    fn read_root(&mut self) -> Result<DecodedEntry> {
        let first = items::next_header(&mut self.src)?;
        let first = match (first.1.htype, self.split) {
            (PXAR_FORMAT_VERSION, true) => {
                if let Some(payload) = &self.payload {
                    check_payload_start(&**payload)?;
                }
                items::skip_version_and_prelude(&mut self.src, first)?
            }
            (PXAR_FORMAT_VERSION, false) => {
                return Err(DecodeError::invalid(
                    0,
                    "v2 archive needs its payload stream",
                ))
            }
            (_, true) => return Err(DecodeError::invalid(0, "v1 archive has no payload stream")),
            (_, false) => first,
        };
        let layout = self.layout();
        let body = items::read_body_after(&mut self.src, layout, None, first)?;
        if body.kind != EntryKind::Directory {
            return Err(DecodeError::invalid(
                body.entry_offset,
                "the root is not a directory",
            ));
        }
        self.pending = body.next;
        self.open_dirs.push(0);
        Ok(DecodedEntry {
            path: Vec::new(),
            depth: 0,
            entry: body.into_entry(Vec::new(), None),
        })
    }

    fn read_child(&mut self, filename_offset: u64, name: Vec<u8>) -> Result<DecodedEntry> {
        let layout = self.layout();
        let body = items::read_body(&mut self.src, layout, Some(filename_offset))?;
        let parent_len = *self.open_dirs.last().unwrap_or(&0);
        self.path.truncate(parent_len);
        if parent_len > 0 {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(&name);
        let depth = self.open_dirs.len();
        match body.kind {
            EntryKind::Directory => {
                if self.open_dirs.len() >= MAX_DEPTH {
                    return Err(DecodeError::invalid(
                        filename_offset,
                        "directories nested too deeply",
                    ));
                }
                self.open_dirs.push(self.path.len());
            }
            EntryKind::File { size, data } => {
                if let (FileData::PayloadRef { payload_offset }, true) =
                    (data, self.payload.is_some())
                {
                    self.check_payload_ref(filename_offset, payload_offset, size)?;
                }
                self.file = Some(OpenFile {
                    data,
                    size,
                    read: 0,
                });
            }
            _ => {}
        }
        self.pending = body.next;
        Ok(DecodedEntry {
            path: self.path.clone(),
            depth,
            entry: body.into_entry(name, Some(filename_offset)),
        })
    }

    /// A payload reference must point forward, at a PAYLOAD item of the stated size.
    fn check_payload_ref(&mut self, at: u64, payload_offset: u64, size: u64) -> Result<()> {
        let payload = self
            .payload
            .as_ref()
            .ok_or(DecodeError::WrongKind("no payload stream"))?;
        let end = payload_offset
            .checked_add(HEADER_SIZE)
            .and_then(|start| start.checked_add(size))
            .filter(|&end| end <= payload.size() && payload_offset >= self.payload_consumed)
            .ok_or_else(|| DecodeError::invalid(at, "payload reference out of order or range"))?;
        let mut raw = [0u8; 16];
        items::read_exact_at(&**payload, &mut raw, payload_offset)?;
        let header = super::format::Header::from_bytes(&raw);
        if header.htype != PXAR_PAYLOAD || header.content_size() != Some(size) {
            return Err(DecodeError::invalid(
                at,
                "payload reference does not match a PAYLOAD item",
            ));
        }
        self.payload_consumed = end;
        Ok(())
    }

    /// Reads contents of the file returned last; 0 at its end (or if it was no file).
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize> {
        let Some(file) = &mut self.file else {
            return Ok(0);
        };
        let len = (buf.len() as u64).min(file.size - file.read) as usize;
        if len == 0 {
            return Ok(0);
        }
        match (file.data, &self.payload) {
            (FileData::Inline { .. }, _) => self.src.read_exact(&mut buf[..len])?,
            (FileData::PayloadRef { payload_offset }, Some(payload)) => {
                let at = payload_offset + HEADER_SIZE + file.read;
                items::read_exact_at(&**payload, &mut buf[..len], at)?;
            }
            (FileData::PayloadRef { .. }, None) => {
                return Err(DecodeError::WrongKind("no payload stream"))
            }
        }
        file.read += len as u64;
        Ok(len)
    }

    /// Skips what is left of the current file's inline data. Measured from the stream
    /// position rather than from what was read, so that the walk goes on at the next entry
    /// even after a failed read of the contents left the cursor anywhere inside them.
    fn finish_file(&mut self) -> Result<()> {
        if let Some(file) = self.file.take() {
            if let FileData::Inline { data_offset } = file.data {
                let position = self.src.position();
                let rest = data_offset
                    .checked_add(file.size)
                    .and_then(|end| end.checked_sub(position))
                    .ok_or_else(|| DecodeError::invalid(position, "file data out of range"))?;
                self.src.skip(rest)?;
            }
        }
        Ok(())
    }
}

impl<S: ItemSource> Iterator for Decoder<S> {
    type Item = Result<DecodedEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

fn check_payload_start(payload: &dyn ReadAt) -> Result<()> {
    let mut raw = [0u8; 16];
    items::read_exact_at(payload, &mut raw, 0)?;
    let header = super::format::Header::from_bytes(&raw);
    if header.htype != PXAR_PAYLOAD_START_MARKER || header.full_size != HEADER_SIZE {
        return Err(DecodeError::invalid(
            0,
            "payload stream lacks its start marker",
        ));
    }
    Ok(())
}
