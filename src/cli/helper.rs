//! The `mount.fuse3` helper form: `pbsfs SOURCE MOUNTPOINT -o OPTIONS`, so that
//! `mount -t fuse.pbsfs SOURCE /mnt` and fstab lines work.
//!
//! SOURCE is `REPOSITORY#SNAPSHOT` (`#` cannot occur in repository strings or snapshot
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
    let mut mount_args: Vec<OsString> = vec!["mount".into(), snapshot.into(), mountpoint.clone()];
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
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read credentials file {path}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ordinary_command_lines_are_left_alone() {
        assert!(translate(&args(&["pbsfs", "snapshots"])).unwrap().is_none());
        assert!(
            translate(&args(&["pbsfs", "mount", "host/a/latest", "/mnt"]))
                .unwrap()
                .is_none()
        );
    }
}
