//! Server tasks as PBS runs them: garbage collection in a worker thread whose log lines
//! are read through `/nodes/localhost/tasks/{upid}/log` and its end through `/status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{json, Value};

use super::http1::*;
use pbsfs::format::time::epoch_to_rfc3339;
use pbsfs::store::gc::{self, GcOptions, GcProgress, GcReport};
use pbsfs::store::local::LocalDatastore;

/// One task: its log so far and, once ended, its exit status ("OK" or the error).
#[derive(Default)]
struct TaskRecord {
    lines: Vec<String>,
    exit_status: Option<String>,
}

#[derive(Default)]
pub(super) struct Tasks {
    records: Mutex<HashMap<String, TaskRecord>>,
    /// `GarbageCollectionStatus` of the last collection (`GET gc`).
    gc_status: Mutex<Value>,
    next_id: AtomicU32,
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Tasks {
    fn log(&self, upid: &str, line: impl Into<String>) {
        if let Some(task) = self.records.lock().unwrap().get_mut(upid) {
            task.lines.push(line.into());
        }
    }

    fn finish(&self, upid: &str, status: String) {
        let line = if status == "OK" {
            "TASK OK".to_string()
        } else {
            format!("TASK ERROR: {status}")
        };
        if let Some(task) = self.records.lock().unwrap().get_mut(upid) {
            task.lines.push(line);
            task.exit_status = Some(status);
        }
    }

    fn gc_running(&self) -> bool {
        self.records
            .lock()
            .unwrap()
            .iter()
            .any(|(upid, task)| upid.contains(":garbage_collection:") && task.exit_status.is_none())
    }
}

/// `POST gc`: starts a collection of the datastore (PBS's default cutoff) in a worker.
pub(super) fn start_gc(
    tasks: &Arc<Tasks>,
    store: &Arc<LocalDatastore>,
    store_name: &str,
) -> Result<HttpResponse, String> {
    if tasks.gc_running() {
        return Err("garbage collection already running".into());
    }
    let start = epoch_now();
    let upid = format!(
        "UPID:localhost:{:08X}:{:08X}:{:08X}:{start:08X}:garbage_collection:{store_name}:root@pam:",
        std::process::id(),
        0,
        tasks.next_id.fetch_add(1, Ordering::SeqCst),
    );
    tasks
        .records
        .lock()
        .unwrap()
        .insert(upid.clone(), TaskRecord::default());
    let (tasks, store, store_name, task) = (
        tasks.clone(),
        store.clone(),
        store_name.to_string(),
        upid.clone(),
    );
    std::thread::spawn(move || {
        tasks.log(
            &task,
            format!("starting garbage collection on store {store_name}"),
        );
        let options = GcOptions::default();
        let min_atime = start - options.cutoff.as_secs() as i64;
        let mut phase = 0;
        let mut progress = |step: GcProgress| match step {
            GcProgress::Marking { .. } if phase == 0 => {
                phase = 1;
                tasks.log(
                    &task,
                    "Access time update check successful, proceeding with GC.",
                );
                tasks.log(
                    &task,
                    format!(
                        "Using access time cutoff 1d 5m, minimum access time is {}",
                        epoch_to_rfc3339(min_atime).unwrap_or_default()
                    ),
                );
                tasks.log(&task, "Start GC phase1 (mark used chunks)");
            }
            GcProgress::Sweeping { .. } if phase == 1 => {
                phase = 2;
                tasks.log(&task, "Start GC phase2 (sweep unused chunks)");
            }
            _ => {}
        };
        match gc::collect(&store, &options, &mut progress) {
            Ok(report) => {
                for line in summary(&report) {
                    tasks.log(&task, line);
                }
                *tasks.gc_status.lock().unwrap() = gc_status(&task, &report);
                tasks.finish(&task, "OK".into());
            }
            Err(err) => tasks.finish(&task, format!("{err:#}")),
        }
    });
    Ok(data_response(json!(upid)))
}

/// The closing lines of PBS's gc task log.
fn summary(report: &GcReport) -> Vec<String> {
    let mut lines = vec![
        format!("Removed garbage: {} B", report.removed_bytes),
        format!("Removed chunks: {}", report.removed_chunks),
    ];
    if report.pending_bytes > 0 {
        lines.push(format!(
            "Pending removals: {} B (in {} chunks)",
            report.pending_bytes, report.pending_chunks
        ));
    }
    if report.removed_bad > 0 {
        lines.push(format!("Removed bad chunks: {}", report.removed_bad));
    }
    if report.still_bad > 0 {
        lines.push(format!("Leftover bad chunks: {}", report.still_bad));
    }
    lines.push(format!("On-Disk chunks: {}", report.kept_chunks));
    lines
}

fn gc_status(upid: &str, report: &GcReport) -> Value {
    json!({
        "upid": upid,
        "index-file-count": report.index_files,
        "index-data-bytes": 0,
        "disk-bytes": report.kept_bytes,
        "disk-chunks": report.kept_chunks,
        "removed-bytes": report.removed_bytes,
        "removed-chunks": report.removed_chunks,
        "pending-bytes": report.pending_bytes,
        "pending-chunks": report.pending_chunks,
        "removed-bad": report.removed_bad,
        "still-bad": report.still_bad,
    })
}

/// `GET gc`: `GarbageCollectionJobStatus`, the last run's status flattened into it.
pub(super) fn gc_job_status(tasks: &Tasks, store_name: &str) -> HttpResponse {
    let mut status = tasks.gc_status.lock().unwrap().clone();
    if !status.is_object() {
        status = json!({});
    }
    status["store"] = json!(store_name);
    data_response(status)
}

/// `/api2/json/nodes/localhost/tasks/{upid}/{call}` (`rest` is what follows `tasks/`).
pub(super) fn route(tasks: &Tasks, rest: &str, params: &HashMap<String, String>) -> HttpResponse {
    let Some((encoded, call)) = rest.split_once('/') else {
        return error(StatusCode::NOT_FOUND, "Path not found.");
    };
    let Some(upid) = pbsfs::remote::query::decode_component(encoded) else {
        return error(StatusCode::BAD_REQUEST, "unable to parse UPID");
    };
    let records = tasks.records.lock().unwrap();
    let Some(task) = records.get(&upid) else {
        return error(StatusCode::BAD_REQUEST, &format!("no such task '{upid}'"));
    };
    match call {
        "log" => {
            let number = |name: &str, default: u64| {
                params
                    .get(name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(default)
            };
            let (start, limit) = (number("start", 0), number("limit", 50));
            // Lines are numbered from 1; `start` is the first one wanted.
            let data: Vec<Value> = task
                .lines
                .iter()
                .enumerate()
                .map(|(i, text)| (i as u64 + 1, text))
                .filter(|(n, _)| *n >= start)
                .take(limit as usize)
                .map(|(n, text)| json!({"n": n, "t": text}))
                .collect();
            let mut body = json!({"data": data, "total": task.lines.len()});
            if params.get("test-status").map(String::as_str) == Some("true") {
                body["active"] = json!(task.exit_status.is_none());
            }
            text_response(StatusCode::OK, Some(JSON_TYPE), &body.to_string())
        }
        "status" => {
            let mut status = json!({"upid": upid, "status": "running"});
            if let Some(exit) = &task.exit_status {
                status["status"] = json!("stopped");
                status["exitstatus"] = json!(exit);
            }
            data_response(status)
        }
        _ => error(StatusCode::NOT_FOUND, "Path not found."),
    }
}
