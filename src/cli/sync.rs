//! `pbsfs sync --to REPO [GROUP|SNAPSHOT]...`: copies snapshots from the selected datastore
//! to another one (`store::sync`), either of them local or on a server.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::json;

use pbsfs::backup::spec::default_owner;
use pbsfs::remote::target::RemoteTarget;
use pbsfs::remote::{ConnectOptions, RemoteDatastore};
use pbsfs::repository::Repository;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::sync::{
    select_snapshots, sync_snapshots, Selection, SnapshotOutcome, SyncOptions, SyncSummary,
};
use pbsfs::store::target::BackupTarget;

use super::context::{open_local, Context, RepoArgs};
use super::output::{count, human_size};
use super::progress::{self, Status, StatusLine};
use super::push::{install_signal_handlers, FIRST_SIGNAL};

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Groups (TYPE/ID, e.g. host/web) or snapshots (TYPE/ID/TIME) to copy; default: every
    /// group of the namespace (--ns).
    #[arg(value_name = "GROUP|SNAPSHOT")]
    pub selection: Vec<String>,

    /// Where to copy to: a local datastore directory or a PBS repository, as for
    /// --repository. When both sides are servers, the destination's secret comes from
    /// PBS_TO_PASSWORD (or _FILE, _FD, _CMD).
    #[arg(long, value_name = "REPO")]
    pub to: String,

    /// Namespace at the destination (default: the same as --ns); it must exist.
    #[arg(long = "to-ns", value_name = "NS")]
    pub to_ns: Option<String>,

    /// Expected SHA-256 fingerprint of the destination server's certificate (default
    /// PBS_TO_FINGERPRINT; when the source is local, --fingerprint and PBS_FINGERPRINT
    /// serve as well).
    #[arg(long, env = "PBS_TO_FINGERPRINT", value_name = "FINGERPRINT")]
    pub to_fingerprint: Option<String>,

    /// Copy only the newest N snapshots of each group.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub last: Option<u64>,

    /// Chunks fetched, checked and sent at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub workers: usize,

    #[arg(skip)]
    pub quiet: bool,
}

pub fn run(args: &SyncArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let source = ctx.access()?.clone();
    let to_ns = match &args.to_ns {
        Some(text) => BackupNamespace::parse(text)?,
        None => ctx.ns.clone(),
    };
    let source_is_remote = matches!(repo.selected()?, Some(Repository::Remote(_)));
    let target = open_destination(args, repo, source_is_remote)?;
    let selection = args
        .selection
        .iter()
        .map(|text| parse_selection(text))
        .collect::<Result<Vec<_>>>()?;
    let last = args.last.map(|n| n as usize);
    let snapshots = select_snapshots(source.as_ref(), &ctx.ns, &selection, last)?;

    let abort = install_signal_handlers()?;
    let mut options = SyncOptions::new(&default_owner());
    options.workers = args.workers.max(1);
    options.abort = abort;
    let progress = options.progress.clone();
    let display = StatusLine::start(args.quiet, move |elapsed| Status {
        head: format!(
            "{}/{} snapshots, {}, {} ",
            progress.snapshots_done.load(Ordering::Relaxed),
            progress.snapshots_total.load(Ordering::Relaxed),
            count(
                progress.chunks_sent.load(Ordering::Relaxed),
                "chunk",
                "chunks"
            ),
            progress::amount(progress.bytes_sent.load(Ordering::Relaxed), None, elapsed)
        ),
        tail: progress
            .current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default(),
    });
    let result = sync_snapshots(
        source.as_ref(),
        &ctx.ns,
        target.as_ref(),
        &to_ns,
        &snapshots,
        &options,
    );
    progress::stop(display);
    let summary = result.map_err(|err| match FIRST_SIGNAL.load(Ordering::SeqCst) {
        0 => err,
        signal => err.context(super::Interrupted(signal)),
    })?;
    if !args.quiet || repo.output_format.is_json() {
        print_summary(&summary, repo);
    }
    Ok(())
}

/// The destination, connected with its own credentials when the source is a server too.
fn open_destination(
    args: &SyncArgs,
    repo: &RepoArgs,
    source_is_remote: bool,
) -> Result<Arc<dyn BackupTarget>> {
    match Repository::parse(&args.to).context("--to")? {
        Repository::Local(path) => Ok(Arc::new(LocalTarget::new(Arc::new(open_local(&path)?)))),
        Repository::Remote(remote) => {
            let options = if source_is_remote {
                ConnectOptions::from_env_vars(
                    &remote,
                    args.to_fingerprint.as_deref(),
                    "PBS_TO_PASSWORD",
                    "PBS_TO_FINGERPRINT",
                )?
            } else {
                let pin = args
                    .to_fingerprint
                    .as_deref()
                    .or(repo.fingerprint.as_deref());
                ConnectOptions::from_env(&remote, pin)?
            };
            let store = RemoteDatastore::connect(&remote, options)?;
            Ok(Arc::new(RemoteTarget::new(Arc::new(store))))
        }
    }
}

/// `TYPE/ID/TIME` names a snapshot, `TYPE/ID` a group.
fn parse_selection(text: &str) -> Result<Selection> {
    if text.matches('/').count() >= 2 {
        Ok(Selection::Snapshot(BackupDir::parse(text)?))
    } else {
        Ok(Selection::Group(BackupGroup::parse(text)?))
    }
}

fn print_summary(summary: &SyncSummary, repo: &RepoArgs) {
    let (chunks, bytes, present) = summary.totals();
    let secs = summary.duration.as_secs_f64();
    let rate = bytes as f64 / secs.max(1e-3);
    if repo.output_format.is_json() {
        let snapshots: Vec<_> = summary
            .snapshots
            .iter()
            .map(|(dir, outcome)| {
                let mut value = json!({ "snapshot": dir.to_string() });
                match outcome {
                    SnapshotOutcome::Copied {
                        chunks_sent,
                        bytes_sent,
                        chunks_present,
                        client_log,
                    } => {
                        value["result"] = json!("copied");
                        value["chunks-sent"] = json!(chunks_sent);
                        value["bytes-sent"] = json!(bytes_sent);
                        value["chunks-present"] = json!(chunks_present);
                        value["client-log"] = json!(client_log);
                    }
                    SnapshotOutcome::Present => value["result"] = json!("present"),
                    SnapshotOutcome::OlderThanDestination => {
                        value["result"] = json!("older-than-destination")
                    }
                }
                value
            })
            .collect();
        repo.output_format.print_json(&json!({
            "snapshots": snapshots,
            "copied": summary.copied(),
            "skipped": summary.skipped(),
            "chunks-sent": chunks,
            "bytes-sent": bytes,
            "chunks-present": present,
            "duration": secs,
            "bytes-per-second": rate,
        }));
        return;
    }
    let mut out = std::io::stdout().lock();
    for (dir, outcome) in &summary.snapshots {
        let what = match outcome {
            SnapshotOutcome::Copied {
                chunks_sent,
                bytes_sent,
                ..
            } => format!(
                "copied, {} sent ({})",
                count(*chunks_sent, "chunk", "chunks"),
                human_size(*bytes_sent)
            ),
            SnapshotOutcome::Present => "present, skipped".to_string(),
            SnapshotOutcome::OlderThanDestination => {
                "skipped: the destination's group has a newer snapshot".to_string()
            }
        };
        let _ = writeln!(out, "{dir}: {what}");
    }
    let _ = writeln!(
        out,
        "{} copied, {} skipped; {} ({}) sent, {} present, in {secs:.1} s ({}/s)",
        count(summary.copied() as u64, "snapshot", "snapshots"),
        summary.skipped(),
        count(chunks, "chunk", "chunks"),
        human_size(bytes),
        present,
        human_size(rate as u64)
    );
}
