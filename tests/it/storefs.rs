//! The whole-store filesystem (`StoreFs`) over the fixture datastore, through the
//! `ReadOnlyFs` trait directly, plus one mount through the kernel.

use crate::common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use common::{datastore_dir, expected_tree, sha256_hex};
use pbsfs::format::manifest::Manifest;
use pbsfs::format::Digest;
use pbsfs::snapfs::StoreFs;
use pbsfs::store::access::{
    DatastoreAccess, LocalAccess, SnapshotAccess, SnapshotSummary, StoreDir,
};
use pbsfs::store::cache::ChunkCache;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::ChunkSource;
use pbsfs_mount::{Attr, Errno, ReadOnlyFs, ROOT_INO};

const DATA_SNAP: &str = "host/fixture-data/2026-11-25T08:28:43Z";
const LEGACY_SNAP: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
const NS_SNAP: &str = "ns/team/host/fixture-ns/2026-11-25T08:29:01Z";
const IMAGE: &str = "vm/100/2026-11-25T08:29:01Z/drive-scsi0.img";

/// Counts the chunks fetched from the datastore, to show what is (not) opened.
struct Counting {
    store: Arc<LocalDatastore>,
    reads: AtomicUsize,
}

impl ChunkSource for Counting {
    fn fetch_raw_chunk(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.store.fetch_raw_chunk(digest)
    }
}

/// A local datastore whose snapshots fetch their chunks through [`Counting`].
struct CountingAccess {
    local: LocalAccess,
    chunks: Arc<Counting>,
}

impl DatastoreAccess for CountingAccess {
    fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        self.local.list_namespaces(parent)
    }
    fn namespace_exists(&self, ns: &BackupNamespace) -> Result<bool> {
        self.local.namespace_exists(ns)
    }
    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>> {
        self.local.list_groups(ns)
    }
    fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<SnapshotSummary>> {
        self.local.list_snapshots(ns, group)
    }
    fn open_snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Result<Arc<dyn SnapshotAccess>> {
        Ok(Arc::new(CountingSnapshot {
            inner: self.local.open_snapshot(ns, dir)?,
            chunks: self.chunks.clone(),
        }))
    }
    fn dir_mtime(&self, dir: StoreDir<'_>) -> Option<SystemTime> {
        self.local.dir_mtime(dir)
    }
}

struct CountingSnapshot {
    inner: Arc<dyn SnapshotAccess>,
    chunks: Arc<Counting>,
}

impl SnapshotAccess for CountingSnapshot {
    fn dir(&self) -> &BackupDir {
        self.inner.dir()
    }
    fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }
    fn read_file(&self, filename: &str) -> Result<Vec<u8>> {
        self.inner.read_file(filename)
    }
    fn read_client_log(&self) -> Result<Option<Vec<u8>>> {
        self.inner.read_client_log()
    }
    fn chunk_source(&self) -> Arc<dyn ChunkSource> {
        self.chunks.clone()
    }
}

fn store_fs() -> (StoreFs, Arc<Counting>) {
    store_fs_at(&datastore_dir())
}

/// The whole-store filesystem over the datastore in `dir`.
fn store_fs_at(dir: &std::path::Path) -> (StoreFs, Arc<Counting>) {
    let store = Arc::new(LocalDatastore::open(dir).unwrap());
    let chunks = Arc::new(Counting {
        store: store.clone(),
        reads: AtomicUsize::new(0),
    });
    let access = CountingAccess {
        local: LocalAccess(store),
        chunks: chunks.clone(),
    };
    // The shared cache counts each chunk fetched once, however often it is read.
    let cache = Arc::new(ChunkCache::shared(64 << 20, 0));
    let fs = StoreFs::new(Arc::new(access), BackupNamespace::root(), cache, None).unwrap();
    (fs, chunks)
}

/// Looks up a `/`-separated path from the root.
fn resolve(fs: &dyn ReadOnlyFs, path: &str) -> Result<Attr, Errno> {
    let mut attr = fs.getattr(ROOT_INO)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = fs.lookup(attr.ino, OsStr::new(part))?;
    }
    Ok(attr)
}

fn list(fs: &dyn ReadOnlyFs, ino: u64, offset: u64) -> Result<Vec<(String, Attr, u64)>, Errno> {
    let mut out = Vec::new();
    fs.readdir(ino, offset, &mut |item| {
        out.push((
            item.name.to_string_lossy().into_owned(),
            item.attr,
            item.next_offset,
        ));
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

fn names(fs: &dyn ReadOnlyFs, path: &str) -> Vec<String> {
    let ino = resolve(fs, path).unwrap().ino;
    list(fs, ino, 0).unwrap().into_iter().map(|e| e.0).collect()
}

fn read_all(fs: &dyn ReadOnlyFs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino).unwrap();
    let mut out = Vec::new();
    loop {
        let piece = fs.read(ino, fh, out.len() as u64, 1 << 20).unwrap();
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    fs.release(ino, fh);
    out
}

fn expected_sha(rel: &str) -> String {
    expected_tree("tree1.json")[rel.as_bytes()]
        .sha256
        .clone()
        .unwrap()
}

#[test]
fn top_levels_follow_the_datastore_layout() {
    let (fs, _) = store_fs();
    assert_eq!(names(&fs, ""), ["host", "ns", "vm"]);
    assert!(resolve(&fs, "ns").unwrap().is_dir());
    assert_eq!(names(&fs, "ns"), ["team"]);
    assert_eq!(names(&fs, "ns/team"), ["host"]);
    assert_eq!(names(&fs, "ns/team/host"), ["fixture-ns"]);
    assert_eq!(names(&fs, "vm"), ["100"]);
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", "2026-11-25T08:28:55Z", "latest"]
    );
    // `latest` is a symlink to the newest snapshot.
    let latest = resolve(&fs, "host/fixture-meta/latest").unwrap();
    assert_eq!(latest.file_type(), libc::S_IFLNK);
    assert_eq!(fs.readlink(latest.ino).unwrap(), "2026-11-25T08:28:55Z");
    // Snapshot directories carry the backup time.
    let snap = resolve(&fs, DATA_SNAP).unwrap();
    assert!(snap.is_dir());
    assert_eq!(snap.mtime.secs, 1795595323); // 2026-11-25T08:28:43Z
    assert_eq!(resolve(&fs, "nothing").unwrap_err(), Errno::ENOENT);
    assert_eq!(resolve(&fs, "host/nothing").unwrap_err(), Errno::ENOENT);
}

#[test]
fn listing_a_snapshot_opens_no_archive() {
    let (fs, chunks) = store_fs();
    // The split pair shows as one `root.pxar`; the catalog is not an archive to browse.
    assert_eq!(names(&fs, DATA_SNAP), ["root.pxar"]);
    assert_eq!(names(&fs, LEGACY_SNAP), ["root.pxar"]);
    let archive = resolve(&fs, &format!("{DATA_SNAP}/root.pxar")).unwrap();
    assert!(archive.is_dir());
    assert_eq!(fs.getattr(archive.ino).unwrap(), archive);
    assert_eq!(chunks.reads.load(Ordering::SeqCst), 0);
    // Entering it does.
    assert!(names(&fs, &format!("{DATA_SNAP}/root.pxar")).contains(&"links".to_string()));
    assert!(chunks.reads.load(Ordering::SeqCst) > 0);
    // The archive root keeps the attributes the listing showed.
    assert_eq!(fs.getattr(archive.ino).unwrap(), archive);
}

#[test]
fn files_inside_split_and_namespaced_archives_read_correctly() {
    let (fs, _) = store_fs();
    let want = expected_sha("links/hard-a");
    let a = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links/hard-a")).unwrap();
    assert_eq!(sha256_hex(&read_all(&fs, a.ino)), want);
    // The ns fixture archived only `links`: its root holds hard-a directly.
    let b = resolve(&fs, &format!("{NS_SNAP}/root.pxar/hard-a")).unwrap();
    assert_eq!(sha256_hex(&read_all(&fs, b.ino)), want);
    assert_ne!(a.ino, b.ino);
    // Hardlinks still share their inode within one archive.
    let c = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links/hard-b")).unwrap();
    assert_eq!(a.ino, c.ino);
    assert_eq!(c.nlink, 3);
}

#[test]
fn images_are_regular_files_of_their_size() {
    let (fs, chunks) = store_fs();
    let image = resolve(&fs, IMAGE).unwrap();
    assert_eq!(image.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(image.size, 16789561);
    assert_eq!(chunks.reads.load(Ordering::SeqCst), 0);
    assert_eq!(
        sha256_hex(&read_all(&fs, image.ino)),
        "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6"
    );
}

#[test]
fn inodes_are_unique_across_archives_and_stable() {
    let (fs, _) = store_fs();
    let mut seen: HashMap<u64, String> = HashMap::new();
    let mut record = |ino: u64, what: String| {
        if let Some(other) = seen.insert(ino, what.clone()) {
            // Only the names of one hardlinked file may share an inode.
            let (a_dir, a_name) = other.rsplit_once('/').unwrap();
            let (b_dir, b_name) = what.rsplit_once('/').unwrap();
            assert!(
                a_dir == b_dir && a_name.starts_with("hard-") && b_name.starts_with("hard-"),
                "{what} and {other} share inode {ino}"
            );
        }
    };
    for dir in [
        format!("{LEGACY_SNAP}/root.pxar/links"),
        format!("{DATA_SNAP}/root.pxar/links"),
        format!("{NS_SNAP}/root.pxar"),
        format!("{DATA_SNAP}/root.pxar"),
        LEGACY_SNAP.to_string(),
        DATA_SNAP.to_string(),
        String::new(),
    ] {
        let ino = resolve(&fs, &dir).unwrap().ino;
        for (name, attr, _) in list(&fs, ino, 0).unwrap() {
            record(attr.ino, format!("{dir}/{name}"));
            // Listing and lookup agree.
            assert_eq!(fs.lookup(ino, OsStr::new(&name)).unwrap().ino, attr.ino);
        }
    }
    // Numbers do not change on a second resolve.
    let a = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links"))
        .unwrap()
        .ino;
    let b = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links"))
        .unwrap()
        .ino;
    assert_eq!(a, b);
}

#[test]
fn parents_lead_back_to_the_root() {
    let (fs, _) = store_fs();
    let chain = [
        "",
        "ns",
        "ns/team",
        "ns/team/host",
        "ns/team/host/fixture-ns",
        NS_SNAP,
    ];
    for pair in chain.windows(2) {
        let parent = resolve(&fs, pair[0]).unwrap().ino;
        let child = resolve(&fs, pair[1]).unwrap().ino;
        assert_eq!(fs.parent(child), Some(parent), "parent of {}", pair[1]);
    }
    assert_eq!(fs.parent(ROOT_INO), None);
    let snap = resolve(&fs, DATA_SNAP).unwrap().ino;
    let root = resolve(&fs, &format!("{DATA_SNAP}/root.pxar")).unwrap().ino;
    let links = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links"))
        .unwrap()
        .ino;
    let group = resolve(&fs, "host/fixture-data").unwrap().ino;
    assert_eq!(fs.parent(snap), Some(group));
    assert_eq!(fs.parent(root), Some(snap));
    assert_eq!(fs.parent(links), Some(root));
    // A deeper directory inside the archive points at its archive parent.
    let tree = list(&fs, root, 0).unwrap();
    let (name, attr, _) = tree
        .iter()
        .find(|(_, a, _)| a.is_dir())
        .expect("the archive has a directory");
    assert_eq!(fs.parent(attr.ino), Some(root), "{name}");
}

#[test]
fn listings_resume_at_their_offsets() {
    let (fs, _) = store_fs();
    for path in ["", "host", &format!("{DATA_SNAP}/root.pxar/links")] {
        let ino = resolve(&fs, path).unwrap().ino;
        let all = list(&fs, ino, 0).unwrap();
        assert!(all.len() >= 2, "{path}");
        let rest = list(&fs, ino, all[0].2).unwrap();
        assert_eq!(
            rest.iter().map(|e| &e.0).collect::<Vec<_>>(),
            all[1..].iter().map(|e| &e.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_unreadable_archive_fails_only_its_own_directory() {
    let (fs, _) = store_fs();
    // Encrypted, and no key given: the archive cannot be opened.
    let enc = "host/fixture-enc/2026-11-25T08:29:00Z/root.pxar";
    let root = resolve(&fs, enc).unwrap();
    assert!(root.is_dir());
    assert_eq!(list(&fs, root.ino, 0).unwrap_err(), Errno::EIO);
    assert_eq!(
        fs.lookup(root.ino, OsStr::new("links")).unwrap_err(),
        Errno::EIO
    );
    // Everything else keeps working.
    assert!(resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links/hard-a")).is_ok());
    assert_eq!(list(&fs, root.ino, 0).unwrap_err(), Errno::EIO);
}

/// A legacy (v1) archive opens without reading more than its root: a corrupt chunk holding
/// one entry's header costs that entry (EIO) and nothing else.
#[test]
fn a_bad_chunk_in_a_legacy_archive_costs_only_the_entries_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("ds");
    common::copy_fixture_datastore(&store);
    // Chunk 2 (of 6) of the legacy root.pxar holds the header of data/big-text besides
    // file data; the headers of all other entries lie in chunks 0 and 5.
    let index = std::fs::read(store.join(LEGACY_SNAP).join("root.pxar.didx")).unwrap();
    let digest = hex::encode(&index[4096 + 2 * 40 + 8..4096 + 3 * 40]);
    let chunk = store.join(".chunks").join(&digest[..4]).join(&digest);
    let mut raw = std::fs::read(&chunk).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0xff;
    std::fs::write(&chunk, raw).unwrap();

    let (fs, _) = store_fs_at(&store);
    let root = format!("{LEGACY_SNAP}/root.pxar");
    assert_eq!(
        resolve(&fs, &format!("{root}/data/big-text")).unwrap_err(),
        Errno::EIO
    );
    // The directory lists every other entry, then ends with EIO.
    let expected = expected_tree("tree1.json");
    let data = resolve(&fs, &format!("{root}/data")).unwrap();
    let listed = list(&fs, data.ino, 0).unwrap();
    let mut names: Vec<&str> = listed.iter().map(|(name, _, _)| name.as_str()).collect();
    names.sort();
    let want: Vec<&str> = expected
        .keys()
        .filter_map(|path| std::str::from_utf8(path).ok()?.strip_prefix("data/"))
        .filter(|name| !name.contains('/') && *name != "big-text")
        .collect();
    assert_eq!(names, want);
    let end = listed.last().unwrap().2;
    assert_eq!(list(&fs, data.ino, end).unwrap_err(), Errno::EIO);
    // Every other entry is served, with its own metadata (the root shows the snapshot's).
    let top = resolve(&fs, &root).unwrap();
    for (path, want) in &expected {
        if path.is_empty() || path == b"data/big-text" {
            continue;
        }
        let mut attr = top;
        for part in path.split(|&b| b == b'/') {
            attr = fs
                .lookup(attr.ino, OsStr::from_bytes(part))
                .unwrap_or_else(|err| panic!("{}: {err:?}", path.escape_ascii()));
        }
        let path = path.escape_ascii();
        assert_eq!(attr.mode as u64, want.mode, "{path}");
        if want.kind == '-' {
            assert_eq!(Some(attr.size), want.size, "{path}");
        }
    }
    let target = resolve(&fs, &format!("{root}/links/target.txt")).unwrap();
    assert_eq!(
        sha256_hex(&read_all(&fs, target.ino)),
        expected_sha("links/target.txt")
    );
}

/// Polls `done` for up to a minute (counts made in the background).
fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Link counts that need more than the entry itself: a directory's once it has been
/// listed, a hardlinked file's once its hardlinks have been met or the background walk
/// has counted them.
#[test]
fn link_counts_are_learned_without_walking_at_open() {
    for snapshot in [LEGACY_SNAP, DATA_SNAP] {
        let (fs, _) = store_fs();
        let root = format!("{snapshot}/root.pxar");
        // data/hard-c is the file; links/hard-a and links/hard-b come later as hardlinks.
        let file = resolve(&fs, &format!("{root}/data/hard-c")).unwrap();
        wait_until(|| fs.getattr(file.ino).unwrap().nlink == 3);
        assert_eq!(fs.getattr(file.ino).unwrap().nlink, 3, "{snapshot}");
        let links = resolve(&fs, &format!("{root}/links")).unwrap();
        let listed = list(&fs, links.ino, 0).unwrap();
        assert!(listed.iter().all(|(_, attr, _)| !attr.is_dir()));
        assert_eq!(fs.getattr(links.ino).unwrap().nlink, 2, "{snapshot}");
        let hard_a = listed.iter().find(|(name, _, _)| name == "hard-a").unwrap();
        assert_eq!((hard_a.1.ino, hard_a.1.nlink), (file.ino, 3));
        // A listing made ahead of the reader (before the hardlinks were met) shows the
        // count known when it is read.
        let (fs, _) = store_fs();
        let top = resolve(&fs, &root).unwrap();
        let data = list(&fs, top.ino, 0).unwrap(); // lists data/ in the background
        let data = data.iter().find(|(name, _, _)| name == "data").unwrap().1;
        let links = resolve(&fs, &format!("{root}/links")).unwrap();
        list(&fs, links.ino, 0).unwrap();
        let listed = list(&fs, data.ino, 0).unwrap();
        let hard_c = listed.iter().find(|(name, _, _)| name == "hard-c").unwrap();
        assert_eq!(hard_c.1.nlink, 3, "{snapshot}");
        // meta holds acl-dir, empty-dir and sticky.
        let meta = resolve(&fs, &format!("{root}/meta")).unwrap();
        let listed = list(&fs, meta.ino, 0).unwrap();
        assert_eq!(listed.iter().filter(|(_, a, _)| a.is_dir()).count(), 3);
        assert_eq!(fs.getattr(meta.ino).unwrap().nlink, 2 + 3, "{snapshot}");
    }
}

#[test]
fn a_snapshot_with_a_damaged_manifest_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ds");
    common::copy_fixture_datastore(&copy);
    std::fs::write(copy.join(LEGACY_SNAP).join("index.json.blob"), b"").unwrap();
    let flipped = copy.join("host/fixture-meta/2026-11-25T08:28:55Z/index.json.blob");
    let mut raw = std::fs::read(&flipped).unwrap();
    raw[20] ^= 0x01;
    std::fs::write(&flipped, raw).unwrap();

    let (fs, _) = store_fs_at(&copy);
    assert_eq!(names(&fs, ""), ["host", "ns", "vm"]);
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", "latest"]
    );
    assert!(names(&fs, "host/fixture-legacy").is_empty());
    assert_eq!(resolve(&fs, LEGACY_SNAP).unwrap_err(), Errno::ENOENT);
    // The rest reads as before.
    let file = resolve(&fs, &format!("{DATA_SNAP}/root.pxar/links/hard-a")).unwrap();
    assert_eq!(
        sha256_hex(&read_all(&fs, file.ino)),
        expected_sha("links/hard-a")
    );
    let older = "host/fixture-meta/2026-11-25T08:28:43Z/root.pxar";
    assert!(!names(&fs, older).is_empty());
}

/// Moves `from` to `to` (a rename within the copy, as a backup or a forget would appear).
fn rename(from: &std::path::Path, to: &std::path::Path) {
    std::fs::rename(from, to).unwrap();
}

#[test]
fn listings_are_taken_again_once_due_and_latest_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ds");
    common::copy_fixture_datastore(&copy);
    let group = copy.join("host/fixture-meta");
    let newer = "2026-11-25T08:28:55Z";
    let aside = tmp.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    rename(&group.join(newer), &aside.join(newer));
    rename(&copy.join("vm"), &aside.join("vm"));

    let (fs, _) = store_fs_at(&copy);
    let fs = fs.with_refresh(Duration::from_millis(200));
    let group_ino = resolve(&fs, "host/fixture-meta").unwrap().ino;
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", "latest"]
    );
    assert_eq!(names(&fs, ""), ["host", "ns"]);
    let old_latest = resolve(&fs, "host/fixture-meta/latest").unwrap();
    assert_eq!(fs.readlink(old_latest.ino).unwrap(), "2026-11-25T08:28:43Z");
    let group_mtime = fs.getattr(group_ino).unwrap().mtime;
    // Names in the store's own directories may change; a snapshot's archives may not.
    assert!(fs.names_may_change(group_ino));
    assert!(fs.getattr(group_ino).unwrap().provisional);
    let snapshot = resolve(&fs, "host/fixture-meta/2026-11-25T08:28:43Z").unwrap();
    assert!(!fs.names_may_change(snapshot.ino));
    let archive = resolve(&fs, "host/fixture-meta/2026-11-25T08:28:43Z/root.pxar").unwrap();
    assert!(!archive.provisional);

    // A backup and a new group arrive: nothing changes until the listing is due.
    rename(&aside.join(newer), &group.join(newer));
    rename(&aside.join("vm"), &copy.join("vm"));
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", "latest"]
    );
    std::thread::sleep(Duration::from_millis(250));
    // The directory's mtime moves with its listing (the kernel drops its cached one then).
    assert!(fs.getattr(group_ino).unwrap().mtime > group_mtime);
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", newer, "latest"]
    );
    assert_eq!(names(&fs, ""), ["host", "ns", "vm"]);
    // `latest` is a new symlink (the kernel keeps a link's target with its inode).
    let new_latest = resolve(&fs, "host/fixture-meta/latest").unwrap();
    assert_ne!(new_latest.ino, old_latest.ino);
    assert_eq!(fs.readlink(new_latest.ino).unwrap(), newer);
    assert!(resolve(
        &fs,
        &format!("host/fixture-meta/{newer}/root.pxar/links/hard-a")
    )
    .is_ok());

    // A readdir resuming at an offset keeps the listing it started on; a new one at 0
    // sees the snapshot gone.
    let page = list(&fs, group_ino, 0).unwrap();
    rename(&group.join(newer), &aside.join(newer));
    std::thread::sleep(Duration::from_millis(250));
    let rest: Vec<String> = list(&fs, group_ino, page[0].2)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(rest, [newer, "latest"]);
    assert_eq!(
        names(&fs, "host/fixture-meta"),
        ["2026-11-25T08:28:43Z", "latest"]
    );
    assert_eq!(
        resolve(&fs, &format!("host/fixture-meta/{newer}")).unwrap_err(),
        Errno::ENOENT
    );
    // The last snapshot forgotten: the group has no `latest` left.
    rename(
        &group.join("2026-11-25T08:28:43Z"),
        &aside.join("2026-11-25T08:28:43Z"),
    );
    std::thread::sleep(Duration::from_millis(250));
    assert!(names(&fs, "host/fixture-meta").is_empty());
}

#[test]
fn a_namespace_can_be_the_root() {
    let store = Arc::new(LocalDatastore::open(&datastore_dir()).unwrap());
    let chunks = Arc::new(ChunkCache::shared(1 << 20, 0));
    let team = BackupNamespace::parse("team").unwrap();
    let local = || -> Arc<dyn DatastoreAccess> { Arc::new(LocalAccess(store.clone())) };
    let fs = StoreFs::new(local(), team, chunks.clone(), None).unwrap();
    assert_eq!(names(&fs, ""), ["host"]);
    assert!(resolve(&fs, "host/fixture-ns/2026-11-25T08:29:01Z/root.pxar/hard-a").is_ok());
    let missing = BackupNamespace::parse("nope").unwrap();
    assert!(StoreFs::new(local(), missing, chunks, None).is_err());
}

#[test]
fn the_store_mounts_through_the_kernel() {
    let (fs, _) = store_fs();
    let dir = tempfile::tempdir().unwrap();
    let mount =
        pbsfs_mount::mount_background(fs, dir.path(), &pbsfs_mount::MountOptions::default())
            .expect("mount (needs root and /dev/fuse)");
    let base = mount.mountpoint().to_path_buf();
    let mut top: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["host", "ns", "vm"]);
    let data = std::fs::read(base.join(DATA_SNAP).join("root.pxar/links/hard-a")).unwrap();
    assert_eq!(sha256_hex(&data), expected_sha("links/hard-a"));
    let ns_file = std::fs::read(base.join(NS_SNAP).join("root.pxar/hard-b")).unwrap();
    assert_eq!(ns_file, data);
    let image = std::fs::metadata(base.join(IMAGE)).unwrap();
    assert_eq!(image.len(), 16789561);
    // ".." inside an archive is the real parent.
    use std::os::unix::fs::MetadataExt;
    let up = std::fs::metadata(base.join(DATA_SNAP).join("root.pxar/links/..")).unwrap();
    let root = std::fs::metadata(base.join(DATA_SNAP).join("root.pxar")).unwrap();
    assert_eq!(up.ino(), root.ino());
    mount.unmount().unwrap();
}
