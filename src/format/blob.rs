//! Data blobs: the container of every chunk file, every `*.blob` file and every chunk or
//! blob body on the wire (spec/blob.md).
//!
//! Layout: 8-byte magic, CRC-32 (LE) over everything after the header, then for encrypted
//! kinds a 16-byte IV and a 16-byte GCM tag, then the payload. The `*_with` functions take
//! an optional [`CryptConfig`] and handle the encrypted kinds (compress, then encrypt).

use std::io::Read;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::crypto::{CryptConfig, CryptoError, IV_LEN};
use super::Digest;

/// Largest plaintext a blob may hold (the official encoder refuses more).
pub const MAX_BLOB_SIZE: usize = 128 * 1024 * 1024;
/// Largest plaintext a chunk can have: the backup protocol never accepts more.
pub const MAX_CHUNK_SIZE: usize = 16 * 1024 * 1024;

pub const UNCOMPRESSED_BLOB_MAGIC: [u8; 8] = [66, 171, 56, 7, 190, 131, 112, 161];
pub const COMPRESSED_BLOB_MAGIC: [u8; 8] = [49, 185, 88, 66, 111, 182, 163, 127];
pub const ENCRYPTED_BLOB_MAGIC: [u8; 8] = [123, 103, 133, 190, 34, 45, 76, 240];
pub const ENCR_COMPR_BLOB_MAGIC: [u8; 8] = [230, 89, 27, 191, 11, 191, 216, 11];

/// Header length of the two plain kinds: magic + crc.
pub const PLAIN_HEADER_LEN: usize = 12;
/// Header length of the two encrypted kinds: magic + crc + iv + tag.
pub const ENCRYPTED_HEADER_LEN: usize = 44;

/// zstd level the official tools use for every blob.
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("blob too short: {len} bytes, need at least {needed}")]
    TooShort { len: usize, needed: usize },
    #[error("not a data blob: unknown magic {}", hex::encode(.0))]
    BadMagic([u8; 8]),
    #[error("blob CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("blob is encrypted: key needed")]
    Encrypted,
    #[error("blob decryption failed: wrong key or corrupted data")]
    Decrypt(#[source] CryptoError),
    #[error("encryption failed")]
    Encrypt(#[source] CryptoError),
    #[error("Index and chunk CryptMode don't match: the index is {} but the chunk is {}",
        encrypted_word(*.index_encrypted), encrypted_word(!*.index_encrypted))]
    CryptModeMismatch { index_encrypted: bool },
    #[error("zstd decompression failed")]
    Decompress(#[source] std::io::Error),
    #[error("blob data larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("chunk digest mismatch: expected {}, got {}", hex::encode(.expected), hex::encode(.actual))]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
}

fn encrypted_word(encrypted: bool) -> &'static str {
    if encrypted {
        "encrypted"
    } else {
        "not encrypted"
    }
}

/// The four blob kinds, one per magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Uncompressed,
    Compressed,
    Encrypted,
    EncryptedCompressed,
}

impl BlobKind {
    pub fn from_magic(magic: &[u8; 8]) -> Option<Self> {
        match *magic {
            UNCOMPRESSED_BLOB_MAGIC => Some(Self::Uncompressed),
            COMPRESSED_BLOB_MAGIC => Some(Self::Compressed),
            ENCRYPTED_BLOB_MAGIC => Some(Self::Encrypted),
            ENCR_COMPR_BLOB_MAGIC => Some(Self::EncryptedCompressed),
            _ => None,
        }
    }

    pub fn magic(self) -> [u8; 8] {
        match self {
            Self::Uncompressed => UNCOMPRESSED_BLOB_MAGIC,
            Self::Compressed => COMPRESSED_BLOB_MAGIC,
            Self::Encrypted => ENCRYPTED_BLOB_MAGIC,
            Self::EncryptedCompressed => ENCR_COMPR_BLOB_MAGIC,
        }
    }

    pub fn is_encrypted(self) -> bool {
        matches!(self, Self::Encrypted | Self::EncryptedCompressed)
    }

    pub fn is_compressed(self) -> bool {
        matches!(self, Self::Compressed | Self::EncryptedCompressed)
    }

    pub fn header_len(self) -> usize {
        if self.is_encrypted() {
            ENCRYPTED_HEADER_LEN
        } else {
            PLAIN_HEADER_LEN
        }
    }

    fn of(compressed: bool, encrypted: bool) -> Self {
        match (compressed, encrypted) {
            (false, false) => Self::Uncompressed,
            (true, false) => Self::Compressed,
            (false, true) => Self::Encrypted,
            (true, true) => Self::EncryptedCompressed,
        }
    }
}

/// A blob whose framing (magic, length, CRC) has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobBody<'a> {
    /// `data` is the plaintext, or a zstd stream of it when `compressed`.
    Plain { compressed: bool, data: &'a [u8] },
    /// AES-256-GCM ciphertext; when `compressed` the decrypted bytes are a zstd stream.
    Encrypted {
        compressed: bool,
        iv: [u8; 16],
        tag: [u8; 16],
        ciphertext: &'a [u8],
    },
}

/// The kind of a blob, from its magic and minimum length (the CRC is not checked).
pub fn blob_kind(raw: &[u8]) -> Result<BlobKind, BlobError> {
    let magic: &[u8; 8] =
        raw.get(..8)
            .and_then(|m| m.try_into().ok())
            .ok_or(BlobError::TooShort {
                len: raw.len(),
                needed: PLAIN_HEADER_LEN,
            })?;
    let kind = BlobKind::from_magic(magic).ok_or(BlobError::BadMagic(*magic))?;
    if raw.len() < kind.header_len() {
        return Err(BlobError::TooShort {
            len: raw.len(),
            needed: kind.header_len(),
        });
    }
    Ok(kind)
}

/// Checks magic, length and CRC and splits the blob into its parts.
pub fn parse_blob(raw: &[u8]) -> Result<BlobBody<'_>, BlobError> {
    let kind = blob_kind(raw)?;
    let header_len = kind.header_len();
    let stored = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let computed = crc32fast::hash(&raw[header_len..]);
    if stored != computed {
        return Err(BlobError::BadCrc { stored, computed });
    }
    let payload = &raw[header_len..];
    let compressed = kind.is_compressed();
    Ok(if kind.is_encrypted() {
        BlobBody::Encrypted {
            compressed,
            iv: raw[12..28].try_into().expect("16-byte slice"),
            tag: raw[28..44].try_into().expect("16-byte slice"),
            ciphertext: payload,
        }
    } else {
        BlobBody::Plain {
            compressed,
            data: payload,
        }
    })
}

/// Decodes an unencrypted blob to its plaintext, refusing plaintext above `max_size`.
pub fn decode_blob(raw: &[u8], max_size: usize) -> Result<Vec<u8>, BlobError> {
    decode_blob_with(raw, max_size, None)
}

/// Decodes any blob to its plaintext, refusing plaintext above `max_size`. Encrypted kinds
/// need `crypt` (else [`BlobError::Encrypted`]); plain kinds ignore it.
pub fn decode_blob_with(
    raw: &[u8],
    max_size: usize,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>, BlobError> {
    match parse_blob(raw)? {
        BlobBody::Plain { compressed, data } => finish_plain(data, compressed, max_size),
        BlobBody::Encrypted {
            compressed,
            iv,
            tag,
            ciphertext,
        } => {
            let crypt = crypt.ok_or(BlobError::Encrypted)?;
            // For an uncompressed blob the ciphertext length is the plaintext length, so
            // check the limit before decrypting.
            if !compressed && ciphertext.len() > max_size {
                return Err(BlobError::TooLarge { limit: max_size });
            }
            let decrypted = crypt
                .decrypt(&iv, &tag, ciphertext)
                .map_err(BlobError::Decrypt)?;
            if compressed {
                decompress_bounded(&decrypted, max_size)
            } else {
                Ok(decrypted)
            }
        }
    }
}

fn finish_plain(data: &[u8], compressed: bool, max_size: usize) -> Result<Vec<u8>, BlobError> {
    if compressed {
        return decompress_bounded(data, max_size);
    }
    if data.len() > max_size {
        return Err(BlobError::TooLarge { limit: max_size });
    }
    Ok(data.to_vec())
}

/// Decompresses a zstd stream (any number of frames) without ever holding more than
/// `max_size + 1` output bytes, so a hostile stream cannot exhaust memory.
pub fn decompress_bounded(data: &[u8], max_size: usize) -> Result<Vec<u8>, BlobError> {
    // The frame usually states its size (PBS writes one frame per blob): then one
    // single-shot call decodes straight into a buffer of exactly that size, with no
    // zeroing and no copies out of a streaming window. Chunks are cached, so the exact
    // size also means no slack capacity held for nothing.
    let stated = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .filter(|size| *size <= max_size as u64);
    if let Some(size) = stated {
        let mut out = Vec::with_capacity(size as usize);
        // Fails if the frame lies about its size or more frames follow: the streaming
        // path below then decides.
        if zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(data, &mut out))
            .is_ok()
        {
            return Ok(out);
        }
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(BlobError::Decompress)?;
    let capacity = match stated {
        Some(size) => size as usize + 1,
        None => max_size.min(data.len().saturating_mul(4)),
    };
    let mut out = Vec::with_capacity(capacity);
    decoder
        .take((max_size as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(BlobError::Decompress)?;
    if out.len() > max_size {
        return Err(BlobError::TooLarge { limit: max_size });
    }
    if out.capacity() - out.len() > out.len() / 16 {
        out.shrink_to_fit();
    }
    Ok(out)
}

/// zstd of `data` at [`ZSTD_LEVEL`] into `out`, `None` if it does not fit. One compression
/// context per thread, kept: creating one per chunk costs more than it should on the push
/// path. The output is the same as a fresh context's.
fn compress_level1(out: &mut [u8], data: &[u8]) -> Option<usize> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|context| {
        let mut context = context.borrow_mut();
        let cctx = context.get_or_insert_with(zstd::zstd_safe::CCtx::create);
        cctx.compress(out, data, ZSTD_LEVEL).ok()
    })
}

/// zstd level 1 of `data`, if the result is no longer than `data` (the PBS 4.2.3 rule;
/// an equal length still counts as compressed). `None` means "store uncompressed".
pub fn compress_if_not_larger(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; data.len()];
    let len = compress_level1(&mut out[..], data)?;
    out.truncate(len);
    Some(out)
}

/// Encodes `data` as an unencrypted blob, zstd-compressed when asked and worthwhile.
pub fn encode_blob(data: &[u8], compress: bool) -> Result<Vec<u8>, BlobError> {
    let mut raw = Vec::new();
    let len = encode_blob_into(data, compress, &mut raw)?;
    raw.truncate(len);
    Ok(raw)
}

/// [`encode_blob`] into a buffer the caller keeps from chunk to chunk: returns the blob's
/// length, the blob being `out[..len]`. `out` only ever grows, so a reused buffer needs no
/// new pages and no zeroing (both cost more than the copy on the push path).
pub fn encode_blob_into(
    data: &[u8],
    compress: bool,
    out: &mut Vec<u8>,
) -> Result<usize, BlobError> {
    if data.len() > MAX_BLOB_SIZE {
        return Err(BlobError::TooLarge {
            limit: MAX_BLOB_SIZE,
        });
    }
    let len = PLAIN_HEADER_LEN + data.len();
    if out.len() < len {
        out.resize(len, 0);
    }
    let raw = &mut out[..len];
    // Compressed straight behind the header; fails when the result would not fit in the
    // plain size (the PBS rule: then the chunk is stored uncompressed).
    let compressed_len = compress
        .then(|| compress_level1(&mut raw[PLAIN_HEADER_LEN..], data))
        .flatten();
    let used = match compressed_len {
        Some(n) => PLAIN_HEADER_LEN + n,
        None => {
            raw[PLAIN_HEADER_LEN..].copy_from_slice(data);
            len
        }
    };
    let raw = &mut out[..used];
    raw[..8].copy_from_slice(&BlobKind::of(compressed_len.is_some(), false).magic());
    seal_crc(raw, PLAIN_HEADER_LEN);
    Ok(used)
}

/// Encodes `data` as a blob: encrypted (random IV) when `crypt` is given, zstd-compressed
/// first when asked and worthwhile.
pub fn encode_blob_with(
    data: &[u8],
    compress: bool,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>, BlobError> {
    let Some(crypt) = crypt else {
        return encode_blob(data, compress);
    };
    let mut iv = [0u8; IV_LEN];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut iv);
    encode_encrypted_blob(data, compress, crypt, &iv)
}

/// Encrypted encoding with a caller-chosen IV. Only for test vectors and reproducible
/// tests: reusing an IV with the same key breaks GCM.
pub fn encode_encrypted_blob(
    data: &[u8],
    compress: bool,
    crypt: &CryptConfig,
    iv: &[u8; IV_LEN],
) -> Result<Vec<u8>, BlobError> {
    if data.len() > MAX_BLOB_SIZE {
        return Err(BlobError::TooLarge {
            limit: MAX_BLOB_SIZE,
        });
    }
    let compressed = if compress {
        compress_if_not_larger(data)
    } else {
        None
    };
    let plain = compressed.as_deref().unwrap_or(data);
    let (ciphertext, tag) = crypt.encrypt(iv, plain).map_err(BlobError::Encrypt)?;
    Ok(assemble_encrypted_blob(
        compressed.is_some(),
        iv,
        &tag,
        &ciphertext,
    ))
}

/// Frames ciphertext produced by a crypto layer as an encrypted blob (with its CRC).
pub fn assemble_encrypted_blob(
    compressed: bool,
    iv: &[u8; 16],
    tag: &[u8; 16],
    ciphertext: &[u8],
) -> Vec<u8> {
    let mut raw = Vec::with_capacity(ENCRYPTED_HEADER_LEN + ciphertext.len());
    raw.extend_from_slice(&BlobKind::of(compressed, true).magic());
    raw.extend_from_slice(&[0; 4]);
    raw.extend_from_slice(iv);
    raw.extend_from_slice(tag);
    raw.extend_from_slice(ciphertext);
    seal_crc(&mut raw, ENCRYPTED_HEADER_LEN);
    raw
}

/// Writes the CRC of everything after the header into bytes 8..12.
fn seal_crc(raw: &mut [u8], header_len: usize) {
    let crc = crc32fast::hash(&raw[header_len..]);
    raw[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Digest of an unencrypted chunk: SHA-256 of its plaintext.
pub fn chunk_digest(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// Digest of a chunk: keyed (SHA-256 of data ‖ id_key) when the archive is encrypted.
pub fn chunk_digest_with(data: &[u8], crypt: Option<&CryptConfig>) -> Digest {
    match crypt {
        Some(crypt) => crypt.compute_digest(data),
        None => chunk_digest(data),
    }
}

/// Decodes an unencrypted chunk and checks it is the chunk the index asked for.
pub fn decode_chunk(
    raw: &[u8],
    digest: &Digest,
    expected_len: Option<u64>,
) -> Result<Vec<u8>, BlobError> {
    decode_chunk_with(raw, digest, expected_len, None)
}

/// Decodes a chunk and checks it is the chunk the index asked for. Encrypted chunks need
/// `crypt` and are checked against the keyed digest; plain chunks against SHA-256 (a
/// `sign-only` archive has plain chunks even though a key is in use).
pub fn decode_chunk_with(
    raw: &[u8],
    digest: &Digest,
    expected_len: Option<u64>,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>, BlobError> {
    let keyed = if blob_kind(raw)?.is_encrypted() {
        Some(crypt.ok_or(BlobError::Encrypted)?)
    } else {
        None
    };
    let data = decode_blob_with(raw, MAX_CHUNK_SIZE, crypt)?;
    verify_chunk(
        &data,
        &chunk_digest_with(&data, keyed),
        digest,
        expected_len,
    )?;
    Ok(data)
}

/// [`decode_chunk_with`] taking the raw blob by value: an uncompressed, unencrypted chunk
/// (random data) becomes its own plain data in place, with no second buffer.
pub fn decode_chunk_owned(
    mut raw: Vec<u8>,
    digest: &Digest,
    expected_len: Option<u64>,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>, BlobError> {
    if blob_kind(&raw)? != BlobKind::Uncompressed {
        return decode_chunk_with(&raw, digest, expected_len, crypt);
    }
    parse_blob(&raw)?; // CRC
    if raw.len() - PLAIN_HEADER_LEN > MAX_CHUNK_SIZE {
        return Err(BlobError::TooLarge {
            limit: MAX_CHUNK_SIZE,
        });
    }
    raw.drain(..PLAIN_HEADER_LEN);
    verify_chunk(&raw, &chunk_digest(&raw), digest, expected_len)?;
    Ok(raw)
}

/// Crypt-mode consistency (blob.md §5): an encrypted index references only encrypted
/// chunks, any other index only plain ones.
pub fn check_chunk_crypt_mode(raw: &[u8], index_encrypted: bool) -> Result<(), BlobError> {
    if blob_kind(raw)?.is_encrypted() != index_encrypted {
        return Err(BlobError::CryptModeMismatch { index_encrypted });
    }
    Ok(())
}

/// Compares a decoded chunk's digest and length with what the index says.
/// `actual` is passed in so a keyed digest can be checked the same way.
pub fn verify_chunk(
    data: &[u8],
    actual: &Digest,
    expected: &Digest,
    expected_len: Option<u64>,
) -> Result<(), BlobError> {
    if actual != expected {
        return Err(BlobError::DigestMismatch {
            expected: *expected,
            actual: *actual,
        });
    }
    if let Some(expected_len) = expected_len {
        if data.len() as u64 != expected_len {
            return Err(BlobError::SizeMismatch {
                expected: expected_len,
                actual: data.len() as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_blob() -> Vec<u8> {
        hex::decode("42ab3807be8370a186a6103668656c6c6f").unwrap()
    }

    #[test]
    fn magics_are_derived_from_their_strings() {
        for (kind, text) in [
            (
                BlobKind::Uncompressed,
                "Proxmox Backup uncompressed blob v1.0",
            ),
            (
                BlobKind::Compressed,
                "Proxmox Backup zstd compressed blob v1.0",
            ),
            (BlobKind::Encrypted, "Proxmox Backup encrypted blob v1.0"),
            (
                BlobKind::EncryptedCompressed,
                "Proxmox Backup zstd compressed encrypted blob v1.0",
            ),
        ] {
            assert_eq!(kind.magic()[..], Sha256::digest(text.as_bytes())[..8]);
        }
    }

    #[test]
    fn hello_vector_encodes_uncompressed() {
        // zstd output for 5 bytes is longer than 5, so compression must be skipped.
        assert_eq!(encode_blob(b"hello", true).unwrap(), hello_blob());
        assert_eq!(encode_blob(b"hello", false).unwrap(), hello_blob());
        assert_eq!(decode_blob(&hello_blob(), 5).unwrap(), b"hello");
        assert_eq!(
            hex::encode(chunk_digest(b"hello")),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn compressible_data_round_trips_compressed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let raw = encode_blob(&data, true).unwrap();
        assert_eq!(blob_kind(&raw).unwrap(), BlobKind::Compressed);
        assert!(raw.len() < data.len() / 10);
        assert_eq!(decode_blob(&raw, data.len()).unwrap(), data);
        assert!(matches!(
            decode_blob(&raw, data.len() - 1),
            Err(BlobError::TooLarge { .. })
        ));
        let digest = chunk_digest(&data);
        assert_eq!(
            decode_chunk(&raw, &digest, Some(data.len() as u64)).unwrap(),
            data
        );
    }

    #[test]
    fn empty_data_round_trips() {
        for compress in [false, true] {
            let raw = encode_blob(b"", compress).unwrap();
            assert_eq!(raw.len(), PLAIN_HEADER_LEN);
            assert_eq!(decode_blob(&raw, 0).unwrap(), b"");
        }
    }

    #[test]
    fn unlimited_decode_does_not_overflow() {
        let data = vec![5u8; 10_000];
        let raw = encode_blob(&data, true).unwrap();
        assert_eq!(decode_blob(&raw, usize::MAX).unwrap(), data);
    }

    #[test]
    fn uncompressed_blob_over_limit_is_refused() {
        let raw = encode_blob(&[1, 2, 3, 4], false).unwrap();
        assert!(matches!(
            decode_blob(&raw, 3),
            Err(BlobError::TooLarge { limit: 3 })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 13) as u8).collect();
        for raw in [encode_blob(&data, true).unwrap(), hello_blob()] {
            for len in 0..raw.len() {
                assert!(decode_blob(&raw[..len], 1 << 20).is_err(), "len {len}");
            }
        }
    }

    #[test]
    fn truncated_zstd_with_fixed_crc_is_a_decompress_error() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 13) as u8).collect();
        let raw = encode_blob(&data, true).unwrap();
        for len in PLAIN_HEADER_LEN..raw.len() {
            let mut cut = raw[..len].to_vec();
            seal_crc(&mut cut, PLAIN_HEADER_LEN);
            assert!(
                matches!(decode_blob(&cut, 1 << 20), Err(BlobError::Decompress(_))),
                "len {len}"
            );
        }
    }

    #[test]
    fn bad_magic_and_crc_are_reported() {
        let mut raw = hello_blob();
        raw[12] ^= 1;
        assert!(matches!(
            decode_blob(&raw, 100),
            Err(BlobError::BadCrc {
                stored: 0x3610a686,
                ..
            })
        ));
        let mut raw = hello_blob();
        raw[0] ^= 1;
        assert!(matches!(blob_kind(&raw), Err(BlobError::BadMagic(_))));
        assert!(matches!(
            blob_kind(&raw[..7]),
            Err(BlobError::TooShort { len: 7, .. })
        ));
    }

    #[test]
    fn encrypted_blob_needs_a_key() {
        // The blob.md §9 test vector (key 00..1f, IV 00..0f, "hello").
        let raw = hex::decode(concat!(
            "7b6785be222d4cf0784eea93000102030405060708090a0b0c0d0e0f",
            "0c84c431837297c0b19e77e5608162ea0f09cc1a56"
        ))
        .unwrap();
        assert_eq!(blob_kind(&raw).unwrap(), BlobKind::Encrypted);
        let err = decode_blob(&raw, 100).unwrap_err();
        assert!(err.to_string().contains("encrypted: key needed"));
        let BlobBody::Encrypted {
            compressed,
            iv,
            tag,
            ciphertext,
        } = parse_blob(&raw).unwrap()
        else {
            panic!("not parsed as encrypted");
        };
        assert!(!compressed);
        assert_eq!(
            iv,
            *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
        );
        assert_eq!(ciphertext, hex::decode("0f09cc1a56").unwrap());
        assert_eq!(assemble_encrypted_blob(false, &iv, &tag, ciphertext), raw);
        // An encrypted magic on a blob shorter than its 44-byte header.
        assert!(matches!(
            blob_kind(&raw[..43]),
            Err(BlobError::TooShort { needed: 44, .. })
        ));
    }

    #[test]
    fn digest_and_length_are_checked() {
        let raw = hello_blob();
        let good = chunk_digest(b"hello");
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(
            decode_chunk(&raw, &bad, None),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert!(matches!(
            decode_chunk(&raw, &good, Some(6)),
            Err(BlobError::SizeMismatch {
                expected: 6,
                actual: 5
            })
        ));
    }

    #[test]
    fn a_reused_encode_buffer_gives_the_same_blobs() {
        let text = b"compressible text ".repeat(10_000);
        let mut random = vec![0u8; 300_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
        let mut out = Vec::new();
        // Large then small then incompressible: stale bytes must never leak into a blob.
        for data in [&text[..], &b"tiny"[..], &random[..], &text[..1000]] {
            let len = encode_blob_into(data, true, &mut out).unwrap();
            assert_eq!(&out[..len], &encode_blob(data, true).unwrap()[..]);
            assert_eq!(decode_blob(&out[..len], MAX_CHUNK_SIZE).unwrap(), data);
        }
    }

    #[test]
    fn concatenated_frames_are_accepted() {
        let mut stream = zstd::bulk::compress(b"first ", 3).unwrap();
        stream.extend(zstd::bulk::compress(b"second", 3).unwrap());
        let mut raw = COMPRESSED_BLOB_MAGIC.to_vec();
        raw.extend([0; 4]);
        raw.extend(&stream);
        seal_crc(&mut raw, PLAIN_HEADER_LEN);
        assert_eq!(decode_blob(&raw, 100).unwrap(), b"first second");
    }

    #[test]
    fn decompression_bomb_is_capped() {
        // 1 GiB of zeros, compressed by a streaming encoder (no content size in the frame).
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        let stream = encoder.finish().unwrap();
        let mut raw = COMPRESSED_BLOB_MAGIC.to_vec();
        raw.extend([0; 4]);
        raw.extend(&stream);
        seal_crc(&mut raw, PLAIN_HEADER_LEN);
        assert!(matches!(
            decode_blob(&raw, MAX_CHUNK_SIZE),
            Err(BlobError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_chunk(&raw, &[0; 32], None),
            Err(BlobError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_input_is_refused_by_the_encoder() {
        let data = vec![0u8; MAX_BLOB_SIZE + 1];
        assert!(matches!(
            encode_blob(&data, false),
            Err(BlobError::TooLarge { .. })
        ));
    }

    fn test_crypt() -> CryptConfig {
        CryptConfig::new(std::array::from_fn(|i| i as u8))
    }

    fn encrypted_hello() -> Vec<u8> {
        hex::decode(concat!(
            "7b6785be222d4cf0784eea93000102030405060708090a0b0c0d0e0f",
            "0c84c431837297c0b19e77e5608162ea0f09cc1a56"
        ))
        .unwrap()
    }

    #[test]
    fn encrypted_hello_vector_encodes_and_decodes() {
        let crypt = test_crypt();
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            encode_encrypted_blob(b"hello", true, &crypt, &iv).unwrap(),
            encrypted_hello()
        );
        assert_eq!(
            decode_blob_with(&encrypted_hello(), 5, Some(&crypt)).unwrap(),
            b"hello"
        );
        let digest = chunk_digest_with(b"hello", Some(&crypt));
        assert_eq!(
            hex::encode(digest),
            "e34178a27b992c4a218599bf7f43ed50bc464a03d624d9092306fe2ed74d557e"
        );
        assert_eq!(
            decode_chunk_with(&encrypted_hello(), &digest, Some(5), Some(&crypt)).unwrap(),
            b"hello"
        );
        // The plain digest does not name an encrypted chunk.
        assert!(matches!(
            decode_chunk_with(
                &encrypted_hello(),
                &chunk_digest(b"hello"),
                None,
                Some(&crypt)
            ),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert!(matches!(
            decode_blob_with(&encrypted_hello(), 4, Some(&crypt)),
            Err(BlobError::TooLarge { limit: 4 })
        ));
    }

    #[test]
    fn encrypted_round_trip_compressed_and_not() {
        let crypt = test_crypt();
        let compressible: Vec<u8> = (0..50_000u32).map(|i| (i % 5) as u8).collect();
        let raw = encode_blob_with(&compressible, true, Some(&crypt)).unwrap();
        assert_eq!(blob_kind(&raw).unwrap(), BlobKind::EncryptedCompressed);
        assert!(raw.len() < compressible.len() / 10);
        assert_eq!(
            decode_blob_with(&raw, compressible.len(), Some(&crypt)).unwrap(),
            compressible
        );
        assert!(matches!(
            decode_blob_with(&raw, compressible.len() - 1, Some(&crypt)),
            Err(BlobError::TooLarge { .. })
        ));
        let raw = encode_blob_with(&compressible, false, Some(&crypt)).unwrap();
        assert_eq!(blob_kind(&raw).unwrap(), BlobKind::Encrypted);
        assert_eq!(raw.len(), ENCRYPTED_HEADER_LEN + compressible.len());
        assert_eq!(
            decode_blob_with(&raw, usize::MAX, Some(&crypt)).unwrap(),
            compressible
        );
        // Fresh IV every time.
        assert_ne!(
            encode_blob_with(b"same", false, Some(&crypt)).unwrap(),
            encode_blob_with(b"same", false, Some(&crypt)).unwrap()
        );
        // Without a key the plain encoder is used.
        assert_eq!(
            encode_blob_with(b"hello", true, None).unwrap(),
            hello_blob()
        );
    }

    #[test]
    fn wrong_key_or_missing_key_is_reported() {
        let raw = encrypted_hello();
        let other = CryptConfig::new([1; 32]);
        let err = decode_blob_with(&raw, 100, Some(&other)).unwrap_err();
        assert!(matches!(err, BlobError::Decrypt(_)));
        assert!(err.to_string().contains("wrong key"));
        let err = decode_chunk_with(&raw, &[0; 32], None, None).unwrap_err();
        assert!(err.to_string().contains("encrypted: key needed"));
        // A plain chunk decodes with a key too (sign-only archives) and uses SHA-256.
        let crypt = test_crypt();
        assert_eq!(
            decode_chunk_with(
                &hello_blob(),
                &chunk_digest(b"hello"),
                Some(5),
                Some(&crypt)
            )
            .unwrap(),
            b"hello"
        );
    }

    #[test]
    fn tampered_ciphertext_with_fixed_crc_fails_authentication() {
        let mut raw = encrypted_hello();
        raw[ENCRYPTED_HEADER_LEN] ^= 1;
        seal_crc(&mut raw, ENCRYPTED_HEADER_LEN);
        assert!(matches!(
            decode_blob_with(&raw, 100, Some(&test_crypt())),
            Err(BlobError::Decrypt(_))
        ));
        let mut raw = encrypted_hello();
        raw[20] ^= 1; // the IV is not covered by the CRC
        assert!(matches!(
            decode_blob_with(&raw, 100, Some(&test_crypt())),
            Err(BlobError::Decrypt(_))
        ));
    }

    #[test]
    fn crypt_mode_consistency() {
        assert!(check_chunk_crypt_mode(&encrypted_hello(), true).is_ok());
        assert!(check_chunk_crypt_mode(&hello_blob(), false).is_ok());
        let err = check_chunk_crypt_mode(&hello_blob(), true).unwrap_err();
        assert!(err
            .to_string()
            .contains("index is encrypted but the chunk is not encrypted"));
        assert!(matches!(
            check_chunk_crypt_mode(&encrypted_hello(), false),
            Err(BlobError::CryptModeMismatch {
                index_encrypted: false
            })
        ));
    }
}

#[cfg(test)]
mod owned_tests {
    use super::*;

    #[test]
    fn owned_decoding_agrees_with_borrowed_and_checks_crc() {
        let random: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let text = b"compressible ".repeat(20_000);
        for (data, compress) in [(&random[..], false), (&text[..], true), (&text[..], false)] {
            let raw = encode_blob(data, compress).unwrap();
            let digest = chunk_digest(data);
            let owned =
                decode_chunk_owned(raw.clone(), &digest, Some(data.len() as u64), None).unwrap();
            assert_eq!(
                owned,
                decode_chunk_with(&raw, &digest, Some(data.len() as u64), None).unwrap()
            );
            assert_eq!(owned, data);
            let mut bad = raw.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(decode_chunk_owned(bad, &digest, None, None).is_err());
            assert!(decode_chunk_owned(raw, &[0u8; 32], None, None).is_err());
        }
    }
}
