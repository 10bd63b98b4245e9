//! How to reach and log in to a server: address, auth-id, secret and certificate pin, taken
//! from the repository string and the environment the official client reads (protocol.md §2.2).

use std::fmt;
use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::repository::RemoteRepository;

/// A password or API token secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A SHA-256 certificate fingerprint, shown as `aa:bb:…` (95 characters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Accepts upper or lower case, with or without the colons.
    pub fn parse(text: &str) -> Result<Self> {
        let hex_digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let mut bytes = [0u8; 32];
        if hex_digits.len() != 64 || hex::decode_to_slice(&hex_digits, &mut bytes).is_err() {
            bail!(
                "invalid certificate fingerprint '{}': expected 32 hex byte pairs like aa:bb:…",
                text.trim()
            );
        }
        Ok(Fingerprint(bytes))
    }

    /// SHA-256 over the DER bytes of a certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        use sha2::Digest as _;
        Fingerprint(sha2::Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The official client renews its ticket every 15 minutes (tickets live 2 hours).
pub const TICKET_RENEW_AFTER: Duration = Duration::from_secs(15 * 60);

/// Everything needed to open connections to one server as one user.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// As written in the repository; an IPv6 address keeps its brackets.
    pub host: String,
    pub port: u16,
    /// `user@realm` (ticket login with a password) or `user@realm!token` (API token).
    pub auth_id: String,
    pub secret: Secret,
    /// If set, the server certificate must have exactly this fingerprint (system roots are
    /// not consulted). If not set, the certificate must chain to a system root.
    pub fingerprint: Option<Fingerprint>,
    pub connect_timeout: Duration,
    /// For plain API calls and each request on a session (a chunk, an upload).
    pub request_timeout: Duration,
    /// A login ticket older than this is renewed (with itself) before the next request.
    pub ticket_renew_after: Duration,
}

impl ConnectOptions {
    pub fn new(host: &str, port: u16, auth_id: &str, secret: Secret) -> Self {
        ConnectOptions {
            host: host.to_string(),
            port,
            auth_id: auth_id.to_string(),
            secret,
            fingerprint: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            ticket_renew_after: TICKET_RENEW_AFTER,
        }
    }

    /// Options for `repo` with the secret from `PBS_PASSWORD` (or `_FD`, `_FILE`, `_CMD`) and
    /// the pin from `fingerprint` (the `--fingerprint` option) or `PBS_FINGERPRINT`.
    pub fn from_env(repo: &RemoteRepository, fingerprint: Option<&str>) -> Result<Self> {
        Self::from_env_vars(repo, fingerprint, "PBS_PASSWORD", "PBS_FINGERPRINT")
    }

    /// The same with other variables: a sync whose both sides are servers reads the
    /// destination's secret from `PBS_TO_PASSWORD` (or its `_FD`, `_FILE`, `_CMD`) and its
    /// pin from `PBS_TO_FINGERPRINT`.
    pub fn from_env_vars(
        repo: &RemoteRepository,
        fingerprint: Option<&str>,
        password_var: &str,
        fingerprint_var: &str,
    ) -> Result<Self> {
        let secret = read_env_secret(password_var)?.with_context(|| {
            format!(
                "no password or token secret for {}: set {password_var} (or \
                 {password_var}_FILE, {password_var}_FD, {password_var}_CMD)",
                repo.auth_id
            )
        })?;
        let fingerprint = match fingerprint {
            Some(text) => Some(text.to_string()),
            None => read_env_secret(fingerprint_var)?,
        };
        let mut options = ConnectOptions::new(&repo.host, repo.port, &repo.auth_id, Secret(secret));
        options.fingerprint = fingerprint.as_deref().map(Fingerprint::parse).transpose()?;
        Ok(options)
    }

    /// The auth-id names an API token (`…!name`).
    pub fn is_token(&self) -> bool {
        self.auth_id.contains('!')
    }

    /// `host:port` as shown in messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host without IPv6 brackets (for DNS and the TLS server name).
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

/// `NAME`, else `NAME_FD`, `NAME_FILE`, `NAME_CMD` (first line only for the last three).
pub fn read_env_secret(name: &str) -> Result<Option<String>> {
    if let Ok(value) = std::env::var(name) {
        return Ok(Some(value));
    }
    if let Ok(fd) = std::env::var(format!("{name}_FD")) {
        let fd: i32 = fd
            .trim()
            .parse()
            .with_context(|| format!("{name}_FD is not a file descriptor number"))?;
        if fd < 0 {
            bail!("{name}_FD is not a file descriptor number");
        }
        // The descriptor was handed to us for this purpose; reading consumes and closes it.
        let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("cannot read {name}_FD ({fd})"))?;
        return Ok(Some(first_line(&text)));
    }
    if let Ok(path) = std::env::var(format!("{name}_FILE")) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {name}_FILE ({path})"))?;
        return Ok(Some(first_line(&text)));
    }
    if let Ok(command) = std::env::var(format!("{name}_CMD")) {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {name}_CMD"))?;
        if !output.status.success() {
            bail!("{name}_CMD failed ({})", output.status);
        }
        return Ok(Some(first_line(&String::from_utf8_lossy(&output.stdout))));
    }
    Ok(None)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_any_spelling_and_print_with_colons() {
        let lower = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99";
        let fp = Fingerprint::parse(&lower.to_uppercase()).unwrap();
        assert_eq!(fp.to_string(), lower);
        assert_eq!(Fingerprint::parse(&lower.replace(':', "")).unwrap(), fp);
        assert!(Fingerprint::parse("aa:bb").is_err());
        assert!(Fingerprint::parse(&lower.replace("aa", "zz")).is_err());
    }

    #[test]
    fn secrets_come_from_file_and_command_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::env::set_var("PBSFS_TEST_SECRET_A_FILE", &path);
        assert_eq!(
            read_env_secret("PBSFS_TEST_SECRET_A").unwrap().as_deref(),
            Some("s3cret")
        );
        std::env::set_var("PBSFS_TEST_SECRET_B_CMD", "printf 'from-cmd\\nx'");
        assert_eq!(
            read_env_secret("PBSFS_TEST_SECRET_B").unwrap().as_deref(),
            Some("from-cmd")
        );
        assert_eq!(read_env_secret("PBSFS_TEST_SECRET_NONE").unwrap(), None);
    }

    #[test]
    fn secrets_are_not_printed() {
        let options = ConnectOptions::new("h", 8007, "a@pam!t", Secret::new("hunter2"));
        assert!(!format!("{options:?}").contains("hunter2"));
        assert!(options.is_token());
    }
}
