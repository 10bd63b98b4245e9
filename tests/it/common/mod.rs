//! The one helper module of the integration tests: the fixture snapshots, their archives
//! and expected trees (tree1.json, tree1-meta2.json) here; trees on disk (`disk_tree`,
//! `source_tree`), running the binary (`cli`) and the PBS test server (`pbs_server`) in
//! their modules.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use pbsfs::format::ReadAt;

pub const LEGACY: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
pub const DATA: &str = "host/fixture-data/2026-11-25T08:28:43Z";
pub const META1: &str = "host/fixture-meta/2026-11-25T08:28:43Z";
pub const META2: &str = "host/fixture-meta/2026-11-25T08:28:55Z";
pub const NS: &str = "ns/team/host/fixture-ns/2026-11-25T08:29:01Z";

/// (namespace, snapshot, archive, sha256 of its stream) of every unencrypted archive in the
/// fixtures README; archives named as a user would, some with their index suffix.
pub const UNENCRYPTED_ARCHIVES: [(&str, &str, &str, &str); 11] = [
    (
        "",
        "host/fixture-legacy/2026-11-25T08:28:42Z",
        "root.pxar",
        "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8",
    ),
    (
        "",
        "host/fixture-legacy/2026-11-25T08:28:42Z",
        "catalog.pcat1",
        "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663",
    ),
    (
        "",
        "host/fixture-data/2026-11-25T08:28:43Z",
        "root.mpxar",
        "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a",
    ),
    (
        "",
        "host/fixture-data/2026-11-25T08:28:43Z",
        "root.ppxar",
        "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb",
    ),
    (
        "",
        "host/fixture-meta/2026-11-25T08:28:43Z",
        "root.mpxar",
        "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a",
    ),
    (
        "",
        "host/fixture-meta/2026-11-25T08:28:43Z",
        "root.ppxar.didx",
        "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb",
    ),
    (
        "",
        "host/fixture-meta/2026-11-25T08:28:55Z",
        "root.mpxar",
        "aef4cf5f7b8d4d46cb9591a8506305d086ff43440624ca2d92063610d2328fba",
    ),
    (
        "",
        "host/fixture-meta/2026-11-25T08:28:55Z",
        "root.ppxar",
        "5d979561f9139b76ad9f95c8a00fb785a4faf1d76c8082bad2b5eac53419b094",
    ),
    (
        "team",
        "host/fixture-ns/2026-11-25T08:29:01Z",
        "root.pxar",
        "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d",
    ),
    (
        "team",
        "host/fixture-ns/2026-11-25T08:29:01Z",
        "catalog.pcat1.didx",
        "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc",
    ),
    (
        "",
        "vm/100/2026-11-25T08:29:01Z",
        "drive-scsi0.img",
        "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6",
    ),
];

/// The index file of `archive` as a user names it (`root.pxar` → `root.pxar.didx`, an
/// image → `.fidx`, an index name as it is).
pub fn index_file_name(archive: &str) -> String {
    if archive.ends_with(".didx") || archive.ends_with(".fidx") {
        archive.to_string()
    } else if archive.ends_with(".img") {
        format!("{archive}.fidx")
    } else {
        format!("{archive}.didx")
    }
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"))
}

/// A writable copy of the fixture datastore at `dest` (the fixtures themselves are never
/// changed).
pub fn copy_fixture_datastore(dest: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .args(["-r", "--no-preserve=mode,ownership"])
        .arg(datastore_dir())
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success(), "copying the fixture datastore failed");
}

/// A new, empty datastore in a temporary directory under the target dir (not /tmp, which
/// may be a tmpfs without user xattrs). Creating its 65536 chunk directories is slow:
/// tests share one per module.
pub fn new_datastore() -> (tempfile::TempDir, Arc<pbsfs::store::local::LocalDatastore>) {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = pbsfs::store::local::LocalDatastore::create(&dir.path().join("ds")).unwrap();
    (dir, Arc::new(store))
}

/// An `io::Write` that hashes what is written (SHA-256), to hash a stream without holding it.
pub struct HashWriter(pub sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub mod cli;
pub mod disk_tree;
#[path = "fixture_stream.rs"]
pub mod fixture_stream;
pub mod pbs_server;
pub mod source_tree;
pub mod sshd;
#[allow(unused_imports)]
pub use fixture_stream::{datastore_dir, index_reader, parse_snapshot};

/// The archive stream `archive` (`root.pxar`, `root.mpxar`, ...) of the snapshot
/// `snapshot_rel` (relative to the fixture datastore), read lazily through a chunk cache.
pub fn fixture_archive(snapshot_rel: &str, archive: &str) -> Arc<dyn ReadAt> {
    use pbsfs::store::access::LocalSnapshot;
    use pbsfs::store::local::LocalDatastore;
    use pbsfs::store::open::{open_index_reader, snapshot_chunks};
    let store = Arc::new(LocalDatastore::open(&datastore_dir()).unwrap());
    let (ns, dir) = parse_snapshot(snapshot_rel);
    let snapshot = LocalSnapshot::open(store, &ns, &dir).unwrap();
    let cache = snapshot_chunks(&snapshot, None, 64 << 20, 0);
    let file = format!("{archive}.didx");
    Arc::new(open_index_reader(&snapshot, &file, cache).unwrap())
}

/// One record of tree1.json.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub kind: char,
    pub mode: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u64, u64)>,
    /// name → hex value
    pub xattrs: BTreeMap<String, String>,
    pub acl: Vec<String>,
    pub hardlinks: Vec<Vec<u8>>,
}

/// Python's surrogateescape maps undecodable bytes 0x80..0xff to U+DC80..U+DCFF; JSON keeps
/// them as `\udcXX` escapes, which serde_json refuses. They are swapped for private-use
/// characters U+F780..U+F7FF before parsing and turned back into bytes afterwards.
fn unescape_surrogates(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find("\\udc") {
        out.push_str(&rest[..at]);
        let hex = &rest[at + 4..at + 6];
        out.push_str("\\uf7");
        out.push_str(hex);
        rest = &rest[at + 6..];
    }
    out.push_str(rest);
    out
}

pub fn name_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in text.chars() {
        let code = c as u32;
        if (0xf780..=0xf7ff).contains(&code) {
            out.push((code - 0xf700) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out
}

/// The expected tree: relative path bytes ("" for the root) → record.
pub fn expected_tree(json_name: &str) -> BTreeMap<Vec<u8>, Expected> {
    let text = std::fs::read_to_string(fixtures_dir().join(json_name)).unwrap();
    let value: serde_json::Value = serde_json::from_str(&unescape_surrogates(&text)).unwrap();
    let mut tree = BTreeMap::new();
    for (path, rec) in value.as_object().unwrap() {
        let path = if path == "." {
            Vec::new()
        } else {
            name_bytes(path)
        };
        let text_bytes = |key: &str| rec.get(key).map(|v| name_bytes(v.as_str().unwrap()));
        let expected = Expected {
            kind: rec["type"].as_str().unwrap().chars().next().unwrap(),
            mode: rec["mode"].as_u64().unwrap(),
            uid: rec["uid"].as_u64().unwrap() as u32,
            gid: rec["gid"].as_u64().unwrap() as u32,
            mtime_ns: rec["mtime_ns"].as_i64().unwrap() as i128,
            size: rec.get("size").map(|v| v.as_u64().unwrap()),
            sha256: rec.get("sha256").map(|v| v.as_str().unwrap().to_string()),
            target: text_bytes("target"),
            rdev: rec
                .get("rdev")
                .map(|v| (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())),
            xattrs: rec
                .get("xattrs")
                .map(|x| {
                    x.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            acl: rec
                .get("acl")
                .map(|a| {
                    a.as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l.as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            hardlinks: rec
                .get("hardlinks")
                .map(|a| {
                    a.as_array()
                        .unwrap()
                        .iter()
                        .map(|l| name_bytes(l.as_str().unwrap()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        tree.insert(path, expected);
    }
    tree
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The ACL lines the fixture lists: getfacl lines other than the base access entries.
pub fn extended_acl_lines(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| {
            !(l.starts_with("user::") || l.starts_with("group::") || l.starts_with("other::"))
        })
        .collect()
}

pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Waits until the pbsfs mount of an archive at `point` has counted its entries in the
/// background (statfs reports them, 0 before): from then on every link count is exact,
/// also of a hardlinked file met before its hardlinks.
pub fn wait_until_counted(point: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(point.as_os_str().as_bytes()).unwrap();
    for _ in 0..6000 {
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a statvfs to fill.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        assert_eq!(rc, 0, "statvfs {}", point.display());
        if stat.f_files > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the mount at {} never finished counting", point.display());
}

/// The current file's contents, read from `decoder` to the end in pieces of `piece` bytes.
pub fn decoded_contents<S: pbsfs::pxar::items::ItemSource>(
    decoder: &mut pbsfs::pxar::Decoder<S>,
    piece: usize,
) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let n = decoder.read_contents(&mut buf).unwrap();
        if n == 0 {
            return data;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// A writable copy of the fixture datastore with one byte of a chunk flipped.
pub fn datastore_with_bad_chunk(digest: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture_datastore(&tmp.path().join("ds"));
    let path = tmp
        .path()
        .join("ds/.chunks")
        .join(&digest[..4])
        .join(digest);
    let mut raw = std::fs::read(&path).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 1;
    std::fs::write(&path, raw).unwrap();
    tmp
}
