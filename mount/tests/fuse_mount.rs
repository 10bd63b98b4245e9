//! Mounts an in-memory tree through the kernel's FUSE driver and checks what programs see.
//! Needs /dev/fuse and root (or fusermount3); without them these tests fail, never skip.

mod memfs;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use memfs::{pattern, MemFs, GID, MTIME, UID};
use pbsfs_mount::{
    mount_background, mount_foreground, unmount, BackgroundMount, MountOptions, Timespec, ROOT_INO,
};
use tempfile::TempDir;

/// One mount on its own temporary directory; unmounted on drop, also when a test fails.
struct TestMount {
    mount: Option<BackgroundMount>,
    fs: Arc<MemFs>,
    dir: TempDir,
}

impl TestMount {
    fn start(fs: MemFs) -> Self {
        require_fuse();
        let dir = tempfile::tempdir().expect("temporary mountpoint");
        let fs = Arc::new(fs);
        let opts = MountOptions {
            fsname: Some("memfs-test".into()),
            ..MountOptions::default()
        };
        let mount = mount_background(fs.clone(), dir.path(), &opts)
            .unwrap_or_else(|err| panic!("FUSE mount on {:?} failed: {err}", dir.path()));
        TestMount {
            mount: Some(mount),
            fs,
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        // Unmount before the TempDir field is removed.
        drop(self.mount.take());
    }
}

fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE is unavailable: /dev/fuse is missing (load the fuse module, give the container \
         the device, or install fuse3)"
    );
}

fn canonical(path: &Path) -> String {
    path.canonicalize().unwrap().to_str().unwrap().to_string()
}

/// Whether a mount sits at `path`, according to /proc/self/mountinfo.
fn is_mounted(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("not an OS error: {err}"))
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap()
}

#[test]
fn attributes_of_every_file_type() {
    let mut fs = MemFs::new();
    let dir = fs.add_dir(ROOT_INO, "dir");
    let file = fs.add_file(dir, "file", b"hello world".to_vec());
    fs.add_hardlink(ROOT_INO, "file-link", file);
    fs.add_hardlink(ROOT_INO, "file-link2", file);
    fs.add_symlink(ROOT_INO, "sym", "dir/file");
    fs.add_special(ROOT_INO, "null", libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    // A minor above 255 is split around the major in the encoded number.
    let sda = libc::makedev(8, 300);
    fs.add_special(ROOT_INO, "disk", libc::S_IFBLK | 0o660, sda);
    fs.add_special(ROOT_INO, "fifo", libc::S_IFIFO | 0o600, 0);
    let old = fs.add_file(ROOT_INO, "old", Vec::new());
    fs.attr_mut(old).mtime = Timespec::new(-2, 500_000_000);
    fs.attr_mut(old).mode = libc::S_IFREG | 0o4751;
    let m = TestMount::start(fs);

    let root = fs::metadata(m.root()).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.ino(), ROOT_INO);
    assert_eq!(root.mode() & 0o7777, 0o755);

    let f = fs::symlink_metadata(m.path("dir/file")).unwrap();
    assert!(f.is_file());
    assert_eq!(f.ino(), file);
    assert_eq!(f.len(), 11);
    assert_eq!(f.blocks(), 1);
    assert_eq!(f.blksize(), 4096);
    assert_eq!((f.uid(), f.gid()), (UID, GID));
    assert_eq!(f.mode(), libc::S_IFREG | 0o644);
    assert_eq!(f.nlink(), 3);
    assert_eq!(
        (f.mtime(), f.mtime_nsec()),
        (MTIME.secs, i64::from(MTIME.nanos))
    );
    assert_eq!((f.atime(), f.ctime()), (MTIME.secs, MTIME.secs));

    // Hard links: the same inode under three names.
    for name in ["file-link", "file-link2"] {
        let l = fs::symlink_metadata(m.path(name)).unwrap();
        assert_eq!((l.ino(), l.nlink(), l.len()), (file, 3, 11));
    }
    assert_eq!(fs::read(m.path("file-link")).unwrap(), b"hello world");

    let s = fs::symlink_metadata(m.path("sym")).unwrap();
    assert!(s.file_type().is_symlink());
    assert_eq!(s.len(), 8);

    let null = fs::symlink_metadata(m.path("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let disk = fs::symlink_metadata(m.path("disk")).unwrap();
    assert!(disk.file_type().is_block_device());
    assert_eq!(disk.rdev(), sda);
    assert_eq!(disk.mode() & 0o7777, 0o660);
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    // Before 1970, with nanoseconds, and setuid bits survive.
    let o = fs::symlink_metadata(m.path("old")).unwrap();
    assert_eq!((o.mtime(), o.mtime_nsec()), (-2, 500_000_000));
    assert_eq!(o.mode() & 0o7777, 0o4751);

    // Same through libc lstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::lstat(cpath(&m.path("disk")).as_ptr(), &mut st) };
    assert_eq!(rc, 0);
    assert_eq!(st.st_rdev, sda);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFBLK);
}

#[test]
fn symlinks_read_back_and_resolve() {
    let mut fs = MemFs::new();
    let dir = fs.add_dir(ROOT_INO, "dir");
    fs.add_file(dir, "target", b"payload".to_vec());
    fs.add_symlink(ROOT_INO, "relative", "dir/target");
    fs.add_symlink(dir, "up", "../dir/target");
    fs.add_symlink(ROOT_INO, "absolute", "/nonexistent/path with space");
    fs.add_symlink(ROOT_INO, "dangling", "missing");
    let m = TestMount::start(fs);

    assert_eq!(
        fs::read_link(m.path("relative")).unwrap(),
        Path::new("dir/target")
    );
    assert_eq!(
        fs::read_link(m.path("absolute")).unwrap(),
        Path::new("/nonexistent/path with space")
    );
    assert_eq!(fs::read(m.path("relative")).unwrap(), b"payload");
    assert_eq!(fs::read(m.path("dir/up")).unwrap(), b"payload");
    let err = fs::metadata(m.path("dangling")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOENT);
    // readlink on something that is not a symlink.
    let err = fs::read_link(m.path("dir/target")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EINVAL);
}

#[test]
fn large_directory_lists_completely_without_lookups() {
    const COUNT: usize = 5000;
    let mut fs = MemFs::new();
    let big = fs.add_dir(ROOT_INO, "big");
    let sub = fs.add_dir(big, "zz-subdir");
    let mut expected = BTreeSet::new();
    for i in 0..COUNT - 1 {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        fs.add_file(big, &name, vec![b'a'; i % 100]);
        expected.insert(OsString::from(name));
    }
    expected.insert("zz-subdir".into());
    let m = TestMount::start(fs);

    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(m.path("big")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let kind = entry.file_type().unwrap();
        assert_eq!(kind.is_dir(), name == "zz-subdir", "{name:?}");
        assert!(seen.insert(name.clone()), "{name:?} listed twice");
    }
    assert_eq!(seen.len(), COUNT);
    assert_eq!(seen, expected);

    // readdirplus handed the kernel every entry's attributes: stat needs no lookups.
    let lookups_before = m.fs.stats.lookups.load(Ordering::SeqCst);
    for (i, name) in seen.iter().filter(|n| *n != "zz-subdir").enumerate() {
        let md = fs::symlink_metadata(m.path("big").join(name)).unwrap();
        assert!(md.is_file());
        if i < 5 {
            assert_eq!(md.len(), (i % 100) as u64);
        }
    }
    let extra_lookups = m.fs.stats.lookups.load(Ordering::SeqCst) - lookups_before;
    assert_eq!(
        extra_lookups, 0,
        "stat after listing went to the filesystem"
    );

    // A second listing (served from the kernel's directory cache) agrees.
    let again: BTreeSet<OsString> = fs::read_dir(m.path("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(again, expected);

    // Raw readdir also shows "." and ".." with the right inode numbers.
    let raw = raw_listing(&m.path("big/zz-subdir"));
    assert_eq!(raw, vec![(".".into(), sub), ("..".into(), big)]);
}

/// A listing is read from the filesystem once and then served by the kernel, across
/// opens of the directory (by this process and another one), also once the kernel opens
/// directories without asking the filesystem.
#[test]
fn listings_stay_cached_across_opens() {
    let mut fs = MemFs::new();
    let dir = fs.add_dir(ROOT_INO, "dir");
    for i in 0..300 {
        fs.add_file(dir, &format!("file-{i:03}"), Vec::new());
    }
    let m = TestMount::start(fs);
    let names = || -> BTreeSet<OsString> {
        fs::read_dir(m.path("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert_eq!(names().len(), 300);
    let readdirs = m.fs.stats.readdirs.load(Ordering::SeqCst);
    assert!(readdirs > 0);
    for _ in 0..3 {
        assert_eq!(names().len(), 300);
    }
    let listed = std::process::Command::new("ls")
        .arg(m.path("dir"))
        .output()
        .unwrap();
    assert_eq!(
        listed
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        300
    );
    assert_eq!(m.fs.stats.readdirs.load(Ordering::SeqCst), readdirs);
}

/// Attributes marked provisional are asked for again after the short TTL, whether a lookup
/// or a readdirplus brought them; final ones (and those that have become final) stay in the
/// kernel's cache without further requests.
#[test]
fn provisional_attributes_are_asked_again_final_ones_stay_cached() {
    let mut fs = MemFs::new();
    let looked_up = fs.add_file(ROOT_INO, "looked-up", Vec::new());
    let dir = fs.add_dir(ROOT_INO, "dir");
    let listed = fs.add_file(dir, "listed", Vec::new());
    let fixed = fs.add_file(ROOT_INO, "final", Vec::new());
    fs.attr_mut(looked_up).provisional = true;
    fs.attr_mut(listed).provisional = true;
    let m = TestMount::start(fs);
    let nlink = |rel: &str| fs::symlink_metadata(m.path(rel)).unwrap().nlink();

    // The kernel learns all three with one link: by lookup, by readdirplus, by lookup.
    assert_eq!(nlink("looked-up"), 1);
    let names: Vec<OsString> = fs::read_dir(m.path("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["listed"]);
    assert_eq!(nlink("final"), 1);
    // Now every count is final, and different.
    for ino in [looked_up, listed, fixed] {
        m.fs.update_attr(ino, |attr| {
            attr.nlink = 2;
            attr.provisional = false;
        });
    }

    // The provisional ones show the new count once their short TTL has passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nlink("looked-up") != 2 || nlink("dir/listed") != 2 {
        assert!(
            Instant::now() < deadline,
            "provisional attributes stayed cached"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The final one, cached as long ago, is still the kernel's; and the new counts, being
    // final, are kept too: none of these stats reaches the filesystem.
    let asked =
        || m.fs.stats.getattrs.load(Ordering::SeqCst) + m.fs.stats.lookups.load(Ordering::SeqCst);
    let before = asked();
    assert_eq!(nlink("final"), 1);
    assert_eq!((nlink("looked-up"), nlink("dir/listed")), (2, 2));
    assert_eq!(
        asked(),
        before,
        "stat of a final attribute reached the filesystem"
    );
}

/// Names and d_ino of every entry, via libc opendir/readdir.
fn raw_listing(path: &Path) -> Vec<(OsString, u64)> {
    let mut out = Vec::new();
    unsafe {
        let dir = libc::opendir(cpath(path).as_ptr());
        assert!(
            !dir.is_null(),
            "opendir failed: {}",
            io::Error::last_os_error()
        );
        loop {
            let ent = libc::readdir(dir);
            if ent.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr());
            out.push((OsStr::from_bytes(name.to_bytes()).to_owned(), (*ent).d_ino));
        }
        libc::closedir(dir);
    }
    out
}

#[test]
fn large_file_reads_whole_and_at_random_offsets() {
    const SIZE: usize = 9 * 1024 * 1024 + 12345;
    let content = pattern(SIZE, 42);
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "big.bin", content.clone());
    let m = TestMount::start(fs);

    let file = File::open(m.path("big.bin")).unwrap();
    let mut offsets = pattern(400 * 8, 7)
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect::<Vec<_>>();
    offsets.extend([0, SIZE as u64 - 1, SIZE as u64 - 4096, 1 << 20]);
    for (i, raw) in offsets.iter().enumerate() {
        let offset = (raw % SIZE as u64) as usize;
        let len = [1, 17, 4096, 65536, 300_000, 1 << 20][i % 6];
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, offset as u64).unwrap();
        let want = &content[offset..(offset + len).min(SIZE)];
        assert_eq!(n, want.len().min(len), "short read at {offset}");
        assert!(
            buf[..n] == *want,
            "data mismatch at offset {offset} len {len}"
        );
    }
    let mut past_end = [0u8; 10];
    assert_eq!(file.read_at(&mut past_end, SIZE as u64 + 5).unwrap(), 0);

    let mut whole = Vec::new();
    File::open(m.path("big.bin"))
        .unwrap()
        .read_to_end(&mut whole)
        .unwrap();
    assert!(whole == content, "sequential read differs");

    // Requests never exceed the 1 MiB limit.
    let max = m.fs.stats.max_read_size.load(Ordering::SeqCst);
    assert!(max > 0 && max <= 1 << 20, "largest read request {max}");
}

/// The sysfs file holding the readahead (KiB) of the mount at `point`.
fn readahead_knob(point: &str) -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(point))
        .expect("mount listed in mountinfo");
    let dev = line.split(' ').nth(2).unwrap();
    PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"))
}

#[test]
fn sequential_reads_use_a_large_readahead() {
    const SIZE: usize = 8 << 20;
    let content = pattern(SIZE, 5);
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "seq.bin", content.clone());
    let m = TestMount::start(fs);

    let knob = readahead_knob(&canonical(m.root()));
    if unsafe { libc::access(cpath(&knob).as_ptr(), libc::W_OK) } != 0 {
        // Read-only sysfs (some containers): the kernel keeps its 128 KiB default.
        eprintln!("note: {knob:?} is not writable; readahead stays at the kernel default");
        return;
    }
    assert_eq!(fs::read_to_string(&knob).unwrap().trim(), "1024");

    // Small reads; the kernel's readahead turns them into large requests.
    let mut file = File::open(m.path("seq.bin")).unwrap();
    let mut got = Vec::with_capacity(SIZE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == content, "sequential read differs");
    let max = m.fs.stats.max_read_size.load(Ordering::SeqCst);
    assert!(max > 128 * 1024, "largest request only {max} bytes");
}

#[test]
fn concurrent_reads_are_served_in_parallel() {
    const FILES: usize = 6;
    let mut fs = MemFs::new();
    fs.read_delay = Duration::from_millis(150);
    let contents: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(200_000 + i, i as u64)).collect();
    for (i, c) in contents.iter().enumerate() {
        fs.add_file(ROOT_INO, &format!("f{i}"), c.clone());
    }
    let m = TestMount::start(fs);

    let started = Instant::now();
    thread::scope(|scope| {
        for (i, want) in contents.iter().enumerate() {
            let path = m.path(&format!("f{i}"));
            scope.spawn(move || {
                let got = fs::read(&path).unwrap();
                assert!(got == *want, "content of {path:?} differs");
            });
        }
    });
    let elapsed = started.elapsed();

    let stats = &m.fs.stats;
    let max_parallel = stats.max_reads_in_flight.load(Ordering::SeqCst);
    assert!(
        max_parallel >= 2,
        "reads never overlapped (max {max_parallel})"
    );
    let reads = stats.reads.load(Ordering::SeqCst) as u32;
    assert!(
        elapsed < Duration::from_millis(150) * reads,
        "{elapsed:?} for {reads} reads"
    );

    // Every open is matched by a release (sent asynchronously after close).
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.releases.load(Ordering::SeqCst) < stats.opens.load(Ordering::SeqCst)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats.opens.load(Ordering::SeqCst), FILES);
    assert_eq!(stats.releases.load(Ordering::SeqCst), FILES);
}

fn list_xattrs(path: &Path) -> Result<Vec<OsString>, i32> {
    let c = cpath(path);
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; size as usize];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_errno());
    }
    assert_eq!(n, size, "listxattr size probe and answer disagree");
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsString::from_vec(n.to_vec()))
        .collect())
}

fn get_xattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; size as usize];
    let got =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(last_errno());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

#[test]
fn many_xattrs_list_and_read_back() {
    const COUNT: usize = 60;
    let mut fs = MemFs::new();
    let file = fs.add_file(ROOT_INO, "tagged", b"x".to_vec());
    let dir = fs.add_dir(ROOT_INO, "plain");
    let mut expected = BTreeSet::new();
    for i in 0..COUNT {
        let name = format!("user.attribute-number-{i:03}-{}", "n".repeat(i));
        let value = pattern(i * 37, i as u64);
        fs.set_xattr(file, &name, &value);
        expected.insert((name, value));
    }
    fs.set_xattr(file, "trusted.overlay.opaque", b"y");
    expected.insert(("trusted.overlay.opaque".into(), b"y".to_vec()));
    let big_value = pattern(40_000, 99);
    fs.set_xattr(file, "user.big", &big_value);
    expected.insert(("user.big".into(), big_value));
    fs.set_xattr(dir, "user.empty", b"");
    let m = TestMount::start(fs);
    let tagged = m.path("tagged");

    let names = list_xattrs(&tagged).unwrap();
    assert_eq!(names.len(), COUNT + 2);
    let mut got = BTreeSet::new();
    for name in &names {
        let name = name.to_str().unwrap().to_string();
        let value = get_xattr(&tagged, &name).unwrap();
        got.insert((name, value));
    }
    assert_eq!(got, expected);

    // Too-small buffers get ERANGE, not a truncated answer.
    let c = cpath(&tagged);
    let mut small = [0u8; 16];
    let rc = unsafe { libc::llistxattr(c.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((rc, last_errno()), (-1, libc::ERANGE));
    let name = CString::new("user.big").unwrap();
    let rc = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!((rc, last_errno()), (-1, libc::ERANGE));

    assert_eq!(get_xattr(&tagged, "user.absent"), Err(libc::ENODATA));
    assert_eq!(get_xattr(&m.path("plain"), "user.empty"), Ok(Vec::new()));
    assert_eq!(
        list_xattrs(&m.path("plain")).unwrap(),
        vec![OsString::from("user.empty")]
    );
    assert_eq!(list_xattrs(m.root()).unwrap(), Vec::<OsString>::new());
}

#[test]
fn modifications_fail_with_erofs() {
    let mut fs = MemFs::new();
    let dir = fs.add_dir(ROOT_INO, "dir");
    fs.add_file(dir, "file", b"data".to_vec());
    let m = TestMount::start(fs);
    let file = m.path("dir/file");

    let attempts: Vec<(&str, io::Result<()>)> = vec![
        ("create", File::create(m.path("new")).map(drop)),
        (
            "open for write",
            OpenOptions::new().write(true).open(&file).map(drop),
        ),
        (
            "truncate",
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .map(drop),
        ),
        ("mkdir", fs::create_dir(m.path("newdir"))),
        ("unlink", fs::remove_file(&file)),
        ("rmdir", fs::remove_dir(m.path("dir"))),
        ("rename", fs::rename(&file, m.path("moved"))),
        ("hard link", fs::hard_link(&file, m.path("link"))),
        ("symlink", std::os::unix::fs::symlink("x", m.path("sym"))),
        (
            "chmod",
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)),
        ),
    ];
    for (what, result) in attempts {
        let err = result.expect_err(what);
        assert_eq!(errno_of(&err), libc::EROFS, "{what}: {err}");
    }
    let (c, name) = (cpath(&file), CString::new("user.x").unwrap());
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!((rc, last_errno()), (-1, libc::EROFS));
    assert_eq!(fs::read(&file).unwrap(), b"data");
}

#[test]
fn errors_and_panics_reach_the_caller_as_errno() {
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "file", b"data".to_vec());
    let m = TestMount::start(fs);

    for _ in 0..2 {
        let err = fs::metadata(m.path("missing")).unwrap_err();
        assert_eq!(errno_of(&err), libc::ENOENT);
    }
    // The absence is cached: the second stat did not ask the filesystem again.
    assert_eq!(m.fs.stats.lookups.load(Ordering::SeqCst), 1);

    let err = fs::read_dir(m.path("file")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOTDIR);
    let err = fs::metadata(m.path("file/below")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOTDIR);

    // A panicking filesystem call becomes EIO and the mount keeps working.
    let err = fs::metadata(m.path("panic-on-lookup")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EIO);
    assert_eq!(fs::read(m.path("file")).unwrap(), b"data");
}

#[test]
fn statfs_reports_the_filesystem_values() {
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "a", Vec::new());
    let m = TestMount::start(fs);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(cpath(m.root()).as_ptr(), &mut st) };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    assert_eq!((st.f_blocks, st.f_bfree, st.f_files), (1000, 0, 2));
    assert_eq!((st.f_bsize, st.f_namemax), (4096, 255));
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0, "mount is not read-only");
}

#[test]
fn explicit_unmount_removes_the_mount() {
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "a", b"1".to_vec());
    let mut m = TestMount::start(fs);
    let point = canonical(m.root());
    assert!(is_mounted(&point));
    assert_eq!(fs::read(m.path("a")).unwrap(), b"1");

    let mount = m.mount.take().unwrap();
    assert_eq!(mount.mountpoint(), Path::new(&point));
    mount.unmount().expect("unmount");
    assert!(!is_mounted(&point));
    assert!(!m.path("a").exists());
}

#[test]
fn busy_unmount_reports_the_error_and_detaches() {
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "a", pattern(100_000, 3));
    let mut m = TestMount::start(fs);
    let point = canonical(m.root());

    let open = File::open(m.path("a")).unwrap();
    let err = m.mount.take().unwrap().unmount().unwrap_err();
    assert_eq!(errno_of(&err), libc::EBUSY);
    // Detached from the tree, yet the open file is still served.
    assert!(!is_mounted(&point));
    let mut buf = vec![0u8; 1000];
    assert_eq!(open.read_at(&mut buf, 50_000).unwrap(), 1000);
    assert!(buf == pattern(100_000, 3)[50_000..51_000]);
}

#[test]
fn foreground_mount_returns_after_unmount() {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let point = canonical(dir.path());
    let mut fs = MemFs::new();
    fs.add_file(ROOT_INO, "hello", b"world".to_vec());

    /// Detaches the mount if the test fails before unmounting, so the TempDir can go.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = pbsfs_mount::unmount_lazy(&self.0);
            }
        }
    }
    let _cleanup = Cleanup(point.clone());

    let mountpoint = dir.path().to_path_buf();
    let server = thread::spawn(move || mount_foreground(fs, &mountpoint, &MountOptions::default()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_mounted(&point) {
        assert!(
            !server.is_finished(),
            "mount_foreground ended early: {:?}",
            server.join()
        );
        assert!(Instant::now() < deadline, "mount did not appear");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"world");

    unmount(&point).expect("unmount");
    server.join().unwrap().expect("foreground session result");
    assert!(!is_mounted(&point));
}

#[test]
fn dropping_a_handle_after_an_outside_unmount_returns() {
    let m = TestMount::start(MemFs::new());
    let point = canonical(m.root());
    unmount(&point).expect("unmount from outside the handle");
    assert!(!is_mounted(&point));
    let started = Instant::now();
    drop(m);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!is_mounted(&point));
}
