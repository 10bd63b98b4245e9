//! `pbsfs key create` and `pbsfs key show`: encryption key files in the official format.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use zeroize::Zeroizing;

use pbsfs::format::keyfile::{create_key_file, Kdf, KeyConfig};

use super::context::RepoArgs;
use super::keys::{default_key_path, load_crypt_config, new_password, unlock_key_file};

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
    /// Protect a key file with a new password (or none): the key itself, and so what it
    /// encrypted, stays the same. The current password comes from PBS_ENCRYPTION_PASSWORD
    /// (or _FILE, _FD, _CMD) or a prompt; the new one is asked twice on the terminal, or
    /// read from --new-password-file.
    ChangePassphrase {
        /// Default: the official client's default key.
        path: Option<PathBuf>,
        /// How the key is protected from now on.
        #[arg(long, value_enum, default_value_t = KdfArg::Scrypt)]
        kdf: KdfArg,
        /// Read the new password from the first line of this file.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Print a key file for a paper backup, as the official client does: the key file's JSON
    /// between BEGIN/END lines and the same as a QR code. Typing the JSON back into a file
    /// (or scanning the code) restores the key file; it stays protected by its password.
    Paperkey {
        /// Default: the official client's default key.
        path: Option<PathBuf>,
        /// A line printed above the key, e.g. which machine's backups it opens.
        #[arg(long)]
        subject: Option<String>,
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

impl KdfArg {
    fn kdf(self) -> Kdf {
        match self {
            KdfArg::None => Kdf::None,
            KdfArg::Scrypt => Kdf::Scrypt,
            KdfArg::Pbkdf2 => Kdf::Pbkdf2,
        }
    }
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
            let kdf = kdf.kdf();
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
        KeyCommand::ChangePassphrase {
            path,
            kdf,
            new_password_file,
        } => change_passphrase(path.as_deref(), *kdf, new_password_file.as_deref(), repo),
        KeyCommand::Paperkey { path, subject } => paperkey(path.as_deref(), subject.as_deref()),
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

fn key_path(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(path) => Ok(path.to_path_buf()),
        None => default_key_path(),
    }
}

fn change_passphrase(
    path: Option<&Path>,
    kdf: KdfArg,
    new_password_file: Option<&Path>,
    repo: &RepoArgs,
) -> Result<()> {
    let path = key_path(path)?;
    let (key, config) = unlock_key_file(&path)?;
    let kdf = kdf.kdf();
    let password = match (kdf, new_password_file) {
        (Kdf::None, _) => None,
        (_, Some(file)) => Some(password_from_file(file)?),
        (_, None) => Some(new_password()?),
    };
    let new = config
        .rewrapped(&key, kdf, password.as_ref().map(|p| p.as_slice()))
        .context("cannot protect the key with the new password")?;
    replace_key_file(&path, new.to_json().as_bytes())?;
    let fingerprint = new.fingerprint.map(|f| f.to_string()).unwrap_or_default();
    if repo.output_format.is_json() {
        repo.output_format
            .print_json(&json!({"path": path, "fingerprint": fingerprint}));
    } else {
        outln!(
            "changed the password of {} (fingerprint {fingerprint}, unchanged)",
            path.display()
        );
    }
    Ok(())
}

fn paperkey(path: Option<&Path>, subject: Option<&str>) -> Result<()> {
    let path = key_path(path)?;
    let json =
        std::fs::read(&path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let config = KeyConfig::from_json(&json)
        .with_context(|| format!("{} is not a PBS key file", path.display()))?;
    let text = serde_json::to_string_pretty(&config).context("cannot format the key")?;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .context("the key does not fit a QR code")?;
    let picture = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    if let Some(subject) = subject {
        outln!("Subject: {subject}\n");
    }
    outln!("-----BEGIN PROXMOX BACKUP KEY-----");
    outln!("{text}");
    outln!("-----END PROXMOX BACKUP KEY-----");
    outln!("{picture}");
    Ok(())
}

fn password_from_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let data = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let line = data.split(|b| *b == b'\n').next().unwrap_or(&[]);
    Ok(Zeroizing::new(
        line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
    ))
}

/// Replaces a key file whole (mode 0600): a new file beside it, synced, renamed over it.
fn replace_key_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp_{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write {}", path.display()))
}
