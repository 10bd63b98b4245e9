//! Client-side encryption primitives (spec/crypto.md §3, blob.md §4): the values derived
//! from a 32-byte key, the keyed chunk digest, the HMAC used for manifest signatures, the key
//! fingerprint, and AES-256-GCM with the 16-byte IV PBS uses.

use std::fmt;
use std::str::FromStr;

use aes::Aes256;
use aes_gcm::aead::consts::U16;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{AeadInPlace, AesGcm, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::Digest;

/// AES-256-GCM with a 128-bit IV (run through GHASH, as OpenSSL does for 16-byte IVs);
/// the usual 96-bit-nonce `Aes256Gcm` gives different output.
type Aes256Gcm16 = AesGcm<Aes256, U16>;

/// Length of the IV of every encrypted blob and of a password-protected key.
pub const IV_LEN: usize = 16;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;

/// SHA-256 of "Proxmox Backup Encryption Key Fingerprint": hashed with `id_key` to give the
/// key fingerprint.
pub const FINGERPRINT_INPUT: [u8; 32] = [
    110, 208, 239, 119, 71, 31, 255, 77, 85, 199, 168, 254, 74, 157, 182, 33, 97, 64, 127, 19, 76,
    114, 93, 223, 48, 153, 45, 37, 236, 69, 237, 38,
];

/// PBKDF2 salt and rounds that turn the encryption key into `id_key`.
const ID_KEY_SALT: &[u8] = b"_id_key";
const ID_KEY_ROUNDS: u32 = 10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// GCM tag mismatch: the key is not the one the data was encrypted with, or the data
    /// was altered.
    #[error("decryption failed: wrong key or corrupted data")]
    DecryptFailed,
    #[error("encryption failed: input too large")]
    EncryptFailed,
}

/// AES-256-GCM encryption in place with empty AAD; returns the tag.
pub fn aes_gcm_encrypt(
    key: &[u8; 32],
    iv: &[u8; IV_LEN],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN], CryptoError> {
    let cipher = Aes256Gcm16::new(GenericArray::from_slice(key));
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(iv), b"", buffer)
        .map_err(|_| CryptoError::EncryptFailed)?;
    Ok(tag.into())
}

/// AES-256-GCM decryption with empty AAD. Nothing is returned unless the tag matches.
pub fn aes_gcm_decrypt(
    key: &[u8; 32],
    iv: &[u8; IV_LEN],
    tag: &[u8; TAG_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm16::new(GenericArray::from_slice(key));
    let mut buffer = ciphertext.to_vec();
    match cipher.decrypt_in_place_detached(
        GenericArray::from_slice(iv),
        b"",
        &mut buffer,
        GenericArray::from_slice(tag),
    ) {
        Ok(()) => Ok(buffer),
        Err(_) => {
            // The buffer holds unauthenticated garbage (or key material): wipe it.
            buffer.zeroize();
            Err(CryptoError::DecryptFailed)
        }
    }
}

/// The key-derived values of one encryption key. Key material is wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CryptConfig {
    enc_key: [u8; 32],
    id_key: [u8; 32],
}

impl CryptConfig {
    pub fn new(enc_key: [u8; 32]) -> Self {
        let mut id_key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&enc_key, ID_KEY_SALT, ID_KEY_ROUNDS, &mut id_key);
        CryptConfig { enc_key, id_key }
    }

    /// The secret that namespaces chunk digests and keys the HMAC.
    pub fn id_key(&self) -> &[u8; 32] {
        &self.id_key
    }

    /// Chunk digest of encrypted backups: SHA-256(data ‖ id_key). The secret goes last so
    /// the digest cannot be extended without knowing it.
    pub fn compute_digest(&self, data: &[u8]) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(data);
        hasher.update(self.id_key);
        hasher.finalize().into()
    }

    /// HMAC-SHA256 keyed with `id_key` (manifest signatures).
    pub fn compute_auth_tag(&self, data: &[u8]) -> [u8; 32] {
        self.auth_mac(data).finalize().into_bytes().into()
    }

    /// Checks an HMAC in constant time.
    pub fn verify_auth_tag(&self, data: &[u8], tag: &[u8]) -> bool {
        self.auth_mac(data).verify_slice(tag).is_ok()
    }

    fn auth_mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.id_key).expect("HMAC takes any key size");
        mac.update(data);
        mac
    }

    /// Identifies the key without revealing it (derived through `id_key`).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.compute_digest(&FINGERPRINT_INPUT))
    }

    /// Encrypts `plaintext` with the given IV; returns ciphertext (same length) and tag.
    pub fn encrypt(
        &self,
        iv: &[u8; IV_LEN],
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, [u8; TAG_LEN]), CryptoError> {
        let mut buffer = plaintext.to_vec();
        let tag = aes_gcm_encrypt(&self.enc_key, iv, &mut buffer)?;
        Ok((buffer, tag))
    }

    pub fn decrypt(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        aes_gcm_decrypt(&self.enc_key, iv, tag, ciphertext)
    }
}

impl fmt::Debug for CryptConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CryptConfig")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// Builds a [`CryptConfig`] from a key held in a wiping container.
impl From<&Zeroizing<[u8; 32]>> for CryptConfig {
    fn from(key: &Zeroizing<[u8; 32]>) -> Self {
        CryptConfig::new(**key)
    }
}

/// A key fingerprint: 32 bytes, written as lowercase hex pairs joined by `:`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes, as the official client prints them.
    pub fn short(&self) -> String {
        colon_hex(&self.0[..8])
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&colon_hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid key fingerprint '{0}'")]
pub struct BadFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Accepts upper and lower case, with or without the colons.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let plain: String = text.chars().filter(|&c| c != ':').collect();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&plain, &mut bytes).map_err(|_| BadFingerprint(text.to_string()))?;
        Ok(Fingerprint(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    fn test_iv() -> [u8; 16] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn fingerprint_input_is_derived_from_its_string() {
        let digest: [u8; 32] = Sha256::digest(b"Proxmox Backup Encryption Key Fingerprint").into();
        assert_eq!(digest, FINGERPRINT_INPUT);
    }

    #[test]
    fn spec_vectors_for_key_0_to_31() {
        let config = CryptConfig::new(test_key());
        assert_eq!(
            hex::encode(config.id_key()),
            "7c2c013efd07f3b25717a485263343cd4d292a4b65c200bb3b18ea227abe225c"
        );
        let fingerprint = config.fingerprint();
        assert_eq!(
            fingerprint.to_string(),
            "0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"
        );
        assert_eq!(fingerprint.short(), "0e:ab:d4:46:0b:6e:b9:ca");
        assert_eq!(
            hex::encode(config.compute_digest(b"hello")),
            "e34178a27b992c4a218599bf7f43ed50bc464a03d624d9092306fe2ed74d557e"
        );
    }

    #[test]
    fn gcm_with_16_byte_iv_matches_the_blob_vector() {
        // blob.md §9: tag and ciphertext of "hello" with key 00..1f and IV 00..0f.
        let config = CryptConfig::new(test_key());
        let (ciphertext, tag) = config.encrypt(&test_iv(), b"hello").unwrap();
        assert_eq!(hex::encode(&ciphertext), "0f09cc1a56");
        assert_eq!(hex::encode(tag), "0c84c431837297c0b19e77e5608162ea");
        assert_eq!(
            config.decrypt(&test_iv(), &tag, &ciphertext).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn tampering_and_wrong_keys_fail_to_decrypt() {
        let config = CryptConfig::new(test_key());
        let (ciphertext, tag) = config.encrypt(&test_iv(), b"some secret data").unwrap();
        let mut flipped = ciphertext.clone();
        flipped[3] ^= 0x80;
        assert_eq!(
            config.decrypt(&test_iv(), &tag, &flipped),
            Err(CryptoError::DecryptFailed)
        );
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        assert!(config.decrypt(&test_iv(), &bad_tag, &ciphertext).is_err());
        let other = CryptConfig::new([7; 32]);
        assert!(other.decrypt(&test_iv(), &tag, &ciphertext).is_err());
    }

    #[test]
    fn auth_tag_is_hmac_sha256_with_id_key() {
        let config = CryptConfig::new(test_key());
        let tag = config.compute_auth_tag(b"message");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(config.id_key()).unwrap();
        mac.update(b"message");
        assert_eq!(tag[..], mac.finalize().into_bytes()[..]);
        assert!(config.verify_auth_tag(b"message", &tag));
        assert!(!config.verify_auth_tag(b"messagE", &tag));
        assert!(!config.verify_auth_tag(b"message", &tag[..31]));
    }

    #[test]
    fn fingerprint_parsing_is_lenient_and_strict_about_length() {
        let fp = CryptConfig::new(test_key()).fingerprint();
        let upper = fp.to_string().to_uppercase();
        assert_eq!(upper.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(hex::encode(fp.bytes()).parse::<Fingerprint>().unwrap(), fp);
        assert!("0e:ab".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{fp}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn debug_output_hides_the_key() {
        let text = format!("{:?}", CryptConfig::new(test_key()));
        assert!(text.contains("0e:ab:d4"));
        assert!(!text.contains("enc_key"));
    }
}
