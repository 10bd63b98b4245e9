//! Documents generated from the clap definition itself, so they cannot drift from it: shell
//! completions (`pbsfs completions SHELL`) and man pages (`pbsfs manpages DIR`; the Debian
//! package is built with both).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells a completion script is made for (the Debian package installs all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// For ~/.local/share/bash-completion/completions/pbsfs, or `source <(pbsfs completions bash)`
    Bash,
    /// For a directory on $fpath, as the file _pbsfs
    Zsh,
    /// For ~/.config/fish/completions/pbsfs.fish
    Fish,
}

impl CompletionShell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory to write pbsfs.1 and one pbsfs-COMMAND.1 per command into (created if missing)
    pub dir: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn run(args: &CompletionsArgs, mut command: clap::Command) -> Result<()> {
    let mut script = Vec::new();
    // Rendered into memory first: clap_complete panics when its writer fails, and a closed
    // stdout must end the program quietly instead.
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell.generator(), &mut command, name, &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("cannot write the completion script")
}

/// Writes a man page for the program and one for each visible (sub)command into `args.dir`.
pub fn run_manpages(args: &ManpagesArgs, command: clap::Command) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(command, &args.dir)
        .with_context(|| format!("cannot write man pages into {}", args.dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_command_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("share/man/man1");
        run_manpages(&ManpagesArgs { dir: out.clone() }, crate::cli::command()).unwrap();
        for page in [
            "pbsfs.1",
            "pbsfs-push.1",
            "pbsfs-key-create.1",
            "pbsfs-completions.1",
        ] {
            let text = std::fs::read_to_string(out.join(page)).unwrap();
            let name = page.trim_end_matches(".1");
            assert!(text.contains(&format!(".TH {name} 1")), "{page}: {text}");
        }
        assert!(!out.join("pbsfs-help.1").exists());
        // Only commands that use a datastore document its options.
        let umount = std::fs::read_to_string(out.join("pbsfs-umount.1")).unwrap();
        assert!(!umount.contains("repository"), "{umount}");
        let push = std::fs::read_to_string(out.join("pbsfs-push.1")).unwrap();
        assert!(push.contains("repository"));
    }
}
