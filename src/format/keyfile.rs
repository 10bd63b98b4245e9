//! Encryption key files (spec/crypto.md §2): one-line JSON holding the 32-byte key, either
//! raw or AES-256-GCM-wrapped with a key derived from a password by scrypt or PBKDF2.

use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use super::crypto::{aes_gcm_decrypt, aes_gcm_encrypt, CryptConfig, Fingerprint, IV_LEN, TAG_LEN};

/// The official client refuses shorter passwords.
pub const MIN_PASSWORD_LEN: usize = 5;
/// scrypt parameters and PBKDF2 rounds the official client writes.
pub const SCRYPT_N: u64 = 65536;
pub const SCRYPT_R: u64 = 8;
pub const SCRYPT_P: u64 = 1;
pub const PBKDF2_ITER: usize = 65535;
/// Memory scrypt may use, as in PBS (128·r·N·p bytes must stay below it).
const SCRYPT_MAX_MEM: u64 = 1025 * 1024 * 1024;
/// A hostile key file must not make us spin for hours; the official value is 65535.
const PBKDF2_MAX_ITER: usize = 100_000_000;
const SALT_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("cannot read key file")]
    Io(#[from] std::io::Error),
    #[error("invalid key file")]
    Json(#[from] serde_json::Error),
    #[error("the key is protected by a password, but no password was given")]
    PasswordNeeded,
    #[error("password is too short (at least {MIN_PASSWORD_LEN} bytes)")]
    PasswordTooShort,
    #[error("unable to decrypt key - wrong password?{}", hint_suffix(.0))]
    WrongPassword(Option<String>),
    #[error("invalid key file: encrypted key data is {0} bytes, expected 64")]
    BadWrappedLength(usize),
    #[error("invalid key file: key is {0} bytes, expected 32")]
    BadKeyLength(usize),
    #[error("invalid key file: {0}")]
    BadKdf(String),
    #[error(
        "key file contains wrong fingerprint {stored}, the key in it has fingerprint {actual}"
    )]
    FingerprintMismatch {
        stored: Fingerprint,
        actual: Fingerprint,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!(" (password hint: {h})"))
        .unwrap_or_default()
}

/// Which key-derivation function protects a new key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    None,
    Scrypt,
    Pbkdf2,
}

/// Stored KDF parameters (externally tagged: `{"Scrypt": {...}}` / `{"PBKDF2": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyDerivationConfig {
    Scrypt {
        n: u64,
        r: u64,
        p: u64,
        #[serde(with = "base64_bytes")]
        salt: Vec<u8>,
    },
    PBKDF2 {
        iter: usize,
        #[serde(with = "base64_bytes")]
        salt: Vec<u8>,
    },
}

impl KeyDerivationConfig {
    pub fn kdf(&self) -> Kdf {
        match self {
            Self::Scrypt { .. } => Kdf::Scrypt,
            Self::PBKDF2 { .. } => Kdf::Pbkdf2,
        }
    }

    /// The 32-byte key-encryption key for `password`, with the stored parameters.
    pub fn derive_key(&self, password: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let mut key = Zeroizing::new([0u8; 32]);
        match self {
            Self::Scrypt { n, r, p, salt } => {
                let params = scrypt_params(*n, *r, *p)?;
                scrypt::scrypt(password, salt, &params, &mut key[..])
                    .map_err(|e| KeyFileError::BadKdf(format!("scrypt: {e}")))?;
            }
            Self::PBKDF2 { iter, salt } => {
                if *iter == 0 || *iter > PBKDF2_MAX_ITER {
                    return Err(KeyFileError::BadKdf(format!(
                        "PBKDF2 iteration count {iter} out of range"
                    )));
                }
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, *iter as u32, &mut key[..]);
            }
        }
        Ok(key)
    }
}

/// Validates scrypt parameters before anything is allocated.
fn scrypt_params(n: u64, r: u64, p: u64) -> Result<scrypt::Params, KeyFileError> {
    let bad = |why: &str| KeyFileError::BadKdf(format!("scrypt n={n} r={r} p={p}: {why}"));
    if n < 2 || !n.is_power_of_two() {
        return Err(bad("n must be a power of two"));
    }
    let memory = 128u64
        .checked_mul(r)
        .and_then(|m| m.checked_mul(n))
        .and_then(|m| m.checked_mul(p))
        .ok_or_else(|| bad("too much memory"))?;
    if memory > SCRYPT_MAX_MEM {
        return Err(bad("too much memory"));
    }
    let (r, p) = (
        u32::try_from(r).map_err(|_| bad("r too large"))?,
        u32::try_from(p).map_err(|_| bad("p too large"))?,
    );
    scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).map_err(|e| bad(&e.to_string()))
}

/// The JSON object of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyConfig {
    pub kdf: Option<KeyDerivationConfig>,
    /// RFC 3339 with numeric offset; kept as written.
    pub created: String,
    pub modified: String,
    /// The raw key (no KDF) or `iv ‖ tag ‖ wrapped key`.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `data` is the raw key when there is no KDF: wipe it.
impl Drop for KeyConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// What can be told about a key file once unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kdf: Kdf,
    pub created: String,
    pub modified: String,
    /// Computed from the key (and checked against the stored one, if any).
    pub fingerprint: Fingerprint,
    pub hint: Option<String>,
}

impl KeyConfig {
    pub fn from_json(json: &[u8]) -> Result<Self, KeyFileError> {
        Ok(serde_json::from_slice(json)?)
    }

    /// Compact one-line JSON, as the official client writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("key config serialises")
    }

    /// True when a password is needed to unlock the key.
    pub fn is_protected(&self) -> bool {
        self.kdf.is_some()
    }

    /// Wraps `key` (with `password` unless `kdf` is [`Kdf::None`]) in a new key config
    /// created now.
    pub fn new(key: &[u8; 32], kdf: Kdf, password: Option<&[u8]>) -> Result<Self, KeyFileError> {
        let now = now_rfc3339();
        let (kdf, data) = match kdf {
            Kdf::None => (None, key.to_vec()),
            Kdf::Scrypt | Kdf::Pbkdf2 => {
                let password = checked_password(password)?;
                let mut salt = vec![0u8; SALT_LEN];
                rand::thread_rng().fill_bytes(&mut salt);
                let config = if kdf == Kdf::Scrypt {
                    KeyDerivationConfig::Scrypt {
                        n: SCRYPT_N,
                        r: SCRYPT_R,
                        p: SCRYPT_P,
                        salt,
                    }
                } else {
                    KeyDerivationConfig::PBKDF2 {
                        iter: PBKDF2_ITER,
                        salt,
                    }
                };
                let kek = config.derive_key(password)?;
                let mut iv = [0u8; IV_LEN];
                rand::thread_rng().fill_bytes(&mut iv);
                let mut wrapped = key.to_vec();
                let tag = aes_gcm_encrypt(&kek, &iv, &mut wrapped)
                    .map_err(|e| KeyFileError::BadKdf(e.to_string()))?;
                let mut data = Vec::with_capacity(IV_LEN + TAG_LEN + 32);
                data.extend_from_slice(&iv);
                data.extend_from_slice(&tag);
                data.extend_from_slice(&wrapped);
                (Some(config), data)
            }
        };
        Ok(KeyConfig {
            kdf,
            created: now.clone(),
            modified: now,
            data,
            fingerprint: Some(CryptConfig::new(*key).fingerprint()),
            hint: None,
        })
    }

    /// The same key under a new KDF and password (a passphrase change): created when this
    /// one was, modified now. The old password's hint does not carry over.
    pub fn rewrapped(
        &self,
        key: &[u8; 32],
        kdf: Kdf,
        password: Option<&[u8]>,
    ) -> Result<Self, KeyFileError> {
        let mut config = KeyConfig::new(key, kdf, password)?;
        config.created = self.created.clone();
        Ok(config)
    }

    /// Recovers the key; checks the stored fingerprint against the key's.
    pub fn unlock(
        &self,
        password: Option<&[u8]>,
    ) -> Result<(Zeroizing<[u8; 32]>, KeyInfo), KeyFileError> {
        let raw = match &self.kdf {
            None => Zeroizing::new(self.data.clone()),
            Some(kdf) => {
                let password = password.ok_or(KeyFileError::PasswordNeeded)?;
                let password = checked_password(Some(password))?;
                if self.data.len() != IV_LEN + TAG_LEN + 32 {
                    return Err(KeyFileError::BadWrappedLength(self.data.len()));
                }
                let kek = kdf.derive_key(password)?;
                let iv = self.data[..IV_LEN].try_into().expect("16 bytes");
                let tag = self.data[IV_LEN..IV_LEN + TAG_LEN]
                    .try_into()
                    .expect("16 bytes");
                let plain = aes_gcm_decrypt(&kek, &iv, &tag, &self.data[IV_LEN + TAG_LEN..])
                    .map_err(|_| KeyFileError::WrongPassword(self.hint.clone()))?;
                Zeroizing::new(plain)
            }
        };
        let key: [u8; 32] = raw[..]
            .try_into()
            .map_err(|_| KeyFileError::BadKeyLength(raw.len()))?;
        let key = Zeroizing::new(key);
        let actual = CryptConfig::from(&key).fingerprint();
        if let Some(stored) = self.fingerprint {
            if stored != actual {
                return Err(KeyFileError::FingerprintMismatch { stored, actual });
            }
        }
        let info = KeyInfo {
            kdf: self.kdf.as_ref().map_or(Kdf::None, |k| k.kdf()),
            created: self.created.clone(),
            modified: self.modified.clone(),
            fingerprint: actual,
            hint: self.hint.clone(),
        };
        Ok((key, info))
    }
}

fn checked_password(password: Option<&[u8]>) -> Result<&[u8], KeyFileError> {
    let password = password.ok_or(KeyFileError::PasswordNeeded)?;
    if password.len() < MIN_PASSWORD_LEN {
        return Err(KeyFileError::PasswordTooShort);
    }
    Ok(password)
}

/// Unlocks a key file given as its JSON bytes.
pub fn decrypt_key(
    json: &[u8],
    password: Option<&[u8]>,
) -> Result<(Zeroizing<[u8; 32]>, KeyInfo), KeyFileError> {
    KeyConfig::from_json(json)?.unlock(password)
}

/// Reads and unlocks a key file.
pub fn load_key_file(
    path: &Path,
    password: Option<&[u8]>,
) -> Result<(Zeroizing<[u8; 32]>, KeyInfo), KeyFileError> {
    let json = Zeroizing::new(std::fs::read(path)?);
    decrypt_key(&json, password)
}

/// Makes a new random key and its key config.
pub fn create_key(
    kdf: Kdf,
    password: Option<&[u8]>,
) -> Result<(Zeroizing<[u8; 32]>, KeyConfig), KeyFileError> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut key[..]);
    let config = KeyConfig::new(&key, kdf, password)?;
    Ok((key, config))
}

/// Makes a new random key and writes its key file (mode 0600, never over an existing file).
pub fn create_key_file(
    path: &Path,
    kdf: Kdf,
    password: Option<&[u8]>,
) -> Result<(Zeroizing<[u8; 32]>, KeyConfig), KeyFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let (key, config) = create_key(kdf, password)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(config.to_json().as_bytes())?;
    file.sync_all()?;
    Ok((key, config))
}

/// Current time as RFC 3339 in UTC with a numeric offset (`…+00:00`), a form the official
/// parser accepts.
fn now_rfc3339() -> String {
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::format::time::epoch_to_rfc3339(epoch)
        .map(|text| text.replace('Z', "+00:00"))
        .unwrap_or_else(|| "1970-01-01T00:00:00+00:00".to_string())
}

/// Standard base64, padded on output; padding optional on input.
mod base64_bytes {
    use super::*;
    use serde::{de::Error, Deserializer, Serializer};

    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        LENIENT
            .decode(text.as_bytes())
            .map_err(|e| D::Error::custom(format!("invalid base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"{"kdf":null,"created":"2024-05-01T10:00:00+02:00","modified":"2024-05-01T10:00:00+02:00","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","fingerprint":"0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"}"#;

    #[test]
    fn spec_example_loads_and_reserialises_identically() {
        let (key, info) = decrypt_key(SPEC_EXAMPLE.as_bytes(), None).unwrap();
        assert_eq!(*key, std::array::from_fn::<u8, 32, _>(|i| i as u8));
        assert_eq!(info.kdf, Kdf::None);
        assert_eq!(info.created, "2024-05-01T10:00:00+02:00");
        assert_eq!(info.fingerprint.short(), "0e:ab:d4:46:0b:6e:b9:ca");
        let config = KeyConfig::from_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(config.to_json(), SPEC_EXAMPLE);
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let json = SPEC_EXAMPLE.replace("Hh8=\"", "Hh8\"");
        assert!(decrypt_key(json.as_bytes(), None).is_ok());
    }

    #[test]
    fn scrypt_vector_from_the_spec() {
        let kdf = KeyDerivationConfig::Scrypt {
            n: 65536,
            r: 8,
            p: 1,
            salt: Vec::new(),
        };
        let key = kdf.derive_key(b"test").unwrap();
        assert_eq!(
            CryptConfig::new(*key).fingerprint().to_string(),
            "12:b9:b7:74:bb:3d:89:95:2b:97:cb:c2:82:f0:0c:14:2b:83:ba:7f:96:62:6a:a1:5a:44:9a:63:e8:91:fe:25"
        );
    }

    #[test]
    fn pbkdf2_key_round_trips_and_rejects_wrong_passwords() {
        let key = [9u8; 32];
        let mut config = KeyConfig::new(&key, Kdf::Pbkdf2, Some(b"secret pw")).unwrap();
        let json = config.to_json();
        assert!(json.contains(r#""kdf":{"PBKDF2":{"iter":65535,"salt":""#));
        assert_eq!(config.data.len(), 64);
        let (unlocked, info) = decrypt_key(json.as_bytes(), Some(b"secret pw")).unwrap();
        assert_eq!(*unlocked, key);
        assert_eq!(info.kdf, Kdf::Pbkdf2);
        assert_eq!(Some(info.fingerprint), config.fingerprint);

        let err = config.unlock(Some(b"wrong pw")).unwrap_err();
        assert!(matches!(err, KeyFileError::WrongPassword(None)));
        assert!(err
            .to_string()
            .contains("unable to decrypt key - wrong password?"));
        config.hint = Some("the usual".into());
        assert!(config
            .unlock(Some(b"wrong pw"))
            .unwrap_err()
            .to_string()
            .contains("password hint: the usual"));
        assert!(matches!(
            config.unlock(None),
            Err(KeyFileError::PasswordNeeded)
        ));
        assert!(matches!(
            config.unlock(Some(b"abc")),
            Err(KeyFileError::PasswordTooShort)
        ));
    }

    #[test]
    fn new_unprotected_key_has_official_shape() {
        let config = KeyConfig::new(&[1; 32], Kdf::None, None).unwrap();
        let json = config.to_json();
        assert!(json.starts_with(r#"{"kdf":null,"created":""#));
        assert!(config.created.ends_with("+00:00"), "{}", config.created);
        assert_eq!(config.created.len(), 25);
        assert!(!json.contains("hint"));
        assert!(json.contains(&format!(
            r#""fingerprint":"{}""#,
            CryptConfig::new([1; 32]).fingerprint()
        )));
        let (key, _) = decrypt_key(json.as_bytes(), Some(b"ignored")).unwrap();
        assert_eq!(*key, [1; 32]);
    }

    #[test]
    fn mismatching_fingerprint_is_reported() {
        let json = SPEC_EXAMPLE.replace("0e:ab:d4", "0e:ab:d5");
        assert!(matches!(
            decrypt_key(json.as_bytes(), None),
            Err(KeyFileError::FingerprintMismatch { .. })
        ));
    }

    #[test]
    fn hostile_key_files_are_errors() {
        let cases = [
            // Key of the wrong length.
            r#"{"kdf":null,"created":"x","modified":"x","data":"AAEC"}"#,
            // scrypt wanting 128 GiB.
            r#"{"kdf":{"Scrypt":{"n":1073741824,"r":8,"p":16,"salt":""}},"created":"x","modified":"x","data":"AAEC"}"#,
            r#"{"kdf":{"Scrypt":{"n":1000,"r":8,"p":1,"salt":""}},"created":"x","modified":"x","data":"AAEC"}"#,
            r#"{"kdf":{"Scrypt":{"n":18446744073709551615,"r":18446744073709551615,"p":1,"salt":""}},"created":"x","modified":"x","data":"AAEC"}"#,
            r#"{"kdf":{"PBKDF2":{"iter":18446744073709551615,"salt":""}},"created":"x","modified":"x","data":""}"#,
            r#"{"kdf":{"PBKDF2":{"iter":0,"salt":""}},"created":"x","modified":"x","data":""}"#,
            r#"{"kdf":{"Argon2":{}},"created":"x","modified":"x","data":""}"#,
            r#"{"kdf":null,"created":"x","modified":"x","data":"not base64!"}"#,
            r#"{"kdf":null}"#,
            "",
        ];
        for json in cases {
            let data_ok = json.contains("AAEC") && json.contains("Scrypt");
            let mut data = json.to_string();
            if data_ok {
                // Give it well-sized wrapped data so the KDF parameters are what fails.
                data = json.replace("AAEC", &STANDARD.encode([0u8; 64]));
            }
            let err = decrypt_key(data.as_bytes(), Some(b"password")).unwrap_err();
            assert!(
                !matches!(err, KeyFileError::WrongPassword(_)),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn created_key_file_is_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("key.json");
        let (key, config) = create_key_file(&path, Kdf::None, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, info) = load_key_file(&path, None).unwrap();
        assert_eq!(*loaded, *key);
        assert_eq!(Some(info.fingerprint), config.fingerprint);
        assert!(create_key_file(&path, Kdf::None, None).is_err());
    }
}
