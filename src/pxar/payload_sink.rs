//! Where a split (v2) encoder writes file contents. The sink owns the stream position, so
//! bytes put into the stream without passing through the encoder (chunks of a previous
//! snapshot that the push re-uses) move the position the encoder references payloads at.

use std::io::{self, Write};

use super::format::Header;

/// The payload stream of a split encoder.
pub trait PayloadSink: Write {
    /// Bytes in the stream so far, written or injected.
    fn position(&self) -> u64;

    /// A file's payload starts at the current position: a good place for a chunk boundary.
    fn suggest_boundary(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A payload stream kept in memory (tests, tools).
impl PayloadSink for Vec<u8> {
    fn position(&self) -> u64 {
        self.len() as u64
    }
}

/// The payload "stream" of a v1 encoder, which has none: no value of it exists.
pub enum NoPayload {}

impl Write for NoPayload {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }
    fn flush(&mut self) -> io::Result<()> {
        match *self {}
    }
}

impl PayloadSink for NoPayload {
    fn position(&self) -> u64 {
        match *self {}
    }
}

/// Writes one item, header and content, in a single write.
pub(crate) fn write_item(out: &mut impl Write, htype: u64, parts: &[&[u8]]) -> io::Result<u64> {
    let content: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = Vec::with_capacity(super::format::HEADER_SIZE as usize + content);
    buf.extend_from_slice(&Header::new(htype, content as u64).to_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    out.write_all(&buf)?;
    Ok(buf.len() as u64)
}
