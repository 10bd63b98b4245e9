//! `pbsfs diff SNAPSHOT-A SNAPSHOT-B [PATH]`: what changed between two snapshots' pxar
//! archives, as `+`/`-`/`M` lines or JSON.

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use pbsfs::pxar::entry::{Entry, EntryKind};
use pbsfs::pxar::format::MTime;
use pbsfs::store::diff::{diff_archives, show_path, Aspect, Change, DiffOptions, DiffStats};
use pbsfs::store::find::type_letter;
use pbsfs::store::time::epoch_to_rfc3339;

use super::context::{Context, RepoArgs};

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot, as TYPE/ID/TIME (TIME may be a unique prefix or `latest`).
    pub snapshot_a: String,
    /// The newer snapshot (of the same or another group).
    pub snapshot_b: String,
    /// Only this path and what is below it, e.g. /etc.
    pub path: Option<String>,
    /// The pxar archive to compare (needed when a snapshot has several), e.g. root.pxar.
    #[arg(long, value_name = "NAME")]
    pub archive: Option<String>,
    /// Compare the bytes of files whose size is the same but whose data is stored in other
    /// chunks (reads those files). Without it their content counts as unchanged unless
    /// something else about them changed, and is then shown as `content?`.
    #[arg(long)]
    pub content: bool,
}

/// Metadata streams of two snapshots are read once each, sequentially: a small cache.
const CACHE_BYTES: usize = 16 << 20;

pub fn run(args: &DiffArgs, repo: &RepoArgs) -> Result<()> {
    let ctx = Context::open(repo)?;
    let archive = args.archive.as_deref();
    let (dir_a, a) = ctx.open_pxar(&args.snapshot_a, archive, CACHE_BYTES)?;
    let (dir_b, b) = ctx.open_pxar(&args.snapshot_b, archive, CACHE_BYTES)?;
    let options = DiffOptions {
        path: args
            .path
            .as_deref()
            .map(|p| p.trim_matches('/').as_bytes().to_vec())
            .filter(|p| !p.is_empty()),
        compare_content: args.content,
    };
    let json = ctx.output.is_json();
    let mut changes = Vec::new();
    let stats = diff_archives(&a, &b, &options, &mut |change| {
        if json {
            changes.push(change_json(&change));
        } else {
            outln!("{}", change_line(&change));
        }
        Ok(())
    })?;
    if json {
        ctx.output.print_json(&json!({
            "old": dir_a.to_string(),
            "new": dir_b.to_string(),
            "changes": changes,
            "summary": summary_json(&stats),
        }));
    } else {
        eprintln!("{}", summary_text(&stats));
    }
    Ok(())
}

/// `M    /data/big-text  content, size 10 → 14, mtime ...`.
fn change_line(change: &Change) -> String {
    let entry = change.new.as_ref().or(change.old.as_ref());
    let slash = if entry.is_some_and(|e| e.is_dir()) && !change.path.is_empty() {
        "/"
    } else {
        ""
    };
    let mut line = format!(
        "{}    {}{slash}",
        change.kind.sign(),
        show_path(&change.path)
    );
    if let (Some(old), Some(new)) = (&change.old, &change.new) {
        let mut details: Vec<String> = change
            .aspects
            .iter()
            .map(|&aspect| aspect_text(aspect, old, new))
            .collect();
        if change.content_unknown {
            details.insert(0, "content?".into());
        }
        line.push_str("  ");
        line.push_str(&details.join(", "));
    }
    line
}

fn aspect_text(aspect: Aspect, old: &Entry, new: &Entry) -> String {
    let from_to =
        |f: &dyn Fn(&Entry) -> String| format!("{} {} → {}", aspect.name(), f(old), f(new));
    match aspect {
        Aspect::Type => from_to(&|e| type_name(e).to_string()),
        Aspect::Size => from_to(&|e| e.file_size().to_string()),
        Aspect::Mode => from_to(&|e| format!("{:04o}", e.mode() & 0o7777)),
        Aspect::Owner => from_to(&|e| format!("{}:{}", e.metadata.stat.uid, e.metadata.stat.gid)),
        Aspect::Mtime => from_to(&|e| mtime_text(e.metadata.stat.mtime)),
        Aspect::LinkTarget => from_to(&|e| String::from_utf8_lossy(&link_target(e)).into_owned()),
        Aspect::Device => from_to(&|e| match e.kind {
            EntryKind::Device { major, minor } => format!("{major}:{minor}"),
            _ => "-".into(),
        }),
        Aspect::Content | Aspect::Xattrs | Aspect::Acl | Aspect::Flags => aspect.name().into(),
    }
}

fn type_name(entry: &Entry) -> &'static str {
    match type_letter(entry) {
        '-' => "file",
        'd' => "directory",
        'l' => "symlink",
        'h' => "hardlink",
        'b' => "block-device",
        'c' => "char-device",
        'p' => "fifo",
        _ => "socket",
    }
}

fn link_target(entry: &Entry) -> Vec<u8> {
    match &entry.kind {
        EntryKind::Symlink { target } => target.clone(),
        EntryKind::Hardlink { target_path, .. } => {
            [b"/".as_slice(), target_path.as_slice()].concat()
        }
        _ => Vec::new(),
    }
}

/// RFC 3339, with the fraction of a second when there is one.
fn mtime_text(mtime: MTime) -> String {
    let whole = epoch_to_rfc3339(mtime.secs).unwrap_or_else(|| mtime.secs.to_string());
    match (mtime.nanos, whole.strip_suffix('Z')) {
        (0, _) | (_, None) => whole,
        (nanos, Some(stem)) => format!("{stem}.{nanos:09}Z"),
    }
}

fn entry_json(entry: &Entry) -> Value {
    if let EntryKind::Hardlink { .. } = entry.kind {
        // A hardlink's attributes are its target's.
        return json!({"type": type_name(entry), "target": String::from_utf8_lossy(&link_target(entry))});
    }
    let stat = &entry.metadata.stat;
    let mut value = json!({
        "type": type_name(entry),
        "mode": format!("{:04o}", entry.mode() & 0o7777),
        "uid": stat.uid,
        "gid": stat.gid,
        "mtime": mtime_text(stat.mtime),
    });
    if let EntryKind::File { size, .. } = entry.kind {
        value["size"] = json!(size);
    }
    if matches!(
        entry.kind,
        EntryKind::Symlink { .. } | EntryKind::Hardlink { .. }
    ) {
        value["target"] = json!(String::from_utf8_lossy(&link_target(entry)));
    }
    value
}

fn change_json(change: &Change) -> Value {
    json!({
        "change": change.kind.sign().to_string(),
        "path": show_path(&change.path),
        "changed": change.aspects.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "content-unknown": change.content_unknown,
        "old": change.old.as_ref().map(entry_json),
        "new": change.new.as_ref().map(entry_json),
    })
}

fn summary_json(stats: &DiffStats) -> Value {
    json!({
        "added": stats.added,
        "removed": stats.removed,
        "modified": stats.modified,
        "content-not-compared": stats.content_not_compared,
        "content-compared": stats.content_compared,
    })
}

fn summary_text(stats: &DiffStats) -> String {
    let mut text = format!(
        "{} added, {} removed, {} modified",
        stats.added, stats.removed, stats.modified
    );
    if stats.content_not_compared > 0 {
        text.push_str(&format!(
            "; {} files with the same attributes are stored in other chunks and were not \
             compared (--content compares their bytes)",
            stats.content_not_compared
        ));
    }
    text
}
