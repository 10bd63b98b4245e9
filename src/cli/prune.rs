//! `pbsfs prune GROUP|--all`: PBS's retention, on a local datastore or by a server.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use pbsfs::store::manage::PruneItem;
use pbsfs::store::names::BackupGroup;
use pbsfs::store::prune::KeepOptions;
use pbsfs::store::time::epoch_to_rfc3339;

use super::context::{Context, RepoArgs};
use super::output::{count, Table};
use super::progress::{self, Status, StatusLine};

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Backup group, e.g. `host/myhost` (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub group: Option<String>,
    /// Every group of the namespace.
    #[arg(long)]
    pub all: bool,
    /// Keep the last N snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u64>,
    /// Keep the newest snapshot of each of the last N hours (that have one).
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u64>,
    /// Keep the newest snapshot of each of the last N days (that have one).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u64>,
    /// Keep the newest snapshot of each of the last N ISO weeks (that have one).
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u64>,
    /// Keep the newest snapshot of each of the last N months (that have one).
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u64>,
    /// Keep the newest snapshot of each of the last N years (that have one).
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u64>,
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &PruneArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let options = KeepOptions {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
    };
    let groups = match &args.group {
        Some(group) => vec![BackupGroup::parse(group)?],
        None => store.list_groups(&ctx.ns)?,
    };
    let mut items: Vec<PruneItem> = Vec::new();
    let mut errors = Vec::new();
    // Which group, how many of them are done and how many snapshots went, on a terminal.
    let state = Arc::new(Mutex::new((0u64, String::new(), 0usize)));
    let total = groups.len() as u64;
    let verb = if args.dry_run { "to remove" } else { "removed" };
    let display = StatusLine::start(log::max_level() < log::LevelFilter::Info, {
        let state = state.clone();
        move |elapsed| {
            let (done, group, removed) = &*state.lock().unwrap();
            Status {
                head: format!(
                    "pruning {}, {} {verb}: ",
                    progress::steps(*done, total, elapsed),
                    count(*removed as u64, "snapshot", "snapshots")
                ),
                tail: group.clone(),
            }
        }
    });
    for (done, group) in groups.iter().enumerate() {
        state.lock().unwrap().1 = group.to_string();
        let (group_items, group_errors) =
            match store.prune_group(&ctx.ns, group, &options, args.dry_run) {
                Ok(result) => result,
                Err(err) => {
                    progress::stop(display);
                    return Err(err);
                }
            };
        let removed = group_items.iter().filter(|item| !item.mark.keep()).count();
        items.extend(group_items);
        errors.extend(group_errors);
        let mut state = state.lock().unwrap();
        state.0 = done as u64 + 1;
        state.2 += removed;
    }
    progress::stop(display);
    if ctx.output.is_json() {
        // What `proxmox-backup-client prune --output-format json` prints: the server's list.
        let list: Vec<_> = items
            .iter()
            .map(|item| item.api_json(Some(&ctx.ns)))
            .collect();
        ctx.output.print_json(&json!(list));
    } else {
        let mut table = Table::new(&["snapshot", "date", "action", "reason"]);
        for item in &items {
            let dir = &item.entry.dir;
            table.push(vec![
                dir.to_string(),
                epoch_to_rfc3339(dir.time).unwrap_or_default(),
                if item.mark.keep() { "keep" } else { "remove" }.to_string(),
                item.mark.reason().to_string(),
            ]);
        }
        table.print();
        if args.dry_run {
            eprintln!("(dry run: nothing was removed)");
        }
    }
    for err in &errors {
        eprintln!("error: {err:#}");
    }
    if !errors.is_empty() {
        bail!("{} snapshots could not be removed", errors.len());
    }
    Ok(())
}
