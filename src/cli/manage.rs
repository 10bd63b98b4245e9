//! `pbsfs init`, `forget`, `protect`, `notes` and `namespaces --create/--delete`: changing a
//! local datastore (the library side is `store::manage`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;

use pbsfs::repository::Repository;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::manage;
use pbsfs::store::names::{BackupDir, BackupNamespace};

use super::context::{Context, RepoArgs};

/// The local datastore the command changes; a server repository is refused for now.
pub fn local_store(ctx: &Context, command: &str) -> Result<Arc<LocalDatastore>> {
    if let Some(store) = &ctx.local {
        return Ok(store.clone());
    }
    if ctx.access.is_some() {
        bail!(
            "`pbsfs {command}` is not supported on a server yet; it works on a local datastore \
             (--repository PATH)"
        );
    }
    ctx.access()?; // the default datastore does not exist yet: says so
    unreachable!("a context without access is the missing default datastore")
}

/// A SNAPSHOT argument: a full name (unfinished snapshots too), else as other commands
/// resolve it (`latest`, unique prefixes).
pub fn snapshot_arg(ctx: &Context, store: &LocalDatastore, spec: &str) -> Result<BackupDir> {
    if let Ok(dir) = BackupDir::parse(spec) {
        if store.snapshot_path(&ctx.ns, &dir).is_dir() {
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
    let store = local_store(&ctx, "forget")?;
    let mut failed = 0;
    for spec in &args.snapshots {
        let result = snapshot_arg(&ctx, &store, spec).and_then(|dir| {
            manage::forget(&store, &ctx.ns, &dir)?;
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
    let store = local_store(&ctx, "protect")?;
    let dir = snapshot_arg(&ctx, &store, &args.snapshot)?;
    manage::set_protected(&store, &ctx.ns, &dir, !args.off)?;
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
    let store = local_store(&ctx, "notes")?;
    let dir = snapshot_arg(&ctx, &store, &args.snapshot)?;
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
            manage::set_notes(&store, &ctx.ns, &dir, &text)
        }
        None => {
            let notes = manage::notes(&store, &ctx.ns, &dir)?;
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
    let store = local_store(&ctx, "namespaces")?;
    let below = |name: &str| -> Result<BackupNamespace> {
        let mut ns = ctx.ns.clone();
        for part in BackupNamespace::parse(name)?.components() {
            ns = ns.child(part)?;
        }
        Ok(ns)
    };
    if let Some(name) = create {
        let ns = below(name)?;
        manage::create_namespace(&store, &ns)?;
        outln!("created namespace {ns}");
    }
    if let Some(name) = delete {
        let ns = below(name)?;
        manage::delete_namespace(&store, &ns, recursive)?;
        outln!("deleted namespace {ns}");
    }
    Ok(())
}
