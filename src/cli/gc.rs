//! `pbsfs gc`: garbage collection of a local datastore (`store::gc`) or, on a server, its
//! garbage collection task followed to the end.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use pbsfs::store::gc::{GcOptions, GcProgress};
use pbsfs::store::time::epoch_to_rfc3339;

use super::context::{Context, RepoArgs};
use super::output::{count, human_size};
use super::progress::{self, Status, StatusLine};

/// A phase of a gc as the status line shows it.
struct Phase {
    name: &'static str,
    done: u64,
    total: u64,
    started: Instant,
}

impl Phase {
    fn new(name: &'static str, done: u64, total: u64) -> Self {
        Phase {
            name,
            done,
            total,
            started: Instant::now(),
        }
    }
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only report what would be removed (no lock, no change).
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &GcArgs, repo: &RepoArgs, quiet: bool) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let options = GcOptions {
        dry_run: args.dry_run,
        ..Default::default()
    };
    // The phase and how far it is, drawn by the status line (on a terminal only).
    let phase = Arc::new(Mutex::new(Phase::new("starting", 0, 0)));
    let display = StatusLine::start(quiet, {
        let phase = phase.clone();
        move |_| {
            let phase = phase.lock().unwrap();
            let done = match phase.total {
                0 => String::new(),
                total => format!(
                    " {}",
                    progress::steps(phase.done, total, phase.started.elapsed())
                ),
            };
            Status {
                head: format!("{}{done}", phase.name),
                tail: String::new(),
            }
        }
    });
    let mut progress = |step: GcProgress| {
        let (name, done, total) = match step {
            GcProgress::ServerLog(line) => {
                // A server's task log is worth keeping (cron mails): every line, terminal
                // or not.
                if !quiet {
                    match &display {
                        Some(display) => display.print_above(|| eprintln!("{line}")),
                        None => eprintln!("{line}"),
                    }
                }
                return;
            }
            GcProgress::CheckingAtime => ("checking access time updates", 0u64, 0u64),
            GcProgress::Marking { done, total } => {
                ("phase 1: marking (index files)", done as u64, total as u64)
            }
            GcProgress::Sweeping { percent } => ("phase 2: sweeping (% done)", percent as u64, 100),
        };
        let mut phase = phase.lock().unwrap();
        if phase.name != name {
            *phase = Phase::new(name, done, total);
        } else {
            phase.done = done;
        }
    };
    let result = store.collect_garbage(&options, &mut progress);
    progress::stop(display);
    let report = result?;
    if ctx.output.is_json() {
        ctx.output.print_json(&json!({
            "dry-run": report.dry_run,
            "min-atime": report.min_atime,
            "index-file-count": report.index_files,
            "missing-chunks": report.missing_chunks,
            "removed-chunks": report.removed_chunks,
            "removed-bytes": report.removed_bytes,
            "removed-bad": report.removed_bad,
            "still-bad": report.still_bad,
            "removed-tmp-files": report.removed_tmp_files,
            "pending-chunks": report.pending_chunks,
            "pending-bytes": report.pending_bytes,
            "disk-chunks": report.kept_chunks,
            "disk-bytes": report.kept_bytes,
            "seconds": report.elapsed.as_secs_f64(),
        }));
        return Ok(());
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    // A server does not count the temporary files it removes.
    let tmp_files = if report.by_server {
        String::new()
    } else {
        format!(
            ", {}",
            count(
                report.removed_tmp_files,
                "temporary file",
                "temporary files"
            )
        )
    };
    outln!(
        "{verb} {} ({}), {}{tmp_files}",
        count(report.removed_chunks, "chunk", "chunks"),
        human_size(report.removed_bytes),
        count(report.removed_bad, "bad chunk", "bad chunks"),
    );
    outln!(
        "kept {} too young to remove ({}; not used now, older than the cutoff {} next time)",
        count(report.pending_chunks, "chunk", "chunks"),
        human_size(report.pending_bytes),
        epoch_to_rfc3339(report.min_atime).unwrap_or_default()
    );
    outln!(
        "in use: {} ({}) of {}",
        count(report.kept_chunks, "chunk", "chunks"),
        human_size(report.kept_bytes),
        count(report.index_files, "index file", "index files")
    );
    if report.missing_chunks > 0 {
        outln!(
            "WARNING: {} chunks referenced by an index are missing (run `pbsfs verify`)",
            report.missing_chunks
        );
    }
    if report.still_bad > 0 {
        outln!("{} bad chunks kept", report.still_bad);
    }
    outln!("took {:.1} s", report.elapsed.as_secs_f64());
    Ok(())
}
