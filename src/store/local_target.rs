//! The local datastore as a [`BackupTarget`]: sessions are [`SnapshotWriter`]s, chunks go
//! straight into the chunk store (atomic, deduplicated).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::target::{
    BackupSession, BackupTarget, IndexCopy, IndexSummary, IndexWriter, SessionParams,
};
use crate::format::index::{AnyIndex, ChunkIndex, DynamicIndexWriter, FixedIndex};
use crate::format::manifest::{CryptMode, FileInfo, Manifest};
use crate::format::Digest;
use crate::store::access::{DatastoreAccess, LocalAccess};
use crate::store::local::LocalDatastore;
use crate::store::manage;
use crate::store::names::{BackupDir, BackupNamespace};
use crate::store::writer::{PendingFile, SnapshotWriter};

/// A local datastore directory.
pub struct LocalTarget {
    access: LocalAccess,
}

impl LocalTarget {
    pub fn new(store: Arc<LocalDatastore>) -> Self {
        LocalTarget {
            access: LocalAccess(store),
        }
    }

    pub fn datastore(&self) -> &Arc<LocalDatastore> {
        &self.access.0
    }
}

impl BackupTarget for LocalTarget {
    fn start_session(&self, params: &SessionParams) -> Result<Box<dyn BackupSession>> {
        let store = self.datastore();
        let writer = SnapshotWriter::begin(store.clone(), &params.ns, &params.dir, &params.owner)?;
        Ok(Box::new(LocalSession {
            store: store.clone(),
            dir: params.dir.clone(),
            writer: Arc::new(Mutex::new(Some(writer))),
        }))
    }

    fn access(&self) -> &dyn DatastoreAccess {
        &self.access
    }

    fn add_client_log(&self, ns: &BackupNamespace, dir: &BackupDir, raw_blob: &[u8]) -> Result<()> {
        manage::add_client_log(self.datastore(), ns, dir, raw_blob)
    }
}

type SharedWriter = Arc<Mutex<Option<SnapshotWriter>>>;

struct LocalSession {
    store: Arc<LocalDatastore>,
    dir: BackupDir,
    /// `None` once finished.
    writer: SharedWriter,
}

fn with_writer<T>(
    writer: &SharedWriter,
    f: impl FnOnce(&mut SnapshotWriter) -> Result<T>,
) -> Result<T> {
    let mut guard = writer.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_mut() {
        Some(writer) => f(writer),
        None => bail!("the backup session is already finished"),
    }
}

impl BackupSession for LocalSession {
    fn snapshot(&self) -> &BackupDir {
        &self.dir
    }

    fn is_known_chunk(&self, digest: &Digest) -> Result<bool> {
        Ok(self.store.mark_chunk_used(digest))
    }

    fn upload_chunk(&self, digest: &Digest, raw_blob: &[u8], _plain_size: u64) -> Result<bool> {
        self.store.insert_chunk(digest, raw_blob)
    }

    fn create_dynamic_index(&self, name: &str) -> Result<Box<dyn IndexWriter>> {
        if !name.ends_with(".didx") {
            bail!("dynamic index name '{name}' must end in .didx");
        }
        let pending = with_writer(&self.writer, |w| w.create_file(name))?;
        let out = BufWriter::with_capacity(64 * 1024, pending.file.try_clone()?);
        let index = DynamicIndexWriter::new(out, new_uuid(), now())?;
        Ok(Box::new(LocalDynamicIndex {
            session: self.writer.clone(),
            name: name.to_string(),
            pending: Some(pending),
            index: Some(index),
        }))
    }

    fn create_fixed_index(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
    ) -> Result<Box<dyn IndexWriter>> {
        if !name.ends_with(".fidx") {
            bail!("fixed index name '{name}' must end in .fidx");
        }
        if size == 0 {
            bail!("{name}: an image of size 0 cannot be stored");
        }
        let pending = with_writer(&self.writer, |w| w.create_file(name))?;
        Ok(Box::new(LocalFixedIndex {
            session: self.writer.clone(),
            name: name.to_string(),
            pending: Some(pending),
            size,
            chunk_size,
            written: 0,
            digests: Vec::new(),
        }))
    }

    fn add_blob(&self, name: &str, raw_blob: &[u8]) -> Result<()> {
        let info = FileInfo {
            filename: name.to_string(),
            crypt_mode: CryptMode::None,
            size: raw_blob.len() as u64,
            csum: Sha256::digest(raw_blob).into(),
        };
        with_writer(&self.writer, |w| w.add_blob(name, raw_blob, info))
    }

    fn finish(&self) -> Result<BackupDir> {
        self.finish_with(&|_| Ok(()))
    }

    /// The index file is stored byte for byte, header included.
    fn start_index_copy(
        &self,
        name: &str,
        raw: Vec<u8>,
        index: AnyIndex,
    ) -> Result<Box<dyn IndexCopy>> {
        if !(name.ends_with(".didx") || name.ends_with(".fidx")) {
            bail!("index name '{name}' must end in .didx or .fidx");
        }
        Ok(Box::new(LocalIndexCopy {
            session: self.writer.clone(),
            name: name.to_string(),
            raw,
            index,
        }))
    }

    fn finish_with_manifest(&self, raw_manifest: &[u8]) -> Result<BackupDir> {
        self.take_writer()?.finish_with_raw_manifest(raw_manifest)
    }

    fn finish_with(&self, complete: &dyn Fn(&mut Manifest) -> Result<()>) -> Result<BackupDir> {
        self.take_writer()?.finish(complete)
    }
}

impl LocalSession {
    fn take_writer(&self) -> Result<SnapshotWriter> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the backup session is already finished")
    }
}

/// A copied index, written whole once its chunks are stored.
struct LocalIndexCopy {
    session: SharedWriter,
    name: String,
    raw: Vec<u8>,
    index: AnyIndex,
}

impl IndexCopy for LocalIndexCopy {
    fn finish(self: Box<Self>) -> Result<()> {
        let info = FileInfo {
            filename: self.name.clone(),
            crypt_mode: CryptMode::None,
            size: self.index.total_size(),
            csum: self.index.compute_csum(),
        };
        with_writer(&self.session, |w| w.add_blob(&self.name, &self.raw, info))
    }
}

struct LocalDynamicIndex {
    session: SharedWriter,
    name: String,
    pending: Option<PendingFile>,
    index: Option<DynamicIndexWriter<BufWriter<File>>>,
}

impl IndexWriter for LocalDynamicIndex {
    fn add_chunk(&mut self, size: u64, digest: &Digest) -> Result<()> {
        let index = self.index.as_mut().context("index already finished")?;
        let end = index
            .size()
            .checked_add(size)
            .context("index size overflows")?;
        index.add_chunk(end, digest)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<IndexSummary> {
        let index = self.index.take().context("index already finished")?;
        let chunk_count = index.chunk_count() as u64;
        let (mut out, csum, size) = index.finish()?;
        out.flush()?;
        let pending = self.pending.take().context("index already finished")?;
        let info = FileInfo {
            filename: self.name.clone(),
            crypt_mode: CryptMode::None,
            size,
            csum,
        };
        with_writer(&self.session, |w| w.commit_file(pending, info))?;
        Ok(IndexSummary {
            size,
            csum,
            chunk_count,
        })
    }
}

struct LocalFixedIndex {
    session: SharedWriter,
    name: String,
    pending: Option<PendingFile>,
    size: u64,
    chunk_size: u64,
    written: u64,
    /// 32 bytes per chunk (8 MiB per TiB of image): kept until the index is written.
    digests: Vec<Digest>,
}

impl IndexWriter for LocalFixedIndex {
    fn add_chunk(&mut self, size: u64, digest: &Digest) -> Result<()> {
        let expected = self.chunk_size.min(self.size - self.written);
        if size != expected || expected == 0 {
            bail!(
                "{}: chunk #{} has {size} bytes, expected {expected}",
                self.name,
                self.digests.len()
            );
        }
        self.written += size;
        self.digests.push(*digest);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<IndexSummary> {
        if self.written != self.size {
            bail!(
                "{}: image ended after {} of {} bytes",
                self.name,
                self.written,
                self.size
            );
        }
        let chunk_count = self.digests.len() as u64;
        let index = FixedIndex::new(
            self.size,
            self.chunk_size,
            std::mem::take(&mut self.digests),
        )?;
        let bytes = index.to_bytes(new_uuid(), now());
        let csum = index.compute_csum();
        let mut pending = self.pending.take().context("index already finished")?;
        pending.file.write_all(&bytes)?;
        let info = FileInfo {
            filename: self.name.clone(),
            crypt_mode: CryptMode::None,
            size: self.size,
            csum,
        };
        with_writer(&self.session, |w| w.commit_file(pending, info))?;
        Ok(IndexSummary {
            size: self.size,
            csum,
            chunk_count,
        })
    }
}

fn new_uuid() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
