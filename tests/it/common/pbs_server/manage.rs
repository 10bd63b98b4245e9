//! The admin calls that change a datastore (forget, protection, notes, prune, namespaces),
//! with PBS 4.2's parameters, answers and error texts, done by pbsfs's `store::manage`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::http1::*;
use super::state::State;
use pbsfs::format::manifest::CLIENT_LOG_BLOB_NAME;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::manage;
use pbsfs::store::names::{BackupGroup, BackupNamespace, BackupType};
use pbsfs::store::prune::KeepOptions;

fn param_bool(params: &HashMap<String, String>, name: &str) -> Result<Option<bool>, String> {
    match params.get(name).map(String::as_str) {
        None => Ok(None),
        Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
        Some("0" | "false" | "no" | "off") => Ok(Some(false)),
        Some(other) => Err(format!(
            "parameter verification failed - '{name}': unable to parse boolean '{other}'"
        )),
    }
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
    params.get(name).map(String::as_str).ok_or_else(|| {
        format!("parameter verification failed - '{name}': parameter is missing and it is not optional.")
    })
}

/// `DELETE snapshots`: forget; a protected snapshot is refused.
pub(super) fn forget(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let (store, ns, dir) = (&state.store, param_ns(params, "ns")?, param_dir(params)?);
    if !store.snapshot_path(&ns, &dir).is_dir() {
        return Err(format!("no such snapshot {dir}"));
    }
    if manage::is_protected(store, &ns, &dir) {
        return Err("cannot remove protected snapshot".into());
    }
    manage::forget(store, &ns, &dir).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(Value::Null))
}

pub(super) fn get_protected(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let (ns, dir) = (param_ns(params, "ns")?, param_dir(params)?);
    Ok(data_response(json!(manage::is_protected(
        &state.store,
        &ns,
        &dir
    ))))
}

pub(super) fn set_protected(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let (ns, dir) = (param_ns(params, "ns")?, param_dir(params)?);
    let on = param_bool(params, "protected")?.ok_or_else(|| {
        "parameter verification failed - 'protected': parameter is missing and it is not optional.".to_string()
    })?;
    manage::set_protected(&state.store, &ns, &dir, on).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(Value::Null))
}

pub(super) fn get_notes(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let (ns, dir) = (param_ns(params, "ns")?, param_dir(params)?);
    let notes = manage::notes(&state.store, &ns, &dir).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(json!(notes)))
}

pub(super) fn set_notes(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let (ns, dir) = (param_ns(params, "ns")?, param_dir(params)?);
    let notes = required(params, "notes")?;
    manage::set_notes(&state.store, &ns, &dir, notes).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(Value::Null))
}

fn keep_options(params: &HashMap<String, String>) -> Result<KeepOptions, String> {
    let keep = |name: &str| -> Result<Option<u64>, String> {
        let Some(text) = params.get(name) else {
            return Ok(None);
        };
        let value: u64 = text
            .parse()
            .map_err(|_| format!("parameter verification failed - '{name}': invalid integer"))?;
        if value < 1 {
            return Err(format!(
                "parameter verification failed - '{name}': value must have a minimum value of 1 (got {value})"
            ));
        }
        Ok(Some(value))
    };
    Ok(KeepOptions {
        last: keep("keep-last")?,
        hourly: keep("keep-hourly")?,
        daily: keep("keep-daily")?,
        weekly: keep("keep-weekly")?,
        monthly: keep("keep-monthly")?,
        yearly: keep("keep-yearly")?,
    })
}

/// `POST prune`: the list PBS answers (older first); unless a dry run, the removed ones
/// are forgotten (a failure is only a warning on PBS, so it is not reported here either).
pub(super) fn prune(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let ns = param_ns(params, "ns")?;
    let backup_type =
        BackupType::parse(required(params, "backup-type")?).map_err(|e| e.to_string())?;
    let group =
        BackupGroup::new(backup_type, required(params, "backup-id")?).map_err(|e| e.to_string())?;
    let options = keep_options(params)?;
    let dry_run = param_bool(params, "dry-run")?.unwrap_or(false);
    let (items, _warnings) = manage::prune_group(&state.store, &ns, &group, &options, dry_run)
        .map_err(|e| format!("{e:#}"))?;
    // PBS names the namespace in a dry run's answer only.
    let list: Vec<Value> = items
        .iter()
        .map(|item| item.api_json(Some(&ns).filter(|_| dry_run)))
        .collect();
    Ok(data_response(Value::Array(list)))
}

/// `POST namespace`: `name` below `parent`; answers the new namespace.
pub(super) fn create_namespace(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let parent = param_ns(params, "parent")?;
    let name = required(params, "name")?;
    let ns = BackupNamespace::parse(format!("{parent}/{name}").trim_start_matches('/'))
        .map_err(|e| format!("parameter verification failed - 'name': {e}"))?;
    if !state.store.namespace_exists(&parent) {
        return Err(format!(
            "cannot create new namespace, parent {parent} doesn't already exists"
        ));
    }
    manage::create_namespace(&state.store, &ns).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(json!({"ns": ns.to_string()})))
}

/// `DELETE namespace`: only an empty one without `delete-groups`; answers the counts of
/// `BackupGroupDeleteStats`.
pub(super) fn delete_namespace(
    state: &State,
    params: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let ns = param_ns(params, "ns")?;
    let delete_groups = param_bool(params, "delete-groups")?.unwrap_or(false);
    let (groups, snapshots) = content_counts(&state.store, &ns).map_err(|e| format!("{e:#}"))?;
    if !delete_groups && groups > 0 {
        return Err(
            "only partially deleted due to existing groups but `delete-groups` not true".into(),
        );
    }
    manage::delete_namespace(&state.store, &ns, delete_groups).map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("protected") {
            "group only partially deleted due to protected snapshots".to_string()
        } else {
            text
        }
    })?;
    Ok(data_response(json!({
        "protected-snapshots": 0,
        "removed-groups": groups,
        "removed-snapshots": snapshots,
    })))
}

/// Groups and snapshots in `ns` and below.
fn content_counts(store: &LocalDatastore, ns: &BackupNamespace) -> anyhow::Result<(usize, usize)> {
    let (mut groups, mut snapshots) = (0, 0);
    for each in store.list_namespaces(ns)? {
        for group in store.list_groups(&each)? {
            groups += 1;
            snapshots += store.list_group_snapshots(&each, &group)?.len();
        }
    }
    Ok((groups, snapshots))
}

/// `POST upload-backup-log`: the body is the client log blob, added to a finished snapshot
/// that has none yet.
pub(super) fn upload_backup_log(
    state: &State,
    params: &HashMap<String, String>,
    body: &[u8],
) -> Result<HttpResponse, String> {
    let (ns, dir) = (param_ns(params, "ns")?, param_dir(params)?);
    let path = state
        .store
        .snapshot_path(&ns, &dir)
        .join(CLIENT_LOG_BLOB_NAME);
    if path.exists() {
        return Err("backup already contains a log.".into());
    }
    manage::add_client_log(&state.store, &ns, &dir, body).map_err(|e| format!("{e:#}"))?;
    Ok(data_response(Value::Null))
}
