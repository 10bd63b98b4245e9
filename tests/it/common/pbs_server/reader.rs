//! The reader protocol: index and blob downloads, then chunks of downloaded indexes only.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use super::session::*;
use super::state::*;
use pbsfs::format::{digest_to_hex, Digest};
use pbsfs::store::names::{BackupDir, BackupNamespace};

pub(super) struct ReaderState {
    pub(super) state: Arc<State>,
    pub(super) ns: BackupNamespace,
    pub(super) dir: BackupDir,
    /// Chunks of the indexes downloaded in this session.
    pub(super) allowed: Mutex<HashSet<Digest>>,
}

impl ReaderState {
    pub(super) async fn handle(&self, request: Request<h2::RecvStream>) -> Reply {
        let path = request.uri().path().to_string();
        let params = match session_params(&request) {
            Ok(params) => params,
            Err(reply) => return reply,
        };
        let result = match (request.method().clone(), path.as_str()) {
            (Method::GET, "/download") => self.download(&params),
            (Method::GET, "/chunk") => self.chunk(&params).await,
            (Method::GET, "/speedtest") => {
                Ok(Reply::octets(Bytes::from(vec![b'A'; 1 << 20]), false))
            }
            _ => Err(not_found(&path)),
        };
        result.unwrap_or_else(|reply| reply)
    }

    pub(super) fn download(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
        let name = required(params, "file-name")?;
        let (raw, index) = read_snapshot_file(&self.state.store, &self.ns, &self.dir, name)?;
        if let Some(index) = index {
            self.allowed
                .lock()
                .unwrap()
                .extend(index.digests().iter().copied());
        }
        Ok(Reply::octets(raw, true))
    }

    pub(super) async fn chunk(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
        let digest = required_digest(params, "digest")?;
        if !self.allowed.lock().unwrap().contains(&digest) {
            tokio::time::sleep(self.state.config.auth_fail_delay).await;
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                format!("download chunk {} not allowed", digest_to_hex(&digest)),
            ));
        }
        self.state
            .counters
            .chunk_reads
            .fetch_add(1, Ordering::SeqCst);
        let raw = std::fs::read(self.state.store.chunk_path(&digest)).map_err(|e| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "reading file {:?} failed: {e}",
                    self.state.store.chunk_path(&digest)
                ),
            )
        })?;
        Ok(Reply::octets(Bytes::from(raw), false))
    }
}
