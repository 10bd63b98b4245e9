//! The payload stream of a split archive as the push writes it: the encoder's payload sink,
//! which also takes in chunks of the previous snapshot without their data. It owns the
//! stream position, so whatever goes in — written, injected, or a marker dropped in favour
//! of an identical one in an injected chunk — moves the position the encoder references.

use std::io::{self, Write};

use anyhow::{bail, Result};

use super::upload::{ChunkedWriter, KnownChunk};
use crate::pxar::encoder::{NoPayload, PayloadSink};
use crate::pxar::format::{Header, PXAR_PAYLOAD_START_MARKER, PXAR_PAYLOAD_TAIL_MARKER};
use crate::store::target::IndexSummary;

/// A payload sink that can re-use chunks of the previous snapshot (metadata change
/// detection).
pub trait ReusablePayload: PayloadSink {
    /// Ends the current chunk and appends these chunks of the previous payload index to the
    /// stream without their data. `ends_previous` says the last one ends the previous stream
    /// (so it ends with the previous PAYLOAD_TAIL_MARKER).
    fn inject(&mut self, chunks: &[KnownChunk], ends_previous: bool) -> Result<()>;
    /// Only the PAYLOAD_START_MARKER has been written: drops it (and returns true) because the
    /// first injected chunk starts with the previous stream's identical marker.
    fn absorb_start_marker(&mut self) -> Result<bool>;
}

/// The push's payload stream: cut into chunks and uploaded.
pub struct PayloadWriter<'p> {
    chunks: ChunkedWriter<'p>,
    /// The last thing put in was an injection ending with the previous stream's tail marker.
    tail_injected: bool,
}

impl<'p> PayloadWriter<'p> {
    pub fn new(chunks: ChunkedWriter<'p>) -> Self {
        PayloadWriter {
            chunks,
            tail_injected: false,
        }
    }

    /// Uploads the rest and closes the index. A stream that ends with injected chunks
    /// already ends with the previous stream's identical tail marker: ours is dropped.
    pub fn finish(mut self) -> Result<IndexSummary> {
        if self.tail_injected {
            self.chunks
                .discard_bytes_after_injection_if(&marker(PXAR_PAYLOAD_TAIL_MARKER));
        }
        self.chunks.finish()
    }
}

impl Write for PayloadWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.chunks.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PayloadSink for PayloadWriter<'_> {
    fn position(&self) -> u64 {
        self.chunks.position()
    }

    fn suggest_boundary(&mut self) -> io::Result<()> {
        self.chunks
            .suggest_boundary()
            .map_err(|err| io::Error::other(format!("{err:#}")))
    }
}

impl ReusablePayload for PayloadWriter<'_> {
    fn inject(&mut self, chunks: &[KnownChunk], ends_previous: bool) -> Result<()> {
        self.tail_injected = ends_previous;
        self.chunks.inject(chunks)
    }

    fn absorb_start_marker(&mut self) -> Result<bool> {
        Ok(self
            .chunks
            .discard_first_bytes_if(&marker(PXAR_PAYLOAD_START_MARKER)))
    }
}

/// Any byte sink as a payload stream without re-use (archives written outside a push).
pub struct PlainPayload<P> {
    out: P,
    position: u64,
}

impl<P: Write> PlainPayload<P> {
    pub fn new(out: P) -> Self {
        PlainPayload { out, position: 0 }
    }

    pub fn into_inner(self) -> P {
        self.out
    }
}

impl<P: Write> Write for PlainPayload<P> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = self.out.write(data)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<P: Write> PayloadSink for PlainPayload<P> {
    fn position(&self) -> u64 {
        self.position
    }
}

impl<P: Write> ReusablePayload for PlainPayload<P> {
    fn inject(&mut self, _: &[KnownChunk], _: bool) -> Result<()> {
        bail!("this payload stream cannot re-use chunks")
    }

    fn absorb_start_marker(&mut self) -> Result<bool> {
        Ok(false)
    }
}

/// A v1 archive has no payload stream (no value of this type exists).
impl ReusablePayload for NoPayload {
    fn inject(&mut self, _: &[KnownChunk], _: bool) -> Result<()> {
        match *self {}
    }

    fn absorb_start_marker(&mut self) -> Result<bool> {
        match *self {}
    }
}

/// A payload stream marker item (header only).
fn marker(htype: u64) -> [u8; 16] {
    Header::new(htype, 0).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_payload_counts_its_position_and_refuses_reuse() {
        let mut payload = PlainPayload::new(Vec::new());
        payload.write_all(b"0123456789").unwrap();
        assert_eq!(payload.position(), 10);
        let chunk = KnownChunk {
            size: 4,
            digest: [7; 32],
        };
        assert!(payload.inject(&[chunk], false).is_err());
        assert!(!payload.absorb_start_marker().unwrap());
        assert_eq!(payload.position(), 10);
        assert_eq!(payload.into_inner(), b"0123456789");
    }
}
