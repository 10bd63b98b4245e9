//! `pbsfs key create` and `pbsfs key show`: encryption key files in the official format.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use pbsfs::format::keyfile::{create_key_file, Kdf, KeyConfig};

use super::context::RepoArgs;
use super::keys::{default_key_path, load_crypt_config, new_password};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a new encryption key file (mode 0600). With a KDF, the key is protected by a
    /// password read from PBS_ENCRYPTION_PASSWORD (or _FILE, _FD, _CMD) or asked twice.
    Create {
        /// Where to write it; default: the official client's default key,
        /// ~/.config/proxmox-backup/encryption-key.json.
        path: Option<PathBuf>,
        /// How the key is protected.
        #[arg(long, value_enum, default_value_t = KdfArg::Scrypt)]
        kdf: KdfArg,
    },
    /// Show a key file's KDF, dates and fingerprint (no password needed when the file records
    /// its fingerprint).
    Show {
        /// Default: the official client's default key.
        path: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KdfArg {
    /// No password: anyone who can read the file has the key.
    None,
    /// scrypt (n 65536, r 8, p 1), like the official client.
    Scrypt,
    /// PBKDF2-HMAC-SHA256 (65535 iterations).
    Pbkdf2,
}

pub fn run(args: &KeyArgs, repo: &RepoArgs) -> Result<()> {
    match &args.command {
        KeyCommand::Create { path, kdf } => {
            let path = match path {
                Some(path) => path.clone(),
                None => default_key_path()?,
            };
            if path.exists() {
                bail!("{} already exists; not overwriting a key", path.display());
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let kdf = match kdf {
                KdfArg::None => Kdf::None,
                KdfArg::Scrypt => Kdf::Scrypt,
                KdfArg::Pbkdf2 => Kdf::Pbkdf2,
            };
            let password = match kdf {
                Kdf::None => None,
                _ => Some(new_password()?),
            };
            let (_key, config) =
                create_key_file(&path, kdf, password.as_ref().map(|p| p.as_slice()))
                    .with_context(|| format!("cannot create {}", path.display()))?;
            let fingerprint = config
                .fingerprint
                .map(|f| f.to_string())
                .unwrap_or_default();
            if repo.output_format.is_json() {
                repo.output_format
                    .print_json(&json!({"path": path, "fingerprint": fingerprint}));
            } else {
                outln!("created {} (fingerprint {fingerprint})", path.display());
                outln!("Keep a copy somewhere safe: without it, encrypted backups cannot be read.");
            }
            Ok(())
        }
        KeyCommand::Show { path } => {
            let path = match path {
                Some(path) => path.clone(),
                None => default_key_path()?,
            };
            let json_text = std::fs::read(&path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            let config = KeyConfig::from_json(&json_text)
                .with_context(|| format!("{} is not a PBS key file", path.display()))?;
            let fingerprint = match config.fingerprint {
                Some(fingerprint) => fingerprint.to_string(),
                None => load_crypt_config(&path)?.fingerprint().to_string(),
            };
            let kdf = match config.kdf.as_ref().map(|k| k.kdf()) {
                None | Some(Kdf::None) => "none",
                Some(Kdf::Scrypt) => "scrypt",
                Some(Kdf::Pbkdf2) => "pbkdf2",
            };
            if repo.output_format.is_json() {
                repo.output_format.print_json(&json!({
                    "path": path, "kdf": kdf, "created": config.created,
                    "modified": config.modified, "fingerprint": fingerprint,
                }));
            } else {
                outln!("path:        {}", path.display());
                outln!("kdf:         {kdf}");
                outln!("created:     {}", config.created);
                outln!("modified:    {}", config.modified);
                outln!("fingerprint: {fingerprint}");
            }
            Ok(())
        }
    }
}
