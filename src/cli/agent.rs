//! `pbsfs agent ROOT...`: serves directory trees read-only on stdin/stdout for `pbsfs pull`
//! on a backup host, which starts it through SSH.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::agent::serve::serve;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Directories to serve (and nothing outside them). A pull names a path below one.
    #[arg(required = true, value_name = "ROOT")]
    pub roots: Vec<PathBuf>,
}

pub fn run(args: &AgentArgs) -> Result<()> {
    if std::io::stdout().is_terminal() {
        bail!(
            "`pbsfs agent` speaks a binary protocol on stdin and stdout; `pbsfs pull` on the \
             backup host starts it through ssh"
        );
    }
    let roots = args
        .roots
        .iter()
        .map(|root| std::path::absolute(root).with_context(|| format!("root {}", root.display())))
        .collect::<Result<Vec<_>>>()?;
    serve(&roots, std::io::stdin().lock(), std::io::stdout().lock())
}
