//! The `mount.fuse3` helper form: `pbsfs SOURCE MOUNTPOINT -o OPTIONS`, so that
//! `mount -t fuse.pbsfs SOURCE /mnt` and fstab lines work.
//!
//! SOURCE is `REPOSITORY#SNAPSHOT`, or `REPOSITORY#` for the whole datastore (`#` cannot occur in repository strings or snapshot
//! names), e.g. `/srv/backups#host/myhost/latest`. pbsfs's own options ride in `-o`:
//! `ns=NS`, `archive=NAME`, `keyfile=PATH`, `cache_size=SIZE`, `credentials=FILE` (a file
//! of `NAME=VALUE` lines such as PBS_PASSWORD, PBS_FINGERPRINT, PBS_ENCRYPTION_PASSWORD:
//! secrets never go on the fstab line). The rest goes to the kernel.

use std::ffi::OsString;

use anyhow::{bail, Context, Result};

/// Options mount(8) passes that mean nothing to a read-only FUSE mount.
const IGNORED: &[&str] = &[
    "rw", "ro", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser",
];

/// Turns a helper-style command line into the equivalent `pbsfs mount ...` one, or returns
/// None when `args` is an ordinary command line.
pub fn translate(args: &[OsString]) -> Result<Option<Vec<OsString>>> {
    let Some(source) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(None);
    };
    let Some((repository, snapshot)) = source.split_once('#') else {
        return Ok(None);
    };
    let Some(mountpoint) = args.get(2) else {
        bail!("usage: pbsfs REPOSITORY#SNAPSHOT MOUNTPOINT [-o OPTIONS]");
    };
    let mut options = Vec::new();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("-o") => {
                let value = rest.next().context("-o needs a value")?;
                options.extend(
                    value
                        .to_str()
                        .context("options must be UTF-8")?
                        .split(',')
                        .map(str::to_string),
                );
            }
            Some(text) if text.starts_with("-o") => {
                options.extend(text[2..].split(',').map(str::to_string));
            }
            // mount.fuse3 may pass -n (no mtab), -s (sloppy), -v: nothing to do for them.
            Some("-n" | "-s" | "-v" | "-f") => {}
            _ => bail!("unexpected argument {arg:?} in helper mode"),
        }
    }

    let mut out: Vec<OsString> = vec![args[0].clone(), "--repository".into(), repository.into()];
    // `REPOSITORY#` alone mounts the whole datastore.
    let mut mount_args: Vec<OsString> = vec!["mount".into()];
    if !snapshot.is_empty() {
        mount_args.push(snapshot.into());
    }
    mount_args.push(mountpoint.clone());
    for option in options {
        let (name, value) = option
            .split_once('=')
            .map_or((option.as_str(), None), |(n, v)| (n, Some(v)));
        match (name, value) {
            ("", _) => {}
            (name, _) if IGNORED.contains(&name) || name.starts_with("x-") => {}
            ("ns", Some(v)) => out.extend(["--ns".into(), v.into()]),
            ("keyfile", Some(v)) => out.extend(["--keyfile".into(), v.into()]),
            ("archive", Some(v)) => mount_args.extend(["--archive".into(), v.into()]),
            ("cache_size", Some(v)) => mount_args.extend(["--cache-size".into(), v.into()]),
            ("log_file", Some(v)) => mount_args.extend(["--log-file".into(), v.into()]),
            ("refresh", Some(v)) => mount_args.extend(["--refresh".into(), v.into()]),
            ("credentials", Some(v)) => load_credentials(v)?,
            ("foreground", None) => mount_args.push("--foreground".into()),
            _ => mount_args.extend(["-o".into(), option.clone().into()]),
        }
    }
    out.extend(mount_args);
    Ok(Some(out))
}

/// Sets the environment variables named in a credentials file (`NAME=VALUE` lines, `#`
/// comments). Only PBS_* names are accepted.
fn load_credentials(path: &str) -> Result<()> {
    let text = read_private_file(path)?;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("{path}:{}: expected NAME=VALUE", number + 1);
        };
        let name = name.trim();
        if !name.starts_with("PBS_") {
            bail!(
                "{path}:{}: only PBS_* variables may be set here, not {name}",
                number + 1
            );
        }
        std::env::set_var(name, value.trim());
    }
    Ok(())
}

/// Reads a file of secrets, refusing it (as ssh refuses a private key) unless it belongs to
/// the user running pbsfs and no one else may read or change it: anyone else could read the
/// secrets, or swap in a server and fingerprint of their own.
fn read_private_file(path: &str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read credentials file {path}"))?;
    // Checked on the open file, so what is checked is what is read.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read credentials file {path}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "credentials file {path} belongs to uid {}, not to the user mounting (uid {me}); \
             it holds secrets, so it must be that user's own (chown {me} {path})",
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "credentials file {path} has mode {mode:04o}: group or others may access it; \
             it holds secrets, so only its owner may (chmod 600 {path})"
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read credentials file {path}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn credentials_file(mode: u32) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "PBS_FINGERPRINT_TEST_ONLY=aa:bb\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path.to_str().unwrap().to_string())
    }

    #[test]
    fn a_private_credentials_file_is_read() {
        let (_dir, path) = credentials_file(0o600);
        assert_eq!(
            read_private_file(&path).unwrap(),
            "PBS_FINGERPRINT_TEST_ONLY=aa:bb\n"
        );
        let (_dir, path) = credentials_file(0o400);
        assert!(read_private_file(&path).is_ok());
    }

    #[test]
    fn a_credentials_file_others_may_access_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            let (_dir, path) = credentials_file(mode);
            let err = format!("{:#}", read_private_file(&path).unwrap_err());
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
    }

    #[test]
    fn a_credentials_file_of_another_user_is_refused() {
        let (_dir, path) = credentials_file(0o600);
        // SAFETY: geteuid has no preconditions.
        let other = if unsafe { libc::geteuid() } == 65534 {
            0
        } else {
            65534
        };
        let chowned = std::os::unix::fs::chown(&path, Some(other), None);
        if chowned.is_err() {
            // Not root: a file of another user cannot be made here; the check itself is the
            // same comparison as above, so make the test's point with a file we do not own.
            let err = format!("{:#}", read_private_file("/etc/passwd").unwrap_err());
            assert!(err.contains("belongs to uid 0"), "{err}");
            return;
        }
        let err = format!("{:#}", read_private_file(&path).unwrap_err());
        assert!(err.contains(&format!("belongs to uid {other}")), "{err}");
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_form_becomes_a_mount_command() {
        let out = translate(&args(&[
            "pbsfs",
            "/srv/ds#host/a/latest",
            "/mnt",
            "-o",
            "rw,ns=team,allow_other,keyfile=/k.json,cache_size=1G,x-systemd.automount",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "pbsfs",
                "--repository",
                "/srv/ds",
                "--ns",
                "team",
                "--keyfile",
                "/k.json",
                "mount",
                "host/a/latest",
                "/mnt",
                "-o",
                "allow_other",
                "--cache-size",
                "1G"
            ])
        );
    }

    #[test]
    fn a_whole_datastore_mount_takes_its_refresh_and_log_file() {
        let out = translate(&args(&[
            "pbsfs",
            "/srv/ds#",
            "/mnt",
            "-o",
            "ro,refresh=5,log_file=/var/log/pbsfs.log",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "pbsfs",
                "--repository",
                "/srv/ds",
                "mount",
                "/mnt",
                "--refresh",
                "5",
                "--log-file",
                "/var/log/pbsfs.log"
            ])
        );
    }

    #[test]
    fn ordinary_command_lines_are_left_alone() {
        assert!(translate(&args(&["pbsfs", "snapshots"])).unwrap().is_none());
        assert!(
            translate(&args(&["pbsfs", "mount", "host/a/latest", "/mnt"]))
                .unwrap()
                .is_none()
        );
    }
}
