//! The fixture archives made by the official tools, read back with the accessor and the
//! sequential decoder, must describe exactly the tree in tree1.json / tree1-meta2.json.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::disk_tree::*;
use common::*;
use pbsfs::format::ReadAt;
use pbsfs::pxar::{acl, Accessor, Decoder, Entry, EntryKind};
use rand::{Rng, SeedableRng};

struct Case {
    snapshot: &'static str,
    meta: &'static str,
    payload: Option<&'static str>,
    json: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        snapshot: LEGACY,
        meta: "root.pxar",
        payload: None,
        json: "tree1.json",
    },
    Case {
        snapshot: DATA,
        meta: "root.mpxar",
        payload: Some("root.ppxar"),
        json: "tree1.json",
    },
    Case {
        snapshot: META1,
        meta: "root.mpxar",
        payload: Some("root.ppxar"),
        json: "tree1.json",
    },
    Case {
        snapshot: META2,
        meta: "root.mpxar",
        payload: Some("root.ppxar"),
        json: "tree1-meta2.json",
    },
];

fn streams(case: &Case) -> (Arc<dyn ReadAt>, Option<Arc<dyn ReadAt>>) {
    (
        fixture_archive(case.snapshot, case.meta),
        case.payload.map(|p| fixture_archive(case.snapshot, p)),
    )
}

/// The record an entry yields, given its (hardlink-resolved) entry and contents.
fn record(entry: &Entry, contents: Option<&[u8]>) -> Expected {
    let stat = &entry.metadata.stat;
    let mut rec = Expected {
        kind: type_char(stat.mode),
        mode: stat.mode,
        uid: stat.uid,
        gid: stat.gid,
        mtime_ns: stat.mtime.as_nanos(),
        ..Expected::default()
    };
    match &entry.kind {
        EntryKind::File { size, .. } => {
            let data = contents.expect("file contents");
            assert_eq!(data.len() as u64, *size);
            rec.size = Some(*size);
            rec.sha256 = Some(sha256_hex(data));
        }
        EntryKind::Symlink { target } => rec.target = Some(target.clone()),
        EntryKind::Device { major, minor } => rec.rdev = Some((*major, *minor)),
        _ => {}
    }
    if rec.kind != 'l' {
        for (name, value) in &entry.metadata.xattrs {
            if name.starts_with(b"user.") {
                rec.xattrs
                    .insert(String::from_utf8(name.clone()).unwrap(), hex::encode(value));
            }
        }
        if let Some(fcaps) = &entry.metadata.fcaps {
            rec.xattrs
                .insert("security.capability".into(), hex::encode(fcaps));
        }
        rec.acl = extended_acl_lines(acl::getfacl_lines(&entry.metadata));
    }
    rec
}

fn read_whole(accessor: &Accessor, file: &Entry) -> Vec<u8> {
    let mut data = vec![0u8; file.file_size() as usize];
    let mut done = 0;
    while done < data.len() {
        let end = (done + (1 << 20)).min(data.len());
        let n = accessor
            .read_file(file, done as u64, &mut data[done..end])
            .unwrap();
        assert!(n > 0, "short read of {}", show(&file.name));
        done += n;
    }
    // Reading at or past the end gives nothing.
    assert_eq!(
        accessor
            .read_file(file, data.len() as u64, &mut [0u8; 8])
            .unwrap(),
        0
    );
    data
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Adds the `hardlinks` groups: every group holds the target's path and its links' paths.
fn add_hardlink_groups(
    tree: &mut BTreeMap<Vec<u8>, Expected>,
    groups: HashMap<Vec<u8>, Vec<Vec<u8>>>,
) {
    for (target, links) in groups {
        let mut all = links.clone();
        all.push(target.clone());
        all.sort();
        for path in &all {
            tree.get_mut(path).unwrap().hardlinks = all.clone();
        }
    }
}

/// Walks the whole tree through the accessor (read_dir + open_dir_entry).
fn tree_via_accessor(accessor: &Accessor) -> BTreeMap<Vec<u8>, Expected> {
    let mut tree = BTreeMap::new();
    let mut groups: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let root = accessor.root().unwrap();
    tree.insert(Vec::new(), record(&root, None));
    let mut pending = vec![(Vec::new(), root)];
    while let Some((path, dir)) = pending.pop() {
        let listing = accessor.read_dir(&dir).unwrap();
        let mut names: Vec<&[u8]> = listing.iter().map(|c| c.name.as_slice()).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        // The official client writes children sorted by name: archive order is name order.
        assert_eq!(
            names,
            sorted,
            "listing of {} not in archive order",
            show(&path)
        );
        names.dedup();
        assert_eq!(names.len(), listing.len());
        for (index, child) in listing.iter().enumerate() {
            assert_eq!(child.index, index);
            let entry = accessor.open_dir_entry(child).unwrap();
            assert_eq!(entry.name, child.name);
            let child_path = join(&path, &child.name);
            match &entry.kind {
                EntryKind::Directory => {
                    tree.insert(child_path.clone(), record(&entry, None));
                    pending.push((child_path, entry));
                }
                EntryKind::File { .. } => {
                    let data = read_whole(accessor, &entry);
                    tree.insert(child_path, record(&entry, Some(&data)));
                }
                EntryKind::Hardlink { target_path, .. } => {
                    let target = accessor.follow_hardlink(&entry).unwrap();
                    let data = read_whole(accessor, &target);
                    tree.insert(child_path.clone(), record(&target, Some(&data)));
                    groups
                        .entry(target_path.clone())
                        .or_default()
                        .push(child_path);
                }
                _ => {
                    tree.insert(child_path, record(&entry, None));
                }
            }
        }
    }
    add_hardlink_groups(&mut tree, groups);
    tree
}

/// Walks the tree with the sequential decoder.
fn tree_via_decoder<S: pbsfs::pxar::items::ItemSource>(
    mut decoder: Decoder<S>,
) -> BTreeMap<Vec<u8>, Expected> {
    let mut tree = BTreeMap::new();
    let mut groups: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut last_path: Option<Vec<u8>> = None;
    while let Some(item) = decoder.next_entry().unwrap() {
        let entry = &item.entry;
        assert_eq!(
            item.depth,
            item.path
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .count()
        );
        if let Some(last) = &last_path {
            assert!(last < &item.path, "archive order is path order");
        }
        last_path = Some(item.path.clone());
        let rec = match &entry.kind {
            EntryKind::File { size, .. } => {
                let data = decoded_contents(&mut decoder, 1 << 16);
                assert_eq!(data.len() as u64, *size);
                record(entry, Some(&data))
            }
            EntryKind::Hardlink { target_path, .. } => {
                groups
                    .entry(target_path.clone())
                    .or_default()
                    .push(item.path.clone());
                tree.get(target_path)
                    .cloned()
                    .expect("hardlink target decoded before the link")
            }
            _ => record(entry, None),
        };
        tree.insert(item.path.clone(), rec);
    }
    add_hardlink_groups(&mut tree, groups);
    tree
}

#[test]
fn accessor_walk_matches_tree() {
    for case in &CASES {
        let (meta, payload) = streams(case);
        let accessor = Accessor::open(meta, payload).unwrap();
        assert_eq!(accessor.is_split(), case.payload.is_some());
        let expected = expected_tree(case.json);
        assert_same_tree(&tree_via_accessor(&accessor), &expected, case.snapshot);
    }
}

#[test]
fn sequential_decoder_matches_tree() {
    for case in &CASES {
        let (meta, payload) = streams(case);
        let expected = expected_tree(case.json);
        let tree = tree_via_decoder(Decoder::from_read_at(meta, payload));
        assert_same_tree(&tree, &expected, case.snapshot);
    }
    // A v1 archive from a plain sequential reader.
    let meta = fixture_archive(LEGACY, "root.pxar");
    let reader = ReadAtReader {
        inner: meta,
        position: 0,
    };
    let tree = tree_via_decoder(Decoder::from_read(std::io::BufReader::new(reader)));
    assert_same_tree(&tree, &expected_tree("tree1.json"), "legacy via Read");
}

/// A `Read` over a `ReadAt`, so the Read-based decoder sees the same bytes.
struct ReadAtReader {
    inner: Arc<dyn ReadAt>,
    position: u64,
}

impl std::io::Read for ReadAtReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

#[test]
fn every_path_is_found_by_lookup_and_by_id() {
    for case in &CASES {
        let (meta, payload) = streams(case);
        let accessor = Accessor::open(meta, payload).unwrap();
        let expected = expected_tree(case.json);
        for (path, want) in &expected {
            let entry = accessor
                .lookup_path(path)
                .unwrap()
                .unwrap_or_else(|| panic!("{} not found", show(path)));
            let name = path.rsplit(|&b| b == b'/').next().unwrap();
            assert_eq!(entry.name, name);
            let resolved = match entry.kind {
                EntryKind::Hardlink { .. } => accessor.follow_hardlink(&entry).unwrap(),
                _ => entry.clone(),
            };
            assert_eq!(type_char(resolved.mode()), want.kind, "{}", show(path));
            // Re-opening by id gives the same entry (directories lose only their name).
            let again = accessor.entry_at(entry.id().unwrap()).unwrap();
            assert_eq!(again.kind, entry.kind);
            assert_eq!(again.metadata, entry.metadata);
            if !entry.is_dir() {
                assert_eq!(again.name, entry.name);
            }
            // A name that differs in one byte is not found.
            if !path.is_empty() {
                let mut other = path.clone();
                other.push(b'~');
                assert!(
                    accessor.lookup_path(&other).unwrap().is_none()
                        || expected.contains_key(&other)
                );
            }
        }
        assert!(accessor.lookup_path(b"no/such/file").unwrap().is_none());
        assert!(accessor.lookup_path(b"data/../data").is_err());
        let hard_c = accessor.lookup_path(b"data/hard-c").unwrap().unwrap();
        let hard_b = accessor.lookup_path(b"links/hard-b").unwrap().unwrap();
        // Both links resolve to the same target (same id, usable as one inode).
        let targets: Vec<Entry> = [&hard_c, &hard_b]
            .iter()
            .map(|e| match e.kind {
                EntryKind::Hardlink { .. } => accessor.follow_hardlink(e).unwrap(),
                _ => (*e).clone(),
            })
            .collect();
        assert_eq!(targets[0].id(), targets[1].id());
    }
}

#[test]
fn random_sub_ranges_read_like_the_whole_file() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for case in &CASES {
        let (meta, payload) = streams(case);
        let accessor = Accessor::open(meta, payload).unwrap();
        for path in [
            &b"data/big-random"[..],
            b"data/big-text",
            b"data/sparse",
            b"data/rand-4097",
            b"names/latin1-\xe9\xff",
            b"data/rand-0",
        ] {
            let Some(file) = accessor.lookup_path(path).unwrap() else {
                assert_eq!(case.json, "tree1-meta2.json", "{}", show(path));
                continue;
            };
            let whole = read_whole(&accessor, &file);
            for _ in 0..40 {
                let offset = rng.gen_range(0..=whole.len() as u64 + 10);
                let len = rng.gen_range(0..300_000usize);
                let mut buf = vec![0u8; len];
                let n = accessor.read_file(&file, offset, &mut buf).unwrap();
                let start = (offset as usize).min(whole.len());
                let end = (start + len).min(whole.len());
                assert_eq!(n, end - start);
                assert_eq!(
                    &buf[..n],
                    &whole[start..end],
                    "{} at {offset}+{len}",
                    show(path)
                );
            }
        }
    }
}

#[test]
fn namespace_archive_holds_the_links_subtree() {
    let accessor = Accessor::open_v1(fixture_archive(NS, "root.pxar")).unwrap();
    let expected = expected_tree("tree1.json");
    let tree = tree_via_accessor(&accessor);
    for (path, rec) in &tree {
        let full = if path.is_empty() {
            b"links".to_vec()
        } else {
            join(b"links", path)
        };
        let want = &expected[&full];
        if path.is_empty() {
            assert_eq!(rec.mode, want.mode);
            continue;
        }
        // The hard-c link lies outside this subtree, so only the two in-tree names group.
        let mut want = want.clone();
        want.hardlinks = rec.hardlinks.clone();
        assert_eq!(rec, &want, "{}", show(path));
    }
    assert_eq!(
        tree.len(),
        expected.keys().filter(|k| k.starts_with(b"links/")).count() + 1
    );
}

#[test]
fn wrong_variant_is_refused() {
    let legacy = fixture_archive(LEGACY, "root.pxar");
    let meta = fixture_archive(DATA, "root.mpxar");
    let payload = fixture_archive(DATA, "root.ppxar");
    assert!(Accessor::open_v1(meta.clone()).is_err());
    assert!(Accessor::open_v2(legacy.clone(), payload.clone()).is_err());
    // The payload stream in place of the metadata stream.
    assert!(Accessor::open_v2(payload.clone(), meta.clone()).is_err());
    assert!(Decoder::from_read_at(meta, None).next_entry().is_err());
}

// ---- extraction -------------------------------------------------------------------------

use pbsfs::pxar::extract::{extract, extract_with_accessor, ExtractOptions};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn extracted_trees_match_fixture() {
    if !is_root() {
        eprintln!("skipped: extraction with owners, devices and capabilities needs root");
        return;
    }
    for case in &CASES[..2] {
        let (meta, payload) = streams(case);
        let dir = tempfile::TempDir::new().unwrap();
        let target = dir.path().join("out");
        let mut decoder = Decoder::from_read_at(meta.clone(), payload.clone());
        let stats = extract(&mut decoder, &target, &ExtractOptions::default()).unwrap();
        let expected = expected_tree(case.json);
        assert_eq!(stats.entries as usize, expected.len() - 1);
        assert_same_tree(&tree_from_disk(&target), &expected, case.snapshot);

        // A second extraction refuses to overwrite, unless told to.
        let mut decoder = Decoder::from_read_at(meta.clone(), payload.clone());
        assert!(extract(&mut decoder, &target, &ExtractOptions::default()).is_err());
        let mut decoder = Decoder::from_read_at(meta, payload);
        let options = ExtractOptions {
            overwrite: true,
            ..ExtractOptions::default()
        };
        extract(&mut decoder, &target, &options).unwrap();
        assert_same_tree(&tree_from_disk(&target), &expected, "after overwrite");
    }
}

#[test]
fn extraction_with_patterns_selects_subtrees() {
    if !is_root() {
        return;
    }
    let (meta, payload) = streams(&CASES[1]);
    let dir = tempfile::TempDir::new().unwrap();
    let target = dir.path().join("out");
    let options = ExtractOptions {
        patterns: vec!["/links".into(), "*.sh".into(), "deep/**/bottom.txt".into()],
        ..ExtractOptions::default()
    };
    // Without random access, the hardlink to the unselected data/hard-c cannot be made.
    let err = extract(
        &mut Decoder::from_read_at(meta.clone(), payload.clone()),
        &dir.path().join("x"),
        &options,
    );
    assert!(format!("{:#}", err.unwrap_err()).contains("was not extracted"));
    let accessor = Accessor::open(meta.clone(), payload.clone()).unwrap();
    extract_with_accessor(
        &mut Decoder::from_read_at(meta, payload),
        Some(&accessor),
        &target,
        &options,
    )
    .unwrap();
    let expected = expected_tree("tree1.json");
    let got = tree_from_disk(&target);
    let wanted: Vec<&Vec<u8>> = expected
        .keys()
        .filter(|p| {
            p.starts_with(b"links")
                || p.as_slice() == b"data/script.sh"
                || p.as_slice() == b"data"
                || (p.starts_with(b"deep") && b"deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/bottom.txt".starts_with(p))
        })
        .collect();
    let got_paths: Vec<&Vec<u8>> = got.keys().filter(|p| !p.is_empty()).collect();
    assert_eq!(got_paths, wanted);
    // Selected entries and their parents carry the archived metadata; the two links of
    // the unselected hard-c became one hardlink group.
    for path in wanted {
        let mut want = expected[path].clone();
        if !want.hardlinks.is_empty() {
            want.hardlinks = vec![b"links/hard-a".to_vec(), b"links/hard-b".to_vec()];
        }
        assert_eq!(got[path], want, "{}", show(path));
    }
}
