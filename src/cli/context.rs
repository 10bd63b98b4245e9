//! What every command needs first: the repository and namespace the user selected.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use pbsfs::format::crypto::CryptConfig;
use pbsfs::format::manifest::CryptMode;
use pbsfs::remote::access::RemoteAccess;
use pbsfs::remote::{ConnectOptions, RemoteDatastore};
use pbsfs::repository::Repository;
use pbsfs::store::access::{LocalAccess, SnapshotAccess};
use pbsfs::store::admin::DatastoreAdmin;
use pbsfs::store::local::{LocalDatastore, SnapshotEntry};
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::open::{
    mountables, open_mountable, select_pxar, snapshot_chunks, OpenedArchive, PxarArchive,
};
use pbsfs::store::snapshot::resolve_snapshot;

use super::keys::{default_key_path, load_crypt_config};
use super::output::OutputFormat;

/// The help heading of the options that select a datastore.
pub const DATASTORE_HEADING: &str = "Datastore options";

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = DATASTORE_HEADING)]
pub struct RepoArgs {
    /// Datastore to use: a local datastore directory (starting with /, ./, ../ or ~) or a PBS
    /// repository [[USER@REALM[!TOKEN]@]HOST:][PORT:]DATASTORE. Default: the local datastore
    /// in $XDG_DATA_HOME/pbsfs/datastore (~/.local/share/pbsfs/datastore).
    #[arg(
        short = 'r',
        long,
        env = "PBS_REPOSITORY",
        global = true,
        value_name = "REPO",
        conflicts_with_all = ["server", "port", "datastore", "auth_id"]
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

    /// PBS server host name (instead of --repository; env PBS_SERVER).
    #[arg(long, env = "PBS_SERVER", global = true, value_name = "HOST")]
    pub server: Option<String>,
    /// PBS server port (default 8007; env PBS_PORT).
    #[arg(long, env = "PBS_PORT", global = true, value_name = "PORT")]
    pub port: Option<u16>,
    /// Datastore on the PBS server (env PBS_DATASTORE).
    #[arg(long, env = "PBS_DATASTORE", global = true, value_name = "NAME")]
    pub datastore: Option<String>,
    /// User or API token on the PBS server, e.g. backup@pbs!pbsfs (default root@pam; env
    /// PBS_AUTH_ID).
    #[arg(long, env = "PBS_AUTH_ID", global = true, value_name = "AUTH-ID")]
    pub auth_id: Option<String>,

    /// Expected SHA-256 fingerprint of the PBS server's certificate (xx:xx:...); default
    /// PBS_FINGERPRINT. Without one, the certificate must be trusted by the system.
    #[arg(long, global = true, value_name = "FINGERPRINT")]
    pub fingerprint: Option<String>,

    /// How to print results.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        value_name = "FORMAT",
        help_heading = "Output options"
    )]
    pub output_format: OutputFormat,
}

impl RepoArgs {
    /// The repository the user selected: --repository, else the server atoms (--server,
    /// --port, --datastore, --auth-id), else None for the default local datastore.
    pub fn selected(&self) -> Result<Option<Repository>> {
        if let Some(text) = &self.repository {
            return Ok(Some(Repository::parse(text)?));
        }
        if self.server.is_none() && self.datastore.is_none() {
            if self.port.is_some() || self.auth_id.is_some() {
                bail!("--port and --auth-id need --server and --datastore (or --repository)");
            }
            return Ok(None);
        }
        let Some(datastore) = &self.datastore else {
            bail!("--server needs --datastore (or use --repository)");
        };
        let host = self.server.as_deref().unwrap_or("localhost");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // an IPv6 address
        } else {
            host.to_string()
        };
        let auth_id = self.auth_id.as_deref().unwrap_or("root@pam");
        let text = format!("{auth_id}@{host}:{}:{datastore}", self.port.unwrap_or(8007));
        Ok(Some(Repository::parse(&text)?))
    }
}

/// Opens a datastore named with --repository; a directory that is none gets a hint to make
/// one (only the default datastore is created on first use).
pub fn open_local(path: &std::path::Path) -> Result<LocalDatastore> {
    LocalDatastore::open(path).map_err(|err| {
        if path.join(".chunks").exists() {
            err
        } else {
            anyhow::anyhow!(
                "{err:#}; to create a datastore there, run `pbsfs init {}`",
                path.display()
            )
        }
    })
}

/// A snapshot opened for reading, with the key its chunks need (if any).
pub type OpenedSnapshot = (Arc<dyn SnapshotAccess>, Option<Arc<CryptConfig>>);

/// The selected datastore, opened.
pub struct Context {
    /// Reading access, local or remote; None while the default datastore does not exist.
    pub access: Option<Arc<dyn DatastoreAdmin>>,
    /// What the user selected, for messages.
    pub location: String,
    pub ns: BackupNamespace,
    pub output: OutputFormat,
    pub keyfile: Option<PathBuf>,
}

impl Context {
    /// Opens the selected datastore for reading. The embedded default may not exist yet; it
    /// then reads as empty.
    pub fn open(args: &RepoArgs) -> Result<Self> {
        let ns = BackupNamespace::parse(args.namespace.as_deref().unwrap_or(""))?;
        let selected = args.selected()?;
        let is_default = selected.is_none();
        let repository = match selected {
            Some(repository) => repository,
            None => Repository::Local(Repository::default_local()?),
        };
        let mut ctx = Context {
            access: None,
            location: repository.to_string(),
            ns,
            output: args.output_format,
            keyfile: args.keyfile.clone(),
        };
        match repository {
            Repository::Local(path) => {
                if is_default && !path.join(".chunks").exists() {
                    return Ok(ctx);
                }
                let store = Arc::new(open_local(&path)?);
                if !store.namespace_exists(&ctx.ns) {
                    bail!(
                        "namespace '{}' does not exist in {}",
                        ctx.ns,
                        path.display()
                    );
                }
                ctx.access = Some(Arc::new(LocalAccess(store)));
            }
            Repository::Remote(remote) => {
                let options = ConnectOptions::from_env(&remote, args.fingerprint.as_deref())?;
                let store = RemoteDatastore::connect(&remote, options)?;
                ctx.access = Some(Arc::new(RemoteAccess(Arc::new(store))));
            }
        }
        Ok(ctx)
    }

    /// The datastore, or an error explaining that the default one is still empty.
    pub fn access(&self) -> Result<&Arc<dyn DatastoreAdmin>> {
        self.access.as_ref().with_context(|| {
            format!(
                "the default datastore {} does not exist yet (it is created by the first \
                 `pbsfs push`); select another one with --repository",
                self.location
            )
        })
    }

    /// The unlocked key named by --keyfile.
    pub fn crypt(&self) -> Result<Option<Arc<CryptConfig>>> {
        self.keyfile.as_deref().map(load_crypt_config).transpose()
    }

    /// Opens a snapshot and the key it needs: --keyfile, else (for an encrypted or signed
    /// snapshot) the official client's default key if it exists. With a key the manifest
    /// signature is checked; an encrypted snapshot without a key is refused.
    pub fn open_snapshot(&self, dir: &BackupDir) -> Result<OpenedSnapshot> {
        let snapshot = self.access()?.open_snapshot(&self.ns, dir)?;
        let manifest = snapshot.manifest();
        let needs_key = manifest
            .files
            .iter()
            .any(|f| f.crypt_mode != CryptMode::None);
        let crypt = match &self.keyfile {
            Some(path) => Some(load_crypt_config(path)?),
            None if needs_key => match default_key_path() {
                Ok(path) if path.exists() => Some(load_crypt_config(&path)?),
                _ => None,
            },
            None => None,
        };
        let encrypted = manifest
            .files
            .iter()
            .any(|f| f.crypt_mode == CryptMode::Encrypt);
        if encrypted && crypt.is_none() {
            bail!("snapshot {dir} is encrypted: key needed (pass --keyfile)");
        }
        if let Some(crypt) = &crypt {
            manifest
                .verify_signature(Some(crypt))
                .with_context(|| format!("snapshot {dir}"))?;
        }
        Ok((snapshot, crypt))
    }

    /// Resolves SNAPSHOT and opens its pxar archive (`archive`, or its only one), reading
    /// verified chunks through a cache of `cache_bytes`.
    pub fn open_pxar(
        &self,
        spec: &str,
        archive: Option<&str>,
        cache_bytes: usize,
    ) -> Result<(BackupDir, PxarArchive)> {
        let dir = self.resolve(spec)?;
        let (snapshot, crypt) = self.open_snapshot(&dir)?;
        let all = mountables(snapshot.manifest());
        let chosen = select_pxar(&all, &dir, archive)?;
        let chunks = snapshot_chunks(&*snapshot, crypt, cache_bytes, 1);
        match open_mountable(&*snapshot, chosen, chunks)? {
            OpenedArchive::Pxar(pxar) => Ok((dir, pxar)),
            OpenedArchive::Image(_) => unreachable!("select_pxar chooses pxar archives"),
        }
    }

    /// Resolves a SNAPSHOT argument among the snapshots of the namespace (`latest`: the
    /// newest readable one; damaged snapshots are passed by).
    pub fn resolve(&self, spec: &str) -> Result<BackupDir> {
        let listing = self.access()?.list_snapshots(&self.ns, None)?;
        let entries: Vec<SnapshotEntry> = listing.into_iter().map(|s| s.entry).collect();
        resolve_snapshot(spec, &entries)
    }
}
