//! `pbsfs mount SNAPSHOT MOUNTPOINT` and `pbsfs umount MOUNTPOINT`.
//!
//! By default the mount runs in a background process, and the command returns only once
//! the mount is ready (or with the error that prevented it). SIGTERM, SIGINT and SIGHUP
//! unmount cleanly.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use pbsfs::snapfs;
use pbsfs::store::cache::ChunkCache;
use pbsfs::store::open::snapshot_chunks;
use pbsfs_mount::MountOptions;

use super::context::{Context, RepoArgs};

/// Threads fetching and decoding chunks ahead of readers: more than the cores, so that a
/// chunk waiting for the disk (or the network) leaves a core to decode another.
const PREFETCH_WORKERS: usize = 8;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// `[SNAPSHOT] MOUNTPOINT`. SNAPSHOT is TYPE/ID/TIME (TIME may be a unique prefix such
    /// as 2026-04-13, an epoch or `latest`, the newest readable one). Without it the whole
    /// datastore (from the selected namespace down) is mounted: [ns/NS/]TYPE/ID/TIME/ARCHIVE/...,
    /// opened lazily; snapshots with a damaged manifest are left out.
    #[arg(required = true, num_args = 1..=2, value_names = ["SNAPSHOT", "MOUNTPOINT"])]
    pub targets: Vec<String>,
    /// Which archive to show when the snapshot has several (e.g. `root.pxar`, `drive-scsi0.img`).
    #[arg(long, value_name = "NAME")]
    pub archive: Option<String>,
    /// Memory for decoded chunks, e.g. 256M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Mount options passed on (comma-separated, repeatable): allow_other, allow_root, noexec,
    /// nosuid, nodev, ...
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground instead of running in the background.
    #[arg(short, long)]
    pub foreground: bool,
    /// In the background, log to this file as well as to the system log (journald or
    /// syslog, identifier `pbsfs`): read errors (a bad chunk: which file, archive, chunk
    /// and why) and, with -v, more. `-o log_file=PATH` in fstab.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Whole-datastore mounts: a directory listing older than this many seconds is taken
    /// again on its next use, so backups made or forgotten since appear or disappear
    /// without a remount (default 30). `-o refresh=SECONDS` in fstab.
    #[arg(long, value_name = "SECONDS")]
    pub refresh: Option<u64>,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where a pbsfs mount is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open; the mount goes away when they are closed.
    #[arg(long)]
    pub lazy: bool,
}

/// `256M`, `2G`, `1048576`, `512K`: binary units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size '{text}'"))?;
    value
        .checked_shl(shift)
        .filter(|v| v >> shift == value)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

pub fn run(args: &MountArgs, repo: &RepoArgs) -> Result<()> {
    let (snapshot, mountpoint) = match args.targets.as_slice() {
        [mountpoint] => (None, PathBuf::from(mountpoint)),
        [snapshot, mountpoint] => (Some(snapshot.clone()), PathBuf::from(mountpoint)),
        _ => bail!("expected [SNAPSHOT] MOUNTPOINT"),
    };
    detach_dead_mount(&mountpoint)?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {} does not exist", mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if let Some(entry) = pbsfs_mount::mount_at(&mountpoint)?.filter(is_pbsfs) {
        bail!(
            "{} is already mounted ({}); unmount it first: pbsfs umount {}",
            mountpoint.display(),
            entry.source,
            mountpoint.display()
        );
    }
    // The background process is started before anything else (a PBS connection's threads
    // would not survive the fork); it reports success or the error that stopped it, and this
    // process prints it and exits accordingly.
    let log_file = match (&args.log_file, args.foreground) {
        (Some(path), false) => Some(super::logging::open_log_file(path)?),
        (Some(_), true) => {
            bail!("--log-file is for background mounts; a foreground one logs to stderr")
        }
        (None, _) => None,
    };
    let ready = if args.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    // Caught from before the mount exists, so that a signal arriving while it is being
    // made still unmounts it.
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install the signal handlers")?;
    let result = prepare_mount(args, repo, snapshot.as_deref(), &mountpoint);
    let mounted = match (result, ready) {
        (Ok(mounted), ready) => {
            if let Some(ready) = ready {
                ready.report(Ok(()));
                // stderr is /dev/null from here on.
                super::logging::detach(log_file);
                log::info!(
                    "mounted {} on {}",
                    mounted_what(&snapshot),
                    mountpoint.display()
                );
            }
            mounted
        }
        (Err(err), Some(ready)) => {
            ready.report(Err(&err));
            std::process::exit(1);
        }
        (Err(err), None) => return Err(err),
    };
    serve_until_signal(mounted, &mountpoint, signals)
}

type Mounted = pbsfs_mount::MountedFs<Arc<dyn pbsfs_mount::ReadOnlyFs>>;

fn mounted_what(snapshot: &Option<String>) -> &str {
    snapshot.as_deref().unwrap_or("the datastore")
}

/// Opens the datastore, the snapshot (or the whole store) and mounts it.
fn prepare_mount(
    args: &MountArgs,
    repo: &RepoArgs,
    snapshot: Option<&str>,
    mountpoint: &Path,
) -> Result<Mounted> {
    let ctx = Context::open(repo)?;
    let mut options = MountOptions {
        subtype: Some("pbsfs".into()),
        ..MountOptions::default()
    };
    for option in args.options.iter().flat_map(|o| o.split(',')) {
        match option.trim() {
            "" => {}
            "allow_other" => options.allow_other = true,
            other => options.extra.push(other.to_string()),
        }
    }
    let fs: Arc<dyn pbsfs_mount::ReadOnlyFs> = match snapshot {
        Some(_) if args.refresh.is_some() => {
            bail!("--refresh is for whole-datastore mounts; a snapshot never changes")
        }
        Some(spec) => {
            let dir = ctx.resolve(spec)?;
            let (snapshot, crypt) = ctx.open_snapshot(&dir)?;
            options.fsname = Some(format!("pbsfs:{dir}"));
            let cache = snapshot_chunks(
                &*snapshot,
                crypt,
                args.cache_size as usize,
                PREFETCH_WORKERS,
            );
            snapfs::open_snapshot(&*snapshot, args.archive.as_deref(), cache)?
        }
        None => {
            // The whole store; --keyfile, if given, serves the encrypted archives in it.
            let crypt = ctx.crypt()?;
            options.fsname = Some(format!("pbsfs:{}", ctx.location));
            let cache = ChunkCache::shared(args.cache_size as usize, PREFETCH_WORKERS);
            Arc::new(
                snapfs::StoreFs::new(
                    ctx.access()?.clone(),
                    ctx.ns.clone(),
                    Arc::new(cache),
                    crypt,
                )?
                .with_refresh(
                    args.refresh
                        .map_or(snapfs::store_tree::DEFAULT_REFRESH, Duration::from_secs),
                ),
            )
        }
    };
    pbsfs_mount::mount(fs, mountpoint, &options)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))
}

/// Serves on a thread and waits for SIGTERM, SIGINT or SIGHUP (then unmounts) or for an
/// unmount from outside.
fn serve_until_signal(
    mounted: pbsfs_mount::MountedFs<Arc<dyn pbsfs_mount::ReadOnlyFs>>,
    mountpoint: &Path,
    mut signals: Signals,
) -> Result<()> {
    let wake = signals.handle();
    let server = std::thread::spawn(move || {
        let result = mounted.run();
        // The mount ended from outside (umount, fusermount -u): end the wait below.
        wake.close();
        result
    });
    if signals.forever().next().is_some() {
        if let Err(err) = pbsfs_mount::unmount(mountpoint) {
            eprintln!(
                "pbsfs: unmount of {} failed ({err}); detaching",
                mountpoint.display()
            );
            let _ = pbsfs_mount::unmount_lazy(mountpoint);
        }
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the FUSE session panicked"))??;
    Ok(())
}

/// The child's end of the "mount is ready" pipe.
struct Ready(std::fs::File);

impl Ready {
    fn report(mut self, result: Result<(), &anyhow::Error>) {
        let message = match result {
            Ok(()) => "ok\n".to_string(),
            Err(err) => format!("{err:#}"),
        };
        let _ = self.0.write_all(message.as_bytes());
        // Leave the terminal's session and working directory only now: until the mount was
        // ready, a key password could still be asked for on the terminal.
        unsafe { libc::setsid() };
        let _ = std::env::set_current_dir("/");
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            for fd in 0..3 {
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }
}

/// Forks: the parent waits for the child's report and exits with it; the child continues
/// in a new session and returns its end of the pipe.
fn daemonize() -> Result<Ready> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(read_end);
            Ok(Ready(std::fs::File::from(write_end)))
        }
        _child => {
            drop(write_end);
            let mut message = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut message);
            if message == "ok\n" {
                std::process::exit(0);
            }
            if message.is_empty() {
                message = "the mount process ended without reporting".into();
            }
            eprintln!("pbsfs: error: {message}");
            std::process::exit(1);
        }
    }
}

pub fn run_umount(args: &UmountArgs) -> Result<()> {
    // Not canonicalised: the path of a dead mount cannot be resolved.
    let path = std::path::absolute(&args.mountpoint)?;
    let path = path.canonicalize().unwrap_or(path);
    match pbsfs_mount::mount_at(&path)? {
        None => bail!("{} is not mounted", path.display()),
        Some(entry) if !is_pbsfs(&entry) => bail!(
            "{} is not a pbsfs mount (it is {} from {}); use umount(8) for it",
            path.display(),
            entry.fstype,
            entry.source
        ),
        Some(_) => {}
    }
    let result = if args.lazy {
        pbsfs_mount::unmount_lazy(&path)
    } else {
        pbsfs_mount::unmount(&path)
    };
    result.with_context(|| format!("cannot unmount {}", path.display()))
}

/// A FUSE mount (pbsfs mounts are `fuse.pbsfs`, or another subtype if `-o subtype=` said so).
fn is_pbsfs(entry: &pbsfs_mount::MountEntry) -> bool {
    entry.fstype == "fuse" || entry.fstype.starts_with("fuse.")
}

/// A FUSE mount whose process died (`kill -9`) leaves its mount point answering ENOTCONN:
/// detach it, with a note, so that mounting there again works.
fn detach_dead_mount(mountpoint: &Path) -> Result<()> {
    let Err(err) = std::fs::metadata(mountpoint) else {
        return Ok(());
    };
    if err.raw_os_error() != Some(libc::ENOTCONN) {
        return Ok(());
    }
    let path = std::path::absolute(mountpoint)?;
    if pbsfs_mount::mount_at(&path)?.filter(is_pbsfs).is_none() {
        return Ok(());
    }
    pbsfs_mount::unmount_lazy(&path).with_context(|| {
        format!(
            "{} holds a mount whose process has ended, and it cannot be detached",
            path.display()
        )
    })?;
    eprintln!(
        "note: {} held a mount whose process had ended; detached it",
        path.display()
    );
    Ok(())
}
