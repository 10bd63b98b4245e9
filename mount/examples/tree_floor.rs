//! An in-memory tree shaped like `scripts/bench-mount.sh`'s many-files tree, served through
//! this crate's adapter: what listing and `stat`ing that many entries costs through FUSE
//! when the filesystem answers at once, the floor a real filesystem behind the adapter can
//! reach. Serves until unmounted.
//!
//! Usage: tree_floor MOUNTPOINT COUNT
//! (COUNT files, 1000 to a directory `dNNNN`, named `fNNNNNN`, file i holding i % 200 bytes)

#[path = "../tests/memfs/mod.rs"]
mod memfs;

use std::process::ExitCode;

use memfs::MemFs;
use pbsfs_mount::{mount_foreground, MountOptions, ROOT_INO};

const PER_DIR: usize = 1000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mountpoint), Some(Ok(count))) = (args.get(1), args.get(2).map(|c| c.parse())) else {
        eprintln!("usage: tree_floor MOUNTPOINT COUNT");
        return ExitCode::from(2);
    };
    let mut fs = MemFs::new();
    // Owned by the caller, as the generated tree is: `find -ls` then looks up the same
    // user and group names.
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut dir = ROOT_INO;
    for i in 0..count {
        if i % PER_DIR == 0 {
            dir = fs.add_dir(ROOT_INO, &format!("d{:04}", i / PER_DIR));
            set_owner(&mut fs, dir, uid, gid);
        }
        let file = fs.add_file(dir, &format!("f{i:06}"), vec![b'x'; i % 200]);
        set_owner(&mut fs, file, uid, gid);
    }
    set_owner(&mut fs, ROOT_INO, uid, gid);
    match mount_foreground(fs, mountpoint, &MountOptions::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tree_floor: mount on {mountpoint} failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn set_owner(fs: &mut MemFs, ino: u64, uid: u32, gid: u32) {
    let attr = fs.attr_mut(ino);
    attr.uid = uid;
    attr.gid = gid;
}
