//! The listings of a whole-store mount's own directories (namespaces, types, groups,
//! snapshots), each taken once and kept for the mount's life so readdir offsets stay stable.

use std::sync::Arc;

use pbsfs_mount::{Errno, Timespec};

use super::inodes::{Node, NodeEntry};
use super::{ns_prefix, timespec, StoreFs, DIR_MODE, FILE_MODE};
use crate::store::access::StoreDir;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};
use crate::store::open::{mountables, Mountable};

/// What a child looks like before it has an inode.
struct NewChild {
    name: String,
    node: Node,
    mode: u32,
    size: u64,
    mtime: Timespec,
}

impl StoreFs {
    /// The listing of virtual directory `ino`, taken once.
    pub(super) fn children(&self, ino: u64, node: &Node) -> Result<Arc<Vec<(String, u64)>>, Errno> {
        if let Some(found) = self.tables.read().unwrap().children.get(&ino) {
            return Ok(found.clone());
        }
        let new = self.list(node)?;
        let mut tables = self.tables.write().unwrap();
        if let Some(found) = tables.children.get(&ino) {
            return Ok(found.clone());
        }
        let mut list = Vec::with_capacity(new.len());
        for child in new {
            let child_ino = tables.intern(NodeEntry {
                node: child.node,
                parent: ino,
                mode: child.mode,
                size: child.size,
                mtime: child.mtime,
            });
            list.push((child.name, child_ino));
        }
        let list = Arc::new(list);
        tables.children.insert(ino, list.clone());
        Ok(list)
    }

    fn list(&self, node: &Node) -> Result<Vec<NewChild>, Errno> {
        let dir = |name: String, node: Node, mtime: Timespec| NewChild {
            name,
            node,
            mode: DIR_MODE,
            size: 0,
            mtime,
        };
        let mut out = Vec::new();
        match node {
            Node::Namespace(ns) => {
                let groups = self.groups(ns)?;
                for ty in BackupType::ALL {
                    if groups.iter().any(|g| g.backup_type == ty) {
                        let mtime = self.dir_mtime(StoreDir::Type(ns, ty));
                        out.push(dir(ty.as_str().into(), Node::Type(ns.clone(), ty), mtime));
                    }
                }
                if !self.child_namespaces(ns)?.is_empty() {
                    let mtime = self.dir_mtime(StoreDir::NsList(ns));
                    out.push(dir("ns".into(), Node::NsList(ns.clone()), mtime));
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Node::NsList(ns) => {
                for child in self.child_namespaces(ns)? {
                    let name = child.components().last().cloned().unwrap_or_default();
                    let mtime = self.dir_mtime(StoreDir::Namespace(&child));
                    out.push(dir(name, Node::Namespace(child), mtime));
                }
            }
            Node::Type(ns, ty) => {
                let groups = self.groups(ns)?;
                for group in groups.into_iter().filter(|g| g.backup_type == *ty) {
                    let mtime = self.dir_mtime(StoreDir::Group(ns, &group));
                    out.push(dir(
                        group.backup_id.clone(),
                        Node::Group(ns.clone(), group),
                        mtime,
                    ));
                }
            }
            Node::Group(ns, group) => {
                for snapshot in self.readable_snapshots(ns, group)? {
                    let mtime = Timespec::new(snapshot.time, 0);
                    out.push(dir(
                        snapshot.time_string(),
                        Node::Snapshot(ns.clone(), snapshot),
                        mtime,
                    ));
                }
            }
            Node::Snapshot(ns, snapshot) => return self.list_snapshot(ns, snapshot),
            Node::Archive(_) | Node::Image(_) => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// A snapshot's archives, from its manifest alone; slots are assigned here.
    fn list_snapshot(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Vec<NewChild>, Errno> {
        let snapshot = self.archives.snapshot(ns, dir).map_err(|err| {
            self.eio(format!(
                "cannot read the manifest of {}{dir}: {err:#}",
                ns_prefix(ns)
            ))
        })?;
        let manifest = snapshot.manifest();
        let mtime = Timespec::new(dir.time, 0);
        let mut tables = self.tables.write().unwrap();
        let mut out: Vec<NewChild> = Vec::new();
        for what in mountables(manifest) {
            let name = what.name().to_string();
            if out.iter().any(|c| c.name == name) {
                continue; // e.g. both root.pxar and root.mpxar+root.ppxar: keep the first
            }
            let (node, mode, size) = match &what {
                Mountable::Image { file, .. } => {
                    let size = manifest
                        .files
                        .iter()
                        .find(|f| &f.filename == file)
                        .map_or(0, |f| f.size);
                    (Node::Image as fn(usize) -> Node, FILE_MODE, size)
                }
                _ => (Node::Archive as fn(usize) -> Node, DIR_MODE, 0),
            };
            let Some(slot) = tables.slot_for(ns, dir, &what) else {
                drop(tables);
                return Err(self.eio("too many archives listed in one mount"));
            };
            out.push(NewChild {
                name,
                node: node(slot),
                mode,
                size,
                mtime,
            });
        }
        Ok(out)
    }

    /// The mtime of a directory of the datastore; the mount time where it has none.
    fn dir_mtime(&self, dir: StoreDir<'_>) -> Timespec {
        self.access.dir_mtime(dir).map_or(self.mount_time, timespec)
    }

    /// The groups of a namespace, listed once: both the namespace and its type directories
    /// need them, and listings are kept for the mount's life anyway.
    fn groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>, Errno> {
        if let Some(found) = self.groups.lock().unwrap().get(ns) {
            return Ok(found.clone());
        }
        let groups = self.list_groups(ns)?;
        self.groups
            .lock()
            .unwrap()
            .insert(ns.clone(), groups.clone());
        Ok(groups)
    }

    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>, Errno> {
        self.access
            .list_groups(ns)
            .map_err(|err| self.eio(format!("cannot list namespace '{ns}': {err:#}")))
    }

    /// The snapshots of a group that can be read; unfinished and damaged ones are left out
    /// (a damaged manifest must not take the rest of the group with it).
    fn readable_snapshots(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Vec<BackupDir>, Errno> {
        let failed =
            |err: anyhow::Error| self.eio(format!("cannot list {}{group}: {err:#}", ns_prefix(ns)));
        Ok(self
            .access
            .list_snapshots(ns, Some(group))
            .map_err(failed)?
            .into_iter()
            .filter(|s| s.entry.is_readable())
            .map(|s| s.entry.dir)
            .collect())
    }

    fn child_namespaces(&self, ns: &BackupNamespace) -> Result<Vec<BackupNamespace>, Errno> {
        self.access
            .child_namespaces(ns)
            .map_err(|err| self.eio(format!("cannot list namespace '{ns}': {err:#}")))
    }
}
