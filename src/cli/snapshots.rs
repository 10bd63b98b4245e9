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

    // The notes' first line, PBS's "comment".
    let comments: Vec<Option<String>> = rows.iter().map(|s| s.comment.clone()).collect();
    if ctx.output.is_json() {
        let list: Vec<_> = rows
            .iter()
            .zip(&comments)
            .map(|(summary, comment)| {
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
                    "comment": comment,
                })
            })
            .collect();
        ctx.output.print_json(&json!(list));
        return Ok(());
    }
    let mut table =
        Table::new(&["snapshot", "size", "files", "protected", "comment"]).align_right(1);
    for (summary, comment) in rows.iter().zip(&comments) {
        let name = summary.entry.dir.to_string();
        let protected = if summary.entry.protected { "yes" } else { "" }.to_string();
        let comment = comment.clone().unwrap_or_default();
        if let Some(reason) = &summary.entry.damaged {
            table.push(vec![
                name,
                "-".into(),
                format!("DAMAGED: {reason}"),
                protected,
                comment,
            ]);
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
        table.push(vec![
            name,
            human_size(summary.size),
            short.join(" "),
            protected,
            comment,
        ]);
    }
    table.print();
    Ok(())
}

#[derive(Args, Debug)]
pub struct NamespacesArgs {
    /// Create namespace NS (below --ns) in a local datastore.
    #[arg(long, value_name = "NS")]
    pub create: Option<String>,
    /// Delete namespace NS (below --ns); only an empty one unless --recursive.
    #[arg(long, value_name = "NS")]
    pub delete: Option<String>,
    /// With --delete: also every snapshot and namespace in it.
    #[arg(long, requires = "delete")]
    pub recursive: bool,
}

/// Lists the selected namespace and every namespace below it.
pub fn run_namespaces(args: &NamespacesArgs, repo: &RepoArgs) -> Result<()> {
    if args.create.is_some() || args.delete.is_some() {
        return super::manage::run_namespace_change(
            args.create.as_deref(),
            args.delete.as_deref(),
            args.recursive,
            repo,
        );
    }
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
