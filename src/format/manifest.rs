//! The snapshot manifest `index.json.blob` (spec/datastore.md §10): a blob holding JSON
//! that lists every archive of a snapshot with its size and checksum.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use super::blob::{decode_blob, encode_blob, BlobError, MAX_BLOB_SIZE};
use super::crypto::{CryptConfig, Fingerprint};
use super::Digest;

/// File name of the manifest inside a snapshot directory.
pub const MANIFEST_BLOB_NAME: &str = "index.json.blob";
/// File name of the client's log inside a snapshot directory: a blob added after the backup
/// finished, not listed in the manifest.
pub const CLIENT_LOG_BLOB_NAME: &str = "client.log.blob";

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest blob")]
    Blob(#[from] BlobError),
    #[error("manifest JSON")]
    Json(#[from] serde_json::Error),
    #[error("manifest has no entry for '{0}'")]
    NoSuchFile(String),
    #[error("wrong size for '{filename}': manifest says {expected}, found {actual}")]
    WrongSize {
        filename: String,
        expected: u64,
        actual: u64,
    },
    #[error("wrong checksum for '{filename}': manifest says {}, found {}", hex::encode(.expected), hex::encode(.actual))]
    WrongChecksum {
        filename: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("null value in the signed part of the manifest")]
    NullInSignedPart,
    #[error("missing key - manifest was created with key {0}")]
    MissingKey(String),
    #[error("wrong key - manifest's key {manifest} does not match provided key {provided}")]
    WrongKey {
        manifest: String,
        provided: Fingerprint,
    },
    #[error("invalid key-fingerprint '{0}' in manifest")]
    BadFingerprint(String),
    #[error("wrong signature in manifest")]
    WrongSignature,
}

/// How the archives of a backup run were protected (crypto.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CryptMode {
    #[default]
    None,
    Encrypt,
    SignOnly,
}

/// One archive of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileInfo {
    pub filename: String,
    /// Absent in very old manifests, which predate encryption.
    #[serde(default)]
    pub crypt_mode: CryptMode,
    /// Logical size for indexes, raw file length for blobs.
    pub size: u64,
    #[serde(with = "hex_digest")]
    pub csum: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub backup_type: String,
    pub backup_id: String,
    pub backup_time: i64,
    pub files: Vec<FileInfo>,
    /// Not covered by the signature: upload stats, verify state, notes, key fingerprint.
    #[serde(default = "empty_object")]
    pub unprotected: Value,
    /// Hex HMAC-SHA256; PBS writes `null` when unsigned.
    #[serde(default)]
    pub signature: Option<String>,
    /// Top-level keys this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Manifest {
    pub fn new(backup_type: &str, backup_id: &str, backup_time: i64) -> Self {
        Self {
            backup_type: backup_type.to_string(),
            backup_id: backup_id.to_string(),
            backup_time,
            files: Vec::new(),
            unprotected: empty_object(),
            signature: None,
            extra: Map::new(),
        }
    }

    pub fn from_json(json: &[u8]) -> Result<Self, ManifestError> {
        Ok(serde_json::from_slice(json)?)
    }

    /// Pretty JSON (2-space indent, keys sorted, no trailing newline), as PBS writes it.
    pub fn to_json(&self) -> Result<String, ManifestError> {
        let value = sort_keys(serde_json::to_value(self)?);
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// Decodes `index.json.blob` (either plain blob kind; never encrypted).
    pub fn from_blob(raw: &[u8]) -> Result<Self, ManifestError> {
        Self::from_json(&decode_blob(raw, MAX_BLOB_SIZE)?)
    }

    /// Encodes `index.json.blob` the way the official tools do (compressed if smaller).
    pub fn to_blob(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(encode_blob(self.to_json()?.as_bytes(), true)?)
    }

    pub fn file(&self, name: &str) -> Option<&FileInfo> {
        self.files.iter().find(|f| f.filename == name)
    }

    /// Checks an archive's recomputed size and checksum against its entry.
    pub fn verify_file(&self, name: &str, size: u64, csum: &Digest) -> Result<(), ManifestError> {
        let info = self
            .file(name)
            .ok_or_else(|| ManifestError::NoSuchFile(name.to_string()))?;
        if info.size != size {
            return Err(ManifestError::WrongSize {
                filename: name.to_string(),
                expected: info.size,
                actual: size,
            });
        }
        if info.csum != *csum {
            return Err(ManifestError::WrongChecksum {
                filename: name.to_string(),
                expected: info.csum,
                actual: *csum,
            });
        }
        Ok(())
    }

    /// `unprotected["key-fingerprint"]`: present when a key signed (and maybe encrypted)
    /// the backup.
    pub fn key_fingerprint(&self) -> Option<&str> {
        self.unprotected.get("key-fingerprint")?.as_str()
    }

    /// Signs the manifest with `crypt` (HMAC over [`Self::signed_bytes`]) and records the
    /// key fingerprint in `unprotected`, as the official client does in `encrypt` and
    /// `sign-only` mode.
    pub fn sign(&mut self, crypt: &CryptConfig) -> Result<(), ManifestError> {
        let tag = crypt.compute_auth_tag(&self.signed_bytes()?);
        self.signature = Some(hex::encode(tag));
        if !self.unprotected.is_object() {
            self.unprotected = empty_object();
        }
        self.unprotected["key-fingerprint"] = Value::String(crypt.fingerprint().to_string());
        Ok(())
    }

    /// Checks that the manifest fits the key: a manifest made with a key needs that key
    /// ("missing key" / "wrong key"); an unsigned manifest is fine with or without one.
    /// With a key, a present signature must match ("wrong signature in manifest").
    pub fn verify_signature(&self, crypt: Option<&CryptConfig>) -> Result<(), ManifestError> {
        let stored = self.stored_fingerprint()?;
        let Some(crypt) = crypt else {
            return match stored {
                Some(fingerprint) => Err(ManifestError::MissingKey(fingerprint.to_string())),
                None => Ok(()),
            };
        };
        if let Some(stored) = stored {
            let provided = crypt.fingerprint();
            if stored != provided {
                return Err(ManifestError::WrongKey {
                    manifest: stored.to_string(),
                    provided,
                });
            }
        }
        if let Some(signature) = &self.signature {
            let tag = hex::decode(signature).map_err(|_| ManifestError::WrongSignature)?;
            if !crypt.verify_auth_tag(&self.signed_bytes()?, &tag) {
                return Err(ManifestError::WrongSignature);
            }
        }
        Ok(())
    }

    /// `unprotected["key-fingerprint"]` parsed; an unparsable value is an error rather
    /// than "unsigned" so it cannot be used to skip the key check.
    pub fn stored_fingerprint(&self) -> Result<Option<Fingerprint>, ManifestError> {
        match self.unprotected.get("key-fingerprint") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => text
                .parse()
                .map(Some)
                .map_err(|_| ManifestError::BadFingerprint(text.clone())),
            Some(other) => Err(ManifestError::BadFingerprint(other.to_string())),
        }
    }

    /// The bytes the signature is computed over: canonical JSON of the manifest without
    /// `unprotected` and `signature` (datastore.md §10.5).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let mut value = serde_json::to_value(self)?;
        if let Value::Object(map) = &mut value {
            map.remove("unprotected");
            map.remove("signature");
        }
        let mut out = Vec::new();
        write_canonical(&value, &mut out)?;
        Ok(out)
    }
}

/// Rebuilds every object with its keys in byte order, whatever map type serde_json uses.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Compact JSON with sorted keys; strings escaped as serde_json does. `null` is refused
/// because the official signer refuses it.
fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), ManifestError> {
    match value {
        Value::Null => return Err(ManifestError::NullInSignedPart),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, value)?
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A digest as 64 lower-case hex characters (upper case accepted on input).
mod hex_digest {
    use crate::format::{digest_from_hex, digest_to_hex, Digest};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&digest_to_hex(digest))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        digest_from_hex(&text).ok_or_else(|| D::Error::custom(format!("invalid checksum '{text}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::{blob_kind, BlobKind};

    fn signature_vector_manifest() -> Manifest {
        let mut m = Manifest::new("host", "elsa", 1593179765);
        m.files.push(FileInfo {
            filename: "test1.img.fidx".into(),
            crypt_mode: CryptMode::Encrypt,
            size: 200,
            csum: [1; 32],
        });
        m.files.push(FileInfo {
            filename: "abc.blob".into(),
            crypt_mode: CryptMode::None,
            size: 200,
            csum: [2; 32],
        });
        m
    }

    #[test]
    fn signed_bytes_match_the_pbs_vector() {
        let mut m = signature_vector_manifest();
        m.unprotected = serde_json::json!({"note": "not signed"});
        m.signature = Some("ab".repeat(32));
        let expected = concat!(
            r#"{"backup-id":"elsa","backup-time":1593179765,"backup-type":"host","files":["#,
            r#"{"crypt-mode":"encrypt","csum":"0101010101010101010101010101010101010101010101010101010101010101","filename":"test1.img.fidx","size":200},"#,
            r#"{"crypt-mode":"none","csum":"0202020202020202020202020202020202020202020202020202020202020202","filename":"abc.blob","size":200}]}"#
        );
        assert_eq!(
            String::from_utf8(m.signed_bytes().unwrap()).unwrap(),
            expected
        );
    }

    #[test]
    fn null_in_signed_part_is_refused() {
        let mut m = signature_vector_manifest();
        m.extra.insert("future".into(), Value::Null);
        assert!(matches!(
            m.signed_bytes(),
            Err(ManifestError::NullInSignedPart)
        ));
    }

    #[test]
    fn json_uses_pbs_names_and_layout() {
        let m = signature_vector_manifest();
        let json = m.to_json().unwrap();
        assert!(json.starts_with("{\n  \"backup-id\": \"elsa\",\n  \"backup-time\": 1593179765,"));
        assert!(json.contains("\"crypt-mode\": \"encrypt\""));
        assert!(json.contains("\"signature\": null"));
        assert!(json.ends_with("\"unprotected\": {}\n}"));
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), m);
    }

    #[test]
    fn blob_round_trip() {
        let m = signature_vector_manifest();
        let raw = m.to_blob().unwrap();
        assert_eq!(blob_kind(&raw).unwrap(), BlobKind::Compressed);
        assert_eq!(Manifest::from_blob(&raw).unwrap(), m);
    }

    #[test]
    fn old_and_extended_manifests_are_read() {
        let json = br#"{"backup-type":"vm","backup-id":"100","backup-time":5,
            "files":[{"filename":"a.blob","size":3,"csum":"AB00000000000000000000000000000000000000000000000000000000000000","extra":1}],
            "future-key":{"x":[1,2]}}"#;
        let m = Manifest::from_json(json).unwrap();
        assert_eq!(m.files[0].crypt_mode, CryptMode::None);
        assert_eq!(m.files[0].csum[0], 0xab);
        assert_eq!(m.unprotected, empty_object());
        assert_eq!(m.signature, None);
        assert_eq!(m.extra["future-key"], serde_json::json!({"x": [1, 2]}));
        let again = Manifest::from_json(m.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn bad_manifests_are_errors() {
        for json in [
            &br#"{"backup-type":"vm"}"#[..],
            br#"{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","size":1,"csum":"zz"}]}"#,
            br#"{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","size":1,"csum":"00","crypt-mode":"none"}]}"#,
            br#"{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","size":1,"csum":"","crypt-mode":"rot13"}]}"#,
            b"not json",
        ] {
            assert!(matches!(
                Manifest::from_json(json),
                Err(ManifestError::Json(_))
            ));
        }
        assert!(matches!(
            Manifest::from_blob(b"short"),
            Err(ManifestError::Blob(_))
        ));
    }

    #[test]
    fn verify_file_names_the_file() {
        let m = signature_vector_manifest();
        assert!(m.verify_file("abc.blob", 200, &[2; 32]).is_ok());
        let err = m.verify_file("abc.blob", 201, &[2; 32]).unwrap_err();
        assert!(matches!(err, ManifestError::WrongSize { .. }));
        assert!(err.to_string().contains("abc.blob"));
        let err = m.verify_file("abc.blob", 200, &[3; 32]).unwrap_err();
        assert!(matches!(err, ManifestError::WrongChecksum { .. }));
        assert!(err.to_string().contains("abc.blob"));
        assert!(matches!(
            m.verify_file("nope.didx", 1, &[0; 32]),
            Err(ManifestError::NoSuchFile(name)) if name == "nope.didx"
        ));
    }

    #[test]
    fn crypt_mode_names() {
        for (mode, name) in [
            (CryptMode::None, "\"none\""),
            (CryptMode::Encrypt, "\"encrypt\""),
            (CryptMode::SignOnly, "\"sign-only\""),
        ] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), name);
            assert_eq!(serde_json::from_str::<CryptMode>(name).unwrap(), mode);
        }
    }

    fn scrypt_test_key() -> CryptConfig {
        let kdf = crate::format::keyfile::KeyDerivationConfig::Scrypt {
            n: 65536,
            r: 8,
            p: 1,
            salt: Vec::new(),
        };
        CryptConfig::new(*kdf.derive_key(b"test").unwrap())
    }

    #[test]
    fn signature_matches_the_pbs_vector_and_verifies() {
        let crypt = scrypt_test_key();
        let mut m = signature_vector_manifest();
        m.unprotected = serde_json::json!({"note": "This is not protected by the signature."});
        m.sign(&crypt).unwrap();
        assert_eq!(
            m.signature.as_deref(),
            Some("d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9")
        );
        assert_eq!(
            m.key_fingerprint(),
            Some("12:b9:b7:74:bb:3d:89:95:2b:97:cb:c2:82:f0:0c:14:2b:83:ba:7f:96:62:6a:a1:5a:44:9a:63:e8:91:fe:25")
        );
        assert_eq!(
            m.unprotected["note"],
            "This is not protected by the signature."
        );
        m.verify_signature(Some(&crypt)).unwrap();

        // Survives a blob round trip; unprotected changes do not matter.
        let mut again = Manifest::from_blob(&m.to_blob().unwrap()).unwrap();
        again.unprotected["verify_state"] = serde_json::json!({"state": "ok"});
        again.verify_signature(Some(&crypt)).unwrap();

        // Any change to the signed part does.
        again.files[1].size += 1;
        let err = again.verify_signature(Some(&crypt)).unwrap_err();
        assert_eq!(err.to_string(), "wrong signature in manifest");
    }

    #[test]
    fn wrong_and_missing_keys_are_named() {
        let crypt = CryptConfig::new([3; 32]);
        let mut m = signature_vector_manifest();
        m.sign(&crypt).unwrap();
        let other = CryptConfig::new([4; 32]);
        let err = m.verify_signature(Some(&other)).unwrap_err();
        assert!(matches!(err, ManifestError::WrongKey { .. }));
        assert!(err.to_string().starts_with("wrong key"));
        let err = m.verify_signature(None).unwrap_err();
        assert!(err.to_string().starts_with("missing key"));
        assert!(err.to_string().contains(&crypt.fingerprint().to_string()));

        // Without the fingerprint, a foreign key fails on the signature.
        m.unprotected = empty_object();
        assert!(matches!(
            m.verify_signature(Some(&other)),
            Err(ManifestError::WrongSignature)
        ));
        m.signature = Some("not hex".into());
        assert!(matches!(
            m.verify_signature(Some(&crypt)),
            Err(ManifestError::WrongSignature)
        ));
        m.unprotected["key-fingerprint"] = serde_json::json!(17);
        assert!(matches!(
            m.verify_signature(Some(&crypt)),
            Err(ManifestError::BadFingerprint(_))
        ));
    }

    #[test]
    fn unsigned_manifest_is_accepted_with_or_without_key() {
        let m = signature_vector_manifest();
        m.verify_signature(None).unwrap();
        m.verify_signature(Some(&CryptConfig::new([5; 32])))
            .unwrap();
    }
}
