//! Loading the encryption key named by `--keyfile` (or the official client's default key),
//! with its password from the environment (PBS_ENCRYPTION_PASSWORD, _FILE, _FD, _CMD, like
//! the official client) or a prompt.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use pbsfs::format::crypto::CryptConfig;
use pbsfs::format::keyfile::KeyConfig;

/// The official client's default key location.
pub fn default_key_path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("proxmox-backup").join("encryption-key.json"))
}

/// Reads and unlocks a key file.
pub fn load_crypt_config(path: &Path) -> Result<Arc<CryptConfig>> {
    let (key, _config) = unlock_key_file(path)?;
    Ok(Arc::new(CryptConfig::from(&key)))
}

/// Reads a key file and unlocks it with its password (environment or prompt): the key and
/// the file's key config.
pub fn unlock_key_file(path: &Path) -> Result<(Zeroizing<[u8; 32]>, KeyConfig)> {
    let json = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    let config = KeyConfig::from_json(&json)
        .with_context(|| format!("{} is not a PBS key file", path.display()))?;
    let password = if config.is_protected() {
        Some(encryption_password()?)
    } else {
        None
    };
    let (key, _info) = config
        .unlock(password.as_ref().map(|p| p.as_slice()))
        .with_context(|| format!("cannot unlock key file {}", path.display()))?;
    Ok((key, config))
}

fn first_line(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    Zeroizing::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// A password for a new key: from the environment, or asked twice on the terminal.
pub fn new_password() -> Result<Zeroizing<Vec<u8>>> {
    if ["", "_FILE", "_FD", "_CMD"]
        .iter()
        .any(|suffix| std::env::var_os(format!("PBS_ENCRYPTION_PASSWORD{suffix}")).is_some())
    {
        return encryption_password();
    }
    let first = prompt("New key password: ")?;
    let second = prompt("Repeat the password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// The password of an existing key: from the environment, or asked on the terminal.
pub fn encryption_password() -> Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(value) = std::env::var_os("PBS_ENCRYPTION_PASSWORD") {
        return Ok(Zeroizing::new(value.as_bytes().to_vec()));
    }
    if let Some(path) = std::env::var_os("PBS_ENCRYPTION_PASSWORD_FILE") {
        let data = Zeroizing::new(std::fs::read(&path).context("PBS_ENCRYPTION_PASSWORD_FILE")?);
        return Ok(first_line(&data));
    }
    if let Some(fd) = std::env::var_os("PBS_ENCRYPTION_PASSWORD_FD") {
        let fd: i32 = fd
            .to_str()
            .and_then(|s| s.parse().ok())
            .context("PBS_ENCRYPTION_PASSWORD_FD is not a number")?;
        // SAFETY: the caller handed this descriptor to us for reading the password.
        let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut data = Zeroizing::new(Vec::new());
        file.read_to_end(&mut data)?;
        return Ok(first_line(&data));
    }
    if let Some(command) = std::env::var_os("PBS_ENCRYPTION_PASSWORD_CMD") {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()?;
        if !out.status.success() {
            bail!("PBS_ENCRYPTION_PASSWORD_CMD failed ({})", out.status);
        }
        return Ok(first_line(&out.stdout));
    }
    prompt("Encryption key password: ")
}

/// Asks on the terminal (/dev/tty) without echo.
fn prompt(text: &str) -> Result<Zeroizing<Vec<u8>>> {
    // rpassword opens /dev/tty itself and restores the terminal's mode afterwards.
    match rpassword::prompt_password(text) {
        Ok(password) => Ok(Zeroizing::new(Zeroizing::new(password).as_bytes().to_vec())),
        // An OS error: /dev/tty cannot be opened (no controlling terminal: a service, cron).
        Err(err) if err.raw_os_error().is_some() => Err(err).context(
            "the key file is password protected: set PBS_ENCRYPTION_PASSWORD (or _FILE, _FD, _CMD)",
        ),
        // Ctrl-C or Ctrl-D at the prompt.
        Err(err) => Err(err).context("no password was entered"),
    }
}
