//! Changing a datastore on a PBS server through its admin API (PBS 4.2
//! `src/api2/admin/datastore.rs`, `namespace.rs`, `pbs-client/src/task_log.rs`): forget,
//! protection, notes, prune, namespaces, and garbage collection as a server task whose log is
//! followed until it ends.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::datastore::RemoteDatastore;
use super::query::{encode_component, encode_query};
use super::runtime::block_on;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};
use crate::store::prune::KeepOptions;

/// How often a running task's log is asked for (the official client polls every second).
const TASK_POLL: Duration = Duration::from_secs(1);
/// Log lines asked for at once, as the official client does.
const TASK_LOG_LIMIT: u64 = 500;

/// One snapshot of a prune answer: the server's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePruneItem {
    pub dir: BackupDir,
    pub keep: bool,
    pub protected: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct PruneResultItem {
    backup_type: String,
    backup_id: String,
    backup_time: i64,
    keep: bool,
    #[serde(default)]
    protected: bool,
}

/// A slice of a task's log and whether the task still runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskLogPage {
    pub lines: Vec<String>,
    pub total: u64,
    pub active: bool,
}

#[derive(Deserialize)]
struct TaskLogAnswer {
    #[serde(default)]
    data: Vec<TaskLogLine>,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    active: bool,
}

#[derive(Deserialize)]
struct TaskLogLine {
    #[serde(default)]
    t: String,
}

/// The server's counters of its last garbage collection (`GarbageCollectionStatus`, part of
/// `GET gc`); absent numbers are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RemoteGcStatus {
    pub upid: Option<String>,
    pub index_file_count: u64,
    pub index_data_bytes: u64,
    pub disk_bytes: u64,
    pub disk_chunks: u64,
    pub removed_bytes: u64,
    pub removed_chunks: u64,
    pub pending_bytes: u64,
    pub pending_chunks: u64,
    pub removed_bad: u64,
    pub still_bad: u64,
}

fn snapshot_json(ns: &BackupNamespace, dir: &BackupDir) -> Value {
    let mut params = json!({
        "backup-type": dir.group.backup_type.as_str(),
        "backup-id": dir.group.backup_id,
        "backup-time": dir.time,
    });
    if !ns.is_root() {
        params["ns"] = json!(ns.to_string());
    }
    params
}

impl RemoteDatastore {
    fn call(&self, method: Method, call: &str, params: Value) -> Result<Value> {
        let what = format!("{method} {call}");
        block_on(self.client().call_json(method, &self.path(call), &params))
            .with_context(|| format!("{what} on {}", self.client().options().server()))
    }

    /// Removes a snapshot (`DELETE snapshots`); the server refuses a protected one.
    pub fn forget(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<()> {
        self.call(Method::DELETE, "snapshots", snapshot_json(ns, dir))
            .with_context(|| format!("cannot forget {dir}"))?;
        Ok(())
    }

    pub fn protected(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<bool> {
        let value = self.call(Method::GET, "protected", snapshot_json(ns, dir))?;
        value
            .as_bool()
            .with_context(|| format!("unexpected answer to protected: {value}"))
    }

    pub fn set_protected(&self, ns: &BackupNamespace, dir: &BackupDir, on: bool) -> Result<()> {
        let mut params = snapshot_json(ns, dir);
        params["protected"] = json!(on);
        self.call(Method::PUT, "protected", params)
            .with_context(|| format!("cannot change the protection of {dir}"))?;
        Ok(())
    }

    /// A snapshot's notes ("" when it has none).
    pub fn notes(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<String> {
        let value = self.call(Method::GET, "notes", snapshot_json(ns, dir))?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    pub fn set_notes(&self, ns: &BackupNamespace, dir: &BackupDir, notes: &str) -> Result<()> {
        let mut params = snapshot_json(ns, dir);
        params["notes"] = json!(notes);
        self.call(Method::PUT, "notes", params)
            .with_context(|| format!("cannot set the notes of {dir}"))?;
        Ok(())
    }

    /// Adds the client log to a finished snapshot (`POST upload-backup-log`); the server
    /// refuses it when the snapshot already has one.
    pub fn upload_backup_log(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
        raw_blob: &[u8],
    ) -> Result<()> {
        let body = bytes::Bytes::copy_from_slice(raw_blob);
        let params = snapshot_json(ns, dir);
        block_on(
            self.client()
                .post_octets(&self.path("upload-backup-log"), &params, body),
        )
        .with_context(|| format!("cannot upload the client log of {dir}"))?;
        Ok(())
    }

    /// The server's prune of a group (`POST prune`), its decision per snapshot, oldest first.
    pub fn prune(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
        options: &KeepOptions,
        dry_run: bool,
    ) -> Result<Vec<RemotePruneItem>> {
        let mut params = json!({
            "backup-type": group.backup_type.as_str(),
            "backup-id": group.backup_id,
            "dry-run": dry_run,
        });
        if !ns.is_root() {
            params["ns"] = json!(ns.to_string());
        }
        let keeps = [
            ("keep-last", options.last),
            ("keep-hourly", options.hourly),
            ("keep-daily", options.daily),
            ("keep-weekly", options.weekly),
            ("keep-monthly", options.monthly),
            ("keep-yearly", options.yearly),
        ];
        for (name, value) in keeps {
            if let Some(value) = value {
                params[name] = json!(value);
            }
        }
        let answer = self
            .call(Method::POST, "prune", params)
            .with_context(|| format!("cannot prune {group}"))?;
        let items: Vec<PruneResultItem> =
            serde_json::from_value(answer).context("unexpected answer to prune")?;
        let mut list = items
            .into_iter()
            .map(|item| {
                let group =
                    BackupGroup::new(BackupType::parse(&item.backup_type)?, &item.backup_id)?;
                Ok(RemotePruneItem {
                    dir: BackupDir::new(group, item.backup_time)?,
                    keep: item.keep,
                    protected: item.protected,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        list.sort_by_key(|item| item.dir.time);
        Ok(list)
    }

    /// Creates a namespace (`POST namespace`: its last component below its parent).
    pub fn create_namespace(&self, ns: &BackupNamespace) -> Result<()> {
        let Some((name, parent)) = ns.components().split_last() else {
            bail!("the root namespace always exists");
        };
        let mut params = json!({ "name": name });
        if !parent.is_empty() {
            params["parent"] = json!(parent.join("/"));
        }
        self.call(Method::POST, "namespace", params)
            .with_context(|| format!("cannot create namespace '{ns}'"))?;
        Ok(())
    }

    /// Deletes a namespace (`DELETE namespace`); with `delete_groups` its snapshots too.
    /// A partial removal (protected snapshots, groups left) is an error, as the server
    /// reports it with `error-on-protected`.
    pub fn delete_namespace(&self, ns: &BackupNamespace, delete_groups: bool) -> Result<()> {
        if ns.is_root() {
            bail!("the root namespace cannot be deleted");
        }
        let params = json!({
            "ns": ns.to_string(),
            "delete-groups": delete_groups,
            "error-on-protected": true,
        });
        self.call(Method::DELETE, "namespace", params)
            .with_context(|| format!("cannot delete namespace '{ns}'"))?;
        Ok(())
    }

    /// Starts the server's garbage collection; its task id (UPID).
    pub fn start_gc(&self) -> Result<String> {
        let value = self
            .call(Method::POST, "gc", json!({}))
            .context("cannot start garbage collection")?;
        value
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("unexpected answer to gc: {value}"))
    }

    /// The counters of the server's last garbage collection (`GET gc`).
    pub fn gc_status(&self) -> Result<RemoteGcStatus> {
        let value = self.call(Method::GET, "gc", json!({}))?;
        serde_json::from_value(value).context("unexpected answer to GET gc")
    }

    fn task_path(upid: &str, call: &str) -> String {
        format!(
            "/api2/json/nodes/localhost/tasks/{}/{call}",
            encode_component(upid)
        )
    }

    /// Lines of a task's log from line `start` (1 = the first) and whether it still runs.
    pub fn task_log(&self, upid: &str, start: u64) -> Result<TaskLogPage> {
        let query = encode_query(&[
            ("start", start.to_string()),
            ("limit", TASK_LOG_LIMIT.to_string()),
            ("test-status", "true".to_string()),
        ]);
        let raw = block_on(self.client().get_raw(&Self::task_path(upid, "log"), &query))
            .context("cannot read the task log")?;
        let answer: TaskLogAnswer =
            serde_json::from_slice(&raw).context("unexpected answer to the task log")?;
        Ok(TaskLogPage {
            lines: answer.data.into_iter().map(|line| line.t).collect(),
            total: answer.total,
            active: answer.active,
        })
    }

    /// A finished task's exit status: "OK", "WARNINGS: n" or the error; None while it runs.
    pub fn task_exit_status(&self, upid: &str) -> Result<Option<String>> {
        let value = block_on(self.client().get_json(&Self::task_path(upid, "status"), ""))
            .context("cannot read the task status")?;
        if value["status"].as_str() == Some("running") {
            return Ok(None);
        }
        Ok(Some(
            value["exitstatus"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        ))
    }

    /// Follows a task's log until the task ends (each line to `line`); fails with the
    /// task's error unless it ended OK or with warnings.
    pub fn follow_task(&self, upid: &str, line: &mut dyn FnMut(&str)) -> Result<()> {
        let mut start = 1;
        loop {
            let page = self.task_log(upid, start)?;
            for text in &page.lines {
                line(text);
            }
            start += page.lines.len() as u64;
            if !page.active && (page.lines.is_empty() || start > page.total) {
                break;
            }
            if page.lines.is_empty() {
                std::thread::sleep(TASK_POLL);
            }
        }
        let status = loop {
            match self.task_exit_status(upid)? {
                Some(status) => break status,
                None => std::thread::sleep(TASK_POLL),
            }
        };
        if status == "OK" || status.starts_with("WARNINGS") {
            Ok(())
        } else {
            bail!("the server's task failed: {status}")
        }
    }
}
