//! `pbsfs restore SNAPSHOT ARCHIVE TARGET`: the raw archive (or a blob's content) to stdout or
//! a file.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::store::archive::{open_index_reader, read_blob, ArchiveKind};
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::snapshot::resolve_archive_name;

use super::context::{Context, RepoArgs};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot as TYPE/ID/TIME; TIME may be a unique prefix (2026-04-13), an epoch or `latest`.
    pub snapshot: String,
    /// Archive name as listed by `pbsfs files`; the .didx/.fidx/.blob suffix may be left out.
    pub archive: String,
    /// `-` writes the raw archive to stdout; a file path writes it there.
    pub target: String,
    /// Replace TARGET if it already exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: &RestoreArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let dir = ctx.resolve(&args.snapshot)?;
    let store = ctx.store()?;
    let manifest = store.read_manifest(&ctx.ns, &dir)?;
    let names: Vec<String> = manifest.files.iter().map(|f| f.filename.clone()).collect();
    let filename = resolve_archive_name(&args.archive, &names)?.to_string();

    let write_all = |out: &mut dyn Write| -> Result<()> {
        match ArchiveKind::of(&filename) {
            Some(ArchiveKind::Blob) => {
                let data = read_blob(store, &ctx.ns, &dir, &manifest, &filename)?;
                out.write_all(&data)?;
            }
            _ => {
                let chunks = Arc::new(VerifyingChunkReader::new(store.clone()));
                let reader = open_index_reader(store, &ctx.ns, &dir, &manifest, &filename, chunks)?;
                reader.copy_to(out)?;
            }
        }
        out.flush()?;
        Ok(())
    };

    if args.target == "-" {
        let stdout = io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        return write_all(&mut out);
    }
    let target = PathBuf::from(&args.target);
    if target.is_dir() {
        bail!(
            "{} is a directory; extracting an archive into a directory is not available yet — \
             give a file name or - for stdout",
            target.display()
        );
    }
    if target.exists() && !args.overwrite {
        bail!(
            "{} already exists (use --overwrite to replace it)",
            target.display()
        );
    }
    // Write next to the target and rename at the end: a failed restore leaves no partial file
    // under the target name.
    let partial = partial_path(&target);
    let result = (|| -> Result<()> {
        let file = fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write_all(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&partial, &target)
            .with_context(|| format!("cannot rename to {}", target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".pbsfs-partial");
    target.with_file_name(name)
}
