//! Which datastore a command talks to: a local directory in PBS layout, or a PBS server named
//! by a repository string `[[auth-id@]host:][port:]datastore` (spec: protocol.md §2).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::store::names::is_safe_id;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRepository {
    pub auth_id: String,
    pub host: String,
    pub port: u16,
    pub datastore: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repository {
    /// A datastore directory on this machine.
    Local(PathBuf),
    Remote(RemoteRepository),
}

impl Repository {
    /// Parses what `--repository` / `PBS_REPOSITORY` holds. Local paths start with `/`, `./`,
    /// `../` or `~` (so they can never be mistaken for a server datastore name).
    pub fn parse(text: &str) -> Result<Self> {
        if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") {
            return Ok(Repository::Local(PathBuf::from(text)));
        }
        if text == "." || text == ".." {
            return Ok(Repository::Local(PathBuf::from(text)));
        }
        if let Some(rest) = text.strip_prefix('~') {
            if rest.is_empty() || rest.starts_with('/') {
                let home = home_dir()?;
                return Ok(Repository::Local(home.join(rest.trim_start_matches('/'))));
            }
            bail!("'{text}': only '~' or '~/...' is supported for a local path");
        }
        parse_remote(text).map(Repository::Remote)
    }

    /// The embedded default: `$XDG_DATA_HOME/pbsfs/datastore`, else
    /// `~/.local/share/pbsfs/datastore`.
    pub fn default_local() -> Result<PathBuf> {
        let base = match std::env::var_os("XDG_DATA_HOME") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            _ => home_dir()?.join(".local/share"),
        };
        Ok(base.join("pbsfs").join("datastore"))
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repository::Local(path) => write!(f, "{}", path.display()),
            Repository::Remote(r) => {
                write!(f, "{}@{}:{}:{}", r.auth_id, r.host, r.port, r.datastore)
            }
        }
    }
}

fn home_dir() -> Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("HOME is not set; pass --repository PATH"),
    }
}

fn parse_remote(text: &str) -> Result<RemoteRepository> {
    let invalid = || {
        anyhow::anyhow!(
            "invalid repository '{text}': expected a local path (starting with /, ./, ../ or ~) \
             or [[USER@REALM[!TOKEN]@]HOST:][PORT:]DATASTORE"
        )
    };
    // The auth-id contains one or two '@'; the host part follows the last '@'.
    let (auth_id, rest) = match text.rfind('@') {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => ("root@pam", text),
    };
    if !is_auth_id(auth_id) {
        return Err(invalid());
    }
    let (host, rest) = if let Some(stripped) = rest.strip_prefix('[') {
        let close = stripped.find(']').ok_or_else(invalid)?;
        let host = &rest[..close + 2];
        let after = &stripped[close + 1..];
        let after = after.strip_prefix(':').ok_or_else(invalid)?;
        (host.to_string(), after)
    } else {
        match rest.split_once(':') {
            Some((host, after)) => (host.to_string(), after),
            None => ("localhost".to_string(), rest),
        }
    };
    let (port, datastore) = match rest.split_once(':') {
        Some((port, store)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|c| c.is_ascii_digit()) {
                return Err(invalid());
            }
            (port.parse::<u16>().map_err(|_| invalid())?, store)
        }
        None => (8007, rest),
    };
    if host.is_empty() || !is_safe_id(datastore) {
        return Err(invalid());
    }
    Ok(RemoteRepository {
        auth_id: auth_id.to_string(),
        host,
        port,
        datastore: datastore.to_string(),
    })
}

/// `user@realm` or `user@realm!token`.
fn is_auth_id(text: &str) -> bool {
    let (user_realm, token) = match text.split_once('!') {
        Some((user_realm, token)) => (user_realm, Some(token)),
        None => (text, None),
    };
    let Some((user, realm)) = user_realm.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && !user.contains(['@', ':', '/'])
        && is_safe_id(realm)
        && token.is_none_or(is_safe_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(text: &str) -> RemoteRepository {
        match Repository::parse(text).unwrap() {
            Repository::Remote(r) => r,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn spec_examples() {
        // (repository string, auth id, host, port, datastore)
        let cases = [
            ("store1", "root@pam", "localhost", 8007, "store1"),
            (
                "pbs.example.com:store1",
                "root@pam",
                "pbs.example.com",
                8007,
                "store1",
            ),
            (
                "admin@pbs@backuphost:8008:tank",
                "admin@pbs",
                "backuphost",
                8008,
                "tank",
            ),
            (
                "user@pbs!token@myhost:store",
                "user@pbs!token",
                "myhost",
                8007,
                "store",
            ),
            (
                "192.168.1.1:1234:store",
                "root@pam",
                "192.168.1.1",
                1234,
                "store",
            ),
            (
                "[ff80::1]:9007:store",
                "root@pam",
                "[ff80::1]",
                9007,
                "store",
            ),
        ];
        for (text, auth_id, host, port, datastore) in cases {
            let r = remote(text);
            assert_eq!(
                (
                    r.auth_id.as_str(),
                    r.host.as_str(),
                    r.port,
                    r.datastore.as_str()
                ),
                (auth_id, host, port, datastore),
                "{text}"
            );
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            Repository::parse("/srv/ds").unwrap(),
            Repository::Local("/srv/ds".into())
        );
        assert_eq!(
            Repository::parse("./ds").unwrap(),
            Repository::Local("./ds".into())
        );
        assert_eq!(
            Repository::parse("../ds").unwrap(),
            Repository::Local("../ds".into())
        );
        std::env::set_var("HOME", "/home/someone");
        assert_eq!(
            Repository::parse("~/ds").unwrap(),
            Repository::Local("/home/someone/ds".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a b",
            "host:99999999:store",
            "root@pam@:store",
            "x@y@host:bad/name",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
    }
}
