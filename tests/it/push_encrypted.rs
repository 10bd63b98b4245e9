//! Encrypted and signed pushes: a push with a key restores (with the key) to the same tree,
//! verifies, and is refused without the key; its manifest is signed and records the crypt
//! mode; metadata change detection re-uses an encrypted previous snapshot only with the
//! same key and mode; `sign-only` keeps chunks plain. Acceptance (root only): the fixture
//! tree pushed in legacy mode with `fixture.key` gives the official client's keyed chunks.
//!
//! Every command runs with its own XDG_CONFIG_HOME so a real default key is never used.

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};

use common::cli::{local_command, ok};
use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::source_tree::{fixture_tree_if_root, mknod, random_bytes, set_xattr};
use pbsfs::backup::client::LocalClient;
use pbsfs::backup::protection::Protection;
use pbsfs::backup::server::{BackupOptions, BackupSpec, ChangeDetection, Server};
use pbsfs::format::blob::{blob_kind, decode_chunk, MAX_CHUNK_SIZE};
use pbsfs::format::crypto::CryptConfig;
use pbsfs::format::index::{AnyIndex, ChunkIndex};
use pbsfs::format::keyfile::{create_key_file, load_key_file, Kdf};
use pbsfs::format::manifest::{CryptMode, Manifest};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const PASSWORD: &str = "a-long-test-password";

/// One datastore per test module (creating 65536 chunk directories is slow).
fn store() -> &'static (tempfile::TempDir, Arc<LocalDatastore>) {
    static STORE: OnceLock<(tempfile::TempDir, Arc<LocalDatastore>)> = OnceLock::new();
    STORE.get_or_init(common::new_datastore)
}

/// Files of several chunks, small files, a hardlink, a symlink, a fifo and an xattr.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("dir/text"), "some text\n".repeat(50_000)).unwrap();
    std::fs::write(root.join("dir/sub/random"), random_bytes(7, 3 << 20)).unwrap();
    for i in 0..20 {
        std::fs::write(
            root.join(format!("dir/small-{i:02}")),
            random_bytes(i, 100 + 700 * i as usize),
        )
        .unwrap();
    }
    std::fs::write(root.join("linked"), b"two names").unwrap();
    std::fs::hard_link(root.join("linked"), root.join("dir/linked2")).unwrap();
    std::os::unix::fs::symlink("../empty", root.join("dir/link")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    // Best effort: tmpfs may refuse user xattrs.
    let _ = set_xattr(&root.join("dir/text"), "user.comment", b"a value");
}

/// A work directory with a tree and an empty config directory (no default key).
struct Work {
    dir: tempfile::TempDir,
    tree: PathBuf,
}

impl Work {
    fn new() -> Self {
        let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let tree = dir.path().join("tree");
        make_tree(&tree);
        std::fs::create_dir(dir.path().join("config")).unwrap();
        Work { dir, tree }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs pbsfs on the shared store; the key password is in the environment only.
    fn pbsfs(&self, args: &[&str]) -> Output {
        let output = local_command(store().1.root())
            .args(args)
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("PBS_ENCRYPTION_PASSWORD", PASSWORD)
            .env_remove("PBS_ENCRYPTION_PASSWORD_FILE")
            .env_remove("PBS_ENCRYPTION_PASSWORD_FD")
            .env_remove("PBS_ENCRYPTION_PASSWORD_CMD")
            .output()
            .unwrap();
        for stream in [&output.stdout, &output.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(PASSWORD),
                "the password was printed"
            );
        }
        output
    }

    fn pbsfs_ok(&self, args: &[&str]) -> Output {
        let output = self.pbsfs(args);
        ok(&output);
        output
    }

    /// `pbsfs push` with JSON output; returns the summary and stderr.
    fn push(&self, id: &str, time: i64, extra: &[&str]) -> (Value, String) {
        let tree = format!("root.pxar:{}", self.tree.display());
        let time = time.to_string();
        let mut args = vec![
            "push",
            "--quiet",
            "--output-format",
            "json",
            "--backup-id",
            id,
            "--backup-time",
            &time,
        ];
        args.extend_from_slice(extra);
        args.push(&tree);
        let output = self.pbsfs_ok(&args);
        (
            serde_json::from_slice(&output.stdout).unwrap(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn assert_restores(&self, snapshot: &str, key: Option<&Path>, name: &str) {
        let target = self.path(name);
        let target_arg = target.to_str().unwrap();
        let mut args = vec!["restore", snapshot, "root.pxar", target_arg];
        if let Some(key) = key {
            args.extend(["--keyfile", key.to_str().unwrap()]);
        }
        self.pbsfs_ok(&args);
        assert_same_tree(
            &tree_from_disk(&target),
            &tree_from_disk(&self.tree),
            snapshot,
        );
    }
}

fn manifest_of(id: &str, time: i64) -> Manifest {
    store()
        .1
        .read_manifest(&BackupNamespace::root(), &snapshot_dir(id, time))
        .unwrap()
}

/// The snapshot as `pbsfs` names it (TYPE/ID/RFC 3339 time).
fn snap(id: &str, time: i64) -> String {
    snapshot_dir(id, time).to_string()
}

fn snapshot_dir(id: &str, time: i64) -> BackupDir {
    BackupDir::new(BackupGroup::parse(&format!("host/{id}")).unwrap(), time).unwrap()
}

fn index_of(id: &str, time: i64, name: &str) -> AnyIndex {
    let raw = store()
        .1
        .read_snapshot_file(&BackupNamespace::root(), &snapshot_dir(id, time), name)
        .unwrap();
    AnyIndex::parse(&raw).unwrap()
}

fn raw_chunk(digest: &[u8; 32]) -> Vec<u8> {
    std::fs::read(store().1.chunk_path(digest)).unwrap()
}

fn load_key(path: &Path, password: Option<&str>) -> Arc<CryptConfig> {
    let (key, _) = load_key_file(path, password.map(str::as_bytes)).unwrap();
    Arc::new(CryptConfig::from(&key))
}

fn new_plain_key(path: &Path) -> Arc<CryptConfig> {
    let (key, _) = create_key_file(path, Kdf::None, None).unwrap();
    Arc::new(CryptConfig::from(&key))
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

#[test]
fn encrypted_push_restores_verifies_and_is_reused_with_the_same_key_only() {
    let work = Work::new();
    let key_path = work.path("key.json");
    let key_arg = key_path.to_str().unwrap();
    work.pbsfs_ok(&["key", "create", "--kdf", "scrypt", key_arg]);
    let key = load_key(&key_path, Some(PASSWORD));

    let (first, _) = work.push("enc", 1000, &["--keyfile", key_arg]);
    assert_eq!(first["crypt-mode"], "encrypt");
    assert!(count(&first, "bytes-read") > 3 << 20);

    // Manifest: every index encrypted, signed with this key, its fingerprint recorded.
    let manifest = manifest_of("enc", 1000);
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.filename.as_str()).collect();
    names.sort();
    assert_eq!(names, ["root.mpxar.didx", "root.ppxar.didx"]);
    assert!(manifest
        .files
        .iter()
        .all(|f| f.crypt_mode == CryptMode::Encrypt));
    manifest.verify_signature(Some(&key)).unwrap();
    assert_eq!(
        manifest.key_fingerprint(),
        Some(key.fingerprint().to_string().as_str())
    );
    let stranger = CryptConfig::new([9; 32]);
    assert!(manifest.verify_signature(Some(&stranger)).is_err());
    // Every stored chunk is encrypted.
    let payload = index_of("enc", 1000, "root.ppxar.didx");
    assert!(payload.chunk_count() > 1);
    for name in ["root.mpxar.didx", "root.ppxar.didx"] {
        for digest in index_of("enc", 1000, name).digests().iter() {
            assert!(blob_kind(&raw_chunk(digest)).unwrap().is_encrypted());
        }
    }

    work.assert_restores(&snap("enc", 1000), Some(&key_path), "restored");
    work.pbsfs_ok(&["verify", &snap("enc", 1000), "--keyfile", key_arg]);
    let refused = work.pbsfs(&["restore", &snap("enc", 1000), "root.pxar", "-"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("key needed"), "{stderr}");

    // Unchanged tree, same key: no file content read, the payload chunks re-used.
    let (second, _) = work.push("enc", 2000, &["--keyfile", key_arg]);
    assert_eq!(count(&second, "bytes-read"), 0, "{second}");
    assert_eq!(
        count(&second, "reused-files"),
        count(&second, "files"),
        "{second}"
    );
    let known: HashSet<[u8; 32]> = payload.digests().iter().copied().collect();
    let again = index_of("enc", 2000, "root.ppxar.didx");
    assert!(again.digests().iter().all(|d| known.contains(d)));
    assert_eq!(again.total_size(), payload.total_size());
    manifest_of("enc", 2000)
        .verify_signature(Some(&key))
        .unwrap();
    work.assert_restores(&snap("enc", 2000), Some(&key_path), "restored-2");

    // Another key: the previous snapshot is not re-used, every file is read.
    let other_path = work.path("other.json");
    let other = new_plain_key(&other_path);
    let (third, stderr) = work.push("enc", 3000, &["--keyfile", other_path.to_str().unwrap()]);
    assert!(stderr.contains("not re-used"), "{stderr}");
    assert_eq!(
        count(&third, "bytes-read"),
        count(&first, "bytes-read"),
        "{third}"
    );
    assert_eq!(count(&third, "reused-files"), 0);
    manifest_of("enc", 3000)
        .verify_signature(Some(&other))
        .unwrap();
    work.assert_restores(&snap("enc", 3000), Some(&other_path), "restored-3");

    // No encryption after an encrypted snapshot: read again as well.
    let (fourth, stderr) = work.push("enc", 4000, &["--crypt-mode", "none"]);
    assert!(stderr.contains("not re-used"), "{stderr}");
    assert_eq!(count(&fourth, "bytes-read"), count(&first, "bytes-read"));
    let plain = manifest_of("enc", 4000);
    assert!(plain.files.iter().all(|f| f.crypt_mode == CryptMode::None));
    assert!(plain.signature.is_none() && plain.key_fingerprint().is_none());
}

#[test]
fn sign_only_push_signs_the_manifest_and_keeps_chunks_plain() {
    let work = Work::new();
    let key_path = work.path("key.json");
    let key = new_plain_key(&key_path);
    let key_arg = key_path.to_str().unwrap();
    let (summary, _) = work.push(
        "signed",
        1000,
        &[
            "--keyfile",
            key_arg,
            "--crypt-mode",
            "sign-only",
            "--change-detection-mode",
            "legacy",
        ],
    );
    assert_eq!(summary["crypt-mode"], "sign-only");
    let manifest = manifest_of("signed", 1000);
    assert!(manifest
        .files
        .iter()
        .all(|f| f.crypt_mode == CryptMode::SignOnly));
    manifest.verify_signature(Some(&key)).unwrap();
    assert_eq!(
        manifest.key_fingerprint(),
        Some(key.fingerprint().to_string().as_str())
    );
    // Plain chunks with plain digests: they decode without a key.
    for name in ["root.pxar.didx", "catalog.pcat1.didx"] {
        let index = index_of("signed", 1000, name);
        for (i, digest) in index.digests().iter().enumerate() {
            let raw = raw_chunk(digest);
            assert!(!blob_kind(&raw).unwrap().is_encrypted());
            let data = decode_chunk(&raw, digest, None).unwrap();
            assert!(data.len() <= MAX_CHUNK_SIZE, "{name} chunk {i}");
        }
    }
    work.assert_restores(&snap("signed", 1000), Some(&key_path), "restored");
    work.pbsfs_ok(&["verify", &snap("signed", 1000), "--keyfile", key_arg]);
}

#[test]
fn the_default_key_is_used_and_conflicting_options_are_refused() {
    let work = Work::new();
    let default = work.path("config/proxmox-backup/encryption-key.json");
    std::fs::create_dir_all(default.parent().unwrap()).unwrap();
    let key = new_plain_key(&default);

    let (summary, _) = work.push("default-key", 1000, &[]);
    assert_eq!(summary["crypt-mode"], "encrypt");
    let manifest = manifest_of("default-key", 1000);
    manifest.verify_signature(Some(&key)).unwrap();
    assert!(manifest
        .files
        .iter()
        .all(|f| f.crypt_mode == CryptMode::Encrypt));
    // Restore finds the default key as well.
    work.assert_restores(&snap("default-key", 1000), None, "restored");

    let (summary, _) = work.push("default-key-off", 1000, &["--crypt-mode", "none"]);
    assert_eq!(summary["crypt-mode"], "none");
    assert!(manifest_of("default-key-off", 1000).signature.is_none());

    let tree = format!("root.pxar:{}", work.tree.display());
    let conflict = work.pbsfs(&[
        "push",
        "--keyfile",
        default.to_str().unwrap(),
        "--crypt-mode",
        "none",
        &tree,
    ]);
    assert!(!conflict.status.success());
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("incompatible"));

    std::fs::remove_file(&default).unwrap();
    let no_key = work.pbsfs(&["push", "--crypt-mode", "encrypt", &tree]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("needs a key"));
}

/// Acceptance: the fixture tree (`mktree.py 1`, needs root) pushed in legacy mode with
/// `fixture.key` gives the official client's keyed chunk digests and catalog.
#[test]
fn legacy_push_with_the_fixture_key_stores_the_official_keyed_chunks() {
    let Some((_dir, tree)) = fixture_tree_if_root() else {
        return;
    };
    let key = load_key(&Path::new(FIXTURES).join("fixture.key"), None);

    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", tree.display())).unwrap();
    let mut options = BackupOptions::new(BackupGroup::parse("host/fixture-enc").unwrap(), 1000);
    options.mode = ChangeDetection::Legacy;
    options.protection = Protection::encrypt(key.clone());
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    assert_eq!(summary.walk.warnings, 0);

    let official_dir = Path::new(FIXTURES).join("datastore/host/fixture-enc/2026-11-25T08:29:00Z");
    let official_manifest =
        Manifest::from_blob(&std::fs::read(official_dir.join("index.json.blob")).unwrap()).unwrap();
    let manifest = manifest_of("fixture-enc", 1000);
    for name in ["root.pxar.didx", "catalog.pcat1.didx"] {
        let ours = index_of("fixture-enc", 1000, name);
        let official = AnyIndex::parse(&std::fs::read(official_dir.join(name)).unwrap()).unwrap();
        assert_eq!(ours.digests(), official.digests(), "{name}");
        assert_eq!(ours.total_size(), official.total_size(), "{name}");
        // Same index content, so the same manifest entry (csum and crypt mode).
        assert_eq!(manifest.file(name), official_manifest.file(name), "{name}");
    }
    manifest.verify_signature(Some(&key)).unwrap();
    assert_eq!(
        manifest.key_fingerprint(),
        official_manifest.key_fingerprint()
    );
}
