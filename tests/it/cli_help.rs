//! What `--help` shows: the datastore options under their own heading, and only for the
//! commands that use a datastore.

use crate::common::cli::command;

fn help(args: &[&str]) -> String {
    let out = command().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn datastore_options_are_shown_under_their_heading_where_they_apply() {
    for args in [
        &["snapshots"][..],
        &["push"],
        &["mount"],
        &["restore"],
        &["gc"],
    ] {
        let text = help(args);
        let heading = text
            .find("Datastore options:")
            .unwrap_or_else(|| panic!("{args:?}: {text}"));
        let repository = text.find("--repository").unwrap();
        assert!(repository > heading, "{args:?}: {text}");
        // The command's own options come first, under the general heading.
        assert!(text.find("Options:").unwrap() < heading, "{args:?}: {text}");
    }
    for args in [
        &["umount"][..],
        &["key", "create"],
        &["key", "show"],
        &["key"],
    ] {
        let text = help(args);
        for hidden in [
            "Datastore options",
            "--repository",
            "--server",
            "--ns",
            "--keyfile",
        ] {
            assert!(!text.contains(hidden), "{args:?} shows {hidden}: {text}");
        }
    }
}

#[test]
fn mount_says_what_it_takes() {
    let text = help(&["mount"]);
    assert!(
        text.contains("Usage: pbsfs mount [OPTIONS] [SNAPSHOT] <MOUNTPOINT>"),
        "{text}"
    );
}

#[test]
fn datastore_options_still_work_before_and_after_the_command() {
    let store = crate::common::datastore_dir();
    for args in [
        vec!["-r", store.to_str().unwrap(), "snapshots"],
        vec!["snapshots", "-r", store.to_str().unwrap()],
    ] {
        let out = command()
            .env_remove("PBS_REPOSITORY")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("fixture-data"));
    }
}
