//! Inode numbers of a whole-store mount (all stable for the life of the mount, none reused):
//! - bit 63 clear: a "virtual" node (namespace, `ns`, type, group, snapshot, archive root,
//!   image file) numbered from a table in the order nodes are first seen; the root is 1.
//! - bit 63 set: an entry inside an opened archive, `1<<63 | slot<<40 | local`, where
//!   `slot` (23 bits) numbers the archives in the order they are first listed and `local`
//!   (40 bits) is the archive's own inode ([`ArchiveFs`](super::super::ArchiveFs) numbers
//!   entries by offset). A local inode below 2^39 is used as is; a larger one (only in a v1
//!   archive of more than 256 GiB) gets `2^39 + n` from a per-archive table, so the two
//!   ranges never meet. The archive's own root (local 1) is the archive's virtual node
//!   instead.
//!
//! The two kinds differ in bit 63, archives differ in `slot`, and within one archive the
//! local numbers are distinct by construction, so no two entries share a number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use pbsfs_mount::{Errno, Timespec, ROOT_INO};

use crate::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};
use crate::store::open::Mountable;

pub(super) const CONTENT_FLAG: u64 = 1 << 63;
const LOCAL_BITS: u32 = 40;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;
/// Local inodes below this are encoded directly; the rest go through a per-slot table.
const DIRECT_LIMIT: u64 = 1 << (LOCAL_BITS - 1);
const MAX_SLOTS: usize = 1 << (63 - LOCAL_BITS);

/// A directory or file that is not inside an archive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Node {
    /// A namespace: its backup types, plus `ns` when it has child namespaces.
    Namespace(BackupNamespace),
    /// The `ns` directory of a namespace: its child namespaces.
    NsList(BackupNamespace),
    Type(BackupNamespace, BackupType),
    Group(BackupNamespace, BackupGroup),
    Snapshot(BackupNamespace, BackupDir),
    /// A group's `latest` symlink while it points to this snapshot: a new target is a new
    /// node, since the kernel keeps a symlink's target for as long as it keeps the inode.
    Latest(BackupNamespace, BackupDir),
    /// The root directory of the pxar archive in `slot`.
    Archive(usize),
    /// The disk image in `slot`, a regular file.
    Image(usize),
}

impl Node {
    /// Whether the directory's listing can change while mounted (backups made, forgotten).
    /// A snapshot's archives are fixed when it is finished.
    pub fn may_change(&self) -> bool {
        matches!(
            self,
            Node::Namespace(_) | Node::NsList(_) | Node::Type(..) | Node::Group(..)
        )
    }
}

pub(super) struct NodeEntry {
    pub node: Node,
    pub parent: u64,
    pub mode: u32,
    pub size: u64,
    pub mtime: Timespec,
}

/// One archive of one snapshot: what is needed to (re)open it.
pub(super) struct Slot {
    pub ns: BackupNamespace,
    pub dir: BackupDir,
    pub what: Mountable,
    /// Virtual inode of the archive root (or the image file), set when it is interned.
    node_ino: OnceLock<u64>,
    /// Local inodes too large to encode directly ↔ their index (from `DIRECT_LIMIT` on).
    overflow: Mutex<Overflow>,
}

#[derive(Default)]
struct Overflow {
    by_local: HashMap<u64, u64>,
    by_index: HashMap<u64, u64>,
}

impl Slot {
    pub fn new(ns: BackupNamespace, dir: BackupDir, what: Mountable) -> Self {
        Slot {
            ns,
            dir,
            what,
            node_ino: OnceLock::new(),
            overflow: Mutex::default(),
        }
    }

    /// The global inode of local inode `local` of this archive (in slot `slot_index`);
    /// None when the archive has more inodes than can be numbered.
    pub fn to_global(&self, slot_index: usize, local: u64) -> Option<u64> {
        if local == ROOT_INO {
            return self.node_ino.get().copied();
        }
        let index = if local < DIRECT_LIMIT {
            local
        } else {
            let mut overflow = self.overflow.lock().unwrap();
            match overflow.by_local.get(&local) {
                Some(index) => *index,
                None => {
                    let index = DIRECT_LIMIT + overflow.by_local.len() as u64;
                    if index > LOCAL_MASK {
                        return None;
                    }
                    overflow.by_local.insert(local, index);
                    overflow.by_index.insert(index, local);
                    index
                }
            }
        };
        Some(CONTENT_FLAG | ((slot_index as u64) << LOCAL_BITS) | index)
    }
}

/// Virtual nodes, archive slots and the listings taken so far.
#[derive(Default)]
pub(super) struct Tables {
    /// Virtual node `ino` is `nodes[ino - 1]`.
    nodes: Vec<NodeEntry>,
    node_ids: HashMap<Node, u64>,
    slots: Vec<Arc<Slot>>,
    slot_ids: HashMap<(BackupNamespace, BackupDir, String), usize>,
    /// Listings taken so far.
    pub children: HashMap<u64, Listing>,
}

/// A directory's listing: (name, inode) in listing order, and when it was taken.
#[derive(Clone)]
pub(super) struct Listing {
    pub entries: Arc<Vec<(String, u64)>>,
    pub taken: Instant,
}

impl Tables {
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, ino: u64) -> Result<&NodeEntry, Errno> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)
    }

    pub fn slot(&self, slot: usize) -> Result<Arc<Slot>, Errno> {
        self.slots.get(slot).cloned().ok_or(Errno::ENOENT)
    }

    /// The slot of archive `what` of a snapshot, assigned on first sight; None when there
    /// are no slot numbers left.
    pub fn slot_for(
        &mut self,
        ns: &BackupNamespace,
        dir: &BackupDir,
        what: &Mountable,
    ) -> Option<usize> {
        let key = (ns.clone(), dir.clone(), what.name().to_string());
        if let Some(slot) = self.slot_ids.get(&key) {
            return Some(*slot);
        }
        let slot = self.slots.len();
        if slot >= MAX_SLOTS {
            return None;
        }
        self.slots
            .push(Arc::new(Slot::new(ns.clone(), dir.clone(), what.clone())));
        self.slot_ids.insert(key, slot);
        Some(slot)
    }

    /// Adds a virtual node (or finds it, taking a later mtime) and returns its inode.
    pub fn intern(&mut self, entry: NodeEntry) -> u64 {
        if let Some(&ino) = self.node_ids.get(&entry.node) {
            self.touch(ino, entry.mtime);
            return ino;
        }
        let node = entry.node.clone();
        self.nodes.push(entry);
        let ino = self.nodes.len() as u64;
        if let Node::Archive(slot) | Node::Image(slot) = node {
            let _ = self.slots[slot].node_ino.set(ino);
        }
        self.node_ids.insert(node, ino);
        ino
    }

    /// Moves the mtime of node `ino` forward to `mtime` (never back: the kernel drops a
    /// cached listing when the mtime differs, and tools take an older one for "unchanged").
    pub fn touch(&mut self, ino: u64, mtime: Timespec) {
        if let Some(entry) = ino
            .checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i as usize))
        {
            entry.mtime = entry.mtime.max(mtime);
        }
    }

    /// (slot index, slot, local inode) of a global inode inside an archive.
    pub fn to_local(&self, ino: u64) -> Result<(usize, Arc<Slot>, u64), Errno> {
        let slot_index = ((ino & !CONTENT_FLAG) >> LOCAL_BITS) as usize;
        let index = ino & LOCAL_MASK;
        let slot = self.slot(slot_index)?;
        let local = if index < DIRECT_LIMIT {
            index
        } else {
            *slot
                .overflow
                .lock()
                .unwrap()
                .by_index
                .get(&index)
                .ok_or(Errno::ENOENT)?
        };
        Ok((slot_index, slot, local))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn content_inodes_never_meet_virtual_ones_or_each_other() {
        let slot = |n: u64| {
            let slot = Slot::new(
                BackupNamespace::root(),
                BackupDir::parse("host/a/2020-01-01T00:00:00Z").unwrap(),
                Mountable::Pxar {
                    name: "root.pxar".into(),
                    file: "root.pxar.didx".into(),
                },
            );
            slot.node_ino.set(n).unwrap();
            slot
        };
        let (a, b) = (slot(7), slot(9));
        let mut seen = HashSet::new();
        for local in [
            2,
            3,
            DIRECT_LIMIT - 1,
            DIRECT_LIMIT,
            DIRECT_LIMIT + 5,
            u64::MAX / 2,
        ] {
            for (index, s) in [(0usize, &a), (1, &b)] {
                let global = s.to_global(index, local).unwrap();
                assert_ne!(global & CONTENT_FLAG, 0);
                assert!(seen.insert(global), "{local} in slot {index} collides");
                // Round trip of the overflow table (direct ones decode arithmetically).
                let back = global & LOCAL_MASK;
                if back >= DIRECT_LIMIT {
                    assert_eq!(s.overflow.lock().unwrap().by_index[&back], local);
                } else {
                    assert_eq!(back, local);
                }
            }
        }
        // The archive root is its virtual node.
        assert_eq!(a.to_global(0, ROOT_INO).unwrap(), 7);
    }
}
