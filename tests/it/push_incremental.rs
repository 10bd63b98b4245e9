//! Pushes of generated trees: push → restore gives the same tree in all three modes, and a
//! metadata-mode push of an unchanged tree reads no file contents and, once the previous
//! snapshot also re-used its payload, stores no new chunk at all.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::cli::{ok, pbsfs_local};
use common::source_tree::{describe_tree, make_basic_tree, random_bytes};
use pbsfs::backup::client::{ClientProvider, LocalClient};
use pbsfs::backup::exclude::ExcludePatterns;
use pbsfs::backup::server::{BackupOptions, BackupSpec, BackupSummary, ChangeDetection, Server};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::BackupGroup;

/// One datastore per test module (creating 65536 chunk directories is slow).
fn store() -> &'static (tempfile::TempDir, Arc<LocalDatastore>) {
    static STORE: OnceLock<(tempfile::TempDir, Arc<LocalDatastore>)> = OnceLock::new();
    STORE.get_or_init(common::new_datastore)
}

/// A tree with every entry kind an unprivileged user can make, plus xattrs and
/// `.pxarexclude` rules.
fn small_tree(root: &Path) {
    make_basic_tree(root);
    std::fs::write(root.join("dir/sub/random"), random_bytes(1, 300_000)).unwrap();
    std::fs::write(root.join("excluded.tmp"), b"left out").unwrap();
    std::fs::write(root.join("dir/.pxarexclude"), b"sub/random\n").unwrap();
}

fn push(
    tree: &Path,
    id: &str,
    time: i64,
    mode: ChangeDetection,
    patterns: &[&str],
) -> (BackupSummary, u64) {
    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", tree.display())).unwrap();
    let mut options = BackupOptions::new(BackupGroup::parse(&format!("host/{id}")).unwrap(), time);
    options.mode = mode;
    options.patterns = ExcludePatterns::from_cli(patterns).unwrap();
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    (summary, client.counters().content_bytes())
}

#[test]
fn a_dry_run_server_walks_but_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", tmp.path().display())).unwrap();
    let mut options = BackupOptions::new(BackupGroup::parse("host/dry").unwrap(), 1_700_000_000);
    options.dry_run = true;
    let server = Server::dry_run_only();
    let summary = server
        .run_backup(&client, std::slice::from_ref(&spec), &options)
        .unwrap();
    assert!(summary.snapshot.is_none());
    assert!(summary.walk.files > 0);
    // Without a store, a real backup is refused rather than lost.
    options.dry_run = false;
    let err = server.run_backup(&client, &[spec], &options).unwrap_err();
    assert!(format!("{err:#}").contains("dry-run"), "{err:#}");
}

fn restore(snapshot: &str, target: &Path) {
    ok(&pbsfs_local(
        store().1.root(),
        &["restore", snapshot, "root.pxar", target.to_str().unwrap()],
    ));
}

#[test]
fn push_then_restore_gives_the_same_tree_in_every_mode() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    small_tree(&tree);
    let mut expected = describe_tree(&tree);
    // What the exclude pattern and the .pxarexclude leave out.
    expected.remove(Path::new("excluded.tmp"));
    expected.remove(Path::new("dir/sub/random"));
    for (i, mode) in [
        ChangeDetection::Legacy,
        ChangeDetection::Data,
        ChangeDetection::Metadata,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("roundtrip-{i}");
        let (summary, _) = push(&tree, &id, 1000, mode, &["*.tmp"]);
        assert_eq!(summary.walk.hardlinks, 1);
        // A second metadata-mode push re-uses what it can and must restore the same.
        let (second, read) = push(&tree, &id, 2000, ChangeDetection::Metadata, &["*.tmp"]);
        if mode != ChangeDetection::Legacy {
            // Only the .pxarexclude file (11 bytes) is read: its patterns are needed.
            assert_eq!(read, 11, "{mode:?}: unchanged files were read");
            assert!(second.walk.reused_files >= 3);
        }
        for (time, snapshot) in [(1000, "1970-01-01T00:16:40Z"), (2000, "latest")] {
            let target = work.path().join(format!("restored-{i}-{time}"));
            restore(&format!("host/{id}/{snapshot}"), &target);
            let mut restored = describe_tree(&target);
            // The command line's patterns, recorded in v1 archives only.
            let cli_file = restored.remove(Path::new(".pxarexclude-cli"));
            assert_eq!(
                cli_file.is_some(),
                time == 1000 && mode == ChangeDetection::Legacy
            );
            assert_eq!(restored, expected, "{mode:?} {snapshot}");
        }
    }
}

#[test]
fn a_damaged_previous_manifest_is_passed_by_for_change_detection() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    small_tree(&tree);
    let id = "damaged-previous";
    push(&tree, id, 1000, ChangeDetection::Metadata, &["*.tmp"]);
    push(&tree, id, 2000, ChangeDetection::Metadata, &["*.tmp"]);
    let store = &store().1;
    let newest = store.root().join(format!("host/{id}/1970-01-01T00:33:20Z"));
    std::fs::write(newest.join("index.json.blob"), b"").unwrap();
    // The newest readable snapshot (the first) is the base: nothing unchanged is read.
    let (third, read) = push(&tree, id, 3000, ChangeDetection::Metadata, &["*.tmp"]);
    assert_eq!(
        read, 11,
        "unchanged files were read (only .pxarexclude must be)"
    );
    assert!(third.walk.reused_files >= 3);
    let target = work.path().join("restored");
    restore(&format!("host/{id}/latest"), &target);
    let mut expected = describe_tree(&tree);
    expected.remove(Path::new("excluded.tmp"));
    expected.remove(Path::new("dir/sub/random"));
    assert_eq!(describe_tree(&target), expected);
}

#[test]
fn unchanged_tree_is_not_read_again_and_adds_no_chunks() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    // 1 GiB: many small files, large random files, a large compressible file (about 200 MiB
    // of real data) and 800 MiB of sparse files, which read as zeros but take no disk (CI
    // machines can be short of disk).
    for d in 0..20 {
        let dir = tree.join(format!("small/{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let data = random_bytes(d * 1000 + f, 1000 + (f as usize * 97) % 9000);
            std::fs::write(dir.join(format!("f{f:03}")), data).unwrap();
        }
    }
    for i in 0..4 {
        std::fs::write(
            tree.join(format!("random-{i}")),
            random_bytes(100 + i, 40 << 20),
        )
        .unwrap();
    }
    let text: Vec<u8> = (0..(24usize << 20))
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i * 7 + i / 4096) % 27])
        .collect();
    std::fs::write(tree.join("text"), &text).unwrap();
    for i in 0..4 {
        let sparse = std::fs::File::create(tree.join(format!("sparse-{i}"))).unwrap();
        sparse.set_len(210 << 20).unwrap();
    }
    let tree_bytes: u64 = walk_sizes(&tree);
    assert!(tree_bytes >= 1 << 30, "{tree_bytes}");

    let (first, read) = push(&tree, "unchanged", 1000, ChangeDetection::Metadata, &[]);
    assert_eq!(read, tree_bytes);
    assert!(first.new_chunks > 30);

    // The second push reads nothing and, as the metadata archive comes out byte-identical,
    // stores nothing new: every chunk of both archives is already there.
    let (second, read) = push(&tree, "unchanged", 2000, ChangeDetection::Metadata, &[]);
    assert_eq!(read, 0, "no file contents may be read");
    assert_eq!(second.walk.reused_files, 2009);
    assert_eq!(second.new_chunks, 0, "{second:?}");
    assert_eq!(second.new_bytes, 0, "{second:?}");
    let ppxar = &second.archives[1];
    assert_eq!(ppxar.filename, "root.ppxar.didx");
    assert_eq!(second.reused_chunk_bytes, ppxar.size);
    for (a, b) in first.archives.iter().zip(&second.archives) {
        assert_eq!(
            (&a.filename, a.size, a.chunks),
            (&b.filename, b.size, b.chunks)
        );
    }

    let (third, read) = push(&tree, "unchanged", 3000, ChangeDetection::Metadata, &[]);
    assert_eq!(read, 0);
    assert_eq!(third.new_chunks, 0, "{third:?}");

    // A changed file is read again, and only it.
    std::fs::write(tree.join("small/03/f007"), b"changed").unwrap();
    let (fourth, read) = push(&tree, "unchanged", 4000, ChangeDetection::Metadata, &[]);
    assert_eq!(read, 7);
    assert_eq!(fourth.walk.reused_files, 2008);
    let target = work.path().join("restored");
    restore("host/unchanged/latest", &target);
    assert_eq!(describe_tree(&target), describe_tree(&tree));
}

/// The sum of the sizes of the regular files below `dir`.
fn walk_sizes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            total += walk_sizes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

#[test]
fn image_push_stores_the_official_fixed_index() {
    use pbsfs::format::index::{AnyIndex, ChunkIndex};
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"));
    let official_dir = fixtures.join("datastore/vm/100/2026-11-25T08:29:01Z");
    let official =
        AnyIndex::parse(&std::fs::read(official_dir.join("drive-scsi0.img.fidx")).unwrap())
            .unwrap();
    // The image itself, reassembled from the official datastore.
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = work.path().join("disk.img");
    ok(&pbsfs_local(
        &fixtures.join("datastore"),
        &[
            "restore",
            "vm/100/latest",
            "drive-scsi0.img",
            image.to_str().unwrap(),
        ],
    ));

    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("drive-scsi0.img:{}", image.display())).unwrap();
    let options = BackupOptions::new(BackupGroup::parse("vm/100").unwrap(), 1000);
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    let dir = summary.snapshot.unwrap();
    let raw = store()
        .1
        .read_snapshot_file(
            &pbsfs::store::names::BackupNamespace::root(),
            &dir,
            "drive-scsi0.img.fidx",
        )
        .unwrap();
    let ours = AnyIndex::parse(&raw).unwrap();
    assert_eq!(ours.total_size(), official.total_size());
    assert_eq!(ours.digests(), official.digests());
    assert_eq!(client.counters().content_bytes(), official.total_size());
}

/// Modes of everything in a datastore that are not the ones PBS uses.
fn modes_unlike_pbs(root: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |path: &Path, want: u32| {
        let mode = std::fs::symlink_metadata(path).unwrap().mode() & 0o7777;
        if mode != want {
            wrong.push(format!("{} is {mode:04o}, not {want:04o}", path.display()));
        }
    };
    check(root, 0o755);
    check(&root.join(".lock"), 0o644);
    check(&root.join(".chunks"), 0o750);
    for prefix in std::fs::read_dir(root.join(".chunks")).unwrap() {
        let prefix = prefix.unwrap().path();
        check(&prefix, 0o750);
        for chunk in std::fs::read_dir(&prefix).unwrap() {
            check(&chunk.unwrap().path(), 0o644);
        }
    }
    fn walk(dir: &Path, check: &mut dyn FnMut(&Path, u32)) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                check(&path, 0o755);
                walk(&path, check);
            } else {
                check(&path, 0o644);
            }
        }
    }
    for top in ["host", "ns"] {
        if root.join(top).exists() {
            check(&root.join(top), 0o755);
            walk(&root.join(top), &mut check);
        }
    }
    wrong
}

#[test]
fn a_new_datastore_gets_the_modes_pbs_uses_whatever_the_umask() {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    for umask in ["000", "077"] {
        let store = dir.path().join(format!("ds-{umask}"));
        ok(&pbsfs_with_umask(umask)
            .arg("init")
            .arg(&store)
            .output()
            .unwrap());
        // Twice: the first push creates the group, the second adds to it.
        for id in ["a", "a"] {
            let output = pbsfs_with_umask(umask)
                .arg("-r")
                .arg(&store)
                .args([
                    "push",
                    "--quiet",
                    "--backup-id",
                    id,
                    "--change-detection-mode",
                ])
                .arg("legacy")
                .arg(format!("root.pxar:{}", tree.display()))
                .output()
                .unwrap();
            ok(&output);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let wrong = modes_unlike_pbs(&store);
        assert!(wrong.is_empty(), "umask {umask}: {wrong:#?}");
    }
}

/// A sparse file (islands of data in holes) is stored exactly like a dense copy of the same
/// bytes, as a pxar payload and as an image: holes read as zeros, and the zero path (no
/// reading of holes, all-zero chunks hashed once) cuts and hashes like the byte path.
#[test]
fn sparse_files_push_the_same_chunks_as_dense_copies() {
    use pbsfs::format::blob::decode_blob;
    use pbsfs::format::index::{AnyIndex, ChunkIndex};
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (sparse_dir, dense_dir) = (work.path().join("s"), work.path().join("d"));
    std::fs::create_dir(&sparse_dir).unwrap();
    std::fs::create_dir(&dense_dir).unwrap();
    let size: u64 = 1 << 30;
    let islands: Vec<(u64, Vec<u8>)> = vec![
        (0, random_bytes(10, 100_000)),
        ((300 << 20) + 12345, random_bytes(11, 5 << 20)),
        (700 << 20, vec![1]),
        (size - 4096 - 17, random_bytes(12, 4096)),
    ];
    let sparse = std::fs::File::create(sparse_dir.join("f")).unwrap();
    sparse.set_len(size).unwrap();
    for (offset, bytes) in &islands {
        sparse.write_all_at(bytes, *offset).unwrap();
    }
    drop(sparse);
    // The same bytes, every block written.
    let mut dense = std::io::BufWriter::new(std::fs::File::create(dense_dir.join("f")).unwrap());
    let block = 16u64 << 20;
    for start in (0..size).step_by(block as usize) {
        let mut data = vec![0u8; block as usize];
        for (offset, bytes) in &islands {
            let end = offset + bytes.len() as u64;
            if *offset < start + block && end > start {
                let from = offset.max(&start) - start;
                let to = end.min(start + block) - start;
                let skip = (start + from - offset) as usize;
                data[from as usize..to as usize]
                    .copy_from_slice(&bytes[skip..skip + (to - from) as usize]);
            }
        }
        dense.write_all(&data).unwrap();
    }
    dense.into_inner().unwrap().sync_all().unwrap();
    let allocated = |path: &Path| std::fs::metadata(path).unwrap().blocks() * 512;
    assert!(allocated(&sparse_dir.join("f")) < size / 100, "not sparse");
    assert!(allocated(&dense_dir.join("f")) >= size, "not dense");

    let client = LocalClient::new();
    let specs: Vec<BackupSpec> = [
        format!("sparse.pxar:{}", sparse_dir.display()),
        format!("dense.pxar:{}", dense_dir.display()),
        format!("sparse-image.img:{}", sparse_dir.join("f").display()),
        format!("dense-image.img:{}", dense_dir.join("f").display()),
    ]
    .iter()
    .map(|s| BackupSpec::parse(s).unwrap())
    .collect();
    let mut options = BackupOptions::new(BackupGroup::parse("host/sparse").unwrap(), 1000);
    options.mode = ChangeDetection::Data;
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    let dir = server
        .run_backup(&client, &specs, &options)
        .unwrap()
        .snapshot
        .unwrap();
    let index = |name: &str| {
        let raw = store()
            .1
            .read_snapshot_file(&pbsfs::store::names::BackupNamespace::root(), &dir, name)
            .unwrap();
        AnyIndex::parse(&raw).unwrap()
    };
    for (sparse, dense) in [
        ("sparse.ppxar.didx", "dense.ppxar.didx"),
        ("sparse-image.img.fidx", "dense-image.img.fidx"),
    ] {
        let (sparse, dense) = (index(sparse), index(dense));
        assert_eq!(sparse.total_size(), dense.total_size());
        assert_eq!(sparse.digests(), dense.digests());
        assert_eq!(sparse.compute_csum(), dense.compute_csum());
        // Every chunk stored decodes to bytes of its digest (the cached zero chunks too).
        let mut seen = std::collections::HashSet::new();
        for (i, digest) in sparse.digests().iter().enumerate() {
            if !seen.insert(*digest) {
                continue;
            }
            let raw = std::fs::read(store().1.chunk_path(digest)).unwrap();
            let plain = decode_blob(&raw, 16 << 20).unwrap();
            assert_eq!(
                <sha2::Sha256 as sha2::Digest>::digest(&plain).as_slice(),
                digest,
                "chunk {i}"
            );
        }
        assert!(seen.len() < 20, "{} distinct chunks", seen.len());
    }
}

/// Pushed by a user who cannot read everything: a file and a directory it cannot open are
/// left out with one warning each and counted, the snapshot is finished anyway, and the
/// exit status is 3; a push with nothing left out exits 0.
///
/// The push runs as root without the capabilities that bypass file permissions, i.e. with
/// the file access of an ordinary user who owns the datastore: a push as `nobody` would need
/// a datastore of its own, and creating and removing its 65536 chunk directories takes
/// minutes on a busy disk.
#[test]
fn unreadable_entries_are_left_out_and_the_exit_status_says_so() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("open")).unwrap();
    std::fs::create_dir_all(tree.join("locked")).unwrap();
    std::fs::write(tree.join("readable"), b"hello").unwrap();
    std::fs::write(tree.join("secret"), b"not for ordinary users").unwrap();
    std::fs::write(tree.join("open/file"), b"in an open directory").unwrap();
    std::fs::write(tree.join("locked/inner"), b"behind a locked door").unwrap();
    chmod(&tree.join("secret"), 0o000);
    chmod(&tree.join("locked"), 0o000);

    let datastore = store().1.root();
    let push_without_privileges = |source: &Path, id: &str| {
        let no_bypass = "-dac_override,-dac_read_search";
        Command::new("setpriv")
            .arg(format!("--inh-caps={no_bypass}"))
            .arg(format!("--bounding-set={no_bypass}"))
            .arg(env!("CARGO_BIN_EXE_pbsfs"))
            .arg("-r")
            .arg(datastore)
            .args(["push", "--output-format", "json", "--crypt-mode", "none"])
            .args(["--backup-id", id, "--backup-time", "1000"])
            .arg(format!("root.pxar:{}", source.display()))
            .output()
            .unwrap()
    };
    let output = push_without_privileges(&tree, "partial");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.matches("left out").count(), 2, "{stderr}");
    assert!(stderr.contains("\"secret\" left out: "), "{stderr}");
    assert!(stderr.contains("\"locked\" left out: "), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["left-out"], 2, "{summary}");
    assert_eq!(summary["incomplete-files"], 0, "{summary}");
    assert_eq!(summary["files"], 2, "{summary}");
    let snapshot = summary["snapshot"].as_str().unwrap().to_string();

    // Finished and listed; the archive holds what could be read and nothing else.
    let listing = pbsfs_local(datastore, &["snapshots", "host/partial"]);
    assert!(listing.status.success());
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains(&snapshot),
        "{snapshot} not listed"
    );
    let restored = work.path().join("restored");
    restore(&snapshot, &restored);
    let mut names: Vec<PathBuf> = describe_tree(&restored).into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["open", "open/file", "readable"]
            .map(PathBuf::from)
            .to_vec()
    );

    // Nothing left out: exit status 0.
    let output = push_without_privileges(&tree.join("open"), "complete");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("left out"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["left-out"], 0, "{summary}");
}

/// Messages of the library reach stderr through the logging facade, at the level that
/// `-q`, `-v` and PBSFS_LOG choose, for every command (here push's note on a mount point).
#[test]
fn log_levels_follow_the_flags_and_pbsfs_log() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("mounted")).unwrap();
    std::fs::write(tree.join("file"), b"data").unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(tree.join("mounted"))
        .status()
        .expect("mount(8) is needed");
    assert!(status.success(), "mounting a tmpfs needs root");
    let push = |global: &[&str], env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pbsfs"));
        command
            .args(global)
            .arg("-r")
            .arg(work.path().join("ds"))
            .args(["push", "--dry-run", "--backup-id", "logs"])
            .arg(format!("root.pxar:{}", tree.display()))
            .env_remove("PBSFS_LOG");
        if let Some(filter) = env {
            command.env("PBSFS_LOG", filter);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{global:?} {env:?}: {stderr}");
        stderr
    };
    let results = [
        push(&[], None),
        push(&["-q"], None),
        push(&["-v"], None),
        push(&[], Some("error")),
    ];
    let _ = Command::new("umount").arg(tree.join("mounted")).status();
    let [default, quiet, verbose, only_errors] = results;
    assert!(default.contains("skipping mount point"), "{default}");
    assert!(!quiet.contains("skipping mount point"), "{quiet}");
    assert!(
        verbose.contains("[INFO pbsfs::backup::archive] skipping mount point"),
        "{verbose}"
    );
    assert!(
        !only_errors.contains("skipping mount point"),
        "{only_errors}"
    );
}

/// `pbsfs` run under the given umask (through `sh`, which sets it before exec).
fn pbsfs_with_umask(umask: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pbsfs"));
    command
}

/// Exclude patterns are user input, and `.pxarexclude` files belong to whoever owns the tree
/// being backed up: a malformed one is an error or a warning, never a crash of the push.
#[test]
fn malformed_exclude_patterns_do_not_crash_a_push() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("kept"), b"data").unwrap();
    std::fs::write(src.path().join(".pxarexclude"), b"[unclosed\nkept-not\n").unwrap();
    let store = store().1.root().to_path_buf();
    let source = src.path().to_str().unwrap();
    let push = |extra: &[&str]| {
        let mut args = vec!["push", source, "--backup-id", "malformed-excludes"];
        args.extend_from_slice(extra);
        crate::common::cli::pbsfs_local(&store, &args)
    };

    let out = push(&["--exclude", "a[b"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid exclude pattern 'a[b'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = push(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad pattern '[unclosed' in .pxarexclude"),
        "{stderr}"
    );
}
