mod cli;

use clap::Parser;

fn main() {
    let parsed = cli::Cli::parse();
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
