//! `pbsfs snapshots [GROUP]` and `pbsfs namespaces`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use pbsfs::store::names::{BackupGroup, BackupNamespace};

use super::context::{Context, RepoArgs};
use super::output::{human_size, Table};

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only this backup group, e.g. `host/myhost`.
    pub group: Option<String>,
}

pub fn run(args: &SnapshotsArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let group = args.group.as_deref().map(BackupGroup::parse).transpose()?;
    let mut rows = Vec::new();
    if let Some(access) = &ctx.access {
        for summary in access.list_snapshots(&ctx.ns, group.as_ref())? {
            // Unfinished: still being written, or abandoned; not a snapshot yet.
            if summary.entry.finished {
                rows.push(summary);
            }
        }
    } else if !ctx.output.is_json() {
        eprintln!("(the default datastore {} is still empty)", ctx.location);
    }

    if ctx.output.is_json() {
        let list: Vec<_> = rows
            .iter()
            .map(|summary| {
                let entry = &summary.entry;
                json!({
                    "backup-type": entry.dir.group.backup_type.as_str(),
                    "backup-id": entry.dir.group.backup_id,
                    "backup-time": entry.dir.time,
                    "snapshot": entry.dir.to_string(),
                    "files": summary.files,
                    "size": entry.damaged.is_none().then_some(summary.size),
                    "protected": entry.protected,
                    "damaged": entry.damaged,
                })
            })
            .collect();
        ctx.output.print_json(&json!(list));
        return Ok(());
    }
    let mut table = Table::new(&["snapshot", "size", "files"]).align_right(1);
    for summary in &rows {
        let name = summary.entry.dir.to_string();
        if let Some(reason) = &summary.entry.damaged {
            table.push(vec![name, "-".into(), format!("DAMAGED: {reason}")]);
            continue;
        }
        let short: Vec<&str> = summary
            .files
            .iter()
            .map(|f| {
                f.strip_suffix(".didx")
                    .or_else(|| f.strip_suffix(".fidx"))
                    .or_else(|| f.strip_suffix(".blob"))
                    .unwrap_or(f)
            })
            .collect();
        table.push(vec![name, human_size(summary.size), short.join(" ")]);
    }
    table.print();
    Ok(())
}

#[derive(Args, Debug)]
pub struct NamespacesArgs {}

/// Lists the selected namespace and every namespace below it.
pub fn run_namespaces(_args: &NamespacesArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let list: Vec<BackupNamespace> = match &ctx.access {
        Some(access) => access.list_namespaces(&ctx.ns)?,
        None => vec![BackupNamespace::root()],
    };
    if ctx.output.is_json() {
        let names: Vec<String> = list.iter().map(|ns| ns.to_string()).collect();
        ctx.output.print_json(&json!(names));
    } else {
        for ns in list {
            outln!(
                "{}",
                if ns.is_root() {
                    "(root)".to_string()
                } else {
                    ns.to_string()
                }
            );
        }
    }
    Ok(())
}
