//! `pbsfs find [SNAPSHOT|GROUP]... PATTERN`: paths matching a glob across snapshots, from
//! catalogs and metadata streams (never file contents).

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;

use pbsfs::pxar::pattern::PatternSet;
use pbsfs::store::find::{find_in_snapshot, Found};
use pbsfs::store::names::{BackupDir, BackupGroup};
use pbsfs::store::open::snapshot_chunks;
use pbsfs::store::time::epoch_to_rfc3339;

use super::context::{Context, RepoArgs};
use super::output::Table;

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Snapshots (TYPE/ID/TIME, TIME may be `latest` or a unique prefix) or groups (TYPE/ID:
    /// all their snapshots) to search, all of the namespace when none is named; then the
    /// PATTERN, a glob as for --exclude: it matches at any depth unless it starts with `/`,
    /// `**` spans directories, a trailing `/` matches directories only.
    #[arg(required = true, value_name = "[SNAPSHOT|GROUP]... PATTERN")]
    pub args: Vec<String>,
}

pub fn run(args: &FindArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let (pattern, named) = args.args.split_last().expect("clap requires one argument");
    let pattern = PatternSet::new(&[pattern])?;
    let snapshots = selected_snapshots(&ctx, named)?;
    let json = ctx.output.is_json();
    let mut rows = Vec::new();
    let mut searched = 0;
    for dir in &snapshots {
        let (snapshot, crypt) = match ctx.open_snapshot(dir) {
            Ok(opened) => opened,
            // Searching a whole namespace passes by what cannot be read (no key, say).
            Err(err) if named.is_empty() => {
                log::warn!("{dir} not searched: {err:#}");
                continue;
            }
            Err(err) => return Err(err),
        };
        searched += 1;
        let chunks = snapshot_chunks(&*snapshot, crypt, 16 << 20, 0);
        find_in_snapshot(&*snapshot, chunks, &pattern, &mut |found| {
            rows.push((dir.to_string(), found));
            Ok(())
        })
        .with_context(|| format!("searching {dir}"))?;
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(dir, f)| {
                json!({
                    "snapshot": dir,
                    "archive": f.archive,
                    "path": path_text(f),
                    "type": f.kind.to_string(),
                    "size": f.size,
                    "mtime": f.mtime,
                })
            })
            .collect();
        ctx.output.print_json(&json!(list));
        return Ok(());
    }
    let mut table =
        Table::new(&["snapshot", "archive", "path", "type", "size", "mtime"]).align_right(4);
    for (dir, found) in &rows {
        table.push(vec![
            dir.clone(),
            found.archive.clone(),
            path_text(found),
            found.kind.to_string(),
            found.size.map_or("-".into(), |s| s.to_string()),
            found
                .mtime
                .and_then(epoch_to_rfc3339)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if !rows.is_empty() {
        table.print();
    }
    eprintln!("{} found in {searched} snapshots", rows.len());
    Ok(())
}

fn path_text(found: &Found) -> String {
    format!("/{}", String::from_utf8_lossy(&found.path))
}

/// The readable snapshots the arguments name, or all of the namespace.
fn selected_snapshots(ctx: &Context, named: &[String]) -> Result<Vec<BackupDir>> {
    let listing = ctx.access()?.list_snapshots(&ctx.ns, None)?;
    let readable = || listing.iter().filter(|s| s.entry.is_readable());
    if named.is_empty() {
        return Ok(readable().map(|s| s.entry.dir.clone()).collect());
    }
    let mut dirs = Vec::new();
    for spec in named {
        let parts = spec.trim_end_matches('/').split('/').count();
        if parts == 2 {
            let group = BackupGroup::parse(spec.trim_end_matches('/'))?;
            let before = dirs.len();
            dirs.extend(
                readable()
                    .filter(|s| s.entry.dir.group == group)
                    .map(|s| s.entry.dir.clone()),
            );
            if dirs.len() == before {
                bail!("no readable snapshots in backup group '{group}'");
            }
        } else {
            dirs.push(ctx.resolve(spec)?);
        }
    }
    dirs.dedup();
    Ok(dirs)
}
