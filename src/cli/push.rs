//! `pbsfs push SOURCE...`: back up directories (pxar) and files or devices (images) into a
//! datastore, like `proxmox-backup-client backup`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use pbsfs::backup::client::{ClientCounters, ClientProvider, LocalClient};
use pbsfs::backup::exclude::ExcludePatterns;
use pbsfs::backup::protection::{mode_name, Protection};
use pbsfs::backup::server::{
    BackupOptions, BackupSpec, BackupSummary, ChangeDetection, Progress, Server,
};
use pbsfs::format::manifest::CryptMode;
use pbsfs::format::time::{epoch_to_rfc3339, parse_rfc3339};
use pbsfs::remote::{ConnectOptions, RemoteDatastore, RemoteTarget};
use pbsfs::repository::Repository;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupGroup, BackupNamespace, BackupType};
use pbsfs::store::target::BackupTarget;

use super::context::RepoArgs;
use super::output::{count, human_size};
use super::progress::{self, Status, StatusLine};
use super::Outcome;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One v1 .pxar archive per source plus a catalog; every file is read.
    Legacy,
    /// Split .mpxar/.ppxar archives; every file is read.
    Data,
    /// Split archives; files unchanged since the last snapshot of the group are not read.
    #[default]
    Metadata,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// What to back up: PATH (a directory; archive named after its last component, `root`
    /// for /), NAME.pxar:PATH (a directory tree) or NAME.img:PATH (a file or block device
    /// as an image of 4 MiB chunks).
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,

    #[command(flatten)]
    pub backup: BackupArgs,
}

/// What a push and a pull share: the group, the snapshot and how it is made.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Backup type of the group.
    #[arg(long, value_enum, default_value_t = TypeArg::Host)]
    pub backup_type: TypeArg,

    /// Backup ID of the group (default: the host name; for a pull the client's).
    #[arg(long)]
    pub backup_id: Option<String>,

    /// Snapshot time: RFC 3339 (2026-01-02T03:04:05Z) or seconds since the epoch
    /// (default: now).
    #[arg(long)]
    pub backup_time: Option<String>,

    /// How to find unchanged files.
    #[arg(long, value_enum, default_value_t)]
    pub change_detection_mode: Mode,

    /// Exclude paths matching PATTERN (gitignore style; `!` re-includes; repeatable).
    /// `.pxarexclude` files in the tree are honoured as well.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// Descend into other mounted file systems.
    #[arg(long)]
    pub all_file_systems: bool,

    /// Walk and encode, but store nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// No progress and no summary: the global -q/--quiet, which may also follow the
    /// command.
    #[arg(skip)]
    pub quiet: bool,

    /// Threads for hashing and compression (default: one per core).
    #[arg(long, default_value_t = 0, hide = true)]
    pub workers: usize,

    /// How the archives are protected. Default: encrypt when there is a key (--keyfile, or
    /// the official client's default key if it exists), none otherwise.
    #[arg(long, value_enum)]
    pub crypt_mode: Option<CryptModeArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CryptModeArg {
    /// Encrypted chunks (keyed digests) and a signed manifest.
    Encrypt,
    /// Plain chunks, but a manifest signed with the key.
    SignOnly,
    /// Neither encrypted nor signed.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    Host,
    Vm,
    Ct,
}

/// Backs up; `Outcome::Partial` when the snapshot was made but entries were left out.
pub fn run(args: &PushArgs, repo: &RepoArgs) -> Result<Outcome> {
    let specs = args
        .sources
        .iter()
        .map(|s| BackupSpec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let abort = install_signal_handlers()?;
    let client = LocalClient::new();
    let counters = client.shared_counters();
    back_up(
        &client,
        counters,
        &specs,
        &args.backup,
        repo,
        &hostname,
        abort,
    )
}

/// Backs up `specs` from `client` into the selected repository: the part of a push that a
/// pull shares. `default_id` names the group when --backup-id is not given; `abort` is
/// the flag the signal handlers (and a broken connection) set.
pub(super) fn back_up(
    client: &dyn ClientProvider,
    counters: Arc<ClientCounters>,
    specs: &[BackupSpec],
    args: &BackupArgs,
    repo: &RepoArgs,
    default_id: &dyn Fn() -> Result<String>,
    abort: Arc<AtomicBool>,
) -> Result<Outcome> {
    let backup_type = match args.backup_type {
        TypeArg::Host => BackupType::Host,
        TypeArg::Vm => BackupType::Vm,
        TypeArg::Ct => BackupType::Ct,
    };
    let backup_id = match &args.backup_id {
        Some(id) => id.clone(),
        None => default_id()?,
    };
    let group = BackupGroup::new(backup_type, &backup_id)?;
    let time = match &args.backup_time {
        Some(text) => parse_time(text)?,
        None => now(),
    };
    if time > now() {
        // The next metadata-mode push trusts that a snapshot was made after its time.
        bail!("--backup-time {time} is in the future; a snapshot is named after when it starts");
    }
    let ns = BackupNamespace::parse(repo.namespace.as_deref().unwrap_or(""))?;

    let mut options = BackupOptions::new(group, time);
    options.ns = ns;
    options.mode = match args.change_detection_mode {
        Mode::Legacy => ChangeDetection::Legacy,
        Mode::Data => ChangeDetection::Data,
        Mode::Metadata => ChangeDetection::Metadata,
    };
    options.patterns = ExcludePatterns::from_cli(&args.exclude)?;
    options.all_file_systems = args.all_file_systems;
    options.dry_run = args.dry_run;
    options.workers = args.workers;
    options.abort = abort;
    options.protection = protection(args.crypt_mode, repo, args.quiet)?;

    let store: Option<Arc<dyn BackupTarget>> = if args.dry_run {
        None
    } else {
        Some(open_store(repo, args.quiet)?)
    };
    let progress = Arc::new(Progress::default());
    options.progress = Some(progress.clone());
    let display = StatusLine::start(args.quiet, move |elapsed| Status {
        head: format!(
            "{}, read {} ",
            count(progress.entries.load(Ordering::Relaxed), "entry", "entries"),
            progress::amount(counters.content_bytes(), None, elapsed)
        ),
        tail: progress
            .current
            .lock()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    });

    let server = match &store {
        Some(store) => Server::new(store.clone()),
        None => Server::dry_run_only(),
    };
    let result = server.run_backup(client, specs, &options);
    progress::stop(display);
    let summary = match result {
        Ok(summary) => summary,
        Err(err) => {
            return Err(match FIRST_SIGNAL.load(Ordering::SeqCst) {
                0 => err,
                signal => err.context(super::Interrupted(signal)),
            })
        }
    };
    if !args.quiet || repo.output_format.is_json() {
        print_summary(&summary, &options, repo);
    }
    Ok(if summary.walk.is_partial() {
        Outcome::Partial
    } else {
        Outcome::Done
    })
}

/// The crypt mode and key, chosen like the official client: --keyfile means encrypt unless
/// told otherwise; without it the default key is used if it exists (unless `none`).
fn protection(requested: Option<CryptModeArg>, repo: &RepoArgs, quiet: bool) -> Result<Protection> {
    let requested = requested.map(|mode| match mode {
        CryptModeArg::Encrypt => CryptMode::Encrypt,
        CryptModeArg::SignOnly => CryptMode::SignOnly,
        CryptModeArg::None => CryptMode::None,
    });
    let key_path = match (&repo.keyfile, requested) {
        (Some(_), Some(CryptMode::None)) => {
            bail!("--keyfile and --crypt-mode none are incompatible")
        }
        (Some(path), _) => Some(path.clone()),
        (None, Some(CryptMode::None)) => None,
        (None, _) => match super::keys::default_key_path() {
            Ok(path) if path.exists() => {
                if !quiet {
                    eprintln!("using the default encryption key {}", path.display());
                }
                Some(path)
            }
            _ => match requested {
                Some(mode) => bail!(
                    "--crypt-mode {} needs a key: pass --keyfile or create the default key \
                     with `pbsfs key create`",
                    mode_name(mode)
                ),
                None => None,
            },
        },
    };
    let key = key_path
        .map(|path| super::keys::load_crypt_config(&path))
        .transpose()?;
    let mode = requested.unwrap_or(if key.is_some() {
        CryptMode::Encrypt
    } else {
        CryptMode::None
    });
    Ok(Protection::new(mode, key)?)
}

/// The selected datastore: a PBS server (connected like every other command does, see
/// `Context::open`), or a local directory, created on first use.
fn open_store(repo: &RepoArgs, quiet: bool) -> Result<Arc<dyn BackupTarget>> {
    let location = match repo.selected()? {
        // Only the default datastore is made on first use: a typo must not make 258 MiB.
        Some(Repository::Local(path)) => {
            return Ok(Arc::new(LocalTarget::new(Arc::new(
                super::context::open_local(&path)?,
            ))))
        }
        Some(Repository::Remote(remote)) => {
            let options = ConnectOptions::from_env(&remote, repo.fingerprint.as_deref())?;
            let store = RemoteDatastore::connect(&remote, options)?;
            return Ok(Arc::new(RemoteTarget::new(Arc::new(store))));
        }
        None => Repository::default_local()?,
    };
    Ok(Arc::new(LocalTarget::new(open_or_create_default(
        &location, quiet,
    )?)))
}

/// Opens the default datastore, creating it on first use.
fn open_or_create_default(location: &std::path::Path, quiet: bool) -> Result<Arc<LocalDatastore>> {
    if location.join(".chunks").is_dir() {
        return Ok(Arc::new(LocalDatastore::open(location)?));
    }
    if !quiet {
        eprintln!(
            "creating datastore {} (65536 chunk directories, this can take a while)",
            location.display()
        );
    }
    Ok(Arc::new(LocalDatastore::create(location).with_context(
        || format!("cannot create datastore {}", location.display()),
    )?))
}

fn print_summary(summary: &BackupSummary, options: &BackupOptions, repo: &RepoArgs) {
    let walk = &summary.walk;
    let secs = summary.duration.as_secs_f64();
    let snapshot = summary.snapshot.as_ref().map(|dir| {
        if options.ns.is_root() {
            dir.to_string()
        } else {
            format!("{}:{dir}", options.ns)
        }
    });
    if repo.output_format.is_json() {
        let value = json!({
            "snapshot": snapshot,
            "dry-run": options.dry_run,
            "crypt-mode": mode_name(options.protection.mode()),
            "archives": summary.archives.iter().map(|a| json!({
                "filename": a.filename, "size": a.size, "chunks": a.chunks,
            })).collect::<Vec<_>>(),
            "files": walk.files,
            "hardlinks": walk.hardlinks,
            "directories": walk.directories,
            "other-entries": walk.others,
            "bytes-read": summary.bytes_read,
            "chunks": summary.chunks,
            "bytes": summary.bytes,
            "new-chunks": summary.new_chunks,
            "new-bytes": summary.new_bytes,
            "new-stored-bytes": summary.new_stored_bytes,
            "reused-chunks": summary.reused_chunks + (summary.chunks - summary.new_chunks),
            "reused-bytes": summary.reused_chunk_bytes + (summary.bytes - summary.new_bytes),
            "reused-files": walk.reused_files,
            "reused-file-bytes": walk.reused_bytes,
            "copied-files": walk.copied_files,
            "copied-file-bytes": walk.copied_bytes,
            "reread-files": walk.reread_files,
            "reread-file-bytes": walk.reread_bytes,
            "attributes-read": walk.attributes_read,
            "warnings": walk.warnings,
            "left-out": walk.left_out,
            "incomplete-files": walk.incomplete,
            "duration": secs,
        });
        repo.output_format.print_json(&value);
        return;
    }
    let mut out = std::io::stdout().lock();
    for archive in &summary.archives {
        let _ = writeln!(
            out,
            "{}: {} in {}",
            archive.filename,
            human_size(archive.size),
            count(archive.chunks, "chunk", "chunks")
        );
    }
    let _ = writeln!(
        out,
        "{}, {}, {}, {}; {} read ({}/s)",
        count(walk.files, "file", "files"),
        count(walk.hardlinks, "hardlink", "hardlinks"),
        count(walk.directories, "directory", "directories"),
        count(walk.others, "other entry", "other entries"),
        human_size(summary.bytes_read),
        human_size((summary.bytes_read as f64 / secs.max(1e-6)) as u64)
    );
    if !options.dry_run {
        let reused_chunks = summary.reused_chunks + (summary.chunks - summary.new_chunks);
        let reused_bytes = summary.reused_chunk_bytes + (summary.bytes - summary.new_bytes);
        let _ = writeln!(
            out,
            "new: {}, {} ({} stored); re-used: {}, {}",
            count(summary.new_chunks, "chunk", "chunks"),
            human_size(summary.new_bytes),
            human_size(summary.new_stored_bytes),
            count(reused_chunks, "chunk", "chunks"),
            human_size(reused_bytes)
        );
    }
    if let Some(fingerprint) = options.protection.fingerprint() {
        let _ = writeln!(
            out,
            "crypt mode {} with key {}",
            mode_name(options.protection.mode()),
            fingerprint.short()
        );
    }
    if walk.reused_files + walk.copied_files > 0 {
        let _ = writeln!(
            out,
            "unchanged files not read: {} ({})",
            walk.reused_files + walk.copied_files,
            human_size(walk.reused_bytes + walk.copied_bytes)
        );
    }
    if walk.copied_files > 0 {
        let _ = writeln!(
            out,
            "  of them copied from the previous snapshot's chunks: {} ({}); re-using those \
             chunks would have stored more than 10 % unused bytes",
            walk.copied_files,
            human_size(walk.copied_bytes)
        );
    }
    if walk.reread_files > 0 {
        let _ = writeln!(
            out,
            "unchanged files read again: {} ({}); re-using their chunks would have stored \
             more than 10 % unused bytes, and they are over 8 MiB or their previous chunks \
             could not be read",
            walk.reread_files,
            human_size(walk.reread_bytes)
        );
    }
    if walk.warnings > 0 {
        let _ = writeln!(out, "warnings: {} (see above)", walk.warnings);
    }
    if walk.left_out > 0 {
        let _ = writeln!(
            out,
            "left out: {} entries that could not be read (see the warnings)",
            walk.left_out
        );
    }
    if walk.incomplete > 0 {
        let _ = writeln!(
            out,
            "incomplete: {} files that could not be read to the end, zeros stored in place \
             of the rest (see the warnings)",
            walk.incomplete
        );
    }
    match &snapshot {
        Some(name) => {
            let _ = writeln!(out, "snapshot {name} finished in {secs:.1} s");
        }
        None => {
            let _ = writeln!(out, "dry run finished in {secs:.1} s: nothing was stored");
        }
    }
}

/// Seconds since the epoch or RFC 3339.
fn parse_time(text: &str) -> Result<i64> {
    if let Ok(epoch) = text.parse::<i64>() {
        if epoch_to_rfc3339(epoch).is_none() {
            bail!("backup time {epoch} is out of range");
        }
        return Ok(epoch);
    }
    parse_rfc3339(text).with_context(|| format!("invalid backup time '{text}'"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        bail!("cannot read the host name; pass --backup-id");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    // The short name, as the official client uses.
    Ok(name.split('.').next().unwrap_or("localhost").to_string())
}

/// The signal that interrupted the push (or a sync, which uses the same handlers; 0: none),
/// for its exit status.
pub(super) static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session) set the abort flag once,
/// so the backup unwinds and removes its unfinished snapshot; a second signal gets the
/// default action.
pub(super) fn install_signal_handlers() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        let flag = flag.clone();
        // One atomic swap decides which signal is the first: two signals handled at the same
        // time on two threads cannot both see the flag unset.
        let action = move || {
            if flag.swap(true, Ordering::SeqCst) {
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            } else {
                FIRST_SIGNAL.store(signal, Ordering::SeqCst);
            }
        };
        // SAFETY: the action only swaps an atomic and calls the async-signal-safe
        // emulate_default_handler.
        unsafe { signal_hook::low_level::register(signal, action) }
            .context("cannot install the signal handlers")?;
    }
    Ok(flag)
}
