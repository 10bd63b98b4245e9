//! `pbsfs verify [SNAPSHOT]`: check manifests, indexes and chunks; exit non-zero on a problem.

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use pbsfs::store::names::BackupDir;
use pbsfs::store::verify::Verifier;

use super::context::{Context, RepoArgs};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// One snapshot (TYPE/ID/TIME, TIME may be a prefix, an epoch or `latest`); default: every
    /// snapshot of the namespace and the namespaces below it.
    pub snapshot: Option<String>,
}

pub fn run(args: &VerifyArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let mut targets = Vec::new();
    match &args.snapshot {
        Some(spec) => targets.push((ctx.ns.clone(), ctx.resolve(spec)?)),
        None => {
            for ns in store.list_namespaces(&ctx.ns)? {
                for summary in store.list_snapshots(&ns, None)? {
                    if summary.entry.finished {
                        targets.push((ns.clone(), summary.entry.dir));
                    }
                }
            }
        }
    }

    // With --keyfile, encrypted chunks are decrypted and their keyed digests checked too.
    let mut verifier = Verifier::with_key(ctx.crypt()?);
    let mut results = Vec::new();
    for (ns, dir) in &targets {
        // A snapshot whose manifest cannot be read is a problem of that snapshot.
        let problems = match store.open_snapshot(ns, dir) {
            Ok(snapshot) => verifier.verify_snapshot(&*snapshot),
            Err(err) => vec![format!("{err:#}")],
        };
        if !ctx.output.is_json() {
            let name = display_name(ns, dir);
            if problems.is_empty() {
                outln!("ok      {name}");
            } else {
                outln!("FAILED  {name}");
                for problem in &problems {
                    outln!("        {problem}");
                }
            }
        }
        results.push((ns, dir, problems));
    }
    let failed = results.iter().filter(|(_, _, p)| !p.is_empty()).count();
    if ctx.output.is_json() {
        let list: Vec<_> = results
            .iter()
            .map(|(ns, dir, problems)| {
                json!({"ns": ns.to_string(), "snapshot": dir.to_string(),
                       "ok": problems.is_empty(), "problems": problems})
            })
            .collect();
        ctx.output.print_json(&json!({
            "snapshots": list,
            "failed": failed,
            "chunks-checked": verifier.chunks_checked,
            "bytes-checked": verifier.bytes_checked,
        }));
    } else {
        outln!(
            "{} snapshot(s) verified, {failed} failed; {} chunk(s), {} bytes checked",
            results.len(),
            verifier.chunks_checked,
            verifier.bytes_checked
        );
    }
    if failed > 0 {
        bail!("verification failed for {failed} snapshot(s)");
    }
    Ok(())
}

fn display_name(ns: &pbsfs::store::names::BackupNamespace, dir: &BackupDir) -> String {
    if ns.is_root() {
        dir.to_string()
    } else {
        format!("ns/{ns}/{dir}")
    }
}
