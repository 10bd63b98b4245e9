//! The official catalog of the legacy fixture: parsed, compared with the tree it describes,
//! and rewritten byte for byte.

use crate::common::fixture_stream;

use std::collections::BTreeMap;

use pbsfs::format::catalog::{CatalogReader, CatalogWriter, EntryAttr, EntryType};

const LEGACY: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
const ARCHIVE: &str = "root.pxar.didx";

/// One tree entry as the catalog should record it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Dir,
    File { size: u64, mtime: i64 },
    Other(EntryType),
}

fn fixture_path(name: &str) -> String {
    format!("{}/../shared/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// tree1.json stores non-UTF-8 bytes as Python surrogate escapes (`\udcXX`), which JSON
/// parsers reject; they are mapped to private-use `\uf7XX` first and back to bytes after.
fn name_bytes(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for ch in name.chars() {
        match ch as u32 {
            code @ 0xf780..=0xf7ff => out.push((code - 0xf700) as u8),
            _ => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// Path components, so that sorting gives the encoder's order (per directory, byte-wise).
type Components = Vec<Vec<u8>>;

fn load_tree() -> BTreeMap<Components, Expected> {
    let text = std::fs::read_to_string(fixture_path("tree1.json")).unwrap();
    assert!(
        !text.contains("\\uf7"),
        "private-use escapes would be ambiguous"
    );
    let text = text.replace("\\udc", "\\uf7");
    let tree: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();

    // Of each hardlink group, the first name in encoder order is the file, the others `h`.
    let mut link_owner: BTreeMap<Components, bool> = BTreeMap::new();
    for entry in tree.values() {
        if let Some(links) = entry.get("hardlinks").and_then(|l| l.as_array()) {
            let mut paths: Vec<Components> = links
                .iter()
                .map(|p| components(p.as_str().unwrap()))
                .collect();
            paths.sort();
            for (i, path) in paths.into_iter().enumerate() {
                link_owner.insert(path, i == 0);
            }
        }
    }

    let mut out = BTreeMap::new();
    for (path, entry) in &tree {
        if path == "." {
            continue;
        }
        let path = components(path);
        let kind = match entry["type"].as_str().unwrap() {
            "d" => Expected::Dir,
            "-" if link_owner.get(&path) == Some(&false) => Expected::Other(EntryType::Hardlink),
            "-" => Expected::File {
                size: entry["size"].as_u64().unwrap(),
                // st_mtime: whole seconds rounded down, also before 1970.
                mtime: entry["mtime_ns"]
                    .as_i64()
                    .unwrap()
                    .div_euclid(1_000_000_000),
            },
            "l" => Expected::Other(EntryType::Symlink),
            "b" => Expected::Other(EntryType::BlockDevice),
            "c" => Expected::Other(EntryType::CharDevice),
            "p" => Expected::Other(EntryType::Fifo),
            "s" => Expected::Other(EntryType::Socket),
            other => panic!("unknown type {other}"),
        };
        out.insert(path, kind);
    }
    out
}

fn components(path: &str) -> Components {
    path.split('/').map(name_bytes).collect()
}

fn official_catalog() -> Vec<u8> {
    fixture_stream::reassemble(LEGACY, "catalog.pcat1.didx")
}

#[test]
fn official_catalog_lists_the_fixture_tree() {
    let data = official_catalog();
    let reader = CatalogReader::new(&data[..]).unwrap();

    let top = reader.read_dir(&reader.root()).unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].name, ARCHIVE.as_bytes());

    let mut listed = BTreeMap::new();
    reader
        .walk(|path, entry| {
            let mut parts: Components = path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            assert_eq!(parts.remove(0), ARCHIVE.as_bytes());
            if parts.is_empty() {
                return;
            }
            let kind = match entry.attr {
                EntryAttr::Directory { .. } => Expected::Dir,
                EntryAttr::File { size, mtime } => Expected::File { size, mtime },
                _ => Expected::Other(entry.entry_type()),
            };
            assert!(listed.insert(parts, kind).is_none(), "path listed twice");
        })
        .unwrap();

    let expected = load_tree();
    let missing: Vec<_> = expected
        .keys()
        .filter(|p| !listed.contains_key(*p))
        .collect();
    let extra: Vec<_> = listed
        .keys()
        .filter(|p| !expected.contains_key(*p))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (path, want) in &expected {
        assert_eq!(
            &listed[path],
            want,
            "{:?}",
            String::from_utf8_lossy(&path.join(&b'/'))
        );
    }
    assert!(expected.len() > 3000);

    let old = reader.lookup(b"root.pxar.didx/meta/old").unwrap().unwrap();
    assert!(matches!(old.attr, EntryAttr::File { mtime, .. } if mtime < 0));
}

/// Replays the tree in encoder order (depth first, names sorted byte-wise).
fn write_tree(tree: &BTreeMap<Components, Expected>) -> Vec<u8> {
    let mut writer = CatalogWriter::new(Vec::new()).unwrap();
    writer.start_directory(ARCHIVE.as_bytes()).unwrap();
    let mut open: Vec<Vec<u8>> = Vec::new();
    // BTreeMap order over component lists is exactly depth-first with sorted siblings.
    for (path, kind) in tree {
        let (name, parent) = path.split_last().unwrap();
        while open.as_slice() != parent {
            writer.end_directory().unwrap();
            open.pop();
        }
        match kind {
            Expected::Dir => {
                writer.start_directory(name).unwrap();
                open.push(name.clone());
            }
            Expected::File { size, mtime } => writer.add_file(name, *size, *mtime).unwrap(),
            Expected::Other(EntryType::Hardlink) => writer.add_hardlink(name).unwrap(),
            Expected::Other(EntryType::Symlink) => writer.add_symlink(name).unwrap(),
            Expected::Other(EntryType::BlockDevice) => writer.add_block_device(name).unwrap(),
            Expected::Other(EntryType::CharDevice) => writer.add_char_device(name).unwrap(),
            Expected::Other(EntryType::Fifo) => writer.add_fifo(name).unwrap(),
            Expected::Other(EntryType::Socket) => writer.add_socket(name).unwrap(),
            Expected::Other(other) => panic!("unexpected {other:?}"),
        }
    }
    for _ in 0..=open.len() {
        writer.end_directory().unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn rewriting_the_tree_reproduces_the_official_catalog() {
    let official = official_catalog();
    let ours = write_tree(&load_tree());
    assert_eq!(ours.len(), official.len());
    if let Some(at) = ours.iter().zip(&official).position(|(a, b)| a != b) {
        panic!("first difference at byte {at} of {}", ours.len());
    }
}

#[test]
fn rewriting_what_was_read_reproduces_the_official_catalog() {
    let official = official_catalog();
    let reader = CatalogReader::new(&official[..]).unwrap();
    let mut writer = CatalogWriter::new(Vec::new()).unwrap();
    copy_dir(&reader, &reader.root(), &mut writer);
    assert!(writer.finish().unwrap() == official);
}

fn copy_dir(
    reader: &CatalogReader<&[u8]>,
    dir: &pbsfs::format::catalog::DirEntry,
    writer: &mut CatalogWriter<Vec<u8>>,
) {
    for entry in reader.read_dir(dir).unwrap() {
        let name = &entry.name;
        match entry.attr {
            EntryAttr::Directory { .. } => {
                writer.start_directory(name).unwrap();
                copy_dir(reader, &entry, writer);
                writer.end_directory().unwrap();
            }
            EntryAttr::File { size, mtime } => writer.add_file(name, size, mtime).unwrap(),
            EntryAttr::Symlink => writer.add_symlink(name).unwrap(),
            EntryAttr::Hardlink => writer.add_hardlink(name).unwrap(),
            EntryAttr::BlockDevice => writer.add_block_device(name).unwrap(),
            EntryAttr::CharDevice => writer.add_char_device(name).unwrap(),
            EntryAttr::Fifo => writer.add_fifo(name).unwrap(),
            EntryAttr::Socket => writer.add_socket(name).unwrap(),
        }
    }
}
