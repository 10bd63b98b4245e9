//! Pure, synchronous codecs of the PBS on-disk and wire formats.
//!
//! Nothing here does I/O beyond `Read`/`Write` values and the [`ReadAt`] trait.

pub mod blob;
pub mod catalog;
pub mod chunker;
pub mod crypto;
pub mod index;
pub mod keyfile;
pub mod manifest;
pub mod read_at;
pub mod time;

pub use read_at::ReadAt;

/// A chunk digest: SHA-256 of the plain chunk data (keyed when encrypted).
pub type Digest = [u8; 32];

/// Lower-case hex of a digest, as used in chunk file names and protocol parameters.
pub fn digest_to_hex(digest: &Digest) -> String {
    hex::encode(digest)
}

/// Parses 64 hex characters into a digest.
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}
