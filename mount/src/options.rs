//! How a filesystem gets mounted: names, access, extra `-o` options, threads, cache tuning.

use std::io;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::adapter::KernelTuning;

/// Options of one mount. The mount is always read-only with `default_permissions`
/// (the kernel checks permissions against the reported mode, uid and gid).
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Source shown in /proc/mounts.
    pub fsname: Option<String>,
    /// Subtype; shown as the source when no `fsname` is given.
    pub subtype: Option<String>,
    /// Let users other than the mounting one in.
    pub allow_other: bool,
    /// Further `-o` options, each possibly comma-separated (`"noexec,max_read=65536"`).
    /// Known names map to mount flags; unknown ones go to the kernel, which rejects what it
    /// does not understand. `rw` is refused.
    pub extra: Vec<String>,
    /// Threads serving requests (at least 1); more let slow reads overlap.
    pub n_threads: usize,
    /// How long the kernel caches names, absences and attributes (the data never changes).
    pub ttl: Duration,
    /// How long the kernel caches attributes marked [`Attr::provisional`](crate::Attr):
    /// the longest a value that has since become final may still be shown stale.
    pub provisional_ttl: Duration,
    /// Largest read request in bytes.
    pub max_read: u32,
    /// Readahead in bytes; the kernel may cap it (see `raise_readahead`).
    pub max_readahead: u32,
    /// Background (readahead) requests in flight.
    pub max_background: u16,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: None,
            subtype: None,
            allow_other: false,
            extra: Vec::new(),
            n_threads: 8,
            ttl: Duration::from_secs(24 * 3600),
            // Short enough that a stale count is gone about as soon as it is final, long
            // enough that a `stat` right after the `readdirplus` that brought the entry
            // (`find -ls`, `ls -l`) is still answered by the kernel: zero would cost one
            // more request per entry for as long as values are provisional.
            provisional_ttl: Duration::from_secs(1),
            max_read: 1 << 20,
            max_readahead: 1 << 20,
            max_background: 64,
        }
    }
}

impl MountOptions {
    pub(crate) fn tuning(&self) -> KernelTuning {
        KernelTuning {
            ttl: self.ttl,
            provisional_ttl: self.provisional_ttl,
            max_read: self.max_read,
            max_readahead: self.max_readahead,
            max_background: self.max_background,
        }
    }

    /// The fuser configuration: options, access rule and a multi-threaded session with
    /// one cloned /dev/fuse descriptor per thread.
    pub(crate) fn fuser_config(&self) -> io::Result<Config> {
        let mut fsname = self.fsname.clone();
        let mut subtype = self.subtype.clone();
        let mut acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        let mut options = vec![MountOption::RO, MountOption::DefaultPermissions];
        for opt in self.extra.iter().flat_map(|s| s.split(',')) {
            match opt.trim() {
                "" | "ro" | "default_permissions" => {}
                "rw" => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "this filesystem can only be mounted read-only",
                    ))
                }
                "allow_other" => acl = SessionACL::All,
                "allow_root" if acl != SessionACL::All => acl = SessionACL::RootAndOwner,
                "allow_root" => {}
                other => {
                    if let Some(name) = other.strip_prefix("fsname=") {
                        fsname = Some(name.to_string());
                    } else if let Some(name) = other.strip_prefix("subtype=") {
                        subtype = Some(name.to_string());
                    } else {
                        options.push(flag_option(other)?);
                    }
                }
            }
        }
        options.extend(fsname.map(MountOption::FSName));
        options.extend(subtype.map(MountOption::Subtype));

        let mut config = Config::default();
        config.mount_options = options;
        config.acl = acl;
        config.n_threads = Some(self.n_threads.max(1));
        config.clone_fd = true;
        Ok(config)
    }
}

/// Mount options passed on to the kernel, besides `ro`, `default_permissions`,
/// `allow_other`, `allow_root`, `fsname=` and `subtype=`.
pub const KNOWN_FLAGS: &[&str] = &[
    "auto_unmount",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "sync",
    "async",
    "dirsync",
];

/// A known flag, or an error listing them: the kernel's answer to an unknown one is a bare
/// EINVAL naming none of them.
fn flag_option(opt: &str) -> io::Result<MountOption> {
    Ok(match opt {
        "auto_unmount" => MountOption::AutoUnmount,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        "dirsync" => MountOption::DirSync,
        other if other.starts_with("max_read=") => MountOption::CUSTOM(other.to_string()),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unknown mount option '{other}'; known: ro, allow_other, allow_root, \
                     default_permissions, fsname=NAME, subtype=NAME, max_read=BYTES, {}",
                    KNOWN_FLAGS.join(", ")
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str]) -> io::Result<Config> {
        MountOptions {
            fsname: Some("snap".into()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..MountOptions::default()
        }
        .fuser_config()
    }

    #[test]
    fn always_read_only_with_kernel_permission_checks() {
        let c = config(&[]).unwrap();
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("snap".into())));
        assert_eq!(c.acl, SessionACL::Owner);
        assert_eq!(c.n_threads, Some(8));
        assert!(c.clone_fd);
    }

    #[test]
    fn extra_options_are_split_and_mapped() {
        let c = config(&["noexec,max_read=65536", "allow_other", "fsname=other"]).unwrap();
        assert!(c.mount_options.contains(&MountOption::NoExec));
        assert!(c
            .mount_options
            .contains(&MountOption::CUSTOM("max_read=65536".into())));
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("other".into())));
        assert!(!c
            .mount_options
            .contains(&MountOption::FSName("snap".into())));
        assert_eq!(c.acl, SessionACL::All);
    }

    #[test]
    fn unknown_options_are_refused_with_the_known_ones() {
        let err = config(&["noexec,bogus"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains("unknown mount option 'bogus'"), "{text}");
        assert!(
            text.contains("allow_other") && text.contains("noexec"),
            "{text}"
        );
    }

    #[test]
    fn read_write_is_refused() {
        let err = config(&["noatime,rw"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn zero_threads_means_one() {
        let opts = MountOptions {
            n_threads: 0,
            ..MountOptions::default()
        };
        assert_eq!(opts.fuser_config().unwrap().n_threads, Some(1));
    }
}
