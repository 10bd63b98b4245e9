//! Selecting archive entries with `--pattern GLOB`, as the official `pxar extract` does
//! (PBS4 pbs-client/src/pxar/extract.rs with pxar-bin's `--pattern`): every pattern is a
//! `pathpatterns` include entry (gitignore-style globs: `*` and `?` stay within a component,
//! `**` spans components, a trailing `/` matches directories only, `!` turns a pattern into
//! an exclusion), matched against the entry's path below the archive root with a leading `/`
//! and its file type. A pattern matches any trailing part of the path at component
//! boundaries, so only a leading `/` anchors it at the root. The last matching pattern
//! decides; an entry no pattern matches follows its directory.

use anyhow::{bail, Context, Result};
use pathpatterns::{MatchEntry, MatchList, MatchType, PatternFlag};

/// Compiles one gitignore-style glob (`--pattern`, `--exclude`, `.pxarexclude` lines) with
/// the flags the official tools use. An error, never a panic, for a malformed one.
pub fn parse_glob(pattern: &[u8], ty: MatchType) -> Result<MatchEntry> {
    if has_unclosed_class(pattern) {
        bail!("a '[' character class is not closed with ']' (write \\[ for a literal '[')");
    }
    Ok(MatchEntry::parse_pattern(
        pattern,
        PatternFlag::PATH_NAME,
        ty,
    )?)
}

/// Named classes pathpatterns knows inside `[...]`; each is skipped whole.
const NAMED_CLASSES: [&[u8]; 12] = [
    b"[:alnum:]",
    b"[:alpha:]",
    b"[:blank:]",
    b"[:cntrl:]",
    b"[:digit:]",
    b"[:graph:]",
    b"[:lower:]",
    b"[:print:]",
    b"[:punct:]",
    b"[:space:]",
    b"[:upper:]",
    b"[:xdigit:]",
];

/// True when a `[...]` class runs to the end of the pattern without its `]`. pathpatterns
/// 0.1.2 (the only release) indexes past the end of such a pattern and panics; this follows
/// its scan of a class (escapes, ranges, named classes) to find them first. Patterns it
/// refuses with an error of its own are left to it.
fn has_unclosed_class(pattern: &[u8]) -> bool {
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' => i += 1,
            b'[' => {
                let mut j = i + 1;
                if pattern.get(j) == Some(&b'^') {
                    j += 1;
                }
                if j >= pattern.len() {
                    return false; // refused by pathpatterns itself
                }
                let mut prev = false;
                loop {
                    if j >= pattern.len() {
                        return true;
                    }
                    let rest = &pattern[j..];
                    let mut next_prev = true;
                    if let Some(named) = NAMED_CLASSES.iter().find(|n| rest.starts_with(n)) {
                        j += named.len() - 1;
                        next_prev = false;
                    } else if rest.starts_with(b"[:") {
                        return false; // a malformed named class: its own error
                    } else if rest[0] == b']' {
                        break;
                    } else if rest[0] == b'\\' || (rest[0] == b'-' && prev) {
                        j += 1;
                        if rest[0] == b'-' {
                            next_prev = false;
                            if pattern.get(j) == Some(&b'\\') {
                                j += 1;
                            }
                        }
                        if j >= pattern.len() {
                            return false; // its own error
                        }
                    }
                    prev = next_prev;
                    j += 1;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The `--pattern` arguments, compiled.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    entries: Vec<MatchEntry>,
}

impl PatternSet {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PatternSet> {
        let entries = patterns
            .iter()
            .map(|pattern| {
                let pattern = pattern.as_ref();
                parse_glob(pattern.as_bytes(), MatchType::Include)
                    .with_context(|| format!("invalid pattern '{pattern}'"))
            })
            .collect::<Result<_>>()?;
        Ok(PatternSet { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the entry at `path` (below the archive root, no leading `/`) with file mode
    /// `mode` is extracted, given whether its directory is.
    pub fn selects(&self, path: &[u8], mode: u32, parent_selected: bool) -> bool {
        let mut rooted = Vec::with_capacity(path.len() + 1);
        rooted.push(b'/');
        rooted.extend_from_slice(path);
        match self.entries.matches(&rooted, Some(mode)) {
            Some(MatchType::Include) => true,
            Some(MatchType::Exclude) => false,
            None => parent_selected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u32 = libc::S_IFREG | 0o644;
    const DIR: u32 = libc::S_IFDIR | 0o755;

    fn selects(patterns: &[&str], path: &str, mode: u32) -> bool {
        PatternSet::new(patterns)
            .unwrap()
            .selects(path.as_bytes(), mode, false)
    }

    #[test]
    fn globs_within_and_across_components() {
        assert!(selects(&["*.txt"], "a.txt", FILE));
        assert!(!selects(&["*.txt"], "a.txt.gz", FILE));
        assert!(selects(&["a*b*c"], "aXXbYYc", FILE));
        assert!(selects(&["?"], "x", FILE));
        assert!(selects(&["[a-c]x"], "bx", FILE));
        assert!(!selects(&["[^a-c]x"], "bx", FILE));
        assert!(selects(
            &["deep/**/bottom.txt"],
            "deep/level0/level1/bottom.txt",
            FILE
        ));
        assert!(!selects(&["data/*"], "data/x/y", FILE));
    }

    #[test]
    fn only_a_leading_slash_anchors() {
        // A name, or a path with `/` inside, matches at any depth, as in the official tools.
        assert!(selects(&["target.txt"], "links/target.txt", FILE));
        assert!(selects(&["links/target.txt"], "links/target.txt", FILE));
        assert!(selects(&["links/target.txt"], "x/links/target.txt", FILE));
        assert!(selects(&["/links/target.txt"], "links/target.txt", FILE));
        assert!(!selects(&["/links/target.txt"], "x/links/target.txt", FILE));
        // Whole components only.
        assert!(!selects(&["target.txt"], "links/mytarget.txt", FILE));
    }

    #[test]
    fn a_trailing_slash_matches_directories_only() {
        assert!(selects(&["etc/"], "etc", DIR));
        assert!(!selects(&["etc/"], "etc", FILE));
    }

    #[test]
    fn the_last_matching_pattern_decides_and_others_follow_their_directory() {
        let set = PatternSet::new(&["/data", "!*.tmp"]).unwrap();
        assert!(set.selects(b"data", DIR, false));
        assert!(!set.selects(b"data/x.tmp", FILE, true));
        assert!(
            set.selects(b"data/x.txt", FILE, true),
            "follows its directory"
        );
        assert!(!set.selects(b"other.txt", FILE, false));
    }

    /// Every short pattern over the characters that matter to classes either compiles or is
    /// an error; none panics (pathpatterns alone panics on an unclosed class).
    #[test]
    fn malformed_classes_are_errors_not_panics() {
        let alphabet = b"[]^-\\:a";
        let mut pattern = Vec::new();
        for n in 0..alphabet.len().pow(5) {
            pattern.clear();
            let mut k = n;
            for _ in 0..5 {
                pattern.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            for len in 1..=5 {
                let text = &pattern[..len];
                let outcome = std::panic::catch_unwind(|| parse_glob(text, MatchType::Include));
                assert!(
                    outcome.is_ok(),
                    "{:?} panicked",
                    String::from_utf8_lossy(text)
                );
            }
        }
        for named in NAMED_CLASSES {
            let mut text = b"x[".to_vec();
            text.extend_from_slice(named);
            assert!(parse_glob(&text, MatchType::Include).is_err());
            text.push(b']');
            assert!(parse_glob(&text, MatchType::Include).is_ok());
        }
    }

    #[test]
    fn an_invalid_pattern_is_an_error_that_names_it() {
        let err = PatternSet::new(&["[unclosed"]).unwrap_err();
        assert!(format!("{err:#}").contains("[unclosed"), "{err:#}");
    }
}
