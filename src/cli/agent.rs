//! `pbsfs agent ROOT...`: serves directory trees (and files or block devices, as images)
//! read-only on stdin/stdout for `pbsfs pull` on a backup host, which starts it through SSH.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::agent::protocol::widen_pipe;
use pbsfs::agent::serve::serve;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Directories to serve (and nothing outside them); a file or block device serves
    /// just itself, as an image. A pull names a path below one (or the root itself).
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
    // Under ssh these are pipes to sshd.
    widen_pipe(0);
    widen_pipe(1);
    serve(&roots, std::io::stdin().lock(), std::io::stdout().lock())
}
