//! A datastore on a PBS server, browsed through the admin API (protocol.md §5); it joins the
//! reading seam as [`RemoteAccess`](super::access::RemoteAccess). Reading archives goes through
//! a reader session per snapshot ([`RemoteReader`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::backup::RemoteBackupSession;
use super::client::HttpClient;
use super::options::ConnectOptions;
use super::query::{encode_component, encode_query, ns_param, snapshot_params};
use super::reader::RemoteReader;
use super::runtime::block_on;
use super::wire::DOWNLOAD_LIMIT;
use crate::format::crypto::Fingerprint;
use crate::format::manifest::{CryptMode, Manifest, MANIFEST_BLOB_NAME};
use crate::repository::RemoteRepository;
use crate::store::local::{decode_manifest, SnapshotEntry};
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};

/// A file of a snapshot as the server lists it (`BackupContent`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteFile {
    pub filename: String,
    /// Absent for files not in the manifest (e.g. `client.log.blob`).
    #[serde(default)]
    pub crypt_mode: Option<CryptMode>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// A snapshot as the server lists it (`SnapshotListItem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSnapshot {
    pub entry: SnapshotEntry,
    pub files: Vec<RemoteFile>,
    /// Sum of the file sizes.
    pub size: Option<u64>,
    pub owner: Option<String>,
    pub comment: Option<String>,
}

/// A group as the server lists it (`GroupListItem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteGroup {
    pub group: BackupGroup,
    /// Time of the newest finished snapshot (0 if none).
    pub last_backup: i64,
    pub backup_count: u64,
    pub files: Vec<String>,
    pub owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SnapshotItem {
    backup_type: String,
    backup_id: String,
    backup_time: i64,
    #[serde(default)]
    files: Vec<RemoteFile>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    protected: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct GroupItem {
    backup_type: String,
    backup_id: String,
    #[serde(default)]
    last_backup: i64,
    #[serde(default)]
    backup_count: u64,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
struct NamespaceItem {
    ns: String,
}

pub struct RemoteDatastore {
    client: Arc<HttpClient>,
    store: String,
}

impl RemoteDatastore {
    /// Connects and authenticates (so a wrong fingerprint or secret fails here, clearly).
    pub fn connect(repo: &RemoteRepository, options: ConnectOptions) -> Result<Self> {
        let datastore = RemoteDatastore {
            client: Arc::new(HttpClient::new(options)),
            store: repo.datastore.clone(),
        };
        block_on(datastore.client.get_json("/api2/json/version", ""))?;
        Ok(datastore)
    }

    pub fn name(&self) -> &str {
        &self.store
    }

    pub fn client(&self) -> &Arc<HttpClient> {
        &self.client
    }

    /// The admin API path of `call` on this datastore.
    pub(super) fn path(&self, call: &str) -> String {
        format!(
            "/api2/json/admin/datastore/{}/{call}",
            encode_component(&self.store)
        )
    }

    fn get<T: serde::de::DeserializeOwned>(&self, call: &str, query: &str) -> Result<T> {
        let data = block_on(self.client.get_json(&self.path(call), query))?;
        serde_json::from_value(data).with_context(|| {
            format!(
                "unexpected answer to {call} from {}",
                self.client.options().server()
            )
        })
    }

    /// `parent` and every namespace below it, depth first, children in name order.
    pub fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        let items: Vec<NamespaceItem> =
            self.get("namespace", &encode_query(&ns_param("parent", parent)))?;
        let mut list = items
            .iter()
            .map(|item| BackupNamespace::parse(&item.ns))
            .collect::<Result<Vec<_>>>()?;
        list.sort(); // component order = depth-first pre-order
        Ok(list)
    }

    /// The groups of one namespace, in display order.
    pub fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<RemoteGroup>> {
        let items: Vec<GroupItem> = self.get("groups", &encode_query(&ns_param("ns", ns)))?;
        let mut groups = items
            .into_iter()
            .map(|item| {
                Ok(RemoteGroup {
                    group: BackupGroup::new(
                        BackupType::parse(&item.backup_type)?,
                        &item.backup_id,
                    )?,
                    last_backup: item.last_backup,
                    backup_count: item.backup_count,
                    files: item.files,
                    owner: item.owner,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    /// Every snapshot of a namespace (or of one group), finished or not, ordered by group
    /// then time like the local store.
    pub fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<RemoteSnapshot>> {
        let mut params = ns_param("ns", ns);
        if let Some(group) = group {
            params.push(("backup-type", group.backup_type.as_str().to_string()));
            params.push(("backup-id", group.backup_id.clone()));
        }
        let items: Vec<SnapshotItem> = self.get("snapshots", &encode_query(&params))?;
        let mut list = items
            .into_iter()
            .map(|item| {
                let group =
                    BackupGroup::new(BackupType::parse(&item.backup_type)?, &item.backup_id)?;
                let manifest = item.files.iter().find(|f| f.filename == MANIFEST_BLOB_NAME);
                let dir = BackupDir::new(group, item.backup_time)?;
                // PBS lists a snapshot whose manifest it cannot read with the files it
                // finds on disk, none with a crypt mode (a readable manifest always has one).
                let damaged = match manifest {
                    Some(file) if file.crypt_mode.is_none() => Some(self.damage(ns, &dir)),
                    _ => None,
                };
                Ok(RemoteSnapshot {
                    entry: SnapshotEntry {
                        dir,
                        finished: manifest.is_some(),
                        protected: item.protected,
                        damaged,
                    },
                    files: item.files,
                    size: item.size,
                    owner: item.owner,
                    comment: item.comment,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        list.sort_by(|a, b| {
            (&a.entry.dir.group, a.entry.dir.time).cmp(&(&b.entry.dir.group, b.entry.dir.time))
        });
        Ok(list)
    }

    /// Why the server cannot read the manifest of `dir`: the same reason as for a local
    /// datastore when it can be downloaded (the listing itself gives none).
    fn damage(&self, ns: &BackupNamespace, dir: &BackupDir) -> String {
        match self.download_file(ns, dir, MANIFEST_BLOB_NAME) {
            Ok(raw) => match decode_manifest(&raw) {
                Err(reason) => reason,
                Ok(_) => "the server cannot read its manifest (its log says why)".to_string(),
            },
            Err(err) => format!("the server cannot read its manifest: {err:#}"),
        }
    }

    /// The files of a snapshot: the manifest's, then `index.json.blob`, then others.
    pub fn snapshot_files(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Vec<RemoteFile>> {
        self.get("files", &encode_query(&snapshot_params(ns, dir)))
    }

    /// Raw bytes of a file of a snapshot, exactly as stored (admin `download`).
    pub fn download_file(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
        filename: &str,
    ) -> Result<Vec<u8>> {
        let mut params = snapshot_params(ns, dir);
        params.push(("file-name", filename.to_string()));
        let raw = block_on(
            self.client
                .get_raw(&self.path("download"), &encode_query(&params)),
        )
        .with_context(|| format!("cannot download {dir}/{filename}"))?;
        if raw.len() > DOWNLOAD_LIMIT {
            anyhow::bail!("{dir}/{filename} is larger than {DOWNLOAD_LIMIT} bytes");
        }
        Ok(raw.into())
    }

    /// The decoded manifest of a snapshot.
    pub fn read_manifest(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Manifest> {
        let raw = self.download_file(ns, dir, MANIFEST_BLOB_NAME)?;
        decode_manifest(&raw)
            .map_err(|reason| anyhow::anyhow!("snapshot {dir} is damaged: {reason}"))
    }

    /// Opens a reader session on a snapshot (its chunks become readable after the index
    /// that references them was downloaded through it).
    pub fn open_reader(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Arc<RemoteReader>> {
        let reader = RemoteReader::new(self.client.clone(), &self.store, ns, dir);
        reader.connect()?;
        Ok(Arc::new(reader))
    }

    /// The newest readable snapshot of a group (the base for change detection; a damaged
    /// one is passed by).
    pub fn last_snapshot(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Option<BackupDir>> {
        // All groups, then filtered: asking for an unknown group is an error on PBS.
        Ok(self
            .list_snapshots(ns, None)?
            .into_iter()
            .filter(|s| s.entry.is_readable() && &s.entry.dir.group == group)
            .map(|s| s.entry.dir)
            .next_back())
    }

    /// Starts writing snapshot `dir` (backup protocol); its group is created with the
    /// connecting auth-id as owner. The previous snapshot's chunks are known from the start.
    /// `chunk_key`: the key this backup encrypts chunks with (encrypted chunks of the
    /// previous snapshot are known only if it used the same key).
    pub fn start_backup(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
        chunk_key: Option<&Fingerprint>,
    ) -> Result<RemoteBackupSession> {
        RemoteBackupSession::start(&self.client, &self.store, ns, dir, chunk_key)
    }
}
