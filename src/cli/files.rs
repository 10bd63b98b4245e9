//! `pbsfs files SNAPSHOT`: the files of a snapshot with sizes and crypt modes.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use pbsfs::format::manifest::CryptMode;
use pbsfs::store::access::manifest_file_size;
use pbsfs::store::local::MANIFEST_BLOB_NAME;

use super::context::{Context, RepoArgs};
use super::output::{human_size, Table};

#[derive(Args, Debug)]
pub struct FilesArgs {
    /// Snapshot as TYPE/ID/TIME; TIME may be a unique prefix (2026-04-13), an epoch or `latest`
    /// (the newest readable snapshot: a damaged one is passed by).
    pub snapshot: String,
}

fn crypt_mode_name(mode: CryptMode) -> &'static str {
    match mode {
        CryptMode::None => "none",
        CryptMode::Encrypt => "encrypt",
        CryptMode::SignOnly => "sign-only",
    }
}

pub fn run(args: &FilesArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let dir = ctx.resolve(&args.snapshot)?;
    let snapshot = ctx.access()?.open_snapshot(&ctx.ns, &dir)?;
    let manifest = snapshot.manifest();
    let manifest_size = manifest_file_size(&*snapshot)?;

    let mut rows: Vec<(String, u64, &'static str)> = manifest
        .files
        .iter()
        .map(|f| (f.filename.clone(), f.size, crypt_mode_name(f.crypt_mode)))
        .collect();
    rows.push((MANIFEST_BLOB_NAME.to_string(), manifest_size, "none"));

    if ctx.output.is_json() {
        let list: Vec<_> = rows
            .iter()
            .map(|(name, size, mode)| json!({"filename": name, "size": size, "crypt-mode": mode}))
            .collect();
        ctx.output.print_json(&json!(list));
        return Ok(());
    }
    outln!("{dir}");
    let mut table = Table::new(&["file", "size", "bytes", "crypt-mode"])
        .align_right(1)
        .align_right(2);
    for (name, size, mode) in rows {
        table.push(vec![
            name,
            human_size(size),
            size.to_string(),
            mode.to_string(),
        ]);
    }
    table.print();
    Ok(())
}
