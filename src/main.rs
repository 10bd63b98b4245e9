mod cli;

use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `mount -t fuse.pbsfs SOURCE DIR -o ...` calls us as `pbsfs SOURCE DIR -o ...`.
    let args = match cli::helper::translate(&args) {
        Ok(Some(translated)) => translated,
        Ok(None) => args,
        Err(err) => {
            eprintln!("pbsfs: error: {err:#}");
            std::process::exit(1);
        }
    };
    let parsed = cli::Cli::parse_from(args);
    if let Err(err) = cli::run(parsed) {
        // A closed pipe (`pbsfs restore ... - | head`) is not an error worth reporting.
        if err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("pbsfs: error: {err:#}");
        std::process::exit(1);
    }
}
