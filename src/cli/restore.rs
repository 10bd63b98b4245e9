//! `pbsfs restore SNAPSHOT ARCHIVE TARGET`: the raw archive (or a blob's content) to stdout or
//! a file.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::format::index::ChunkIndex as _;
use pbsfs::format::ReadAt;
use pbsfs::pxar::extract::{extract_with_accessor, ExtractOptions};
use pbsfs::pxar::{Accessor, Decoder};
use pbsfs::store::access::{open_index, read_blob, read_manifest_json, SnapshotAccess};
use pbsfs::store::archive::ArchiveKind;
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::local::MANIFEST_BLOB_NAME;
use pbsfs::store::open::{
    mountables, open_index_reader, open_mountable, resolve_archive_name, select_archive,
    snapshot_chunks, Mountable, OpenedArchive,
};

use serde_json::json;

use super::context::{Context, RepoArgs};
use super::output::{count, human_size};
use super::progress::{self, Status, StatusLine};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot as TYPE/ID/TIME; TIME may be a unique prefix (2026-04-13), an epoch or `latest`
    /// (the newest readable snapshot: a damaged one is passed by).
    pub snapshot: String,
    /// Archive name as listed by `pbsfs files`; the .didx/.fidx/.blob suffix may be left out.
    pub archive: String,
    /// `-` writes the raw archive to stdout. For a pxar archive (`root.pxar`, also a split
    /// `root.mpxar`+`root.ppxar` pair) any other TARGET is a directory to extract the tree
    /// into; for other archives it is the file to write.
    pub target: String,
    /// Replace existing files (and extract into an existing, non-empty directory).
    #[arg(long)]
    pub overwrite: bool,
    /// Extract only what matches this glob (repeatable), as `pxar extract --pattern`: it
    /// matches at any depth unless it starts with `/`, `**` spans directories, a trailing `/`
    /// matches directories only, `!GLOB` leaves out what an earlier pattern took; a matching
    /// directory brings its subtree.
    #[arg(long, value_name = "GLOB")]
    pub pattern: Vec<String>,
    /// Do not restore file owners (the default when not running as root). Setuid and setgid
    /// bits are then cleared on files, as GNU tar does.
    #[arg(long)]
    pub no_owner: bool,
    /// Extracting a pxar archive: go on past entries that cannot be read or written (a bad
    /// chunk), restore everything else, list what was not restored and exit non-zero.
    #[arg(long)]
    pub ignore_errors: bool,
}

pub fn run(args: &RestoreArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let dir = ctx.resolve(&args.snapshot)?;
    let (snapshot, crypt) = ctx.open_snapshot(&dir)?;
    let manifest = snapshot.manifest();
    let source = snapshot.chunk_source();
    if args.target != "-" {
        let all = mountables(manifest);
        let pxars: Vec<&Mountable> = select_archive(&all, &args.archive)
            .into_iter()
            .filter(|m| !m.is_image())
            .collect();
        if let [pxar] = pxars.as_slice() {
            let chunks = snapshot_chunks(&*snapshot, crypt.clone(), 64 << 20, 2);
            let OpenedArchive::Pxar(archive) = open_mountable(&*snapshot, pxar, chunks)? else {
                unreachable!("images filtered above")
            };
            // The payload stream (v2) or the whole archive (v1): about what is written.
            let total = archive
                .payload
                .as_ref()
                .unwrap_or(&archive.meta)
                .index()
                .total_size();
            return extract_tree(
                args,
                repo,
                archive.meta,
                archive.payload.map(|p| p as Arc<dyn ReadAt>),
                total,
            );
        }
    }
    if args.ignore_errors {
        // A stream with a hole is no use as an image or archive: better no file at all.
        bail!("--ignore-errors applies only when extracting a pxar archive into a directory");
    }
    let names: Vec<String> = manifest.files.iter().map(|f| f.filename.clone()).collect();
    // The manifest is listed by `files` but not in itself.
    let filename = if [MANIFEST_BLOB_NAME, "index.json"].contains(&args.archive.as_str()) {
        MANIFEST_BLOB_NAME.to_string()
    } else {
        resolve_archive_name(&args.archive, &names)?.to_string()
    };

    let write_all = |out: &mut dyn Write| -> Result<u64> {
        let written = match ArchiveKind::of(&filename) {
            _ if filename == MANIFEST_BLOB_NAME => {
                let data = read_manifest_json(&*snapshot)?;
                out.write_all(&data)?;
                data.len() as u64
            }
            Some(ArchiveKind::Blob) => {
                let data = read_blob(&*snapshot, &filename, crypt.as_deref())?;
                out.write_all(&data)?;
                data.len() as u64
            }
            _ => {
                let mode = manifest
                    .file(&filename)
                    .map(|f| f.crypt_mode)
                    .unwrap_or_default();
                let chunks = Arc::new(
                    VerifyingChunkReader::with_key(source.clone(), crypt.clone())
                        .expect_crypt_mode(mode),
                );
                let reader = open_index_reader(&*snapshot, &filename, chunks)?;
                reader.copy_to(out)?
            }
        };
        out.flush()?;
        Ok(written)
    };

    if args.target == "-" {
        let stdout = io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        // Stdout holds the data: no summary there, JSON or not.
        return write_all(&mut out).map(drop).with_context(|| {
            format!("writing {filename} to stdout stopped part way: the output is incomplete")
        });
    }
    let target = PathBuf::from(&args.target);
    if target.is_dir() {
        bail!(
            "{} is a directory; give a file name or - for stdout",
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
    let (partial, file) = create_temp_beside(&target)?;
    let written = Arc::new(AtomicU64::new(0));
    let total = archive_size(&*snapshot, &filename);
    let (counter, label) = (written.clone(), filename.clone());
    let display = StatusLine::start(quiet(), move |elapsed| Status {
        head: format!(
            "restoring {label}: {}",
            progress::amount(counter.load(Ordering::Relaxed), total, elapsed)
        ),
        tail: String::new(),
    });
    let result = (|| -> Result<u64> {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            CountingWriter {
                inner: file,
                written: written.clone(),
            },
        );
        let written = write_all(&mut out).with_context(|| {
            format!(
                "cannot restore {filename} to {} (nothing written)",
                target.display()
            )
        })?;
        out.into_inner()
            .map_err(|e| e.into_error())?
            .inner
            .sync_all()?;
        fs::rename(&partial, &target)
            .with_context(|| format!("cannot rename to {}", target.display()))?;
        Ok(written)
    })();
    progress::stop(display);
    let written = match result {
        Ok(written) => written,
        Err(err) => {
            let _ = fs::remove_file(&partial);
            return Err(err);
        }
    };
    if repo.output_format.is_json() {
        repo.output_format.print_json(&json!({
            "archive": filename,
            "target": target,
            "bytes": written,
        }));
    } else {
        eprintln!(
            "restored {filename} ({}) to {}",
            human_size(written),
            target.display()
        );
    }
    Ok(())
}

/// Extracts a pxar tree into the target directory.
fn extract_tree(
    args: &RestoreArgs,
    repo: &RepoArgs,
    meta: Arc<dyn ReadAt>,
    payload: Option<Arc<dyn ReadAt>>,
    total: u64,
) -> Result<()> {
    let target = PathBuf::from(&args.target);
    let created = !target.exists();
    let non_empty = fs::read_dir(&target)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !args.overwrite {
        bail!(
            "{} exists and is not empty (use --overwrite to restore into it)",
            target.display()
        );
    }
    if target.exists() && !target.is_dir() {
        bail!("{} exists and is not a directory", target.display());
    }
    let accessor = Accessor::open(meta.clone(), payload.clone())?;
    let mut decoder = Decoder::from_read_at(meta, payload);
    let options = ExtractOptions {
        overwrite: args.overwrite,
        allow_existing_dirs: true,
        patterns: args.pattern.clone(),
        restore_owner: !args.no_owner && unsafe { libc::geteuid() } == 0,
        ignore_errors: args.ignore_errors,
        ..ExtractOptions::default()
    };
    let written = options.bytes_written.clone();
    let entries = options.entries_done.clone();
    let display = StatusLine::start(quiet(), move |elapsed| Status {
        head: format!(
            "restoring: {}, {}",
            count(entries.load(Ordering::Relaxed), "entry", "entries"),
            progress::amount(written.load(Ordering::Relaxed), Some(total), elapsed)
        ),
        tail: String::new(),
    });
    let stats = extract_with_accessor(&mut decoder, Some(&accessor), &target, &options);
    progress::stop(display);
    let stats = stats?;
    if stats.entries == 0 && stats.failed.is_empty() && !args.pattern.is_empty() {
        if created {
            // Only if still empty: nothing of ours is in it.
            let _ = fs::remove_dir(&target);
        }
        bail!(
            "no entry of the archive matches --pattern {}: nothing restored (`pbsfs mount` \
             or `pbsfs restore SNAPSHOT ARCHIVE -` shows what the archive holds)",
            args.pattern.join(" --pattern ")
        );
    }
    if repo.output_format.is_json() {
        repo.output_format.print_json(&json!({
            "target": target,
            "entries": stats.entries,
            "bytes": stats.bytes,
            "setid-cleared": stats.setid_cleared,
            "not-restored": stats.failed.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        }));
    }
    if stats.setid_cleared > 0 {
        eprintln!(
            "note: setuid/setgid bits cleared on {} files because their owners were not restored",
            stats.setid_cleared
        );
    }
    for failure in &stats.failed {
        eprintln!("not restored: {failure}");
    }
    eprintln!(
        "restored {} entries ({} bytes of file data) into {}",
        stats.entries,
        stats.bytes,
        target.display()
    );
    if !stats.failed.is_empty() {
        bail!(
            "{} entries could not be restored (listed above)",
            stats.failed.len()
        );
    }
    Ok(())
}

/// Creates `.NAME.pbsfs-tmp-XXXXXXXX` next to `target`, exclusively (never an existing file
/// or a planted symlink).
fn create_temp_beside(target: &Path) -> Result<(PathBuf, fs::File)> {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    for _ in 0..100 {
        let temp =
            target.with_file_name(format!(".{name}.pbsfs-tmp-{:08x}", rand::random::<u32>()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot create {}", temp.display()))
            }
        }
    }
    bail!(
        "cannot find a free temporary name beside {}",
        target.display()
    )
}

/// -q was given (it sets the log level): no progress display.
fn quiet() -> bool {
    log::max_level() < log::LevelFilter::Info
}

/// Bytes the raw archive holds, when its index tells.
fn archive_size(snapshot: &dyn SnapshotAccess, filename: &str) -> Option<u64> {
    match ArchiveKind::of(filename) {
        Some(ArchiveKind::Blob) | None => None,
        Some(_) => open_index(snapshot, filename).ok().map(|i| i.total_size()),
    }
}

/// Counts what passes through, for the progress display.
struct CountingWriter<W> {
    inner: W,
    written: Arc<AtomicU64>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
