//! Encrypted fixture snapshots through the command line: restore, verify and mount with
//! the official key files; clear errors for a missing or wrong key or password.

use crate::common;

use std::process::Output;

use common::cli::{fails_with, local_command, mount_point, read_mounted_tree, stderr};
use common::disk_tree::assert_same_tree;
use common::*;

fn key(name: &str) -> String {
    fixtures_dir().join(name).to_str().unwrap().to_string()
}

fn pbsfs(args: &[&str], password: Option<&str>) -> Output {
    let mut command = local_command(&datastore_dir());
    command.args(args);
    if let Some(password) = password {
        command.env("PBS_ENCRYPTION_PASSWORD", password);
    }
    command.output().unwrap()
}

#[test]
fn restore_with_the_keys_gives_the_official_archives() {
    let cases = [
        (
            "host/fixture-enc/latest",
            "root.pxar",
            "fixture.key",
            None,
            "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8",
        ),
        (
            "host/fixture-enc/latest",
            "catalog.pcat1",
            "fixture.key",
            None,
            "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663",
        ),
        (
            "host/fixture-enc-scrypt/latest",
            "root.pxar",
            "fixture-scrypt.key",
            Some("fixture-password"),
            "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d",
        ),
        (
            "host/fixture-enc-scrypt/latest",
            "catalog.pcat1",
            "fixture-scrypt.key",
            Some("fixture-password"),
            "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc",
        ),
    ];
    for (snapshot, archive, keyfile, password, sha) in cases {
        let out = pbsfs(
            &[
                "restore",
                snapshot,
                archive,
                "-",
                "--keyfile",
                &key(keyfile),
            ],
            password,
        );
        assert!(
            out.status.success(),
            "{snapshot} {archive}: {}",
            stderr(&out)
        );
        assert_eq!(sha256_hex(&out.stdout), sha, "{snapshot} {archive}");
    }
}

#[test]
fn verify_with_a_key_decrypts_every_chunk() {
    let out = pbsfs(
        &[
            "verify",
            "host/fixture-enc/latest",
            "--keyfile",
            &key("fixture.key"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn wrong_or_missing_keys_and_passwords_are_clear_errors() {
    let no_key = pbsfs(
        &["restore", "host/fixture-enc/latest", "root.pxar", "-"],
        None,
    );
    fails_with(&no_key, "key needed");

    let wrong_key = pbsfs(
        &[
            "restore",
            "host/fixture-enc-scrypt/latest",
            "root.pxar",
            "-",
            "--keyfile",
            &key("fixture.key"),
        ],
        None,
    );
    fails_with(&wrong_key, "wrong key");

    let wrong_password = pbsfs(
        &[
            "restore",
            "host/fixture-enc-scrypt/latest",
            "root.pxar",
            "-",
            "--keyfile",
            &key("fixture-scrypt.key"),
        ],
        Some("not-the-password"),
    );
    fails_with(&wrong_password, "wrong password");
}

#[test]
fn an_encrypted_snapshot_mounts_with_its_key() {
    let tree = mounted_with_key("host/fixture-enc/latest", "fixture.key", None);
    assert_same_tree(&tree, &expected_tree("tree1.json"), "fixture-enc");
}

#[test]
fn key_show_prints_the_fixture_fingerprints() {
    let out = pbsfs(&["key", "show", &key("fixture.key")], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("59:fc:73:e2:8a:71:d0:80:b8:60:4a:da:74:aa:87:bc:79:de:0a:72:fd:03:b4:c0:66:9c:08:97:ee:08:e1:a6"), "{text}");
    let out = pbsfs(
        &[
            "key",
            "show",
            &key("fixture-scrypt.key"),
            "--output-format",
            "json",
        ],
        Some("fixture-password"),
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["kdf"], "scrypt");
    assert_eq!(shown["fingerprint"], "48:95:6d:c7:1a:84:c2:2b:62:d9:e2:33:32:b2:17:3a:13:c5:86:5d:4f:47:38:d2:9e:ac:27:c7:a7:4e:67:95");
}

#[test]
fn key_create_writes_a_key_that_show_and_unlock_agree_on() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("new.key");
    let out = pbsfs(
        &[
            "key",
            "create",
            path.to_str().unwrap(),
            "--kdf",
            "scrypt",
            "--output-format",
            "json",
        ],
        Some("s3cret-pass"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let shown = pbsfs(
        &[
            "key",
            "show",
            path.to_str().unwrap(),
            "--output-format",
            "json",
        ],
        None,
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["fingerprint"], created["fingerprint"]);
    // A second create never overwrites a key.
    let again = pbsfs(
        &["key", "create", path.to_str().unwrap()],
        Some("s3cret-pass"),
    );
    assert!(!again.status.success());
    // The password never shows up in output.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-pass"));
    assert!(!stderr(&out).contains("s3cret-pass"));
}

#[test]
fn the_scrypt_snapshot_mounts_as_the_links_subtree() {
    let tree = mounted_with_key(
        "host/fixture-enc-scrypt/latest",
        "fixture-scrypt.key",
        Some("fixture-password"),
    );
    // The archive was made from TREE/links: compare with that part of tree1.json.
    let mut expected = std::collections::BTreeMap::new();
    for (path, mut record) in expected_tree("tree1.json") {
        let rel = if path == b"links" {
            Vec::new()
        } else if let Some(rest) = path.strip_prefix(b"links/".as_slice()) {
            rest.to_vec()
        } else {
            continue;
        };
        record.hardlinks = record
            .hardlinks
            .iter()
            .filter_map(|h| h.strip_prefix(b"links/".as_slice()).map(<[u8]>::to_vec))
            .collect();
        expected.insert(rel, record);
    }
    assert_same_tree(&tree, &expected, "fixture-enc-scrypt");
}

/// Mounts an encrypted fixture snapshot with the key file `keyfile` and reads it back.
fn mounted_with_key(
    snapshot: &str,
    keyfile: &str,
    password: Option<&str>,
) -> std::collections::BTreeMap<Vec<u8>, Expected> {
    let (_tmp, point) = mount_point();
    let out = pbsfs(
        &[
            "mount",
            snapshot,
            point.to_str().unwrap(),
            "--keyfile",
            &key(keyfile),
        ],
        password,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    read_mounted_tree(&point)
}

#[test]
fn a_changed_passphrase_opens_the_same_backups_and_the_old_one_no_longer_does() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("copy.key");
    std::fs::copy(key("fixture-scrypt.key"), &path).unwrap();
    let new_password = tmp.path().join("new-password");
    std::fs::write(&new_password, "a new passphrase\n").unwrap();
    let out = pbsfs(
        &["key", "change-passphrase", path.to_str().unwrap()]
            .into_iter()
            .chain(["--kdf", "pbkdf2", "--new-password-file"])
            .chain([new_password.to_str().unwrap()])
            .collect::<Vec<_>>(),
        Some("fixture-password"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let restore = |password: &str| {
        pbsfs(
            &["restore", "host/fixture-enc-scrypt/latest", "catalog.pcat1"]
                .into_iter()
                .chain(["-", "--keyfile", path.to_str().unwrap()])
                .collect::<Vec<_>>(),
            Some(password),
        )
    };
    let out = restore("a new passphrase");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256_hex(&out.stdout),
        "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc"
    );
    assert!(!restore("fixture-password").status.success());
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(key("fixture-scrypt.key")).unwrap()).unwrap();
    let changed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(changed["created"], original["created"]);
    assert_eq!(changed["kdf"]["PBKDF2"]["iter"], 65535, "{changed}");
}

#[test]
fn paperkey_prints_the_key_file_and_a_qr_code() {
    let out = pbsfs(
        &[
            "key",
            "paperkey",
            &key("fixture-scrypt.key"),
            "--subject",
            "my laptop",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Subject: my laptop\n"), "{text}");
    let json = text
        .split("-----BEGIN PROXMOX BACKUP KEY-----\n")
        .nth(1)
        .and_then(|rest| rest.split("-----END PROXMOX BACKUP KEY-----").next())
        .unwrap();
    // What was printed is the key file: typed back, it is the same key.
    let printed: serde_json::Value = serde_json::from_str(json).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(key("fixture-scrypt.key")).unwrap()).unwrap();
    assert_eq!(printed, original);
    // The QR code: block characters after the END line.
    let after = text
        .split("-----END PROXMOX BACKUP KEY-----")
        .nth(1)
        .unwrap();
    assert!(
        after.lines().filter(|l| l.contains('█')).count() > 20,
        "{after}"
    );
}
