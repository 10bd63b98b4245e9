//! How a backup run protects what it writes (crypto.md §1): its crypt mode and key. One
//! mode for the whole run, as with the official client: `encrypt` encrypts every chunk
//! (keyed digests) and signs the manifest, `sign-only` stores plain chunks but signs the
//! manifest, `none` does neither.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use super::upload::ChunkEncoding;
use crate::format::crypto::{CryptConfig, Fingerprint};
use crate::format::manifest::{CryptMode, Manifest, ManifestError};

#[derive(Debug, Error)]
pub enum ProtectionError {
    #[error("crypt mode {0:?} needs an encryption key")]
    KeyNeeded(CryptMode),
}

/// Why a previous snapshot's archives cannot be re-used by this run.
#[derive(Debug, Error)]
pub enum NotReusable {
    #[error("{file} has crypt mode {previous}, this backup uses {current}")]
    CryptMode {
        file: String,
        previous: &'static str,
        current: &'static str,
    },
    #[error(transparent)]
    Key(#[from] ManifestError),
}

/// A crypt mode and, unless it is `none`, the key.
#[derive(Clone, Default)]
pub struct Protection {
    mode: CryptMode,
    key: Option<Arc<CryptConfig>>,
}

impl Protection {
    /// Neither encrypted nor signed.
    pub fn none() -> Self {
        Self::default()
    }

    /// `mode` with `key`; `none` drops the key (nothing is signed then).
    pub fn new(mode: CryptMode, key: Option<Arc<CryptConfig>>) -> Result<Self, ProtectionError> {
        match (mode, key) {
            (CryptMode::None, _) => Ok(Self::none()),
            (mode, Some(key)) => Ok(Protection {
                mode,
                key: Some(key),
            }),
            (mode, None) => Err(ProtectionError::KeyNeeded(mode)),
        }
    }

    pub fn encrypt(key: Arc<CryptConfig>) -> Self {
        Protection {
            mode: CryptMode::Encrypt,
            key: Some(key),
        }
    }

    pub fn sign_only(key: Arc<CryptConfig>) -> Self {
        Protection {
            mode: CryptMode::SignOnly,
            key: Some(key),
        }
    }

    pub fn mode(&self) -> CryptMode {
        self.mode
    }

    /// The key that signs (and in `encrypt` mode encrypts).
    pub fn key(&self) -> Option<&Arc<CryptConfig>> {
        self.key.as_ref()
    }

    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.key.as_ref().map(|key| key.fingerprint())
    }

    /// The key chunks are encrypted with: only in `encrypt` mode (`sign-only` chunks are
    /// plain, with plain digests).
    pub fn chunk_key(&self) -> Option<&Arc<CryptConfig>> {
        match self.mode {
            CryptMode::Encrypt => self.key.as_ref(),
            _ => None,
        }
    }

    /// How chunks are stored: compressed, and encrypted in `encrypt` mode.
    pub fn chunk_encoding(&self) -> ChunkEncoding {
        ChunkEncoding {
            compress: true,
            crypt: self.chunk_key().cloned(),
        }
    }

    /// Records the crypt mode on every index of the manifest and signs it (with the key
    /// fingerprint in `unprotected`) unless the mode is `none`. Indexes only: blobs are
    /// stored as given by the caller, whose crypt mode is already recorded.
    pub fn complete_manifest(&self, manifest: &mut Manifest) -> Result<(), ManifestError> {
        for file in &mut manifest.files {
            if file.filename.ends_with(".didx") || file.filename.ends_with(".fidx") {
                file.crypt_mode = self.mode;
            }
        }
        if let Some(key) = &self.key {
            manifest.sign(key)?;
        }
        Ok(())
    }

    /// Whether `files` of a previous snapshot (its `manifest`) can be re-used by this run:
    /// the same crypt mode, and the manifest made with this key (signature checked).
    pub fn check_previous(&self, manifest: &Manifest, files: &[&str]) -> Result<(), NotReusable> {
        for name in files {
            if let Some(info) = manifest.file(name) {
                if info.crypt_mode != self.mode {
                    return Err(NotReusable::CryptMode {
                        file: name.to_string(),
                        previous: mode_name(info.crypt_mode),
                        current: mode_name(self.mode),
                    });
                }
            }
        }
        manifest.verify_signature(self.key.as_deref())?;
        Ok(())
    }
}

/// The name the official tools use for a crypt mode.
pub fn mode_name(mode: CryptMode) -> &'static str {
    match mode {
        CryptMode::None => "none",
        CryptMode::Encrypt => "encrypt",
        CryptMode::SignOnly => "sign-only",
    }
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fingerprint identifies the key without revealing it.
        f.debug_struct("Protection")
            .field("mode", &self.mode)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::FileInfo;

    fn manifest() -> Manifest {
        let mut manifest = Manifest::new("host", "x", 1000);
        for name in ["root.mpxar.didx", "root.ppxar.didx", "notes.blob"] {
            manifest.files.push(FileInfo {
                filename: name.into(),
                crypt_mode: CryptMode::None,
                size: 1,
                csum: [1; 32],
            });
        }
        manifest
    }

    #[test]
    fn modes_other_than_none_need_a_key() {
        assert!(Protection::new(CryptMode::Encrypt, None).is_err());
        assert!(Protection::new(CryptMode::SignOnly, None).is_err());
        let key = Arc::new(CryptConfig::new([3; 32]));
        let none = Protection::new(CryptMode::None, Some(key.clone())).unwrap();
        assert!(none.key().is_none());
        assert!(Protection::sign_only(key.clone()).chunk_key().is_none());
        assert!(Protection::encrypt(key).chunk_encoding().crypt.is_some());
    }

    #[test]
    fn completed_manifest_is_signed_and_marks_indexes_only() {
        let key = Arc::new(CryptConfig::new([3; 32]));
        let mut signed = manifest();
        Protection::encrypt(key.clone())
            .complete_manifest(&mut signed)
            .unwrap();
        let modes: Vec<CryptMode> = signed.files.iter().map(|f| f.crypt_mode).collect();
        assert_eq!(
            modes,
            [CryptMode::Encrypt, CryptMode::Encrypt, CryptMode::None]
        );
        signed.verify_signature(Some(&key)).unwrap();
        assert_eq!(
            signed.key_fingerprint(),
            Some(key.fingerprint().to_string().as_str())
        );
        // Reading it back through JSON keeps the signature valid.
        let again = Manifest::from_json(signed.to_json().unwrap().as_bytes()).unwrap();
        again.verify_signature(Some(&key)).unwrap();

        let mut plain = manifest();
        Protection::none().complete_manifest(&mut plain).unwrap();
        assert!(plain.signature.is_none() && plain.key_fingerprint().is_none());
    }

    #[test]
    fn previous_snapshot_needs_the_same_mode_and_key() {
        let key = Arc::new(CryptConfig::new([3; 32]));
        let other = Arc::new(CryptConfig::new([4; 32]));
        let names = ["root.mpxar.didx", "root.ppxar.didx"];
        let mut encrypted = manifest();
        Protection::encrypt(key.clone())
            .complete_manifest(&mut encrypted)
            .unwrap();
        let plain = manifest();

        let same = Protection::encrypt(key.clone());
        same.check_previous(&encrypted, &names).unwrap();
        let err = same.check_previous(&plain, &names).unwrap_err();
        assert!(err.to_string().contains("crypt mode none"), "{err}");
        let err = Protection::encrypt(other)
            .check_previous(&encrypted, &names)
            .unwrap_err();
        assert!(err.to_string().contains("wrong key"), "{err}");
        assert!(Protection::sign_only(key)
            .check_previous(&encrypted, &names)
            .is_err());
        assert!(Protection::none()
            .check_previous(&encrypted, &names)
            .is_err());
        Protection::none().check_previous(&plain, &names).unwrap();
    }
}
