//! `pbsfs pull` against `pbsfs agent`: through a plain local transport command (a script
//! that runs the remote command as ssh would) and through a real sshd on 127.0.0.1. A pull
//! stores the same archive bytes as a local push of the same tree; a metadata-mode re-pull
//! reads only the changed files; a broken or garbled connection fails without a snapshot;
//! the agent serves nothing outside its roots.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli::{local_command, ok, ok_json, pbsfs_local, stderr};
use common::source_tree::{make_basic_tree, random_bytes, set_xattr};

/// A transport command like ssh: `SCRIPT HOST COMMAND` runs COMMAND with `sh -c`, with
/// `filter` (a shell pipeline stage, or empty) on what the agent sends back.
fn transport(dir: &Path, name: &str, filter: &str) -> PathBuf {
    let script = dir.join(name);
    let body = if filter.is_empty() {
        "#!/bin/sh\nshift\nexec sh -c \"$1\"\n".to_string()
    } else {
        // Through a FIFO, so that the filter is the only holder of our end of the pipe:
        // when it ends we see the end, as when a connection drops (a shell waiting for a
        // pipeline would keep it open). The agent's stdin comes through fd 4: a command in
        // the background would get /dev/null.
        format!(
            "#!/bin/sh\nshift\nfifo=\"$0.$$.fifo\"\nmkfifo \"$fifo\"\nexec 4<&0\n\
             sh -c \"$1\" <&4 4<&- >\"$fifo\" &\nexec 4<&- sh -c '{filter}' <\"$fifo\"\n"
        )
    };
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A temporary directory holding the test tree (`tree`) and an empty datastore (`ds`).
fn tree_and_store() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let store = dir.path().join("ds");
    ok(&pbsfs_local(&store, &["init"]));
    (dir, tree, store)
}

fn agent_binary() -> &'static str {
    env!("CARGO_BIN_EXE_pbsfs")
}

/// `pbsfs --repository STORE pull --rsh RSH --remote-path BIN ARGS`.
fn pull(store: &Path, rsh: &str, args: &[&str]) -> Output {
    local_command(store)
        .args(["pull", "--rsh", rsh, "--remote-path", agent_binary()])
        .args(args)
        .output()
        .expect("run pbsfs")
}

/// A tree with what a walk meets: files big and small, hardlinks, symlinks (one to outside
/// the tree), a FIFO, an xattr, a `.pxarexclude`, nested directories.
fn make_tree(root: &Path) {
    make_basic_tree(root);
    std::fs::write(root.join("big"), random_bytes(1, 5 << 20)).unwrap();
    for d in 0..5 {
        let dir = root.join(format!("many/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            std::fs::write(
                dir.join(format!("f{f}")),
                random_bytes(d * 100 + f, 200 + f as usize),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("many/.pxarexclude"), b"d4/f1*\n").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("outside")).unwrap();
    let _ = set_xattr(&root.join("big"), "user.note", b"pulled");
}

/// The archives of a snapshot as stored (raw streams), by name.
fn archives(store: &Path, snapshot: &str, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|name| {
            let out = pbsfs_local(store, &["restore", snapshot, name, "-"]);
            (name.to_string(), ok(&out).to_vec())
        })
        .collect()
}

fn archive_names(mode: &str) -> &'static [&'static str] {
    if mode == "legacy" {
        &["root.pxar", "catalog.pcat1"]
    } else {
        &["root.mpxar", "root.ppxar"]
    }
}

const TIME: &str = "1700000000";

#[test]
fn a_pull_stores_what_a_local_push_stores_in_every_mode() {
    let (dir, tree, store) = tree_and_store();
    let rsh = transport(dir.path(), "rsh", "");
    let source = format!("root.pxar:{}", tree.display());
    for mode in ["legacy", "data", "metadata"] {
        let common = ["--backup-time", TIME, "--change-detection-mode", mode];
        let local_id = format!("local-{mode}");
        let mut push_args = vec!["push", "--backup-id", &local_id];
        push_args.extend(common);
        push_args.push(&source);
        ok(&pbsfs_local(&store, &push_args));

        let pulled = format!("root.pxar:somehost:{}", tree.display());
        let pulled_id = format!("pulled-{mode}");
        let mut pull_args = vec!["--backup-id", pulled_id.as_str()];
        pull_args.extend(common);
        pull_args.push(&pulled);
        ok(&pull(&store, rsh.to_str().unwrap(), &pull_args));

        let local = archives(
            &store,
            &format!("host/{local_id}/latest"),
            archive_names(mode),
        );
        let remote = archives(
            &store,
            &format!("host/{pulled_id}/latest"),
            archive_names(mode),
        );
        for ((name, local), (_, remote)) in local.iter().zip(&remote) {
            assert!(
                local == remote,
                "{mode}: {name} differs between push and pull"
            );
            assert!(!local.is_empty());
        }
    }
}

#[test]
fn the_backup_id_is_the_client_host_name_and_a_re_pull_reads_only_changed_files() {
    let (dir, tree, store) = tree_and_store();
    let rsh = transport(dir.path(), "rsh", "");
    let source = format!("backup@client:{}", tree.display());
    let first = ok_json(&pull(
        &store,
        rsh.to_str().unwrap(),
        &["--output-format", "json", "--backup-time", TIME, &source],
    ));
    let host = pbsfs::agent::serve::host_name();
    let snapshot = first["snapshot"].as_str().unwrap().to_string();
    assert!(snapshot.starts_with(&format!("host/{host}/")), "{snapshot}");
    assert!(first["bytes-read"].as_u64().unwrap() > 5 << 20);

    // Inode change times have a finer grain than snapshot times: change after the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(tree.join("many/d2/f3"), b"changed content").unwrap();
    let second = ok_json(&pull(
        &store,
        rsh.to_str().unwrap(),
        &["--output-format", "json", &source],
    ));
    // The changed file and the `.pxarexclude` (read by every walk, as a push reads it).
    assert_eq!(second["bytes-read"].as_u64().unwrap(), 15 + 7, "{second}");
    let unchanged =
        second["reused-files"].as_u64().unwrap() + second["copied-files"].as_u64().unwrap();
    assert!(unchanged > 150, "{second}");
}

/// Every snapshot of the store (JSON list).
fn snapshot_count(store: &Path) -> usize {
    let out = pbsfs_local(store, &["--output-format", "json", "snapshots"]);
    ok_json(&out).as_array().map_or(0, Vec::len)
}

#[test]
fn a_broken_or_garbled_connection_fails_without_a_snapshot() {
    let (dir, tree, store) = tree_and_store();
    let source = format!("client:{}", tree.display());
    let cases = [
        (
            "cut",
            "stdbuf -o0 head -c 200000",
            "connection to the agent",
        ),
        (
            "garbled",
            "(stdbuf -o0 head -c 200000; head -c 300000 /dev/urandom)",
            "connection to the agent",
        ),
        ("nothing", "true", "agent ended without answering"),
        ("noise", "(echo 'Welcome!'; cat)", "not a pbsfs agent"),
    ];
    for (name, filter, message) in cases {
        let rsh = transport(dir.path(), name, filter);
        for mode in ["legacy", "metadata"] {
            let out = pull(
                &store,
                rsh.to_str().unwrap(),
                &["--change-detection-mode", mode, &source],
            );
            assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
            assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        }
    }
    assert_eq!(snapshot_count(&store), 0);
}

/// A transport that connects and then says nothing (a client that hangs): the pull gives
/// up after `--timeout` instead of waiting forever.
#[test]
fn a_silent_agent_is_given_up_after_the_timeout() {
    let (dir, tree, store) = tree_and_store();
    let silent = dir.path().join("silent");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 120\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = std::time::Instant::now();
    let source = format!("client:{}", tree.display());
    let out = pull(
        &store,
        silent.to_str().unwrap(),
        &["--timeout", "1", &source],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not answer in 1 s"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(snapshot_count(&store), 0);
}

#[test]
fn nothing_outside_the_agent_roots_is_served() {
    let (dir, tree, store) = tree_and_store();
    // The agent is started with its root fixed, as a forced command in authorized_keys
    // does; the pull asks for a directory outside it.
    let script = dir.path().join("forced");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} agent {}\n",
            agent_binary(),
            tree.join("many").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rsh = script.to_str().unwrap();
    let out = pull(&store, rsh, &[&format!("client:{}", tree.display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not served by the agent"),
        "{}",
        stderr(&out)
    );
    let out = pull(&store, rsh, &["client:/etc"]);
    assert!(
        stderr(&out).contains("is not served by the agent"),
        "{}",
        stderr(&out)
    );
    // Inside the root it works, and a symlink out of the tree stays a symlink.
    std::os::unix::fs::symlink("/etc", tree.join("many/d0/etc")).unwrap();
    let json = ok_json(&pull(
        &store,
        rsh,
        &[
            "--output-format",
            "json",
            "--backup-id",
            "client",
            &format!("client:{}", tree.join("many").display()),
        ],
    ));
    assert_eq!(json["left-out"].as_u64(), Some(0));
    let out = pbsfs_local(&store, &["files", "host/client/latest"]);
    ok(&out);
    let restore = dir.path().join("restored");
    ok(&pbsfs_local(
        &store,
        &[
            "restore",
            "host/client/latest",
            "many.pxar",
            restore.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_link(restore.join("d0/etc")).unwrap(),
        Path::new("/etc")
    );
    assert!(!restore.join("d0/etc/passwd").exists() || restore.join("d0/etc").is_symlink());
}

#[test]
fn an_agent_without_root_rights_gives_a_partial_snapshot_and_exit_status_3() {
    if !common::source_tree::is_root() {
        // The agent is dropped to `nobody` below: the test runs as root (as CI does).
        return;
    }
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    std::fs::write(tree.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(
        tree.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let store = dir.path().join("ds");
    ok(&pbsfs_local(&store, &["init"]));
    let rsh = transport(dir.path(), "as-nobody", "");
    let script = std::fs::read_to_string(&rsh).unwrap().replace(
        "exec sh",
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups sh",
    );
    std::fs::write(&rsh, script).unwrap();
    let out = pull(
        &store,
        rsh.to_str().unwrap(),
        &[
            "--output-format",
            "json",
            &format!("client:{}", tree.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // dir/text (mode 600) and secret cannot be read by nobody.
    assert_eq!(summary["left-out"].as_u64(), Some(2), "{summary}");
    assert!(stderr(&out).contains("secret"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&store), 1);
}

/// The same snapshot times and modes as [`a_pull_stores_what_a_local_push_stores_in_every_mode`],
/// through a real sshd: with the command given by the pull, and with a key whose forced
/// command in `authorized_keys` fixes the served root (the README's set-up), into a local
/// datastore and into the test server.
#[test]
fn pulls_through_a_real_sshd_into_a_local_datastore_and_a_server() {
    use common::cli::pbsfs;
    use common::pbs_server::{empty_datastore, ServerConfig, TestServer};
    use common::sshd::Sshd;

    let (dir, tree, store) = tree_and_store();
    let datastore = empty_datastore(dir.path());
    let server = TestServer::start(&datastore, ServerConfig::default());

    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let plain = Sshd::user_key(&keys, "plain");
    let forced = Sshd::user_key(&keys, "forced");
    let sshd = Sshd::start(&[
        plain.public.clone(),
        format!(
            "command=\"{} agent {}\",restrict {}",
            agent_binary(),
            tree.display(),
            forced.public
        ),
    ]);
    let source = format!("root.pxar:127.0.0.1:{}", tree.display());
    for mode in ["legacy", "data", "metadata"] {
        let common_args = ["--backup-time", TIME, "--change-detection-mode", mode];
        let local_id = format!("local-{mode}");
        let push_source = format!("root.pxar:{}", tree.display());
        let mut push_args = vec!["push", "--backup-id", &local_id];
        push_args.extend(common_args);
        push_args.push(&push_source);
        ok(&pbsfs_local(&store, &push_args));
        let local = archives(
            &store,
            &format!("host/{local_id}/latest"),
            archive_names(mode),
        );

        let ssh_id = format!("ssh-{mode}");
        let mut args = vec!["--backup-id", ssh_id.as_str()];
        args.extend(common_args);
        args.push(&source);
        ok(&pull(&store, &sshd.rsh(&plain), &args));
        let pulled = archives(
            &store,
            &format!("host/{ssh_id}/latest"),
            archive_names(mode),
        );
        assert!(
            local == pulled,
            "{mode}: pulled through sshd differs from the push"
        );

        let rsh = sshd.rsh(&forced);
        let mut server_args = vec!["pull", "--rsh", rsh.as_str(), "--remote-path", "/not/used"];
        server_args.extend(["--backup-id", ssh_id.as_str()]);
        server_args.extend(common_args);
        server_args.push(&source);
        ok(&pbsfs(&server, &server_args));
        let on_server = archives(
            &datastore,
            &format!("host/{ssh_id}/latest"),
            archive_names(mode),
        );
        assert!(
            local == on_server,
            "{mode}: pulled into the server differs from the push"
        );
    }

    // A metadata-mode re-pull into the server reads only the changed file.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(tree.join("many/d1/f9"), b"new").unwrap();
    let rsh = sshd.rsh(&forced);
    let json = ok_json(&pbsfs(
        &server,
        &[
            "pull",
            "--rsh",
            &rsh,
            "--output-format",
            "json",
            "--backup-id",
            "ssh-metadata",
            &source,
        ],
    ));
    assert_eq!(json["bytes-read"].as_u64(), Some(3 + 7), "{json}");
    // The forced command serves its root only, whatever the pull asks for.
    let out = pbsfs(&server, &["pull", "--rsh", &rsh, "127.0.0.1:/etc"]);
    assert!(
        stderr(&out).contains("is not served by the agent"),
        "{}",
        stderr(&out)
    );
    drop(sshd);
}

/// Every index of the one snapshot of group `host/ID`, by file name, without the header
/// (its uuid and creation time differ between snapshots): equal indexes mean equal
/// archive bytes.
fn index_entries(store: &Path, id: &str) -> Vec<(String, Vec<u8>)> {
    let group = store.join("host").join(id);
    let snapshots: Vec<_> = std::fs::read_dir(&group)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(snapshots.len(), 1, "{}", group.display());
    let mut indexes: Vec<_> = std::fs::read_dir(&snapshots[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "didx" || x == "fidx"))
        .map(|p| {
            let index = pbsfs::format::index::AnyIndex::parse(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", p.display()));
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, index.to_bytes([0; 16], 0))
        })
        .collect();
    indexes.sort();
    assert!(!indexes.is_empty());
    indexes
}

/// A transport that counts what the agent sends (into `count`, read by [`wire_bytes`]).
fn counting_transport(dir: &Path, count: &Path) -> PathBuf {
    let filter = format!("LC_ALL=C dd bs=64k 2>\"{}\"", count.display());
    transport(dir, "counting", &filter)
}

/// The bytes `dd` reported it copied.
fn wire_bytes(count: &Path) -> u64 {
    let report = std::fs::read_to_string(count).unwrap();
    report
        .lines()
        .find_map(|line| line.split_once(" bytes"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {report:?}"))
}

const MIB: u64 = 1 << 20;

/// A 256 MiB file with three 1 MiB data blocks, the rest holes, and a 2 MiB file of real
/// zeros; returns the sparse file's size.
fn make_sparse_tree(root: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(root).unwrap();
    let apparent = 256 * MIB;
    let file = std::fs::File::create(root.join("sparse")).unwrap();
    file.set_len(apparent).unwrap();
    for (i, at) in [0, 100 * MIB + 12345, apparent - MIB]
        .into_iter()
        .enumerate()
    {
        file.write_all_at(&random_bytes(i as u64 + 10, MIB as usize), at)
            .unwrap();
    }
    std::fs::write(root.join("zeros"), vec![0u8; 2 * MIB as usize]).unwrap();
    std::fs::write(root.join("small"), b"small").unwrap();
    apparent
}

/// Holes and zero runs cross the wire as counts, and the pulled archives are those of a
/// local push.
#[test]
fn sparse_files_cross_the_wire_as_counts_and_store_what_a_push_stores() {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = dir.path().join("tree");
    let apparent = make_sparse_tree(&tree);
    let store = dir.path().join("ds");
    ok(&pbsfs_local(&store, &["init"]));
    let common = ["--backup-time", TIME, "--change-detection-mode", "data"];
    let push_source = format!("root.pxar:{}", tree.display());
    let mut push_args = vec!["push", "--backup-id", "local"];
    push_args.extend(common);
    push_args.push(&push_source);
    ok(&pbsfs_local(&store, &push_args));

    let count = dir.path().join("count");
    let rsh = counting_transport(dir.path(), &count);
    let pull_source = format!("root.pxar:client:{}", tree.display());
    let mut pull_args = vec!["--output-format", "json", "--backup-id", "pulled"];
    pull_args.extend(common);
    pull_args.push(&pull_source);
    let summary = ok_json(&pull(&store, rsh.to_str().unwrap(), &pull_args));
    assert_eq!(
        summary["bytes-read"].as_u64(),
        Some(apparent + 2 * MIB + 5),
        "{summary}"
    );
    let pushed = index_entries(&store, "local");
    assert!(pushed == index_entries(&store, "pulled"), "archives differ");
    // The 1 MiB blocks read that hold data (four: one data block is written across a
    // block boundary) and the metadata; not the holes, nor the written zeros.
    let carried = wire_bytes(&count);
    assert!(carried > 4 * MIB, "{carried}");
    assert!(carried < 5 * MIB, "{carried} bytes on the wire");
}

/// An image of 9 MiB and a bit (not a whole number of chunks) with data, a hole and a
/// run of written zeros.
fn make_image(path: &Path) -> Vec<u8> {
    let mut content = random_bytes(77, 9 * MIB as usize + 4321);
    content[MIB as usize..3 * MIB as usize].fill(0);
    let file = std::fs::File::create(path).unwrap();
    file.set_len(content.len() as u64).unwrap();
    for (at, block) in content.chunks(MIB as usize).enumerate() {
        if at != 5 {
            std::os::unix::fs::FileExt::write_all_at(&file, block, at as u64 * MIB).unwrap();
        }
    }
    content[5 * MIB as usize..6 * MIB as usize].fill(0);
    assert!(std::fs::read(path).unwrap() == content);
    content
}

/// `NAME.img:HOST:FILE` through the agent: the same fixed index as a local push of the
/// file, whether the agent serves the file itself (the pull names it) or a directory
/// holding it (a forced command), and it restores to the same bytes.
#[test]
fn an_image_pulled_through_the_agent_is_the_image_a_push_stores() {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let image = images.join("disk.raw");
    let content = make_image(&image);
    let store = dir.path().join("ds");
    ok(&pbsfs_local(&store, &["init"]));
    let push_source = format!("disk.img:{}", image.display());
    ok(&pbsfs_local(
        &store,
        &[
            "push",
            "--backup-id",
            "local",
            "--backup-time",
            TIME,
            &push_source,
        ],
    ));
    let pushed = index_entries(&store, "local");
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].0, "disk.img.fidx");

    let plain = transport(dir.path(), "rsh", "");
    let forced = dir.path().join("forced");
    std::fs::write(
        &forced,
        format!(
            "#!/bin/sh\nexec {} agent {}\n",
            agent_binary(),
            images.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&forced, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pull_source = format!("disk.img:client:{}", image.display());
    for (id, rsh) in [("file-root", &plain), ("dir-root", &forced)] {
        let summary = ok_json(&pull(
            &store,
            rsh.to_str().unwrap(),
            &[
                "--output-format",
                "json",
                "--backup-id",
                id,
                "--backup-time",
                TIME,
                &pull_source,
            ],
        ));
        assert_eq!(
            summary["bytes-read"].as_u64(),
            Some(content.len() as u64),
            "{summary}"
        );
        assert!(
            index_entries(&store, id) == pushed,
            "{id}: the index differs"
        );
        let restored = dir.path().join(format!("{id}.raw"));
        ok(&pbsfs_local(
            &store,
            &[
                "restore",
                &format!("host/{id}/latest"),
                "disk.img",
                restored.to_str().unwrap(),
            ],
        ));
        assert!(std::fs::read(&restored).unwrap() == content, "{id}");
    }
}

/// A transport like [`transport`] that moves the time in the agent's welcome (the first
/// frame it sends) by the seconds given before the host: `python3 RELAY SECONDS HOST CMD`.
const CLOCK_RELAY: &str = r#"
import struct, subprocess, sys
shift, command = int(sys.argv[1]), sys.argv[3]
agent = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE)
source, sink = agent.stdout, sys.stdout.buffer

def read_exact(n):
    data = b""
    while len(data) < n:
        more = source.read(n - len(data))
        if not more:
            sys.exit(1)
        data += more
    return data

head = read_exact(4)
body = bytearray(read_exact(struct.unpack("<I", head)[0]))
if body[0] == 64:  # the welcome: kind, id, magic, version, host name, time
    at = 1 + 4 + 8 + 2
    at += 4 + struct.unpack_from("<I", body, at)[0]
    struct.pack_into("<q", body, at, struct.unpack_from("<q", body, at)[0] + shift)
sink.write(head + bytes(body))
sink.flush()
while True:
    data = source.read1(1 << 16)
    if not data:
        break
    sink.write(data)
    sink.flush()
sys.exit(agent.wait())
"#;

/// The pull warns when the agent's clock is off, and goes on.
#[test]
fn a_client_clock_off_by_an_hour_is_warned_about() {
    let (dir, tree, store) = tree_and_store();
    let relay = dir.path().join("clock-relay.py");
    std::fs::write(&relay, CLOCK_RELAY).unwrap();
    let source = format!("client:{}", tree.display());
    for (shift, expected) in [
        ("-3600", Some("is 3600 s behind this host's")),
        ("7200", Some("is 7200 s ahead of this host's")),
        ("0", None),
    ] {
        let rsh = format!("python3 {} {shift}", relay.display());
        let id = format!("clock{shift}");
        let out = pull(&store, &rsh, &["--backup-id", &id, &source]);
        ok(&out);
        let warned = stderr(&out).contains("the clock of client is");
        match expected {
            Some(expected) => assert!(stderr(&out).contains(expected), "{}", stderr(&out)),
            None => assert!(!warned, "{}", stderr(&out)),
        }
    }
}

/// A transport whose first session answers as an agent from before version negotiation
/// does (refusing the greeting, naming its version); later ones run the agent:
/// `python3 SCRIPT MARKER HOST CMD`.
const OLDER_AGENT_ONCE: &str = r#"
import os, struct, sys
marker, command = sys.argv[1], sys.argv[3]
if not os.path.exists(marker):
    open(marker, "w").close()
    message = b"protocol version 2 is not known to this agent (it speaks 1)"
    body = bytes([65]) + struct.pack("<II", 0, len(message)) + message
    sys.stdout.buffer.write(struct.pack("<I", len(body)) + body)
    sys.exit(1)
os.execvp("sh", ["sh", "-c", command])
"#;

/// An older agent's refusal makes the pull greet it again in its version, and go on.
#[test]
fn an_older_agent_is_greeted_again_in_its_version() {
    let (dir, tree, store) = tree_and_store();
    let script = dir.path().join("older-once.py");
    std::fs::write(&script, OLDER_AGENT_ONCE).unwrap();
    let marker = dir.path().join("refused");
    let rsh = format!("python3 {} {}", script.display(), marker.display());
    let out = pull(&store, &rsh, &[&format!("client:{}", tree.display())]);
    ok(&out);
    assert!(marker.exists());
    assert!(
        stderr(&out).contains("speaks only protocol version 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_count(&store), 1);
}
