//! The one error type of the pxar readers (accessor, sequential decoder).

use std::io;

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The underlying reader failed (its message says how: a bad chunk, an I/O error).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The archive ends inside an item.
    #[error("pxar archive truncated at offset {offset}")]
    Truncated { offset: u64 },
    /// The bytes do not form a valid archive (bad header, forbidden name, broken table, ...).
    #[error("invalid pxar archive at offset {offset}: {reason}")]
    Invalid { offset: u64, reason: String },
    /// An operation was asked of the wrong kind of entry (read_file on a directory, ...).
    #[error("{0}")]
    WrongKind(&'static str),
}

impl DecodeError {
    pub(crate) fn invalid(offset: u64, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            offset,
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for io::Error {
    fn from(err: DecodeError) -> Self {
        match err {
            DecodeError::Io(err) => err,
            DecodeError::Truncated { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, err),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
