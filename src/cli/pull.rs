//! `pbsfs pull [NAME.pxar:|NAME.img:][USER@]HOST:PATH...`: back up directories (or a file or
//! block device as an image) of another host. The
//! transport command (ssh) starts `pbsfs agent` there; this host walks, encodes, chunks and
//! stores, exactly as a push of the same tree here would.

use std::os::unix::io::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;

use pbsfs::agent::connection::OlderAgent;
use pbsfs::agent::protocol::{widen_pipe, VERSION};
use pbsfs::agent::remote_client::RemoteClient;
use pbsfs::backup::server::BackupSpec;

use super::context::RepoArgs;
use super::push::{back_up, install_signal_handlers, BackupArgs};
use super::{Interrupted, Outcome};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to back up: [NAME.pxar:][USER@]HOST:PATH, a directory of HOST (archive named
    /// after its last component, `root` for /, unless NAME is given), or
    /// NAME.img:[USER@]HOST:PATH, a file or block device of HOST as an image. All sources
    /// name the same host.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,

    /// The command that reaches the client, split at white space and run as
    /// `CMD [USER@]HOST COMMAND` (as rsync's -e and borg's --rsh).
    #[arg(long, env = "PBSFS_RSH", default_value = "ssh", value_name = "CMD")]
    pub rsh: String,

    /// The pbsfs binary on the client.
    #[arg(long, default_value = "pbsfs", value_name = "PATH")]
    pub remote_path: String,

    /// Give up when the agent has answered nothing for this many seconds while requests
    /// wait (a hung client, a dead link): the pull then fails without a snapshot.
    #[arg(long, default_value_t = 600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    #[command(flatten)]
    pub backup: BackupArgs,
}

/// One parsed source: where to connect and what to back up there.
#[derive(Debug, PartialEq, Eq)]
struct PullSource {
    /// `[USER@]HOST` as the transport command gets it.
    destination: String,
    spec: BackupSpec,
}

fn parse_source(text: &str) -> Result<PullSource> {
    let usage = || format!("pull source '{text}' is not [NAME.pxar:|NAME.img:][USER@]HOST:PATH");
    let (archive, rest) = match text.split_once(':') {
        Some((archive, rest)) if archive.ends_with(".pxar") || archive.ends_with(".img") => {
            (Some(archive), rest)
        }
        _ => (None, text),
    };
    let (destination, path) = rest.split_once(':').with_context(usage)?;
    if destination.is_empty() || destination.ends_with('@') || path.is_empty() {
        bail!(usage());
    }
    if !path.starts_with('/') {
        bail!("pull source '{text}': the path on the client must be absolute");
    }
    let spec = match archive {
        Some(archive) => BackupSpec::parse(&format!("{archive}:{path}"))?,
        None => BackupSpec::parse(path)?,
    };
    Ok(PullSource {
        destination: destination.to_string(),
        spec,
    })
}

/// Single quotes for the remote shell, which gets the command as one string.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Starts `pbsfs agent` on the client through the transport command.
fn start_agent(args: &PullArgs, destination: &str, specs: &[BackupSpec]) -> Result<Child> {
    let mut words = args.rsh.split_whitespace();
    let program = words.next().context("--rsh is empty")?;
    let mut remote = vec![shell_quote(&args.remote_path), "agent".to_string()];
    for spec in specs {
        let path = shell_quote(&spec.path.to_string_lossy());
        if !remote.contains(&path) {
            remote.push(path);
        }
    }
    let child = Command::new(program)
        .args(words)
        .arg(destination)
        .arg(remote.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run the transport command '{}'", args.rsh))?;
    for fd in [
        child.stdin.as_ref().map(|p| p.as_raw_fd()),
        child.stdout.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        widen_pipe(fd);
    }
    Ok(child)
}

/// Greets the agent the transport command started, with `version` at most.
fn connect(
    child: &mut Child,
    abort: &Arc<AtomicBool>,
    timeout: Duration,
    version: u16,
) -> std::io::Result<RemoteClient> {
    let (Some(output), Some(input)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the transport command has no pipes"));
    };
    let (input, output) = (Box::new(input), Box::new(output));
    RemoteClient::connect_with_version(input, output, abort.clone(), timeout, version)
}

/// The largest clock difference a pull accepts without a warning, in seconds (the skew is
/// measured to a round trip).
const TOLERATED_SKEW: u64 = 2;

/// The warning for a client whose clock is `skew` seconds ahead of this host's (negative:
/// behind), if it is off by more than [`TOLERATED_SKEW`]. Metadata mode trusts a file's
/// ctime (the client's clock) against the previous snapshot's time (this host's clock): a
/// client behind could hide attribute changes.
fn clock_skew_warning(host: &str, skew: i64) -> Option<String> {
    // unsigned_abs: the agent's time is its word, and i64::MIN has no i64 absolute value.
    (skew.unsigned_abs() > TOLERATED_SKEW).then(|| {
        format!(
            "the clock of {host} is {} s {} this host's: metadata-mode change detection \
             compares its inode change times with snapshot times taken here",
            skew.unsigned_abs(),
            if skew < 0 { "behind" } else { "ahead of" }
        )
    })
}

/// Backs up from the agent; `Outcome::Partial` when entries could not be read there.
pub fn run(args: &PullArgs, repo: &RepoArgs) -> Result<Outcome> {
    let sources = args
        .sources
        .iter()
        .map(|s| parse_source(s))
        .collect::<Result<Vec<_>>>()?;
    let destination = sources[0].destination.clone();
    if let Some(other) = sources.iter().find(|s| s.destination != destination) {
        bail!(
            "all sources of a pull name the same host ({destination} and {})",
            other.destination
        );
    }
    let specs: Vec<BackupSpec> = sources.into_iter().map(|s| s.spec).collect();
    let host = destination.rsplit('@').next().unwrap_or(&destination);
    let abort = install_signal_handlers()?;

    let timeout = Duration::from_secs(args.timeout);
    let mut child = start_agent(args, &destination, &specs)?;
    let mut connected = connect(&mut child, &abort, timeout, VERSION);
    if let Some(version) = connected.as_ref().err().and_then(OlderAgent::of) {
        // An agent from before version negotiation refuses a later greeting and exits:
        // a second session greets it in the version it named.
        log::warn!(
            "the agent on {host} speaks only protocol version {version} (an older pbsfs): \
             connecting again in that version"
        );
        let _ = child.kill();
        let _ = child.wait();
        child = start_agent(args, &destination, &specs)?;
        connected = connect(&mut child, &abort, timeout, version);
    }
    let client = match connected {
        Ok(client) => client,
        Err(err) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(anyhow!(err)).with_context(|| {
                format!("cannot start the agent on {host} ('{}' {status})", args.rsh)
            });
        }
    };
    if let Some(warning) = clock_skew_warning(host, client.clock_skew()) {
        log::warn!("{warning}");
    }
    let result = specs
        .iter()
        .try_for_each(|spec| client.locate(&spec.path).map(drop))
        .with_context(|| format!("pull from {host}"))
        .and_then(|()| {
            let counters = client.shared_counters();
            let hostname = client.hostname().to_string();
            let default_id = move || Ok(hostname.clone());
            back_up(
                &client,
                counters,
                &specs,
                &args.backup,
                repo,
                &default_id,
                abort,
            )
        });
    let failure = client.failure();
    client.close();
    drop(client);
    if failure.is_some() {
        // A broken or hung link: the transport may never end by itself.
        let _ = child.kill();
    }
    // The agent exits at the end of its input; ssh with it.
    let _ = child.wait();
    match (result, failure) {
        (Err(err), _) if err.downcast_ref::<Interrupted>().is_some() => Err(err),
        (Err(err), Some(failure)) => Err(anyhow!(
            "the connection to the agent on {host} broke, no snapshot was made: {failure} \
             ({err:#})"
        )),
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbsfs::backup::server::BackupSpec;

    #[test]
    fn sources_name_an_archive_a_host_and_an_absolute_path() {
        let source = parse_source("backup@alpha:/home/alice").unwrap();
        assert_eq!(source.destination, "backup@alpha");
        assert_eq!(source.spec, BackupSpec::parse("/home/alice").unwrap());
        let source = parse_source("home.pxar:alpha:/home").unwrap();
        assert_eq!(source.destination, "alpha");
        assert_eq!(source.spec, BackupSpec::parse("home.pxar:/home").unwrap());
        let source = parse_source("disk.img:root@alpha:/dev/vg0/data").unwrap();
        assert_eq!(source.destination, "root@alpha");
        assert_eq!(
            source.spec,
            BackupSpec::parse("disk.img:/dev/vg0/data").unwrap()
        );
        for bad in [
            "alpha",
            "alpha:",
            ":/home",
            "alpha:home",
            "x.pxar:/home",
            "u@:/x",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_clock_off_by_more_than_two_seconds_is_warned_about() {
        for skew in [-2, 0, 1, 2] {
            assert_eq!(clock_skew_warning("alpha", skew), None, "{skew}");
        }
        let behind = clock_skew_warning("alpha", -3600).unwrap();
        assert!(
            behind.starts_with("the clock of alpha is 3600 s behind this host's"),
            "{behind}"
        );
        let ahead = clock_skew_warning("alpha", 3).unwrap();
        assert!(ahead.contains("is 3 s ahead of this host's"), "{ahead}");
        // A hostile agent's extreme time is a warning too, not an overflow.
        let far = clock_skew_warning("alpha", i64::MIN).unwrap();
        assert!(far.contains(&format!("{} s behind", i64::MIN.unsigned_abs())));
    }
}
