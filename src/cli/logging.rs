//! Where the library's log records go: stderr, through the `log` facade, with the level
//! chosen by `-v`/`-q` or the `PBSFS_LOG` environment variable.

use std::io::Write;

use clap::{ArgAction, Args};
use log::Level;

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
            (true, _) => "warn",
            (false, 0) => "warn,pbsfs=info,pbsfs_mount=info",
            (false, 1) => "warn,pbsfs=debug,pbsfs_mount=debug",
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
    // Only fails when a logger is installed already, which is then kept.
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_choose_the_level() {
        let args = |verbose, quiet| LogArgs { verbose, quiet };
        assert_eq!(args(0, true).filter(), "warn");
        assert!(args(0, false).filter().contains("pbsfs=info"));
        assert!(args(1, false).filter().contains("pbsfs=debug"));
        assert_eq!(args(2, false).filter(), "trace");
    }
}
