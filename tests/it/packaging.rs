//! The Debian package (`scripts/build-deb.sh` over the binary under test, unpacked with
//! `dpkg -x`), `pbsfs completions`, and the push unit run the way systemd runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::cli::{command, ok, stderr, stdout};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The subcommands `pbsfs --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = stdout(&command().arg("--help").output().unwrap());
    let listing = help
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section");
    let names: Vec<String> = listing
        .lines()
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10, "{listing}");
    names
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands() {
    let commands = subcommands();
    for (shell, marker) in [
        ("bash", "complete -F _pbsfs"),
        ("zsh", "#compdef pbsfs"),
        ("fish", "complete -c pbsfs"),
    ] {
        let script = stdout(&command().args(["completions", shell]).output().unwrap());
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for name in &commands {
            assert!(script.contains(name.as_str()), "{shell}: no {name}");
        }
    }
    let other = command().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        other.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn completions_end_quietly_when_the_reader_goes_away() {
    let mut child = command()
        .args(["completions", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the package from the binary under test and unpacks it: (scratch dir, .deb, root).
fn built_package() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo_file("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_pbsfs"))
        .arg("--out")
        .arg(scratch.path().join("out"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(ok(&out)).into_owned();
    let deb = PathBuf::from(printed.lines().last().expect("the .deb's path").trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(format!("pbsfs_{version}-1_{}.deb", dpkg_arch())),
        "{deb:?}"
    );
    let root = scratch.path().join("root");
    ok(&Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap());
    (scratch, deb, root)
}

fn dpkg_arch() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    stdout(&out).trim().to_string()
}

fn gunzip(path: &Path) -> String {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    stdout(&out)
}

#[test]
fn the_deb_holds_the_binary_man_pages_completions_and_units() {
    let (_scratch, deb, root) = built_package();

    let fields = stdout(
        &Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .output()
            .unwrap(),
    );
    let depends = fields
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .expect("a Depends field");
    assert!(depends.split(", ").any(|dep| dep == "fuse3"), "{depends}");
    assert!(fields.contains(&format!("Version: {}-1", env!("CARGO_PKG_VERSION"))));

    let binary = root.join("usr/bin/pbsfs");
    let version = stdout(&Command::new(&binary).arg("--version").output().unwrap());
    assert_eq!(
        version.trim(),
        format!("pbsfs {}", env!("CARGO_PKG_VERSION"))
    );

    let man1 = root.join("usr/share/man/man1");
    let mut pages = vec!["pbsfs".to_string(), "pbsfs-key-create".to_string()];
    pages.extend(subcommands().iter().map(|name| format!("pbsfs-{name}")));
    for page in &pages {
        let path = man1.join(format!("{page}.1.gz"));
        let text = gunzip(&path);
        assert!(text.contains(&format!("\n.TH {page} 1 ")), "{page}: {text}");
        assert!(text.contains(".SH NAME\n"), "{page}");
        if have("man") {
            let rendered = Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&path)
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            assert!(rendered.status.success(), "man -l {page}");
            assert!(rendered.stderr.is_empty(), "{page}: {}", stderr(&rendered));
            assert!(String::from_utf8_lossy(&rendered.stdout).contains("NAME"));
        }
    }

    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/pbsfs")).unwrap();
    for name in subcommands() {
        assert!(
            bash.contains(&format!(" {name} ")),
            "bash completion: no {name}"
        );
    }
    for file in [
        "usr/share/zsh/vendor-completions/_pbsfs",
        "usr/share/fish/vendor_completions.d/pbsfs.fish",
        "usr/share/doc/pbsfs/copyright",
        "usr/share/doc/pbsfs/examples/push.conf",
        "usr/share/doc/pbsfs/examples/mnt-latest.mount",
    ] {
        assert!(root.join(file).is_file(), "{file}");
    }
    assert!(root.join("etc/pbsfs").is_dir());

    let units = root.join("usr/lib/systemd/system");
    for unit in ["pbsfs-push@.service", "pbsfs-push@.timer"] {
        assert_eq!(
            std::fs::read(units.join(unit)).unwrap(),
            std::fs::read(repo_file(&format!("packaging/systemd/{unit}"))).unwrap(),
            "{unit}"
        );
    }
    if have("systemd-analyze") {
        verify_units(&units, &binary);
    }
    readme_names_only_what_the_package_ships(&root);
}

/// `systemd-analyze verify` on an instance of the push units, with ExecStart pointed at the
/// unpacked binary: unknown keys, bad values and a missing program are all reported.
fn verify_units(units: &Path, binary: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(units.join("pbsfs-push@.service"))
        .unwrap()
        .replace("/usr/bin/pbsfs", binary.to_str().unwrap());
    std::fs::write(dir.path().join("pbsfs-push@test.service"), service).unwrap();
    std::fs::copy(
        units.join("pbsfs-push@.timer"),
        dir.path().join("pbsfs-push@test.timer"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("pbsfs-push@test.service"))
        .arg(dir.path().join("pbsfs-push@test.timer"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// The README's installation and daily-backup instructions name files of the package.
fn readme_names_only_what_the_package_ships(root: &Path) {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let mut named = 0;
    for word in readme.split(|c: char| c.is_whitespace() || "`'\"(),;".contains(c)) {
        for prefix in [
            "/usr/share/doc/pbsfs/",
            "/usr/lib/systemd/system/",
            "/usr/share/man/",
        ] {
            if let Some(at) = word.find(prefix) {
                let path = word[at + 1..].trim_end_matches(['.', ':']);
                assert!(
                    root.join(path).exists(),
                    "README names {path}, not in the package"
                );
                named += 1;
            }
        }
    }
    assert!(named >= 2, "the README names no packaged file");
}

/// `KEY=VALUE` lines of a systemd environment file (no quotes are used in ours).
fn environment_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// Runs the example configuration through the service's ExecStart as systemd does (a word
/// `$NAME` becomes the variable's value split at white space, the environment holds only the
/// file's variables), against a local datastore: the unit and the example name only options
/// the CLI has.
#[test]
fn the_push_unit_runs_the_example_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&command().arg("init").arg(&store).output().unwrap());
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("var/cache")).unwrap();
    std::fs::write(tree.join("kept"), b"kept").unwrap();
    std::fs::write(tree.join("var/cache/left-out"), b"cache").unwrap();

    let mut config = environment_file(
        &std::fs::read_to_string(repo_file("packaging/examples/push.conf")).unwrap(),
    );
    // The example's options, and a group name to find the snapshot by.
    let options = config.get("PUSH_OPTIONS").expect("PUSH_OPTIONS").clone();
    config.insert(
        "PUSH_OPTIONS".into(),
        format!("{options} --backup-id unit-test"),
    );
    config.insert("PBS_REPOSITORY".into(), store.display().to_string());
    config.insert("SOURCES".into(), format!("root.pxar:{}", tree.display()));
    let config_path = dir.path().join("test.conf");
    let text: String = config.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&config_path, text).unwrap();

    let unit = std::fs::read_to_string(repo_file("packaging/systemd/pbsfs-push@.service")).unwrap();
    assert!(unit.contains("EnvironmentFile=/etc/pbsfs/%i.conf\n"));
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let env = environment_file(&std::fs::read_to_string(&config_path).unwrap());
    let mut words = exec
        .split_whitespace()
        .flat_map(|word| match word.strip_prefix('$') {
            Some(name) => env
                .get(name)
                .map(|value| value.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            None => vec![word.to_string()],
        });
    assert_eq!(words.next().as_deref(), Some("/usr/bin/pbsfs"));
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(words)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(&env)
        .output()
        .unwrap();
    ok(&out);

    let restored = dir.path().join("restored");
    ok(&command()
        .arg("--repository")
        .arg(&store)
        .args(["restore", "host/unit-test/latest", "root.pxar"])
        .arg(&restored)
        .output()
        .unwrap());
    assert!(restored.join("kept").is_file());
    assert!(restored.join("var/cache").is_dir());
    assert!(
        !restored.join("var/cache/left-out").exists(),
        "the example's --exclude was not applied"
    );
}
