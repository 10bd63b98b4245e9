//! Where the library's log records go: stderr, through the `log` facade, with the level
//! chosen by `-v`/`-q` or the `PBSFS_LOG` environment variable; the system log and/or a
//! log file once a background mount has left the terminal.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};
use clap::{ArgAction, Args};
use log::Level;

use pbsfs::format::time::epoch_to_rfc3339;

/// How much is said on stderr; for every command.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Options")]
pub struct LogArgs {
    /// Say more: -v shows debug messages of pbsfs, -vv everything, from every library.
    /// PBSFS_LOG (e.g. `debug`, `pbsfs::store=trace`) overrides both flags.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Say less: warnings and errors only; a push also shows no progress and no summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl LogArgs {
    /// The filter (in `env_logger`'s syntax) that the flags ask for: pbsfs's own modules,
    /// and the FUSE adapter's, at one level, other libraries at warnings.
    fn filter(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            // fuser warns when the unmount it tries at the end finds the mount gone
            // already, which is how every `pbsfs umount` ends.
            (true, _) => "warn,fuser=error",
            (false, 0) => "warn,fuser=error,pbsfs=info,pbsfs_mount=info",
            (false, 1) => "warn,fuser=error,pbsfs=debug,pbsfs_mount=debug",
            (false, _) => "trace",
        }
    }
}

/// Installs the logger. Warnings read `warning: ...` and errors `pbsfs: error: ...`, as the
/// command's own messages do; `-v` adds the level and the module to each line.
pub fn init(args: &LogArgs) {
    let detailed = args.verbose > 0;
    let mut builder = env_logger::Builder::new();
    match std::env::var("PBSFS_LOG") {
        Ok(filters) => builder.parse_filters(&filters),
        Err(_) => builder.parse_filters(args.filter()),
    };
    builder.format(move |out, record| {
        let message = record.args();
        if detailed {
            return writeln!(out, "[{} {}] {message}", record.level(), record.target());
        }
        match record.level() {
            Level::Error => writeln!(out, "pbsfs: error: {message}"),
            Level::Warn => writeln!(out, "warning: {message}"),
            Level::Info => writeln!(out, "{message}"),
            level => writeln!(out, "[{level} {}] {message}", record.target()),
        }
    });
    let stderr = builder.build();
    log::set_max_level(stderr.filter());
    let logger = LOGGER.get_or_init(|| Logger {
        stderr,
        detached: Mutex::new(None),
    });
    // Only fails when a logger is installed already, which is then kept.
    let _ = log::set_logger(logger);
}

/// Where messages go once a background process has left the terminal: the system log
/// (`/dev/log`, read by journald or syslog) and `log_file` if given, instead of stderr
/// (then `/dev/null`).
pub fn detach(log_file: Option<std::fs::File>) {
    let syslog = UnixDatagram::unbound()
        .and_then(|socket| socket.connect("/dev/log").map(|()| socket))
        .ok();
    if let Some(logger) = LOGGER.get() {
        *logger.detached.lock().unwrap_or_else(|e| e.into_inner()) = Some(Detached {
            syslog,
            file: log_file,
        });
    }
}

/// Opens (creates, appends to) a log file, before anything depends on it.
pub fn open_log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// env_logger's filter and stderr format, and the sinks of a detached process.
struct Logger {
    stderr: env_logger::Logger,
    detached: Mutex<Option<Detached>>,
}

struct Detached {
    syslog: Option<UnixDatagram>,
    file: Option<std::fs::File>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.stderr.matches(record) {
            return;
        }
        let mut detached = self.detached.lock().unwrap_or_else(|e| e.into_inner());
        let Some(detached) = detached.as_mut() else {
            drop(detached);
            return self.stderr.log(record);
        };
        let (severity, label) = match record.level() {
            Level::Error => (3, "error"),
            Level::Warn => (4, "warning"),
            Level::Info => (6, "info"),
            Level::Debug | Level::Trace => (7, "debug"),
        };
        let message = record.args().to_string();
        if let Some(socket) = &detached.syslog {
            // RFC 3164 as the local syslog socket takes it: facility daemon (3).
            let line = format!(
                "<{}>pbsfs[{}]: {label}: {message}",
                3 * 8 + severity,
                std::process::id()
            );
            let _ = socket.send(line.as_bytes());
        }
        if let Some(file) = detached.file.as_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let time = epoch_to_rfc3339(now).unwrap_or_default();
            let _ = writeln!(
                file,
                "{time} pbsfs[{}] {label}: {message}",
                std::process::id()
            );
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_choose_the_level() {
        let args = |verbose, quiet| LogArgs { verbose, quiet };
        assert_eq!(args(0, true).filter(), "warn,fuser=error");
        assert!(args(0, false).filter().contains("pbsfs=info"));
        assert!(args(1, false).filter().contains("pbsfs=debug"));
        assert_eq!(args(2, false).filter(), "trace");
    }
}
