//! The datastore lifecycle on a local datastore: garbage collection (exactly the unused
//! chunks go; nothing is lost next to pushes or after a killed one), forget, protect, notes,
//! prune (JSON as the official client prints it) and namespaces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use common::cli::{local_command, ok, ok_json, pbsfs_local, stderr, stdout};
use common::source_tree::random_bytes;
use pbsfs::format::index::AnyIndex;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::writer::SnapshotWriter;

pub(crate) const TWO_DAYS: i64 = 2 * 24 * 3600;

/// A tree of a few random files (chunks of their own) under `dir/name`.
pub(crate) fn tree(dir: &Path, name: &str, seeds: &[u64]) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    for seed in seeds {
        std::fs::write(
            root.join(format!("file{seed}")),
            random_bytes(*seed, 300_000),
        )
        .unwrap();
    }
    root
}

pub(crate) fn push(store: &Path, id: &str, time: i64, source: &Path) -> Output {
    local_command(store)
        .args(["push", "--quiet", "--crypt-mode", "none", "--backup-id", id])
        .args(["--backup-time", &time.to_string()])
        .arg(format!("root.pxar:{}", source.display()))
        .output()
        .unwrap()
}

/// Every chunk file (by name) in the chunk store.
pub(crate) fn chunk_files(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in std::fs::read_dir(store.join(".chunks")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            out.insert(name);
        }
    }
    out
}

/// The digests (hex) any index file in the datastore refers to, found by a walk of our own.
pub(crate) fn referenced(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![store.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                if name != ".chunks" {
                    dirs.push(path);
                }
            } else if name.ends_with(".didx") || name.ends_with(".fidx") {
                let index = AnyIndex::parse(&std::fs::read(&path).unwrap()).unwrap();
                out.extend(index.digests().iter().map(hex::encode));
            }
        }
    }
    out
}

fn set_atime(path: &Path, epoch: i64) {
    let c_path = common::disk_tree::c_path(path);
    let times = [
        libc::timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sets the atime of every chunk file two days back, as if the chunks were last used then.
pub(crate) fn age_all_chunks(store: &Path) {
    for name in chunk_files(store) {
        set_atime(
            &store.join(".chunks").join(&name[..4]).join(&name),
            now() - TWO_DAYS,
        );
    }
}

pub(crate) fn verify_all(store: &Path) {
    let out = pbsfs_local(store, &["verify"]);
    assert!(
        out.status.success(),
        "verify failed: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

pub(crate) fn new_store() -> (tempfile::TempDir, Arc<LocalDatastore>) {
    common::new_datastore()
}

#[test]
fn gc_removes_exactly_the_chunks_no_index_refers_to() {
    let (dir, store) = new_store();
    let root = store.root();
    let t0 = 1_700_000_000;
    ok(&push(root, "a", t0, &tree(dir.path(), "one", &[1, 2, 3])));
    ok(&push(
        root,
        "a",
        t0 + 60,
        &tree(dir.path(), "two", &[2, 3, 4]),
    ));
    ok(&push(root, "b", t0, &tree(dir.path(), "three", &[5, 6])));
    ok(&pbsfs_local(
        root,
        &["forget", "host/a/2023-11-14T22:13:20Z"],
    ));
    ok(&pbsfs_local(
        root,
        &["forget", "host/b/2023-11-14T22:13:20Z"],
    ));
    assert!(!root.join("host/b").exists(), "an emptied group goes too");

    let used = referenced(root);
    let before = chunk_files(root);
    let unused: BTreeSet<String> = before.difference(&used).cloned().collect();
    assert!(!unused.is_empty() && !used.is_empty());
    age_all_chunks(root);
    // A bad copy of a chunk that is there (gone after gc), and a young unused chunk (kept).
    let some_used = used.iter().next().unwrap().clone();
    let bad = root
        .join(".chunks")
        .join(&some_used[..4])
        .join(format!("{some_used}.0.bad"));
    std::fs::write(&bad, b"bad copy").unwrap();
    set_atime(&bad, now() - TWO_DAYS);
    let young = unused.iter().next().unwrap().clone();
    set_atime(&root.join(".chunks").join(&young[..4]).join(&young), now());

    let dry = ok_json(&pbsfs_local(
        root,
        &["gc", "--dry-run", "--output-format", "json"],
    ));
    assert_eq!(dry["removed-chunks"], unused.len() as u64 - 1, "{dry}");
    assert_eq!(
        chunk_files(root).len(),
        before.len() + 1,
        "a dry run removes nothing"
    );

    let report = ok_json(&pbsfs_local(root, &["gc", "--output-format", "json"]));
    assert_eq!(
        report["removed-chunks"],
        unused.len() as u64 - 1,
        "{report}"
    );
    assert_eq!(report["removed-bad"], 1, "{report}");
    assert_eq!(report["pending-chunks"], 1, "{report}");
    assert_eq!(report["disk-chunks"], used.len() as u64, "{report}");
    let mut expected = used.clone();
    expected.insert(young);
    assert_eq!(chunk_files(root), expected);
    verify_all(root);
}

#[test]
fn a_push_that_finds_its_chunks_present_refreshes_their_atime() {
    let (dir, store) = new_store();
    let root = store.root();
    let source = tree(dir.path(), "src", &[50, 51]);
    ok(&push(root, "t", 1_700_000_000, &source));
    age_all_chunks(root);
    // The same data in another group (nothing to reuse from a previous snapshot): every
    // chunk is inserted again, finds itself present, and must look used now.
    let out = push(root, "other", 1_700_000_060, &source);
    ok(&out);
    use std::os::unix::fs::MetadataExt;
    for name in chunk_files(root) {
        let meta = std::fs::metadata(root.join(".chunks").join(&name[..4]).join(&name)).unwrap();
        assert!(meta.atime() > now() - 3600, "{name} keeps its old atime");
    }
}

#[test]
fn gc_in_another_process_is_refused_while_a_writer_runs() {
    let (_dir, store) = new_store();
    // A writer of this process holds the shared lock: a gc in another process must wait.
    let writer = SnapshotWriter::begin(
        store.clone(),
        &BackupNamespace::root(),
        &BackupDir::new(BackupGroup::parse("host/w").unwrap(), 1_700_000_000).unwrap(),
        "test@pbs",
    )
    .unwrap();
    let out = pbsfs_local(store.root(), &["gc"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    drop(writer);
    ok(&pbsfs_local(store.root(), &["gc"]));
}

#[test]
fn gc_and_pushes_in_a_loop_lose_nothing() {
    let (dir, store) = new_store();
    let root = store.root().to_path_buf();
    let source = tree(dir.path(), "src", &[10, 11]);
    let pushes = {
        let root = root.clone();
        let source = source.clone();
        std::thread::spawn(move || {
            let mut done = 0;
            let mut refused = 0;
            let mut time = 1_700_000_000;
            while done < 6 {
                // Some data changes each time: new chunks, and chunks the old snapshots keep.
                std::fs::write(
                    source.join("changing"),
                    random_bytes(100 + time as u64, 400_000),
                )
                .unwrap();
                time += 3600;
                let out = push(&root, "loop", time, &source);
                if out.status.success() {
                    done += 1;
                } else {
                    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
                    refused += 1;
                }
            }
            refused
        })
    };
    let mut gcs = 0;
    while !pushes.is_finished() {
        let snapshots = ok_json(&pbsfs_local(
            &root,
            &["snapshots", "--output-format", "json"],
        ));
        if snapshots.as_array().unwrap().len() > 2 {
            // Forget the oldest: its own chunks become garbage.
            let oldest = snapshots[0]["snapshot"].as_str().unwrap().to_string();
            let _ = pbsfs_local(&root, &["forget", &oldest]);
        }
        age_all_chunks(&root);
        let out = pbsfs_local(&root, &["gc", "--quiet"]);
        if out.status.success() {
            gcs += 1;
        } else {
            assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
        }
    }
    let _refused = pushes.join().unwrap();
    assert!(gcs > 0, "no gc ran");
    // A last one with nothing running, on chunks that all look old.
    age_all_chunks(&root);
    ok(&pbsfs_local(&root, &["gc"]));
    verify_all(&root);
    let used = referenced(&root);
    assert_eq!(chunk_files(&root), used);
}

#[test]
fn gc_after_a_killed_push_keeps_every_finished_snapshot_whole() {
    let (dir, store) = new_store();
    let root = store.root().to_path_buf();
    ok(&push(
        &root,
        "k",
        1_700_000_000,
        &tree(dir.path(), "first", &[20, 21]),
    ));
    let big = tree(dir.path(), "big", &[]);
    for n in 0..20 {
        std::fs::write(big.join(format!("f{n}")), random_bytes(1000 + n, 1_000_000)).unwrap();
    }
    let mut child = local_command(&root)
        .args(["push", "--quiet", "--crypt-mode", "none", "--workers", "1"])
        .args(["--backup-id", "k", "--backup-time", "1700003600"])
        .arg(format!("root.pxar:{}", big.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let snapshot = root.join("host/k/2023-11-14T23:13:20Z");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    age_all_chunks(&root);
    let report = ok_json(&pbsfs_local(&root, &["gc", "--output-format", "json"]));
    assert!(report["disk-chunks"].as_u64().unwrap() > 0, "{report}");
    // The finished snapshot is whole (the killed one has no manifest, verify says so).
    ok(&pbsfs_local(
        &root,
        &["verify", "host/k/2023-11-14T22:13:20Z"],
    ));
    // The datastore goes on: the next push of the group works and verifies.
    ok(&push(
        &root,
        "k",
        1_700_007_200,
        &tree(dir.path(), "third", &[22]),
    ));
    verify_all(&root);
    let leftovers: Vec<String> = chunk_files(&root)
        .into_iter()
        .filter(|name| name.len() != 64)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn forget_protect_and_notes_round_trip() {
    let (dir, store) = new_store();
    let root = store.root();
    let source = tree(dir.path(), "src", &[30]);
    ok(&push(root, "n", 1_700_000_000, &source));
    ok(&push(root, "n", 1_700_000_060, &source));
    let first = "host/n/2023-11-14T22:13:20Z";
    let second = "host/n/2023-11-14T22:14:20Z";

    ok(&pbsfs_local(root, &["protect", first]));
    let out = pbsfs_local(root, &["forget", first]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("protected"), "{}", stderr(&out));
    let list = ok_json(&pbsfs_local(
        root,
        &["snapshots", "--output-format", "json"],
    ));
    assert_eq!(list[0]["protected"], true);
    assert_eq!(list[1]["protected"], false);

    let ns = BackupNamespace::root();
    let dir2 = BackupDir::parse(second).unwrap();
    let signed_before = store
        .read_manifest(&ns, &dir2)
        .unwrap()
        .signed_bytes()
        .unwrap();
    ok(&pbsfs_local(
        root,
        &["notes", second, "--set", "first line\nsecond line"],
    ));
    assert_eq!(
        stdout(&pbsfs_local(root, &["notes", second])),
        "first line\nsecond line\n"
    );
    let manifest = store.read_manifest(&ns, &dir2).unwrap();
    assert_eq!(manifest.unprotected["notes"], "first line\nsecond line");
    assert_eq!(manifest.signed_bytes().unwrap(), signed_before);
    let list = ok_json(&pbsfs_local(
        root,
        &["snapshots", "--output-format", "json"],
    ));
    assert_eq!(list[1]["comment"], "first line");
    assert!(stdout(&pbsfs_local(root, &["snapshots"])).contains("first line"));

    // Notes from stdin.
    let mut child = local_command(root)
        .args(["notes", second, "--set", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin").unwrap();
    ok(&child.wait_with_output().unwrap());
    assert_eq!(
        stdout(&pbsfs_local(root, &["notes", second])),
        "from stdin\n"
    );
    verify_all(root);

    ok(&pbsfs_local(root, &["protect", "--off", first]));
    ok(&pbsfs_local(root, &["forget", first, second]));
    let list = ok_json(&pbsfs_local(
        root,
        &["snapshots", "--output-format", "json"],
    ));
    assert_eq!(list, serde_json::json!([]));
}

/// A snapshot without files at `time` (prune only looks at times and markers).
pub(crate) fn empty_snapshot(
    store: &Arc<LocalDatastore>,
    ns: &BackupNamespace,
    id: &str,
    time: i64,
) {
    let dir = BackupDir::new(BackupGroup::parse(&format!("host/{id}")).unwrap(), time).unwrap();
    SnapshotWriter::begin(store.clone(), ns, &dir, "test@pbs")
        .unwrap()
        .finish(|_| Ok(()))
        .unwrap();
}

pub(crate) fn prune_json(store: &Path, tz: &str, args: &[&str]) -> serde_json::Value {
    let out = local_command(store)
        .env("TZ", tz)
        .args(["prune", "--output-format", "json"])
        .args(args)
        .output()
        .unwrap();
    ok_json(&out)
}

#[test]
fn prune_prints_what_the_official_client_prints_and_counts_local_days() {
    let (_dir, store) = new_store();
    let ns = BackupNamespace::root();
    let at = |text: &str| pbsfs::store::time::parse_rfc3339(text).unwrap();
    let times = [
        at("2020-05-01T23:30:00Z"),
        at("2020-05-02T00:30:00Z"),
        at("2020-05-02T12:00:00Z"),
    ];
    for time in times {
        empty_snapshot(&store, &ns, "p", time);
    }
    let expect = |keep: [bool; 3]| {
        serde_json::Value::Array(
            times
                .iter()
                .zip(keep)
                .map(|(time, keep)| {
                    serde_json::json!({
                        "backup-type": "host",
                        "backup-id": "p",
                        "backup-time": time,
                        "keep": keep,
                        "protected": false,
                    })
                })
                .collect(),
        )
    };
    let root = store.root();
    let daily = ["host/p", "--keep-daily", "2", "--dry-run"];
    assert_eq!(prune_json(root, "UTC", &daily), expect([true, false, true]));
    // At UTC+2 all three are on May 2nd.
    assert_eq!(
        prune_json(root, "<+02>-2", &daily),
        expect([false, false, true])
    );

    // For real, with a protected one.
    ok(&pbsfs_local(
        root,
        &["protect", "host/p/2020-05-01T23:30:00Z"],
    ));
    let result = prune_json(root, "UTC", &["--all", "--keep-last", "1"]);
    assert_eq!(result[0]["protected"], true);
    assert_eq!(result[0]["keep"], true);
    assert_eq!(result[1]["keep"], false);
    assert_eq!(result[2]["keep"], true);
    let left = ok_json(&pbsfs_local(
        root,
        &["snapshots", "--output-format", "json"],
    ));
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["host/p/2020-05-01T23:30:00Z", "host/p/2020-05-02T12:00:00Z"]
    );

    let out = pbsfs_local(root, &["prune", "host/none", "--keep-last", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // In a namespace, each item names it, as the server's answer does.
    ok(&pbsfs_local(root, &["namespaces", "--create", "team"]));
    let team = BackupNamespace::parse("team").unwrap();
    empty_snapshot(&store, &team, "q", times[0]);
    let listed = ok_json(
        &local_command(root)
            .args(["--ns", "team", "prune", "host/q", "--keep-last", "1"])
            .args(["--output-format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(listed[0]["ns"], "team");
}

#[test]
fn namespaces_are_created_and_deleted_empty_or_recursively() {
    let (_dir, store) = new_store();
    let root = store.root();
    ok(&pbsfs_local(root, &["namespaces", "--create", "a"]));
    ok(&pbsfs_local(
        root,
        &["--ns", "a", "namespaces", "--create", "b"],
    ));
    let list = ok_json(&pbsfs_local(
        root,
        &["namespaces", "--output-format", "json"],
    ));
    assert_eq!(list, serde_json::json!(["", "a", "a/b"]));
    empty_snapshot(
        &store,
        &BackupNamespace::parse("a/b").unwrap(),
        "x",
        1_700_000_000,
    );

    let out = pbsfs_local(root, &["namespaces", "--delete", "a"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    ok(&pbsfs_local(
        root,
        &["namespaces", "--delete", "a", "--recursive"],
    ));
    let list = ok_json(&pbsfs_local(
        root,
        &["namespaces", "--output-format", "json"],
    ));
    assert_eq!(list, serde_json::json!([""]));
}

#[test]
fn a_repository_that_is_no_datastore_is_refused_with_a_hint_and_init_makes_one() {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let typo = dir.path().join("typo");
    let source = tree(dir.path(), "src", &[40]);
    for args in [vec!["snapshots"], vec!["gc"]] {
        let out = pbsfs_local(&typo, &args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("pbsfs init"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = push(&typo, "x", 1_700_000_000, &source);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pbsfs init"), "{}", stderr(&out));
    assert!(!typo.exists(), "nothing was created");

    ok(&common::cli::command()
        .arg("init")
        .arg(&typo)
        .output()
        .unwrap());
    assert!(typo.join(".chunks/ffff").is_dir());
    let again = common::cli::command()
        .arg("init")
        .arg(&typo)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "init of an existing datastore says so"
    );
    ok(&push(&typo, "x", 1_700_000_000, &source));
}
