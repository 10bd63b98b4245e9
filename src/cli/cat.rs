//! `pbsfs cat SNAPSHOT PATH`: one file of a pxar archive to stdout, read through verified
//! chunks like everything else.

use std::io::{self, Write};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::pxar::entry::EntryKind;
use pbsfs::store::diff::show_path;

use super::context::{Context, RepoArgs};
use super::output::exit_for_closed_stdout;

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Snapshot as TYPE/ID/TIME; TIME may be a unique prefix (2026-04-13), an epoch or `latest`.
    pub snapshot: String,
    /// The file's path inside the archive, e.g. /etc/hosts.
    pub path: String,
    /// The pxar archive (needed when the snapshot has several), e.g. root.pxar.
    #[arg(long, value_name = "NAME")]
    pub archive: Option<String>,
}

const BLOCK: usize = 4 << 20;

pub fn run(args: &CatArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let (dir, pxar) = ctx.open_pxar(&args.snapshot, args.archive.as_deref(), 64 << 20)?;
    let accessor = pxar.accessor()?;
    let wanted = args.path.trim_matches('/').as_bytes();
    let shown = show_path(wanted);
    let Some(entry) = accessor.lookup_path(wanted)? else {
        bail!("{shown}: no such file in {dir}");
    };
    let file = match &entry.kind {
        EntryKind::File { .. } => entry,
        EntryKind::Hardlink { .. } => accessor.follow_hardlink(&entry)?,
        EntryKind::Directory => bail!("{shown} is a directory in {dir}"),
        EntryKind::Symlink { target } => bail!(
            "{shown} is a symlink (to {}) in {dir}",
            String::from_utf8_lossy(target)
        ),
        _ => bail!("{shown} is not a regular file in {dir}"),
    };
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; BLOCK.min(file.file_size() as usize)];
    let mut offset = 0;
    while offset < file.file_size() {
        let n = accessor
            .read_file(&file, offset, &mut buf)
            .with_context(|| format!("reading {shown} stopped at byte {offset}"))?;
        if n == 0 {
            bail!("{shown}: file data ends early at byte {offset}");
        }
        write_out(&mut stdout, &buf[..n])?;
        offset += n as u64;
    }
    stdout.flush().or_else(closed_stdout)?;
    Ok(())
}

fn write_out(out: &mut impl Write, data: &[u8]) -> Result<()> {
    out.write_all(data).or_else(closed_stdout)?;
    Ok(())
}

/// A reader that went away ends the program as it ends `cat`.
fn closed_stdout(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        exit_for_closed_stdout();
    }
    Err(err)
}
