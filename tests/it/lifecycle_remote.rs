//! The datastore lifecycle on a PBS server (the test server's admin API): forget, protect and
//! notes round trips, prune printing what the local prune prints, garbage collection as a
//! followed server task, and namespaces — all through the CLI.

use std::process::{Command, Output, Stdio};

use crate::common;
use crate::lifecycle::{
    age_all_chunks, chunk_files, empty_snapshot, new_store, prune_json, push, referenced, tree,
};
use common::cli::{ok, ok_json, pbsfs, pbsfs_local, repository, stderr, stdout};
use common::pbs_server::{ServerConfig, TestServer};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::BackupNamespace;

/// `pbsfs` against the server, arguments still to add.
fn server_command(server: &TestServer) -> Command {
    let mut command = common::cli::command();
    command
        .args(["--repository", &repository(server)])
        .args(["--fingerprint", &server.fingerprint])
        .env("PBS_PASSWORD", &server.config.token_secret);
    command
}

fn snapshots_json(server: &TestServer) -> serde_json::Value {
    ok_json(&pbsfs(server, &["snapshots", "--output-format", "json"]))
}

fn failed_with(out: &Output, text: &str) {
    assert!(!out.status.success(), "should fail: {}", stdout(out));
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

#[test]
fn forget_protect_and_notes_round_trip_on_a_server() {
    let (dir, store) = new_store();
    let source = tree(dir.path(), "src", &[30]);
    ok(&push(store.root(), "n", 1_700_000_000, &source));
    ok(&push(store.root(), "n", 1_700_000_060, &source));
    let server = TestServer::start(store.root(), ServerConfig::default());
    let first = "host/n/2023-11-14T22:13:20Z";
    let second = "host/n/2023-11-14T22:14:20Z";

    ok(&pbsfs(&server, &["protect", first]));
    failed_with(
        &pbsfs(&server, &["forget", first]),
        "cannot remove protected snapshot",
    );
    let list = snapshots_json(&server);
    assert_eq!(list[0]["protected"], true);
    assert_eq!(list[1]["protected"], false);

    ok(&pbsfs(
        &server,
        &["notes", second, "--set", "first line\nsecond line"],
    ));
    assert_eq!(
        stdout(&pbsfs(&server, &["notes", second])),
        "first line\nsecond line\n"
    );
    let list = snapshots_json(&server);
    assert_eq!(list[1]["comment"], "first line");
    let table = stdout(&pbsfs(&server, &["snapshots"]));
    assert!(table.contains("first line"), "{table}");
    assert!(table.contains("yes"), "protected column: {table}");

    let mut child = server_command(&server)
        .args(["notes", second, "--set", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin").unwrap();
    ok(&child.wait_with_output().unwrap());
    assert_eq!(stdout(&pbsfs(&server, &["notes", second])), "from stdin\n");
    // The server kept the manifest valid (its signature part untouched).
    ok(&pbsfs_local(store.root(), &["verify"]));

    ok(&pbsfs(&server, &["protect", "--off", first]));
    ok(&pbsfs(&server, &["forget", first, second]));
    assert_eq!(snapshots_json(&server), serde_json::json!([]));
}

/// The same history of `p` (noon UTC, so days do not depend on the time zone) in `store`,
/// with the third snapshot protected.
fn prune_history(store: &std::sync::Arc<LocalDatastore>) {
    let ns = BackupNamespace::root();
    let day = 24 * 3600;
    let noon = 1_588_334_400; // 2020-05-01T12:00:00Z
    for i in 0..12 {
        // Two a day on some days: only the newest of a day is kept by keep-daily.
        empty_snapshot(store, &ns, "p", noon + (i / 2) * 3 * day + (i % 2) * 3600);
    }
    ok(&pbsfs_local(
        store.root(),
        &["protect", "host/p/2020-05-04T12:00:00Z"],
    ));
}

#[test]
fn prune_on_a_server_prints_what_the_local_prune_prints() {
    // Without the 65536 chunk directories: prune looks at snapshots only.
    let local_dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let local = std::sync::Arc::new(
        LocalDatastore::open(&common::pbs_server::empty_datastore(local_dir.path())).unwrap(),
    );
    prune_history(&local);
    let server = TestServer::start_empty();
    prune_history(server.store());
    let remote_prune = |args: &[&str], json: bool| {
        let mut command = server_command(&server);
        command.env("TZ", "UTC").arg("prune").args(args);
        if json {
            command.args(["--output-format", "json"]);
        }
        command.output().unwrap()
    };
    let options = ["host/p", "--keep-last", "2", "--keep-daily", "3"];
    let dry: Vec<&str> = options.iter().copied().chain(["--dry-run"]).collect();

    let local_dry = prune_json(local.root(), "UTC", &dry);
    assert_eq!(ok_json(&remote_prune(&dry, true)), local_dry);
    assert!(local_dry
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["keep"] == false));
    let local_text = common::cli::local_command(local.root())
        .env("TZ", "UTC")
        .arg("prune")
        .args(&dry)
        .output()
        .unwrap();
    let remote_text = remote_prune(&dry, false);
    assert_eq!(stdout(&remote_text), stdout(ok_output(&local_text)));
    assert!(stdout(&remote_text).contains("keep-daily"));
    assert!(stdout(&remote_text).contains("protected"));
    assert_eq!(snapshots_json(&server).as_array().unwrap().len(), 12);

    let local_real = prune_json(local.root(), "UTC", &options);
    assert_eq!(ok_json(&remote_prune(&options, true)), local_real);
    let names = |list: serde_json::Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["snapshot"].as_str().unwrap().to_string())
            .collect()
    };
    let local_left = names(ok_json(&pbsfs_local(
        local.root(),
        &["snapshots", "--output-format", "json"],
    )));
    assert_eq!(names(snapshots_json(&server)), local_left);
    assert!(local_left.len() < 12);

    failed_with(
        &remote_prune(&["host/none", "--keep-last", "1"], false),
        "not found",
    );
}

fn ok_output(out: &Output) -> &Output {
    ok(out);
    out
}

#[test]
fn gc_on_a_server_follows_its_task_and_removes_the_chunks_of_a_forgotten_snapshot() {
    let (dir, store) = new_store();
    let root = store.root();
    let t0 = 1_700_000_000;
    ok(&push(root, "a", t0, &tree(dir.path(), "one", &[1, 2, 3])));
    ok(&push(root, "b", t0, &tree(dir.path(), "two", &[4, 5])));
    let server = TestServer::start(root, ServerConfig::default());
    let before = chunk_files(root);

    failed_with(&pbsfs(&server, &["gc", "--dry-run"]), "no dry run");
    ok(&pbsfs(&server, &["forget", "host/b/2023-11-14T22:13:20Z"]));
    age_all_chunks(root);
    let out = pbsfs(&server, &["gc"]);
    ok(&out);
    let log = stderr(&out);
    assert!(log.contains("Start GC phase1 (mark used chunks)"), "{log}");
    assert!(log.contains("TASK OK"), "{log}");
    let report = stdout(&out);
    let gone = before.len() - chunk_files(root).len();
    assert!(gone > 0);
    assert!(
        report.contains(&format!("removed {gone} chunks")),
        "{report}"
    );
    let left: std::collections::BTreeSet<String> = chunk_files(root);
    assert_eq!(
        left,
        referenced(root),
        "exactly the unreferenced chunks went"
    );
    ok(&pbsfs_local(root, &["verify"]));

    // JSON: the server's counters of this run (nothing more to remove now).
    let json = ok_json(&pbsfs(
        &server,
        &["gc", "--quiet", "--output-format", "json"],
    ));
    assert_eq!(json["removed-chunks"], 0);
    assert_eq!(json["disk-chunks"], left.len() as u64);
    assert!(json["index-file-count"].as_u64().unwrap() > 0);
    assert!(json["min-atime"].as_i64().unwrap() > t0);
}

#[test]
fn gc_on_a_server_fails_when_its_task_fails() {
    let server = TestServer::start_empty();
    // Without a chunk store the server's atime check cannot even start.
    std::fs::remove_dir_all(server.store().root().join(".chunks")).unwrap();
    let out = pbsfs(&server, &["gc"]);
    failed_with(&out, "the server's task failed");
    assert!(stderr(&out).contains("TASK ERROR"), "{}", stderr(&out));
}

#[test]
fn namespaces_on_a_server_are_created_and_deleted() {
    let server = TestServer::start_empty();
    let store = server.store();
    ok(&pbsfs(&server, &["namespaces", "--create", "a"]));
    ok(&pbsfs(
        &server,
        &["--ns", "a", "namespaces", "--create", "b"],
    ));
    failed_with(
        &pbsfs(&server, &["--ns", "x", "namespaces", "--create", "y"]),
        "doesn't already exists",
    );
    let list = ok_json(&pbsfs(&server, &["namespaces", "--output-format", "json"]));
    assert_eq!(list, serde_json::json!(["", "a", "a/b"]));
    empty_snapshot(
        store,
        &BackupNamespace::parse("a/b").unwrap(),
        "x",
        1_700_000_000,
    );
    failed_with(
        &pbsfs(&server, &["namespaces", "--delete", "a"]),
        "delete-groups",
    );
    ok(&pbsfs(
        &server,
        &["namespaces", "--delete", "a", "--recursive"],
    ));
    let list = ok_json(&pbsfs(&server, &["namespaces", "--output-format", "json"]));
    assert_eq!(list, serde_json::json!([""]));
}
