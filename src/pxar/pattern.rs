//! Shell-style path patterns for selecting archive entries (`--pattern GLOB`), with the
//! gitignore conventions the official `pxar extract` follows: a pattern without `/` matches
//! a file name at any depth, one with `/` is anchored at the archive root (a leading `/` is
//! optional), `*` and `?` stay within one component, `**` spans components, `[...]` is a set.

/// One compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    components: Vec<Vec<u8>>,
    anchored: bool,
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        let trimmed = text.trim_end_matches('/');
        let anchored = trimmed.contains('/');
        let components = trimmed
            .trim_start_matches('/')
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect();
        Pattern {
            components,
            anchored,
        }
    }

    /// Whether the archive path (components joined by `/`, no leading `/`) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if self.components.is_empty() {
            return parts.is_empty();
        }
        if self.anchored {
            match_components(&self.components, &parts)
        } else {
            parts
                .last()
                .is_some_and(|name| match_component(&self.components[0], name))
        }
    }
}

/// A set of patterns; an entry is selected when it or one of its ancestors matches.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> PatternSet {
        PatternSet {
            patterns: patterns.iter().map(|p| Pattern::new(p.as_ref())).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        self.patterns.iter().any(|p| p.matches(path))
    }
}

fn match_components(pattern: &[Vec<u8>], parts: &[&[u8]]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == b"**" => {
            (0..=parts.len()).any(|skip| match_components(rest, &parts[skip..]))
        }
        Some((first, rest)) => match parts.split_first() {
            Some((part, others)) => match_component(first, part) && match_components(rest, others),
            None => false,
        },
    }
}

/// fnmatch of one component: `*`, `?`, `[set]` (`!`/`^` negates, `a-z` ranges), `\x`.
fn match_component(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with backtracking to the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_set(&pattern[p..], name[n]) {
                        if matched {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_n)) => {
                p = star_p;
                n = star_n + 1;
                star = Some((star_p, star_n + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `[...]` at the start of `pattern`; returns (matched, length of the set) or `None`
/// when the bracket is not closed (then it is a literal `[`).
fn match_set(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        let low = pattern[i];
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            matched |= (low..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= low == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_globs() {
        assert!(match_component(b"*.txt", b"a.txt"));
        assert!(!match_component(b"*.txt", b"a.txt.gz"));
        assert!(match_component(b"a*b*c", b"aXXbYYc"));
        assert!(match_component(b"?", b"x"));
        assert!(!match_component(b"?", b""));
        assert!(match_component(b"[a-c]x", b"bx"));
        assert!(!match_component(b"[!a-c]x", b"bx"));
        assert!(match_component(b"star\\*", b"star*"));
        assert!(!match_component(b"star\\*", b"starx"));
        assert!(match_component(b"[", b"["));
    }

    #[test]
    fn anchoring_and_double_star() {
        let name_only = Pattern::new("*.txt");
        assert!(name_only.matches(b"links/target.txt"));
        assert!(name_only.matches(b"a.txt"));
        let anchored = Pattern::new("/links/*.txt");
        assert!(anchored.matches(b"links/target.txt"));
        assert!(!anchored.matches(b"x/links/target.txt"));
        let deep = Pattern::new("deep/**/bottom.txt");
        assert!(deep.matches(b"deep/level0/level1/bottom.txt"));
        assert!(deep.matches(b"deep/bottom.txt"));
        assert!(!Pattern::new("data/*").matches(b"data/x/y"));
    }
}
