//! The listings of a whole-store mount's own directories (namespaces, types, groups,
//! snapshots). Each is kept and served as taken; one that can change (all but a
//! snapshot's) is taken again on the first access after the refresh interval, except by a
//! readdir resuming at an offset, so offsets stay valid within one listing. A group also
//! lists a `latest` symlink to its newest snapshot.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pbsfs_mount::{Errno, Timespec};

use super::inodes::{Listing, Node, NodeEntry};
use super::{ns_prefix, timespec, StoreFs, DIR_MODE, FILE_MODE, LATEST, LINK_MODE};
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
    /// The listing of virtual directory `ino`: taken on first use, and taken again when
    /// it is older than the refresh interval and its contents can change, unless
    /// `resuming` (a readdir continuing at an offset of the listing it started on).
    pub(super) fn children(
        &self,
        ino: u64,
        node: &Node,
        resuming: bool,
    ) -> Result<Arc<Vec<(String, u64)>>, Errno> {
        let old = self.tables.read().unwrap().children.get(&ino).cloned();
        if let Some(old) = &old {
            if resuming || !node.may_change() || old.taken.elapsed() < self.refresh {
                return Ok(old.entries.clone());
            }
        }
        let started = Instant::now();
        let new = match self.list(node) {
            Ok(new) => new,
            // A mount keeps serving what it has when the datastore cannot be listed now
            // (the error is logged); the next access tries again.
            Err(_) if old.is_some() => return Ok(old.unwrap().entries),
            Err(err) => return Err(err),
        };
        let mut tables = self.tables.write().unwrap();
        if let Some(found) = tables.children.get(&ino) {
            // Taken by another thread meanwhile.
            if found.taken >= started {
                return Ok(found.entries.clone());
            }
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
        if old.is_some_and(|old| *old.entries != list) {
            // The kernel drops its cached listing only when the directory's mtime changes,
            // and a server reports no mtimes.
            tables.touch(ino, timespec(SystemTime::now()));
        }
        let list = Arc::new(list);
        let listing = Listing {
            entries: list.clone(),
            taken: started,
        };
        tables.children.insert(ino, listing);
        Ok(list)
    }

    /// Takes the listing of `ino` again if it is due, so that its mtime tells whether it
    /// changed (see [`ReadOnlyFs::names_may_change`](pbsfs_mount::ReadOnlyFs)).
    pub(super) fn refresh_if_due(&self, ino: u64, node: &Node) {
        let due = node.may_change()
            && self
                .tables
                .read()
                .unwrap()
                .children
                .get(&ino)
                .is_some_and(|old| old.taken.elapsed() >= self.refresh);
        if due {
            let _ = self.children(ino, node, false);
        }
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
                let snapshots = self.readable_snapshots(ns, group)?;
                let newest = snapshots.iter().max_by_key(|s| s.time).cloned();
                for snapshot in snapshots {
                    let mtime = Timespec::new(snapshot.time, 0);
                    out.push(dir(
                        snapshot.time_string(),
                        Node::Snapshot(ns.clone(), snapshot),
                        mtime,
                    ));
                }
                if let Some(newest) = newest {
                    out.push(NewChild {
                        name: LATEST.into(),
                        mode: LINK_MODE,
                        size: newest.time_string().len() as u64,
                        mtime: Timespec::new(newest.time, 0),
                        node: Node::Latest(ns.clone(), newest),
                    });
                }
            }
            Node::Snapshot(ns, snapshot) => return self.list_snapshot(ns, snapshot),
            Node::Archive(_) | Node::Image(_) | Node::Latest(..) => return Err(Errno::ENOTDIR),
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

    /// The groups of a namespace: both the namespace and its type directories need them,
    /// so one listing serves both until it is due for a refresh.
    fn groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>, Errno> {
        if let Some((groups, taken)) = self.groups.lock().unwrap().get(ns) {
            if taken.elapsed() < self.refresh {
                return Ok(groups.clone());
            }
        }
        let taken = Instant::now();
        let groups = self.list_groups(ns)?;
        self.groups
            .lock()
            .unwrap()
            .insert(ns.clone(), (groups.clone(), taken));
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
