//! `pbsfs init`, `forget`, `protect`, `notes` and `namespaces --create/--delete`: changing a
//! datastore through the `DatastoreAdmin` seam (`store::manage` locally, the admin API on a
//! server).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;

use pbsfs::repository::Repository;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupNamespace};

use super::context::{Context, RepoArgs};

/// A SNAPSHOT argument: a full name (unfinished snapshots too, which forget may remove),
/// else as other commands resolve it (`latest`, unique prefixes).
pub fn snapshot_arg(ctx: &Context, spec: &str) -> Result<BackupDir> {
    if let Ok(dir) = BackupDir::parse(spec) {
        let listed = ctx
            .access()?
            .list_snapshots(&ctx.ns, Some(&dir.group))?
            .iter()
            .any(|summary| summary.entry.dir == dir);
        if listed {
            return Ok(dir);
        }
    }
    ctx.resolve(spec)
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory of the new datastore (default: --repository, else the default datastore).
    pub path: Option<PathBuf>,
}

pub fn run_init(args: &InitArgs, repo: &RepoArgs) -> Result<()> {
    let path = match (&args.path, repo.selected()?) {
        (Some(path), _) => path.clone(),
        (None, Some(Repository::Local(path))) => path,
        (None, Some(Repository::Remote(_))) => {
            bail!("`pbsfs init` creates a local datastore; a server's datastores are made on the server")
        }
        (None, None) => Repository::default_local()?,
    };
    if path.join(".chunks").is_dir() {
        bail!("{} is already a datastore", path.display());
    }
    eprintln!(
        "creating datastore {} (65536 chunk directories, this can take a while)",
        path.display()
    );
    LocalDatastore::create(&path)
        .with_context(|| format!("cannot create datastore {}", path.display()))?;
    outln!("created datastore {}", path.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots as TYPE/ID/TIME. Their chunks stay until `pbsfs gc`.
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

pub fn run_forget(args: &ForgetArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let mut failed = 0;
    for spec in &args.snapshots {
        let result = snapshot_arg(&ctx, spec).and_then(|dir| {
            store.forget(&ctx.ns, &dir)?;
            Ok(dir)
        });
        match result {
            Ok(dir) => outln!("removed {dir}"),
            Err(err) => {
                let hint = if format!("{err}").contains("is protected") {
                    format!(" (pbsfs protect --off {spec})")
                } else {
                    String::new()
                };
                eprintln!("error: {spec}: {err:#}{hint}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} snapshots not removed", args.snapshots.len());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// Snapshot as TYPE/ID/TIME.
    pub snapshot: String,
    /// Remove the protection instead.
    #[arg(long)]
    pub off: bool,
}

pub fn run_protect(args: &ProtectArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let dir = snapshot_arg(&ctx, &args.snapshot)?;
    ctx.access()?.set_protected(&ctx.ns, &dir, !args.off)?;
    if ctx.output.is_json() {
        ctx.output
            .print_json(&json!({"snapshot": dir.to_string(), "protected": !args.off}));
    } else {
        outln!(
            "{dir} {}",
            if args.off { "unprotected" } else { "protected" }
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct NotesArgs {
    /// Snapshot as TYPE/ID/TIME.
    pub snapshot: String,
    /// Replace the notes with TEXT (`-`: read them from stdin).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub set: Option<String>,
}

pub fn run_notes(args: &NotesArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let dir = snapshot_arg(&ctx, &args.snapshot)?;
    match &args.set {
        Some(text) => {
            let text = if text == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the notes from stdin")?;
                text
            } else {
                text.clone()
            };
            store.set_notes(&ctx.ns, &dir, &text)
        }
        None => {
            let notes = store.notes(&ctx.ns, &dir)?;
            if ctx.output.is_json() {
                ctx.output
                    .print_json(&json!({"snapshot": dir.to_string(), "notes": notes}));
            } else if !notes.is_empty() {
                outln!("{}", notes.strip_suffix('\n').unwrap_or(&notes));
            }
            Ok(())
        }
    }
}

/// `namespaces --create NS` / `--delete NS [--recursive]`; NS is relative to --ns.
pub fn run_namespace_change(
    create: Option<&str>,
    delete: Option<&str>,
    recursive: bool,
    repo: &RepoArgs,
) -> Result<()> {
    let ctx = Context::open(repo)?;
    let store = ctx.access()?;
    let below = |name: &str| -> Result<BackupNamespace> {
        let mut ns = ctx.ns.clone();
        for part in BackupNamespace::parse(name)?.components() {
            ns = ns.child(part)?;
        }
        Ok(ns)
    };
    if let Some(name) = create {
        let ns = below(name)?;
        store.create_namespace(&ns)?;
        outln!("created namespace {ns}");
    }
    if let Some(name) = delete {
        let ns = below(name)?;
        store.delete_namespace(&ns, recursive)?;
        outln!("deleted namespace {ns}");
    }
    Ok(())
}
