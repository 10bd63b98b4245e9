//! Property tests: random trees (every entry kind, hostile-looking but valid names, files
//! of every size class, all metadata the format stores) encoded as v1 and as v2 split, then
//! read back through the random-access reader and the sequential decoder. Both must give
//! exactly the tree that went in.

use crate::common::decoded_contents;
use crate::common::source_tree::random_bytes;

use std::io::Cursor;
use std::sync::Arc;

use pbsfs::format::ReadAt;
use pbsfs::pxar::encoder::{Encoder, LinkOffset, PayloadSink};
use pbsfs::pxar::format::{mode, MTime, Stat, ACL_NO_MASK};
use pbsfs::pxar::metadata::{AclDefault, AclEntry, Device};
use pbsfs::pxar::{Accessor, Acl, Decoder, Entry, EntryKind, Metadata};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// The model: a tree as the test generates it, and the flat list of entries it must decode to.

/// What an entry is, as the test sees it (file data by value, no stream offsets).
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    /// Path (relative to the root) of the earlier file this one links to.
    Hardlink(Vec<u8>),
    Device(Device),
    Fifo,
    Socket,
}

#[derive(Clone, Debug)]
struct Node {
    name: Vec<u8>,
    meta: Metadata,
    kind: NodeKind,
}

#[derive(Clone, Debug)]
enum NodeKind {
    Dir(Vec<Node>),
    /// Size and seed of pseudo-random contents (kept small so shrinking stays cheap).
    File {
        size: usize,
        seed: u64,
    },
    Symlink(Vec<u8>),
    /// Picks one of the files encoded before it (modulo their count); a plain empty file
    /// when there is none yet.
    Hardlink(usize),
    Device(Device),
    Fifo,
    Socket,
}

/// One entry in archive order, with everything a reader must give back.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    path: Vec<u8>,
    kind: Kind,
    /// Default for hardlinks, which carry no metadata of their own.
    meta: Metadata,
    /// For directories: child names in archive order.
    children: Vec<Vec<u8>>,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

// ---------------------------------------------------------------------------------------
// Encoding the model, and what it must decode to.

struct Built {
    expected: Vec<Expected>,
    meta: Vec<u8>,
    payload: Option<Vec<u8>>,
}

struct Writer<'a, W: std::io::Write, P: PayloadSink> {
    encoder: &'a mut Encoder<W, P>,
    expected: Vec<Expected>,
    /// Files encoded so far: (path, link offset, contents).
    files: Vec<(Vec<u8>, LinkOffset, Vec<u8>)>,
}

impl<W: std::io::Write, P: PayloadSink> Writer<'_, W, P> {
    fn children(&mut self, parent_path: &[u8], children: &[Node]) {
        for child in children {
            self.node(parent_path, child);
        }
    }

    fn node(&mut self, parent_path: &[u8], node: &Node) {
        let path = join(parent_path, &node.name);
        let enc = &mut *self.encoder;
        let (kind, meta) = match &node.kind {
            NodeKind::Dir(children) => {
                enc.create_directory(&node.name, &node.meta).unwrap();
                self.expected.push(Expected {
                    path: path.clone(),
                    kind: Kind::Dir,
                    meta: node.meta.clone(),
                    children: children.iter().map(|c| c.name.clone()).collect(),
                });
                self.children(&path, children);
                self.encoder.finish_directory().unwrap();
                return;
            }
            NodeKind::File { size, seed } => {
                let data = random_bytes(*seed, *size);
                let link = enc
                    .add_file(&node.meta, &node.name, data.len() as u64, &mut &data[..])
                    .unwrap();
                self.files.push((path.clone(), link, data.clone()));
                (Kind::File(data), node.meta.clone())
            }
            NodeKind::Hardlink(pick) if !self.files.is_empty() => {
                let (target_path, link, _) = &self.files[pick % self.files.len()];
                enc.add_hardlink(&node.name, target_path, *link).unwrap();
                (Kind::Hardlink(target_path.clone()), Metadata::default())
            }
            NodeKind::Hardlink(_) => {
                let link = enc
                    .add_file(&node.meta, &node.name, 0, &mut &[][..])
                    .unwrap();
                self.files.push((path.clone(), link, Vec::new()));
                (Kind::File(Vec::new()), node.meta.clone())
            }
            NodeKind::Symlink(target) => {
                enc.add_symlink(&node.meta, &node.name, target).unwrap();
                (Kind::Symlink(target.clone()), node.meta.clone())
            }
            NodeKind::Device(device) => {
                enc.add_device(&node.meta, &node.name, *device).unwrap();
                (Kind::Device(*device), node.meta.clone())
            }
            NodeKind::Fifo => {
                enc.add_fifo(&node.meta, &node.name).unwrap();
                (Kind::Fifo, node.meta.clone())
            }
            NodeKind::Socket => {
                enc.add_socket(&node.meta, &node.name).unwrap();
                (Kind::Socket, node.meta.clone())
            }
        };
        self.expected.push(Expected {
            path,
            kind,
            meta,
            children: Vec::new(),
        });
    }
}

fn encode<W: std::io::Write, P: PayloadSink>(
    mut encoder: Encoder<W, P>,
    root: &Metadata,
    children: &[Node],
) -> (Vec<Expected>, W, Option<P>) {
    let mut writer = Writer {
        encoder: &mut encoder,
        expected: vec![Expected {
            path: Vec::new(),
            kind: Kind::Dir,
            meta: root.clone(),
            children: children.iter().map(|c| c.name.clone()).collect(),
        }],
        files: Vec::new(),
    };
    writer.children(b"", children);
    let expected = writer.expected;
    let (meta, payload) = encoder.finish().unwrap();
    (expected, meta, payload)
}

fn build_v1(root: &Metadata, children: &[Node]) -> Built {
    let encoder = Encoder::new_v1(Vec::new(), root).unwrap();
    let (expected, meta, payload) = encode(encoder, root, children);
    assert!(payload.is_none());
    Built {
        expected,
        meta,
        payload: None,
    }
}

fn build_v2(root: &Metadata, children: &[Node], prelude: Option<&[u8]>) -> Built {
    let encoder = Encoder::new_v2(Vec::new(), Vec::new(), root, prelude).unwrap();
    let (expected, meta, payload) = encode(encoder, root, children);
    Built {
        expected,
        meta,
        payload: Some(payload.expect("a split archive has a payload stream")),
    }
}

// ---------------------------------------------------------------------------------------
// Reading back.

/// Reads a whole file through the accessor in uneven pieces.
fn read_all(accessor: &Accessor, file: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7001];
    loop {
        let n = accessor
            .read_file(file, out.len() as u64, &mut buf)
            .unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The model view of an accessor entry (file contents read through `read_file`).
fn accessor_kind(accessor: &Accessor, entry: &Entry) -> Kind {
    model_kind(&entry.kind, || read_all(accessor, entry))
}

/// The model view of an entry's kind; a file's contents come from `contents` and must
/// have the size the entry states.
fn model_kind(kind: &EntryKind, contents: impl FnOnce() -> Vec<u8>) -> Kind {
    match kind {
        EntryKind::Directory => Kind::Dir,
        EntryKind::File { size, .. } => {
            let data = contents();
            assert_eq!(data.len() as u64, *size);
            Kind::File(data)
        }
        EntryKind::Symlink { target } => Kind::Symlink(target.clone()),
        EntryKind::Hardlink { target_path, .. } => Kind::Hardlink(target_path.clone()),
        EntryKind::Device { major, minor } => Kind::Device(Device {
            major: *major,
            minor: *minor,
        }),
        EntryKind::Fifo => Kind::Fifo,
        EntryKind::Socket => Kind::Socket,
    }
}

fn check_accessor(built: &Built) -> Result<(), TestCaseError> {
    let meta: Arc<dyn ReadAt> = Arc::new(built.meta.clone());
    let payload = built
        .payload
        .clone()
        .map(|p| Arc::new(p) as Arc<dyn ReadAt>);
    let accessor = Accessor::open(meta, payload).unwrap();
    prop_assert_eq!(accessor.is_split(), built.payload.is_some());
    for expected in &built.expected {
        let entry = accessor
            .lookup_path(&expected.path)
            .unwrap()
            .unwrap_or_else(|| panic!("{:?} not found", expected.path));
        prop_assert_eq!(
            &entry.name,
            expected.path.rsplit(|&b| b == b'/').next().unwrap()
        );
        prop_assert_eq!(&entry.metadata, &expected.meta);
        prop_assert_eq!(&accessor_kind(&accessor, &entry), &expected.kind);

        // The id re-opens the same entry.
        let again = accessor.entry_at(entry.id().unwrap()).unwrap();
        prop_assert_eq!(&again.kind, &entry.kind);
        prop_assert_eq!(&again.metadata, &entry.metadata);

        match &expected.kind {
            Kind::Dir => {
                let listing = accessor.read_dir(&entry).unwrap();
                let names: Vec<Vec<u8>> = listing.iter().map(|c| c.name.clone()).collect();
                prop_assert_eq!(&names, &expected.children);
                for (index, child) in listing.iter().enumerate() {
                    prop_assert_eq!(child.index, index);
                    let opened = accessor.open_dir_entry(child).unwrap();
                    let looked_up = accessor.lookup(&entry, &child.name).unwrap().unwrap();
                    prop_assert_eq!(&opened.kind, &looked_up.kind);
                    prop_assert_eq!(&opened.metadata, &looked_up.metadata);
                }
                // A name that is not there (the hash may collide with nothing) is None.
                let mut missing = expected.children.first().cloned().unwrap_or_default();
                missing.push(b'~');
                if !expected.children.contains(&missing) {
                    prop_assert!(accessor.lookup(&entry, &missing).unwrap().is_none());
                }
            }
            Kind::Hardlink(target_path) => {
                let target = accessor.follow_hardlink(&entry).unwrap();
                let direct = accessor.lookup_path(target_path).unwrap().unwrap();
                prop_assert_eq!(target.filename_offset, direct.filename_offset);
                prop_assert_eq!(&target.metadata, &direct.metadata);
                prop_assert_eq!(read_all(&accessor, &target), read_all(&accessor, &direct));
            }
            Kind::File(data) if data.len() > 2 => {
                // A read in the middle returns exactly that range.
                let (from, to) = (data.len() / 3, data.len() * 2 / 3 + 1);
                let mut buf = vec![0u8; to - from];
                let n = accessor.read_file(&entry, from as u64, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], &data[from..to]);
                prop_assert_eq!(n, to - from);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Drains a decoder into the model: entries in archive order, file contents read as it goes.
fn decoded<S: pbsfs::pxar::items::ItemSource>(mut decoder: Decoder<S>) -> Vec<Expected> {
    let mut out: Vec<Expected> = Vec::new();
    let mut dir_stack: Vec<(usize, usize)> = Vec::new(); // (index in out, depth)
    while let Some(item) = decoder.next_entry().unwrap() {
        let entry = item.entry;
        let kind = model_kind(&entry.kind, || decoded_contents(&mut decoder, 5003));
        // Children of a directory are the following entries one level deeper.
        while dir_stack.last().is_some_and(|&(_, d)| d >= item.depth) {
            dir_stack.pop();
        }
        if let Some(&(parent, _)) = dir_stack.last() {
            out[parent].children.push(entry.name.clone());
        }
        if kind == Kind::Dir {
            dir_stack.push((out.len(), item.depth));
        }
        out.push(Expected {
            path: item.path,
            kind,
            meta: entry.metadata,
            children: Vec::new(),
        });
    }
    out
}

fn check_decoder(built: &Built) -> Result<(), TestCaseError> {
    let meta: Arc<dyn ReadAt> = Arc::new(built.meta.clone());
    let payload = built
        .payload
        .clone()
        .map(|p| Arc::new(p) as Arc<dyn ReadAt>);
    let at = decoded(Decoder::from_read_at(meta, payload));
    prop_assert_eq!(&at, &built.expected);
    if built.payload.is_none() {
        let seq = decoded(Decoder::from_read(Cursor::new(&built.meta)));
        prop_assert_eq!(&seq, &built.expected);
    }
    Ok(())
}

/// With `PXAR_FUZZ_SEEDS=DIR`, keeps each generated archive as a seed for the fuzz target
/// (fuzz/fuzz_targets/pxar_reader.rs): v1 as it is, v2 as the two-byte split position
/// followed by both streams (archives over 64 KiB are left out).
fn save_seed(built: &Built) {
    let Some(dir) = std::env::var_os("PXAR_FUZZ_SEEDS") else {
        return;
    };
    let bytes = match &built.payload {
        None => built.meta.clone(),
        Some(payload) => {
            let Ok(split) = u16::try_from(built.meta.len()) else {
                return;
            };
            [&split.to_le_bytes()[..], &built.meta, payload].concat()
        }
    };
    // Small seeds keep the fuzzer fast.
    if bytes.len() > 64 << 10 {
        return;
    }
    let name = format!("{:016x}", pbsfs::pxar::format::pxar_hash(&bytes));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn name() -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_filter("no NUL or '/'", |b| *b != 0 && *b != b'/');
    prop_oneof![
        4 => "[a-zA-Z0-9._-]{1,12}".prop_map(String::into_bytes),
        2 => vec(byte.clone(), 1..16),
        1 => vec(byte, 200..=255),
        1 => Just(b".hidden".to_vec()),
        1 => Just("n\u{e4}me \u{2603}".as_bytes().to_vec()),
    ]
    .prop_filter("not '.' or '..'", |n| n != b"." && n != b"..")
}

fn mtime() -> impl Strategy<Value = MTime> {
    prop_oneof![
        (0i64..4_000_000_000, 0u32..1_000_000_000),
        (-4_000_000_000i64..0, 0u32..1_000_000_000),
        (any::<i64>(), 0u32..1_000_000_000),
        Just((-1i64, 999_999_999u32)),
        Just((0i64, 0u32)),
    ]
    .prop_map(|(secs, nanos)| MTime { secs, nanos })
}

fn acl_entries() -> impl Strategy<Value = Vec<AclEntry>> {
    vec(
        (any::<u32>(), 0u64..8).prop_map(|(id, permissions)| AclEntry {
            id: id as u64,
            permissions,
        }),
        0..3,
    )
}

fn permission_or_no_mask() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(ACL_NO_MASK)]
}

fn acl(is_dir: bool) -> impl Strategy<Value = Acl> {
    let default = prop::option::of(
        (
            permission_or_no_mask(),
            permission_or_no_mask(),
            permission_or_no_mask(),
            permission_or_no_mask(),
        )
            .prop_map(|(user_obj, group_obj, other, mask)| AclDefault {
                user_obj,
                group_obj,
                other,
                mask,
            }),
    );
    (
        acl_entries(),
        acl_entries(),
        prop::option::of(0u64..8),
        default,
        acl_entries(),
        acl_entries(),
    )
        .prop_map(
            move |(users, groups, group_obj, default, default_users, default_groups)| {
                let mut acl = Acl {
                    users,
                    groups,
                    group_obj,
                    ..Acl::default()
                };
                // Default ACLs only exist on directories.
                if is_dir {
                    acl.default = default;
                    acl.default_users = default_users;
                    acl.default_groups = default_groups;
                }
                acl
            },
        )
}

fn xattrs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    let xattr_name = prop_oneof![
        "user\\.[a-z]{1,10}".prop_map(String::into_bytes),
        vec(1u8..=255, 1..20),
    ];
    let value = prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), 1..40),
        vec(any::<u8>(), 1000..3000),
    ];
    vec((xattr_name, value), 0..3)
}

fn metadata(file_type: u64) -> impl Strategy<Value = Metadata> {
    let stat = (
        0u64..0o10000,
        prop_oneof![Just(0u64), Just(0x2000u64), any::<u64>()],
        any::<u32>(),
        any::<u32>(),
        mtime(),
    )
        .prop_map(move |(perm, flags, uid, gid, mtime)| Stat {
            mode: file_type | perm,
            flags,
            uid,
            gid,
            mtime,
        });
    let rich = (
        xattrs(),
        acl(file_type == mode::IFDIR),
        prop::option::of(vec(any::<u8>(), 0..48)),
        prop::option::of(any::<u64>()),
    );
    (stat, prop_oneof![1 => Just(None), 1 => rich.prop_map(Some)]).prop_map(|(stat, rich)| {
        let mut meta = Metadata::from_stat(stat);
        if let Some((xattrs, acl, fcaps, quota_project_id)) = rich {
            meta.xattrs = xattrs;
            meta.acl = acl;
            meta.fcaps = fcaps;
            meta.quota_project_id = quota_project_id;
        }
        meta
    })
}

fn file_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(0usize),
        6 => 1usize..300,
        2 => 300usize..20_000,
        1 => 65_536usize..200_000,
    ]
}

fn symlink_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(1u8..=255, 1..64),
        1 => vec(1u8..=255, 4000..=4096),
    ]
}

fn device() -> impl Strategy<Value = Device> {
    prop_oneof![(0u64..300, 0u64..300), (any::<u64>(), any::<u64>())]
        .prop_map(|(major, minor)| Device { major, minor })
}

fn leaf() -> impl Strategy<Value = Node> {
    let kind = prop_oneof![
        6 => (file_size(), any::<u64>())
            .prop_map(|(size, seed)| (mode::IFREG, NodeKind::File { size, seed })),
        2 => symlink_target().prop_map(|t| (mode::IFLNK, NodeKind::Symlink(t))),
        2 => any::<usize>().prop_map(|pick| (mode::IFREG, NodeKind::Hardlink(pick))),
        1 => device().prop_map(|d| (mode::IFCHR, NodeKind::Device(d))),
        1 => device().prop_map(|d| (mode::IFBLK, NodeKind::Device(d))),
        1 => Just((mode::IFIFO, NodeKind::Fifo)),
        1 => Just((mode::IFSOCK, NodeKind::Socket)),
        1 => Just((mode::IFDIR, NodeKind::Dir(Vec::new()))),
    ];
    (name(), kind).prop_flat_map(|(name, (file_type, kind))| {
        metadata(file_type).prop_map(move |meta| Node {
            name: name.clone(),
            meta,
            kind: kind.clone(),
        })
    })
}

/// Children with unique names, in the (random) order they are generated.
fn unique(mut children: Vec<Node>) -> Vec<Node> {
    let mut seen = std::collections::HashSet::new();
    children.retain(|c| seen.insert(c.name.clone()));
    children
}

fn tree() -> impl Strategy<Value = Vec<Node>> {
    let node = leaf().prop_recursive(4, 48, 8, |inner| {
        (name(), metadata(mode::IFDIR), vec(inner, 0..8)).prop_map(|(name, meta, children)| Node {
            name,
            meta,
            kind: NodeKind::Dir(unique(children)),
        })
    });
    vec(node, 0..10).prop_map(unique)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn v1_round_trip(root in metadata(mode::IFDIR), children in tree()) {
        let built = build_v1(&root, &children);
        save_seed(&built);
        check_accessor(&built)?;
        check_decoder(&built)?;
    }

    #[test]
    fn v2_round_trip(
        root in metadata(mode::IFDIR),
        children in tree(),
        prelude in prop::option::of(vec(any::<u8>(), 0..64)),
    ) {
        let built = build_v2(&root, &children, prelude.as_deref());
        save_seed(&built);
        check_accessor(&built)?;
        check_decoder(&built)?;
    }
}

/// The model itself: a fixed tree yields the expected entries, so a property cannot pass
/// vacuously on an empty walk.
#[test]
fn fixed_tree_has_every_kind() {
    let meta = |file_type: u64| {
        Metadata::from_stat(Stat {
            mode: file_type | 0o4755,
            flags: 0,
            uid: 1,
            gid: 2,
            mtime: MTime { secs: -5, nanos: 7 },
        })
    };
    let leaf = |name: &[u8], file_type, kind| Node {
        name: name.to_vec(),
        meta: meta(file_type),
        kind,
    };
    let children = vec![
        leaf(
            b"f",
            mode::IFREG,
            NodeKind::File {
                size: 70_000,
                seed: 3,
            },
        ),
        Node {
            name: b"d\xff".to_vec(),
            meta: meta(mode::IFDIR),
            kind: NodeKind::Dir(vec![
                leaf(b"h", mode::IFREG, NodeKind::Hardlink(0)),
                leaf(b"s", mode::IFLNK, NodeKind::Symlink(b"../f".to_vec())),
            ]),
        },
        leaf(
            b"c",
            mode::IFCHR,
            NodeKind::Device(Device { major: 1, minor: 3 }),
        ),
        leaf(b"p", mode::IFIFO, NodeKind::Fifo),
        leaf(b"k", mode::IFSOCK, NodeKind::Socket),
    ];
    for built in [
        build_v1(&meta(mode::IFDIR), &children),
        build_v2(&meta(mode::IFDIR), &children, None),
    ] {
        let paths: Vec<&[u8]> = built.expected.iter().map(|e| &e.path[..]).collect();
        assert_eq!(
            paths,
            [
                &b""[..],
                b"f",
                b"d\xff",
                b"d\xff/h",
                b"d\xff/s",
                b"c",
                b"p",
                b"k"
            ]
        );
        assert_eq!(built.expected[3].kind, Kind::Hardlink(b"f".to_vec()));
        check_accessor(&built).unwrap();
        check_decoder(&built).unwrap();
    }
}
