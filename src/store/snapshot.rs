//! Choosing a snapshot from what the user typed, and naming archives inside it.

use anyhow::{bail, Result};

use super::local::SnapshotEntry;
use super::names::{BackupDir, BackupGroup};
use super::time::{epoch_to_rfc3339, parse_rfc3339};

/// Resolves `TYPE/ID/TIME` against the snapshots `candidates` (a listing: unfinished ones
/// are passed by).
///
/// TIME is an RFC 3339 time (`2026-04-13T10:00:00Z`), a unique prefix of one
/// (`2026-04-13`), a Unix epoch, or `latest` (the newest readable snapshot); `TYPE/ID` alone
/// is accepted when the group holds exactly one readable snapshot. A damaged snapshot is
/// chosen by none of them, as if it were not there, except that naming only damaged ones
/// is an error that says why they cannot be read. Errors list what would have matched.
pub fn resolve_snapshot(spec: &str, candidates: &[SnapshotEntry]) -> Result<BackupDir> {
    let parts: Vec<&str> = spec.splitn(3, '/').collect();
    if parts.len() < 2 {
        bail!("invalid snapshot '{spec}': expected TYPE/ID/TIME, e.g. host/myhost/latest");
    }
    let group = BackupGroup::parse(&format!("{}/{}", parts[0], parts[1]))?;
    let time = parts.get(2).copied().unwrap_or("").trim_end_matches('/');
    let finished: Vec<&SnapshotEntry> = candidates.iter().filter(|s| s.finished).collect();
    let in_group: Vec<&SnapshotEntry> = finished
        .iter()
        .copied()
        .filter(|s| s.dir.group == group)
        .collect();
    if in_group.is_empty() {
        bail!(
            "no snapshots in backup group '{group}'{}",
            list_groups(&finished)
        );
    }
    let matching: Vec<&SnapshotEntry> = if time == "latest" {
        in_group.clone()
    } else if let Some(epoch) = parse_rfc3339(time) {
        in_group
            .iter()
            .copied()
            .filter(|s| s.dir.time == epoch)
            .collect()
    } else if !time.is_empty() && time.bytes().all(|c| c.is_ascii_digit()) && time.len() > 4 {
        // Longer than a year: an epoch.
        let epoch: i64 = time.parse().unwrap_or(-1);
        in_group
            .iter()
            .copied()
            .filter(|s| s.dir.time == epoch)
            .collect()
    } else {
        in_group
            .iter()
            .copied()
            .filter(|s| epoch_to_rfc3339(s.dir.time).is_some_and(|t| t.starts_with(time)))
            .collect()
    };
    let (readable, damaged): (Vec<&SnapshotEntry>, Vec<&SnapshotEntry>) =
        matching.into_iter().partition(|s| s.is_readable());
    if time == "latest" {
        if let Some(newest) = readable.iter().max_by_key(|s| s.dir.time) {
            return Ok(newest.dir.clone());
        }
    }
    match (readable.as_slice(), damaged.as_slice()) {
        ([one], _) => Ok(one.dir.clone()),
        ([], []) => bail!(
            "no snapshot '{spec}'; the group '{group}' has:{}",
            list_snapshots(&in_group)
        ),
        ([], [one]) if time != "latest" => bail!(
            "snapshot {} is damaged and cannot be read ({}); choose another snapshot of \
             the group",
            one.dir,
            one.damaged.as_deref().unwrap_or_default()
        ),
        ([], damaged) => bail!(
            "no readable snapshot '{spec}'; damaged:{}",
            list_snapshots(damaged)
        ),
        (many, _) => bail!(
            "snapshot '{spec}' is ambiguous; it matches:{}",
            list_snapshots(many)
        ),
    }
}

/// One snapshot a line, a damaged one with the reason.
fn list_snapshots(snapshots: &[&SnapshotEntry]) -> String {
    snapshots
        .iter()
        .map(|s| match &s.damaged {
            Some(reason) => format!("\n  {} (damaged: {reason})", s.dir),
            None => format!("\n  {}", s.dir),
        })
        .collect()
}

fn list_groups(candidates: &[&SnapshotEntry]) -> String {
    let mut groups: Vec<&BackupGroup> = candidates.iter().map(|s| &s.dir.group).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> SnapshotEntry {
        SnapshotEntry {
            dir: BackupDir::parse(name).unwrap(),
            finished: true,
            protected: false,
            damaged: None,
        }
    }

    fn dirs() -> Vec<SnapshotEntry> {
        [
            "host/a/2026-04-13T10:00:00Z",
            "host/a/2026-04-13T12:00:00Z",
            "host/a/2026-04-14T10:00:00Z",
            "vm/100/2026-04-13T10:00:00Z",
        ]
        .iter()
        .map(|s| entry(s))
        .collect()
    }

    /// Asserts that `spec` is refused with an error naming every one of `words`.
    fn assert_refused(spec: &str, candidates: &[SnapshotEntry], words: &[&str]) {
        let err = resolve_snapshot(spec, candidates).unwrap_err().to_string();
        assert!(words.iter().all(|word| err.contains(word)), "{err}");
    }

    fn damaged(name: &str) -> SnapshotEntry {
        SnapshotEntry {
            damaged: Some("index.json.blob: manifest blob: too short".into()),
            ..entry(name)
        }
    }

    /// Each (spec, snapshot) pair: `spec` resolves to that snapshot among `all`.
    fn assert_picks(all: &[SnapshotEntry], cases: &[(&str, &str)]) {
        for (spec, want) in cases {
            let got = resolve_snapshot(spec, all).map(|d| d.to_string());
            assert_eq!(got.unwrap(), *want, "{spec}");
        }
    }

    #[test]
    fn damaged_and_unfinished_snapshots_are_passed_by() {
        let mut all = dirs();
        // The newest of host/a is damaged, a newer one of vm/100 unfinished.
        all.push(damaged("host/a/2026-04-14T12:00:00Z"));
        all.push(SnapshotEntry {
            finished: false,
            ..entry("vm/100/2026-04-16T10:00:00Z")
        });
        assert_picks(
            &all,
            &[
                ("host/a/latest", "host/a/2026-04-14T10:00:00Z"),
                // A prefix matching a good and a damaged one means the good one.
                ("host/a/2026-04-14", "host/a/2026-04-14T10:00:00Z"),
                ("vm/100", "vm/100/2026-04-13T10:00:00Z"),
                ("vm/100/latest", "vm/100/2026-04-13T10:00:00Z"),
            ],
        );
        let pick = |spec: &str| resolve_snapshot(spec, &all).map(|d| d.to_string());
        // Naming the damaged one says why it cannot be read.
        for spec in ["host/a/2026-04-14T12:00:00Z", "host/a/2026-04-14T12"] {
            let err = pick(spec).unwrap_err().to_string();
            assert!(
                err.contains("damaged") && err.contains("too short"),
                "{err}"
            );
        }
        // A group of nothing but damaged snapshots has no latest.
        let only = vec![damaged("host/b/2026-04-15T10:00:00Z")];
        assert_refused(
            "host/b/latest",
            &only,
            &["no readable snapshot", "too short"],
        );
    }

    #[test]
    fn resolves_every_form() {
        assert_picks(
            &dirs(),
            &[
                ("host/a/latest", "host/a/2026-04-14T10:00:00Z"),
                ("host/a/2026-04-14", "host/a/2026-04-14T10:00:00Z"),
                ("host/a/2026-04-13T12", "host/a/2026-04-13T12:00:00Z"),
                ("host/a/2026-04-13T10:00:00Z", "host/a/2026-04-13T10:00:00Z"),
                ("host/a/1776074400", "host/a/2026-04-13T10:00:00Z"),
                ("vm/100", "vm/100/2026-04-13T10:00:00Z"),
            ],
        );
    }

    #[test]
    fn ambiguous_and_unknown_list_candidates() {
        let all = dirs();
        let ambiguous = ["ambiguous", "2026-04-13T12:00:00Z"];
        assert_refused("host/a/2026-04-13", &all, &ambiguous);
        assert_refused("host/a/2027", &all, &["2026-04-14T10:00:00Z"]);
        assert_refused("host/b/latest", &all, &["vm/100"]);
        assert!(resolve_snapshot("nonsense", &all).is_err());
    }
}
