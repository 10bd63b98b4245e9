//! Choosing a snapshot from what the user typed, and naming archives inside it.

use anyhow::{bail, Result};

use super::names::{BackupDir, BackupGroup};
use super::time::{epoch_to_rfc3339, parse_rfc3339};

/// Resolves `TYPE/ID/TIME` against the finished snapshots `candidates`.
///
/// TIME is an RFC 3339 time (`2026-04-13T10:00:00Z`), a unique prefix of one
/// (`2026-04-13`), a Unix epoch, or `latest`; `TYPE/ID` alone is accepted when the group holds
/// exactly one snapshot. Errors list what would have matched.
pub fn resolve_snapshot(spec: &str, candidates: &[BackupDir]) -> Result<BackupDir> {
    let parts: Vec<&str> = spec.splitn(3, '/').collect();
    if parts.len() < 2 {
        bail!("invalid snapshot '{spec}': expected TYPE/ID/TIME, e.g. host/myhost/latest");
    }
    let group = BackupGroup::parse(&format!("{}/{}", parts[0], parts[1]))?;
    let time = parts.get(2).copied().unwrap_or("").trim_end_matches('/');
    let in_group: Vec<&BackupDir> = candidates.iter().filter(|d| d.group == group).collect();
    if in_group.is_empty() {
        bail!(
            "no snapshots in backup group '{group}'{}",
            list_groups(candidates)
        );
    }
    let matching: Vec<&BackupDir> = if time == "latest" {
        in_group
            .iter()
            .max_by_key(|d| d.time)
            .into_iter()
            .copied()
            .collect()
    } else if let Some(epoch) = parse_rfc3339(time) {
        in_group
            .iter()
            .copied()
            .filter(|d| d.time == epoch)
            .collect()
    } else if !time.is_empty() && time.bytes().all(|c| c.is_ascii_digit()) && time.len() > 4 {
        // Longer than a year: an epoch.
        let epoch: i64 = time.parse().unwrap_or(-1);
        in_group
            .iter()
            .copied()
            .filter(|d| d.time == epoch)
            .collect()
    } else {
        in_group
            .iter()
            .copied()
            .filter(|d| epoch_to_rfc3339(d.time).is_some_and(|t| t.starts_with(time)))
            .collect()
    };
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "no snapshot '{spec}'; the group '{group}' has:{}",
            list_dirs(&in_group)
        ),
        many => bail!(
            "snapshot '{spec}' is ambiguous; it matches:{}",
            list_dirs(many)
        ),
    }
}

fn list_dirs(dirs: &[&BackupDir]) -> String {
    dirs.iter().map(|d| format!("\n  {d}")).collect()
}

fn list_groups(candidates: &[BackupDir]) -> String {
    let mut groups: Vec<&BackupGroup> = candidates.iter().map(|d| &d.group).collect();
    groups.sort();
    groups.dedup();
    if groups.is_empty() {
        return " (this namespace has no snapshots)".to_string();
    }
    let mut out = "; groups here:".to_string();
    for group in groups {
        out.push_str(&format!("\n  {group}"));
    }
    out
}

/// Finds the file a user meant by `archive` among a manifest's file names: the name as is, or
/// with `.didx`, `.fidx` or `.blob` added (like the official client).
pub fn resolve_archive_name<'a>(archive: &str, files: &'a [String]) -> Result<&'a str> {
    if let Some(exact) = files.iter().find(|f| f.as_str() == archive) {
        return Ok(exact);
    }
    let matching: Vec<&String> = files
        .iter()
        .filter(|f| {
            [".didx", ".fidx", ".blob"]
                .iter()
                .any(|suffix| f.strip_suffix(suffix) == Some(archive))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.as_str()),
        [] => {
            let stem = archive.strip_suffix(".pxar").unwrap_or(archive);
            let split = [format!("{stem}.mpxar.didx"), format!("{stem}.ppxar.didx")];
            if split.iter().all(|name| files.contains(name)) && archive.ends_with(".pxar") {
                bail!(
                    "'{archive}' is stored as a split pair ({} and {}); name one of them",
                    split[0],
                    split[1]
                );
            }
            bail!(
                "no archive '{archive}' in this snapshot; it has: {}",
                files.join(", ")
            )
        }
        many => bail!(
            "archive name '{archive}' is ambiguous: {}",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Vec<BackupDir> {
        [
            "host/a/2026-04-13T10:00:00Z",
            "host/a/2026-04-13T12:00:00Z",
            "host/a/2026-04-14T10:00:00Z",
            "vm/100/2026-04-13T10:00:00Z",
        ]
        .iter()
        .map(|s| BackupDir::parse(s).unwrap())
        .collect()
    }

    #[test]
    fn resolves_every_form() {
        let all = dirs();
        let pick = |spec: &str| resolve_snapshot(spec, &all).map(|d| d.to_string());
        assert_eq!(
            pick("host/a/latest").unwrap(),
            "host/a/2026-04-14T10:00:00Z"
        );
        assert_eq!(
            pick("host/a/2026-04-14").unwrap(),
            "host/a/2026-04-14T10:00:00Z"
        );
        assert_eq!(
            pick("host/a/2026-04-13T12").unwrap(),
            "host/a/2026-04-13T12:00:00Z"
        );
        assert_eq!(
            pick("host/a/2026-04-13T10:00:00Z").unwrap(),
            "host/a/2026-04-13T10:00:00Z"
        );
        assert_eq!(
            pick("host/a/1776074400").unwrap(),
            "host/a/2026-04-13T10:00:00Z"
        );
        assert_eq!(pick("vm/100").unwrap(), "vm/100/2026-04-13T10:00:00Z");
    }

    #[test]
    fn ambiguous_and_unknown_list_candidates() {
        let all = dirs();
        let err = resolve_snapshot("host/a/2026-04-13", &all)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ambiguous") && err.contains("2026-04-13T12:00:00Z"),
            "{err}"
        );
        let err = resolve_snapshot("host/a/2027", &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2026-04-14T10:00:00Z"), "{err}");
        let err = resolve_snapshot("host/b/latest", &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm/100"), "{err}");
        assert!(resolve_snapshot("nonsense", &all).is_err());
    }

    #[test]
    fn archive_names() {
        let files: Vec<String> = [
            "root.pxar.didx",
            "catalog.pcat1.didx",
            "drive-scsi0.img.fidx",
            "qemu.conf.blob",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            resolve_archive_name("root.pxar", &files).unwrap(),
            "root.pxar.didx"
        );
        assert_eq!(
            resolve_archive_name("root.pxar.didx", &files).unwrap(),
            "root.pxar.didx"
        );
        assert_eq!(
            resolve_archive_name("drive-scsi0.img", &files).unwrap(),
            "drive-scsi0.img.fidx"
        );
        assert_eq!(
            resolve_archive_name("qemu.conf", &files).unwrap(),
            "qemu.conf.blob"
        );
        assert!(resolve_archive_name("root", &files).is_err());
        let split: Vec<String> = ["root.mpxar.didx", "root.ppxar.didx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = resolve_archive_name("root.pxar", &split)
            .unwrap_err()
            .to_string();
        assert!(err.contains("split"), "{err}");
    }
}
