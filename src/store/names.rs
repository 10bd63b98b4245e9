//! Names of things in a datastore: namespaces, backup groups and snapshots, their validation
//! and their paths relative to the datastore root (spec: datastore.md §4–§6).

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::time::{epoch_to_rfc3339, parse_rfc3339};

/// Deepest namespace PBS allows.
pub const MAX_NAMESPACE_DEPTH: usize = 7;

/// `^[A-Za-z0-9_][A-Za-z0-9._\-]*$`: namespace components, backup ids, archive names.
pub fn is_safe_id(text: &str) -> bool {
    let mut bytes = text.bytes();
    match bytes.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == b'_' => {}
        _ => return false,
    }
    bytes.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackupType {
    Ct,
    Host,
    Vm,
}

impl BackupType {
    pub const ALL: [BackupType; 3] = [BackupType::Ct, BackupType::Host, BackupType::Vm];

    pub fn as_str(&self) -> &'static str {
        match self {
            BackupType::Ct => "ct",
            BackupType::Host => "host",
            BackupType::Vm => "vm",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "ct" => BackupType::Ct,
            "host" => BackupType::Host,
            "vm" => BackupType::Vm,
            _ => bail!("unknown backup type '{text}' (expected vm, ct or host)"),
        })
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespace: 0…7 safe-id components; the empty one is the root namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupNamespace {
    components: Vec<String>,
}

impl BackupNamespace {
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses `a/b/c` (empty or `/` = root).
    pub fn parse(text: &str) -> Result<Self> {
        let components: Vec<String> = text
            .split('/')
            .filter(|part| !part.is_empty())
            .map(str::to_string)
            .collect();
        if components.len() > MAX_NAMESPACE_DEPTH {
            bail!("namespace '{text}' is deeper than {MAX_NAMESPACE_DEPTH} levels");
        }
        for part in &components {
            if !is_safe_id(part) {
                bail!("invalid namespace component '{part}' in '{text}'");
            }
        }
        Ok(BackupNamespace { components })
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    pub fn depth(&self) -> usize {
        self.components.len()
    }

    /// The child namespace `self/name`.
    pub fn child(&self, name: &str) -> Result<Self> {
        if !is_safe_id(name) {
            bail!("invalid namespace component '{name}'");
        }
        if self.components.len() >= MAX_NAMESPACE_DEPTH {
            bail!("namespace would be deeper than {MAX_NAMESPACE_DEPTH} levels");
        }
        let mut components = self.components.clone();
        components.push(name.to_string());
        Ok(BackupNamespace { components })
    }

    /// Path relative to the datastore root: `ns/a/ns/b`.
    pub fn rel_path(&self) -> PathBuf {
        let mut path = PathBuf::new();
        for part in &self.components {
            path.push("ns");
            path.push(part);
        }
        path
    }
}

impl fmt::Display for BackupNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.components.join("/"))
    }
}

/// A backup group: `type/id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackupGroup {
    pub backup_type: BackupType,
    pub backup_id: String,
}

impl BackupGroup {
    pub fn new(backup_type: BackupType, backup_id: &str) -> Result<Self> {
        if !is_safe_id(backup_id) {
            bail!("invalid backup id '{backup_id}'");
        }
        Ok(BackupGroup {
            backup_type,
            backup_id: backup_id.to_string(),
        })
    }

    /// Parses `type/id`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((kind, id)) = text.split_once('/') else {
            bail!("invalid backup group '{text}' (expected TYPE/ID, e.g. host/myhost)");
        };
        Self::new(BackupType::parse(kind)?, id)
    }

    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(self.backup_type.as_str()).join(&self.backup_id)
    }
}

impl fmt::Display for BackupGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.backup_type, self.backup_id)
    }
}

/// PBS display order: type, then numeric ids numerically before others, others byte-wise.
impl Ord for BackupGroup {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let id_key = |id: &str| match id.parse::<u64>() {
            Ok(n) => (0u8, n, String::new()),
            Err(_) => (1u8, 0, id.to_string()),
        };
        self.backup_type
            .cmp(&other.backup_type)
            .then_with(|| id_key(&self.backup_id).cmp(&id_key(&other.backup_id)))
    }
}

impl PartialOrd for BackupGroup {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A snapshot: group plus backup time (epoch seconds).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupDir {
    pub group: BackupGroup,
    pub time: i64,
}

impl BackupDir {
    pub fn new(group: BackupGroup, time: i64) -> Result<Self> {
        if epoch_to_rfc3339(time).is_none() {
            bail!("backup time {time} is outside the years 0…9999");
        }
        Ok(BackupDir { group, time })
    }

    /// Parses the exact form `type/id/YYYY-MM-DDTHH:MM:SSZ`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((group, time)) = text.rsplit_once('/') else {
            bail!("invalid snapshot '{text}' (expected TYPE/ID/TIME)");
        };
        let Some(epoch) = parse_rfc3339(time) else {
            bail!("invalid backup time '{time}' (expected e.g. 2026-04-13T10:00:00Z)");
        };
        Self::new(BackupGroup::parse(group)?, epoch)
    }

    pub fn time_string(&self) -> String {
        // `new` guarantees the time is representable.
        epoch_to_rfc3339(self.time).unwrap_or_else(|| self.time.to_string())
    }

    pub fn rel_path(&self) -> PathBuf {
        self.group.rel_path().join(self.time_string())
    }
}

impl fmt::Display for BackupDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.time_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids() {
        assert!(is_safe_id("fixture-legacy"));
        assert!(is_safe_id("_a.b-c9"));
        for bad in ["", "-a", ".a", "a/b", "a b", "..", "ä"] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }

    #[test]
    fn namespace_paths() {
        let ns = BackupNamespace::parse("a/b").unwrap();
        assert_eq!(ns.rel_path(), PathBuf::from("ns/a/ns/b"));
        assert_eq!(ns.to_string(), "a/b");
        assert!(BackupNamespace::parse("").unwrap().is_root());
        assert!(BackupNamespace::parse("a/../b").is_err());
        assert!(BackupNamespace::parse("1/2/3/4/5/6/7/8").is_err());
    }

    #[test]
    fn snapshot_parse_and_display() {
        let dir = BackupDir::parse("host/elsa/2020-06-26T13:56:05Z").unwrap();
        assert_eq!(dir.time, 1593179765);
        assert_eq!(dir.to_string(), "host/elsa/2020-06-26T13:56:05Z");
        assert_eq!(
            dir.rel_path(),
            PathBuf::from("host/elsa/2020-06-26T13:56:05Z")
        );
        assert!(BackupDir::parse("nas/elsa/2020-06-26T13:56:05Z").is_err());
        assert!(BackupDir::parse("host/../2020-06-26T13:56:05Z").is_err());
    }

    #[test]
    fn group_order_matches_pbs() {
        let mut groups: Vec<BackupGroup> =
            ["vm/100", "host/b", "vm/20", "ct/5", "vm/abc", "host/a"]
                .iter()
                .map(|g| BackupGroup::parse(g).unwrap())
                .collect();
        groups.sort();
        let names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            names,
            ["ct/5", "host/a", "host/b", "vm/20", "vm/100", "vm/abc"]
        );
    }
}
