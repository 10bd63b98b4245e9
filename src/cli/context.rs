//! What every command needs first: the repository and namespace the user selected.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::format::crypto::CryptConfig;
use pbsfs::format::manifest::{CryptMode, Manifest};
use pbsfs::repository::Repository;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::snapshot::resolve_snapshot;

use super::output::OutputFormat;

#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Datastore to use: a local datastore directory (starting with /, ./, ../ or ~) or a PBS
    /// repository [[USER@REALM[!TOKEN]@]HOST:][PORT:]DATASTORE. Default: the local datastore
    /// in $XDG_DATA_HOME/pbsfs/datastore (~/.local/share/pbsfs/datastore).
    #[arg(
        short = 'r',
        long,
        env = "PBS_REPOSITORY",
        global = true,
        value_name = "REPO"
    )]
    pub repository: Option<String>,

    /// Namespace inside the datastore, e.g. `team/web` (default: the root namespace).
    #[arg(long = "ns", env = "PBS_NAMESPACE", global = true, value_name = "NS")]
    pub namespace: Option<String>,

    /// Encryption key file (JSON, as made by `proxmox-backup-client key create`), for
    /// encrypted snapshots. A password is read from PBS_ENCRYPTION_PASSWORD (or _FILE, _FD,
    /// _CMD) or asked for on the terminal.
    #[arg(long, global = true, value_name = "PATH")]
    pub keyfile: Option<PathBuf>,

    /// How to print results.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        value_name = "FORMAT"
    )]
    pub output_format: OutputFormat,
}

/// The selected datastore, opened.
pub struct Context {
    pub store: Option<Arc<LocalDatastore>>,
    pub location: PathBuf,
    pub ns: BackupNamespace,
    pub output: OutputFormat,
    pub keyfile: Option<PathBuf>,
}

impl Context {
    /// Opens the selected datastore for reading. The embedded default may not exist yet; it
    /// then reads as empty (`store` is None).
    pub fn open(args: &RepoArgs) -> Result<Self> {
        let ns = BackupNamespace::parse(args.namespace.as_deref().unwrap_or(""))?;
        let (location, is_default) = match &args.repository {
            Some(text) => match Repository::parse(text)? {
                Repository::Local(path) => (path, false),
                Repository::Remote(remote) => bail!(
                    "repository '{text}' names a PBS server ({}:{}); talking to a server is not \
                     implemented in this build yet, use a local datastore path",
                    remote.host,
                    remote.port
                ),
            },
            None => (Repository::default_local()?, true),
        };
        let store = if is_default && !location.join(".chunks").exists() {
            None
        } else {
            Some(Arc::new(LocalDatastore::open(&location)?))
        };
        if let Some(store) = &store {
            if !store.namespace_exists(&ns) {
                bail!("namespace '{ns}' does not exist in {}", location.display());
            }
        }
        Ok(Context {
            store,
            location,
            ns,
            output: args.output_format,
            keyfile: args.keyfile.clone(),
        })
    }

    /// The datastore, or an error explaining that the default one is still empty.
    pub fn store(&self) -> Result<&Arc<LocalDatastore>> {
        self.store.as_ref().with_context(|| {
            format!(
                "the default datastore {} does not exist yet (it is created by the first \
                 `pbsfs push`); select another one with --repository",
                self.location.display()
            )
        })
    }

    /// The unlocked key, when --keyfile was given.
    pub fn crypt(&self) -> Result<Option<Arc<CryptConfig>>> {
        self.keyfile
            .as_deref()
            .map(super::keys::load_crypt_config)
            .transpose()
    }

    /// Reads a snapshot's manifest and checks its signature when a key is given; refuses an
    /// encrypted snapshot without a key.
    pub fn checked_manifest(
        &self,
        dir: &BackupDir,
        crypt: Option<&CryptConfig>,
    ) -> Result<Manifest> {
        let manifest = self.store()?.read_manifest(&self.ns, dir)?;
        let encrypted = manifest
            .files
            .iter()
            .any(|f| f.crypt_mode == CryptMode::Encrypt);
        if encrypted && crypt.is_none() {
            bail!("snapshot {dir} is encrypted: key needed (pass --keyfile)");
        }
        if crypt.is_some() {
            manifest
                .verify_signature(crypt)
                .with_context(|| format!("snapshot {dir}"))?;
        }
        Ok(manifest)
    }

    /// Finished snapshots of the namespace.
    pub fn finished_snapshots(&self) -> Result<Vec<BackupDir>> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        Ok(store
            .list_snapshots(&self.ns, None)?
            .into_iter()
            .filter(|entry| entry.finished)
            .map(|entry| entry.dir)
            .collect())
    }

    /// Resolves a SNAPSHOT argument among the finished snapshots of the namespace.
    pub fn resolve(&self, spec: &str) -> Result<BackupDir> {
        self.store()?;
        resolve_snapshot(spec, &self.finished_snapshots()?)
    }
}
