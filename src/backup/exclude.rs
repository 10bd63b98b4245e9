//! Exclude patterns with the official client's semantics (PBS4 pbs-client/src/pxar/create.rs,
//! proxmox-backup-client `--exclude`): gitignore-style globs from the `pathpatterns` crate,
//! matched against the path below the archive root with a leading `/`; the last matching
//! pattern decides; `!` re-includes; a trailing `/` matches directories only. Patterns of a
//! `.pxarexclude` file apply to its directory and below; a leading `/` anchors them there.

use anyhow::{Context, Result};
use pathpatterns::{MatchEntry, MatchFlag, MatchList, MatchPattern, MatchType};

use crate::pxar::pattern::parse_glob;

/// Patterns in force, command line first, then those of the `.pxarexclude` files of the
/// directories currently open.
#[derive(Clone, Debug, Default)]
pub struct ExcludePatterns {
    entries: Vec<MatchEntry>,
    /// How many of `entries` came from the command line.
    cli_count: usize,
}

impl ExcludePatterns {
    /// Patterns given on the command line (`--exclude`), in order.
    pub fn from_cli<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        let mut entries = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let entry = parse_glob(pattern.as_bytes(), MatchType::Exclude)
                .with_context(|| format!("invalid exclude pattern '{pattern}'"))?;
            entries.push(entry);
        }
        let cli_count = entries.len();
        Ok(ExcludePatterns { entries, cli_count })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has_cli_patterns(&self) -> bool {
        self.cli_count > 0
    }

    /// Drops the patterns added after the first `len` (leaving a directory).
    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len.max(self.cli_count));
    }

    /// True if `path` (with a leading `/`, relative to the archive root) is excluded.
    pub fn is_excluded(&self, path: &[u8], mode: u32) -> bool {
        matches!(
            self.entries.matches(path, Some(mode)),
            Some(MatchType::Exclude)
        )
    }

    /// Adds the lines of a `.pxarexclude` file found in directory `dir` (relative to the
    /// archive root, no leading `/`). Invalid lines are reported and skipped.
    pub fn add_pxarexclude(&mut self, dir: &[u8], content: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        for line in content.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let (body, kind, anchored) = if let Some(rest) = line.strip_prefix(b"!") {
                (rest, MatchType::Include, rest.starts_with(b"/"))
            } else {
                (line, MatchType::Exclude, line.starts_with(b"/"))
            };
            let pattern = if anchored {
                // Anchored lines are relative to the directory holding the file.
                let mut full = Vec::with_capacity(dir.len() + body.len() + 1);
                if !dir.is_empty() {
                    full.push(b'/');
                    full.extend_from_slice(dir);
                }
                full.extend_from_slice(body);
                full
            } else {
                body.to_vec()
            };
            let normalized = normalize_lexically(&pattern);
            if normalized != pattern {
                problems.push(
                    "sanitized exclude pattern: patterns are relative to the backup root and \
                     should not contain '.' or '..' components"
                        .to_string(),
                );
            }
            match parse_glob(&normalized, kind) {
                Ok(entry) if anchored => self.entries.push(entry.add_flags(MatchFlag::ANCHORED)),
                Ok(entry) => self.entries.push(entry),
                Err(err) => problems.push(format!(
                    "bad pattern '{}' in .pxarexclude: {err:#}",
                    String::from_utf8_lossy(line)
                )),
            }
        }
        problems
    }

    /// The command-line patterns as the official client records them (`.pxarexclude-cli`
    /// in v1 archives, the PRELUDE's `exclude-patterns` in v2): one per line, includes
    /// prefixed with `!`, directory-only patterns ending in `/`.
    pub fn cli_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries[..self.cli_count] {
            if entry.match_type() == MatchType::Include {
                out.push(b'!');
            }
            match entry.pattern() {
                MatchPattern::Literal(literal) => out.extend_from_slice(literal),
                MatchPattern::Pattern(pattern) => {
                    out.extend_from_slice(pattern.pattern().to_bytes())
                }
            }
            if entry.match_flags() == MatchFlag::MATCH_DIRECTORIES && out.last() != Some(&b'/') {
                out.push(b'/');
            }
            out.push(b'\n');
        }
        out
    }

    /// The v2 PRELUDE content, if there are command-line patterns.
    pub fn prelude(&self) -> Option<Vec<u8>> {
        if self.cli_count == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&self.cli_text()).into_owned();
        serde_json::to_vec(&serde_json::json!({ "exclude-patterns": text })).ok()
    }
}

/// Removes `.` components and resolves `..` against earlier components, without touching
/// the file system (a `..` at the start is dropped). Keeps a leading and a trailing `/`.
fn normalize_lexically(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if path.starts_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(&parts.join(&b'/'));
    if path.ends_with(b"/") && !out.ends_with(b"/") {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u32 = libc::S_IFDIR | 0o755;
    const REG: u32 = libc::S_IFREG | 0o644;

    #[test]
    fn cli_patterns_match_anywhere_and_last_match_wins() {
        let patterns = ExcludePatterns::from_cli(&["*.tmp", "!/keep/*.tmp", "cache/"]).unwrap();
        assert!(patterns.is_excluded(b"/a.tmp", REG));
        assert!(patterns.is_excluded(b"/deep/er/b.tmp", REG));
        assert!(!patterns.is_excluded(b"/keep/c.tmp", REG));
        assert!(!patterns.is_excluded(b"/a.txt", REG));
        // Directory-only pattern.
        assert!(patterns.is_excluded(b"/x/cache", DIR));
        assert!(!patterns.is_excluded(b"/x/cache", REG));
        assert_eq!(patterns.cli_text(), b"*.tmp\n!/keep/*.tmp\ncache/\n");
        assert_eq!(
            patterns.prelude().unwrap(),
            br#"{"exclude-patterns":"*.tmp\n!/keep/*.tmp\ncache/\n"}"#
        );
    }

    #[test]
    fn pxarexclude_lines_are_scoped_and_anchored_to_their_directory() {
        let mut patterns = ExcludePatterns::default();
        let mark = patterns.len();
        let problems = patterns.add_pxarexclude(b"sub", b"# comment\n\n/only-here\n  *.o  \n");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(patterns.is_excluded(b"/sub/only-here", REG));
        assert!(!patterns.is_excluded(b"/sub/x/only-here", REG));
        assert!(!patterns.is_excluded(b"/only-here", REG));
        assert!(patterns.is_excluded(b"/sub/x/y.o", REG));
        patterns.truncate(mark);
        assert!(!patterns.is_excluded(b"/sub/x/y.o", REG));
        assert!(patterns.prelude().is_none());
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(normalize_lexically(b"/a/./b/../c/"), b"/a/c/");
        assert_eq!(normalize_lexically(b"../x"), b"x");
        assert_eq!(normalize_lexically(b"*.o"), b"*.o");
    }
}
