//! The command line: parse, resolve, call the library, print.

/// `println!` for results on stdout. A reader that has gone away (`pbsfs files X | head -1`)
/// ends the program quietly, the way it ends `cat`, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout_line(format_args!($($arg)*))
    };
}

pub mod agent;
pub mod cat;
pub mod completions;
pub mod context;
pub mod diff;
pub mod files;
pub mod find;
pub mod gc;
pub mod helper;
pub mod key;
pub mod keys;
pub mod logging;
pub mod manage;
pub mod mount;
pub mod output;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod push;
pub mod restore;
pub mod snapshots;
pub mod sync;
pub mod verify;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Back up to, browse, mount, verify and restore Proxmox Backup Server snapshots.
///
/// pbsfs works on a PBS datastore: a local directory in PBS layout (the default is
/// ~/.local/share/pbsfs/datastore) or a PBS server. Select it with --repository or
/// PBS_REPOSITORY (or --server/--datastore/...), and a namespace with --ns or PBS_NAMESPACE.
#[derive(Parser, Debug)]
#[command(name = "pbsfs", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub repo: context::RepoArgs,
    #[command(flatten)]
    pub log: logging::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the snapshots of a namespace (or of one backup group).
    Snapshots(snapshots::SnapshotsArgs),
    /// List a namespace and the namespaces below it.
    Namespaces(snapshots::NamespacesArgs),
    /// List the files (archives) of a snapshot with their sizes and crypt modes.
    Files(files::FilesArgs),
    /// Restore an archive: extract a pxar archive's tree into a directory (with owners,
    /// modes, times, xattrs, ACLs, devices, hardlinks), or write an archive as stored (raw
    /// pxar stream, image, blob content) to stdout (`-`) or a file.
    Restore(restore::RestoreArgs),
    /// Show what changed between two snapshots' pxar archives (of the same or different
    /// groups): added (+), removed (-) and modified (M) entries and what changed about them.
    /// Split archives are compared from their metadata; file data is read only with --content.
    Diff(diff::DiffArgs),
    /// Find paths matching a glob in snapshots (all of the namespace when none is named),
    /// from catalogs and metadata archives, never reading file contents.
    #[command(override_usage = "pbsfs find [OPTIONS] [SNAPSHOT|GROUP]... <PATTERN>")]
    Find(find::FindArgs),
    /// Write one file of a snapshot's pxar archive to stdout.
    Cat(cat::CatArgs),
    /// Create or show encryption key files.
    Key(key::KeyArgs),
    /// Mount a snapshot read-only (FUSE): its pxar archive as a directory tree, or its disk
    /// images as files. Runs in the background unless --foreground; `pbsfs umount` ends it.
    #[command(override_usage = "pbsfs mount [OPTIONS] [SNAPSHOT] <MOUNTPOINT>")]
    Mount(mount::MountArgs),
    /// Unmount a pbsfs mount (same as `fusermount3 -u`).
    Umount(mount::UmountArgs),
    /// Back up directories (pxar archives) and files or block devices (images) into a new
    /// snapshot, like `proxmox-backup-client backup`. The default datastore is created on
    /// first use.
    Push(push::PushArgs),
    /// Copy snapshots to another datastore (local or on a server) exactly as they are:
    /// encrypted and signed ones without the key. Only what the destination lacks travels.
    Sync(sync::SyncArgs),
    /// Back up directories of another host, reached with ssh (--rsh): `pbsfs agent` runs
    /// there and serves the files; this host encodes, chunks and stores them as `push`
    /// would. The backup id defaults to the client's host name.
    Pull(pull::PullArgs),
    /// Serve directories read-only on stdin/stdout for `pbsfs pull` (started by it through
    /// ssh, e.g. as the forced command of a key in authorized_keys).
    Agent(agent::AgentArgs),
    /// Check manifests, index checksums and every chunk (CRC, decompression, SHA-256).
    /// Exits non-zero when anything is wrong.
    Verify(verify::VerifyArgs),
    /// Create a local datastore (PATH, else --repository, else the default one).
    Init(manage::InitArgs),
    /// Remove snapshots from a local datastore (protected ones are refused).
    Forget(manage::ForgetArgs),
    /// Remove the snapshots of a group (or of every group, --all) that the --keep-* options
    /// do not keep, exactly as PBS decides.
    Prune(prune::PruneArgs),
    /// Protect a snapshot from forget and prune (--off: remove the protection).
    Protect(manage::ProtectArgs),
    /// Show a snapshot's notes, or set them (--set TEXT, --set - for stdin).
    Notes(manage::NotesArgs),
    /// Garbage collection: remove the chunks no snapshot uses any more (PBS's algorithm: a
    /// chunk unused for more than a day is removed).
    Gc(gc::GcArgs),
    /// Print a completion script for bash, zsh or fish.
    Completions(completions::CompletionsArgs),
    /// Write the man pages (pbsfs.1 and one per command) into a directory, e.g.
    /// ~/.local/share/man/man1.
    Manpages(completions::ManpagesArgs),
}

/// Subcommands that use no datastore: their help leaves the datastore options out.
const WITHOUT_DATASTORE: &[&str] = &["umount", "key", "completions", "manpages", "agent"];

/// Parses the command line. The datastore options are global (accepted before or after the
/// subcommand) and shown under their own heading, in the help of the commands that use a
/// datastore only.
pub fn parse_from(args: Vec<std::ffi::OsString>) -> Cli {
    let matches = command().get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

/// The command line's definition, as parsing, the man pages and the completions see it.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    // A subcommand that has an argument of a global's name does not get the global: give
    // those without a datastore hidden local stand-ins (accepted, shown nowhere, unused).
    let stand_ins: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_help_heading() == Some(context::DATASTORE_HEADING))
        .map(|arg| arg.clone().global(false).hide(true))
        .collect();
    for name in WITHOUT_DATASTORE {
        command = command.mut_subcommand(name, |sub| sub.args(stand_ins.clone()));
    }
    command
}

/// How a command that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything done: exit status 0.
    Done,
    /// Done, but not everything: a push whose snapshot was made with entries left out
    /// (exit status 3, as restic's).
    Partial,
}

/// A command stopped by a signal after cleaning up: exit status 128 + the signal's number,
/// as shells report a process the signal ended.
#[derive(Debug, Clone, Copy)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "a signal",
        };
        write!(f, "stopped by {name}")
    }
}

impl Outcome {
    pub fn exit_status(self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Partial => 3,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let repo = &cli.repo;
    let done = match cli.command {
        Command::Snapshots(args) => snapshots::run(&args, repo),
        Command::Namespaces(args) => snapshots::run_namespaces(&args, repo),
        Command::Files(args) => files::run(&args, repo),
        Command::Restore(args) => restore::run(&args, repo),
        Command::Diff(args) => diff::run(&args, repo),
        Command::Find(args) => find::run(&args, repo),
        Command::Cat(args) => cat::run(&args, repo),
        Command::Verify(args) => verify::run(&args, repo),
        Command::Push(mut args) => {
            args.backup.quiet = cli.log.quiet;
            return push::run(&args, repo);
        }
        Command::Sync(mut args) => {
            args.quiet = cli.log.quiet;
            sync::run(&args, repo)
        }
        Command::Pull(mut args) => {
            args.backup.quiet = cli.log.quiet;
            return pull::run(&args, repo);
        }
        Command::Agent(args) => agent::run(&args),
        Command::Mount(args) => mount::run(&args, repo),
        Command::Key(args) => key::run(&args, repo),
        Command::Umount(args) => mount::run_umount(&args),
        Command::Init(args) => manage::run_init(&args, repo),
        Command::Forget(args) => manage::run_forget(&args, repo),
        Command::Prune(args) => prune::run(&args, repo),
        Command::Protect(args) => manage::run_protect(&args, repo),
        Command::Notes(args) => manage::run_notes(&args, repo),
        Command::Gc(args) => gc::run(&args, repo, cli.log.quiet),
        Command::Completions(args) => completions::run(&args, command()),
        Command::Manpages(args) => completions::run_manpages(&args, command()),
    };
    done.map(|()| Outcome::Done)
}
