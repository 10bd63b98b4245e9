//! Changing what a datastore holds — forget, protect, notes, prune, namespaces, garbage
//! collection — on the same seam as reading it: `store::manage` and `store::gc` do it on a
//! local directory, the admin API on a server (`remote::access`), by PBS's rules either way.
//! A separate trait so that read-only wrappers (mounts, tests) implement only the reading.

use anyhow::Result;

use super::access::{DatastoreAccess, LocalAccess};
use super::gc::{self, GcOptions, GcProgress, GcReport};
use super::manage::{self, PruneItem};
use super::names::{BackupDir, BackupGroup, BackupNamespace};
use super::prune::KeepOptions;

pub trait DatastoreAdmin: DatastoreAccess {
    /// Removes a snapshot; a protected one is refused. Its chunks stay until gc.
    fn forget(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<()>;
    fn set_protected(&self, ns: &BackupNamespace, dir: &BackupDir, protected: bool) -> Result<()>;
    /// A snapshot's notes ("" when it has none).
    fn notes(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<String>;
    fn set_notes(&self, ns: &BackupNamespace, dir: &BackupDir, notes: &str) -> Result<()>;
    /// What `options` keep of a group, oldest first; unless `dry_run` the rest is forgotten
    /// (snapshots that could not be removed are the returned errors).
    fn prune_group(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
        options: &KeepOptions,
        dry_run: bool,
    ) -> Result<(Vec<PruneItem>, Vec<anyhow::Error>)>;
    fn create_namespace(&self, ns: &BackupNamespace) -> Result<()>;
    /// Only an empty namespace, unless `recursive`.
    fn delete_namespace(&self, ns: &BackupNamespace, recursive: bool) -> Result<()>;
    /// Garbage collection; `progress` hears where it is.
    fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &mut dyn FnMut(GcProgress),
    ) -> Result<GcReport>;
}

impl DatastoreAdmin for LocalAccess {
    fn forget(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<()> {
        manage::forget(&self.0, ns, dir)
    }

    fn set_protected(&self, ns: &BackupNamespace, dir: &BackupDir, protected: bool) -> Result<()> {
        manage::set_protected(&self.0, ns, dir, protected)
    }

    fn notes(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<String> {
        manage::notes(&self.0, ns, dir)
    }

    fn set_notes(&self, ns: &BackupNamespace, dir: &BackupDir, notes: &str) -> Result<()> {
        manage::set_notes(&self.0, ns, dir, notes)
    }

    fn prune_group(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
        options: &KeepOptions,
        dry_run: bool,
    ) -> Result<(Vec<PruneItem>, Vec<anyhow::Error>)> {
        manage::prune_group(&self.0, ns, group, options, dry_run)
    }

    fn create_namespace(&self, ns: &BackupNamespace) -> Result<()> {
        manage::create_namespace(&self.0, ns)
    }

    fn delete_namespace(&self, ns: &BackupNamespace, recursive: bool) -> Result<()> {
        manage::delete_namespace(&self.0, ns, recursive)
    }

    fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &mut dyn FnMut(GcProgress),
    ) -> Result<GcReport> {
        gc::collect(&self.0, options, progress)
    }
}
