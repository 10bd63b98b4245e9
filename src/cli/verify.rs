//! `pbsfs verify [SNAPSHOT]`: check manifests, indexes and chunks; exit non-zero on a problem.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use pbsfs::store::local::{SnapshotEntry, MANIFEST_BLOB_NAME};
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::verify::Verifier;

use super::context::{Context, RepoArgs};
use super::output::{count, human_size};
use super::progress::{self, Status, StatusLine};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// One snapshot (TYPE/ID/TIME, TIME may be a prefix, an epoch or `latest`, the newest
    /// readable one); default: every snapshot of the namespace and the namespaces below it,
    /// damaged ones and snapshot directories without a manifest included.
    pub snapshot: Option<String>,
}

/// What was found for one snapshot directory.
struct Outcome {
    ns: BackupNamespace,
    dir: BackupDir,
    problems: Vec<String>,
    /// Not checked, and why (a backup is writing it).
    skipped: Option<String>,
}

pub fn run(args: &VerifyArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let mut targets: Vec<(BackupNamespace, SnapshotEntry)> = Vec::new();
    match &args.snapshot {
        Some(spec) => {
            let dir = ctx.resolve(spec)?;
            let entry = SnapshotEntry {
                dir,
                finished: true,
                protected: false,
                damaged: None,
            };
            targets.push((ctx.ns.clone(), entry));
        }
        None => {
            for ns in store.list_namespaces(&ctx.ns)? {
                for summary in store.list_snapshots(&ns, None)? {
                    targets.push((ns.clone(), summary.entry));
                }
            }
        }
    }

    // With --keyfile, encrypted chunks are decrypted and their keyed digests checked too.
    let mut verifier = Verifier::with_key(ctx.crypt()?);
    let mut results = Vec::new();
    let total = targets.len();
    let done = Arc::new(AtomicUsize::new(0));
    let (checked, finished) = (verifier.progress.clone(), done.clone());
    let display = StatusLine::start(log::max_level() < log::LevelFilter::Info, move |elapsed| {
        Status {
            head: format!(
                "verified {} of {}; chunks: {}",
                finished.load(Ordering::Relaxed),
                count(total as u64, "snapshot", "snapshots"),
                progress::amount(checked.load(Ordering::Relaxed), None, elapsed)
            ),
            tail: String::new(),
        }
    });
    for (ns, entry) in targets {
        let mut outcome = Outcome {
            ns,
            dir: entry.dir,
            problems: Vec::new(),
            skipped: None,
        };
        if let Some(reason) = entry.damaged {
            outcome.problems.push(format!("damaged: {reason}"));
        } else if !entry.finished {
            // No manifest: a backup writing it now, or one that never finished (or lost
            // its manifest). Only a local datastore can tell which.
            match store.backup_running(&outcome.ns, &outcome.dir.group) {
                Some(true) => {
                    outcome.skipped = Some("a backup of it is running".into());
                }
                Some(false) => outcome.problems.push(format!(
                    "no manifest ({MANIFEST_BLOB_NAME}): an interrupted backup left it, or \
                     the manifest was lost"
                )),
                None => {
                    outcome.skipped = Some(format!(
                        "no manifest ({MANIFEST_BLOB_NAME}) yet: a backup still running, or \
                         one that was interrupted"
                    ))
                }
            }
        } else {
            // A snapshot whose manifest cannot be read is a problem of that snapshot.
            outcome.problems = match store.open_snapshot(&outcome.ns, &outcome.dir) {
                Ok(snapshot) => verifier.verify_snapshot(&*snapshot),
                Err(err) => vec![format!("{err:#}")],
            };
        }
        if !ctx.output.is_json() {
            match &display {
                Some(line) => line.print_above(|| print_outcome(&outcome)),
                None => print_outcome(&outcome),
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        results.push(outcome);
    }
    progress::stop(display);
    let failed = results.iter().filter(|o| !o.problems.is_empty()).count();
    let skipped = results.iter().filter(|o| o.skipped.is_some()).count();
    if ctx.output.is_json() {
        let list: Vec<_> = results
            .iter()
            .map(|o| {
                json!({"ns": o.ns.to_string(), "snapshot": o.dir.to_string(),
                       "ok": o.problems.is_empty(), "problems": o.problems,
                       "skipped": o.skipped})
            })
            .collect();
        ctx.output.print_json(&json!({
            "snapshots": list,
            "failed": failed,
            "skipped": skipped,
            "chunks-checked": verifier.chunks_checked,
            "bytes-checked": verifier.bytes_checked,
        }));
    } else {
        outln!(
            "{} verified, {failed} failed, {skipped} skipped; {} ({}) checked",
            count((results.len() - skipped) as u64, "snapshot", "snapshots"),
            count(verifier.chunks_checked, "chunk", "chunks"),
            human_size(verifier.bytes_checked)
        );
    }
    if failed > 0 {
        bail!(
            "verification failed for {}",
            count(failed as u64, "snapshot", "snapshots")
        );
    }
    Ok(())
}

fn print_outcome(outcome: &Outcome) {
    let name = display_name(&outcome.ns, &outcome.dir);
    if let Some(why) = &outcome.skipped {
        outln!("skipped {name}  ({why})");
    } else if outcome.problems.is_empty() {
        outln!("ok      {name}");
    } else {
        outln!("FAILED  {name}");
        for problem in &outcome.problems {
            outln!("        {problem}");
        }
    }
}

fn display_name(ns: &BackupNamespace, dir: &BackupDir) -> String {
    if ns.is_root() {
        dir.to_string()
    } else {
        format!("ns/{ns}/{dir}")
    }
}
