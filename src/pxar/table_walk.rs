//! The entries of an archive after a given point, in archive order, found through the
//! directories' goodbye tables instead of by reading the stream front to back.
//!
//! This is how an extraction that ignores errors goes on when the sequential decoder stops
//! in unreadable metadata (a bad chunk): the tables of the enclosing directories still lead
//! to every entry behind the damage, and only the entries whose own items lie in it are
//! lost — each of them is reported by name.

use std::collections::VecDeque;

use super::accessor::{Accessor, ChildResult};
use super::decode_error::Result;
use super::decoder::DecodedEntry;
use super::entry::{Entry, EntryKind};

/// An entry the walk found in a table but could not decode (or a directory it could not
/// list): its path and why.
#[derive(Debug)]
pub struct Unreadable {
    pub path: Vec<u8>,
    pub error: super::DecodeError,
}

/// An open directory of the walk: its path and its children in archive order not yet seen.
struct Level {
    path: Vec<u8>,
    children: VecDeque<ChildResult>,
}

/// Yields every entry whose FILENAME item lies after `after`, as the sequential decoder would
/// have (path, depth, entry), and reads file contents through the accessor.
pub struct TableWalk<'a> {
    accessor: &'a Accessor,
    after: u64,
    stack: Vec<Level>,
    file: Option<(Entry, u64)>,
    unreadable: Vec<Unreadable>,
}

impl<'a> TableWalk<'a> {
    /// Fails only if the root's table cannot be read (then nothing can be found).
    pub fn after(accessor: &'a Accessor, after: u64) -> Result<Self> {
        let root = accessor.root()?;
        let children = accessor.read_dir_each(&root)?;
        Ok(TableWalk {
            accessor,
            after,
            stack: vec![Level {
                path: Vec::new(),
                children: children.into(),
            }],
            file: None,
            unreadable: Vec::new(),
        })
    }

    /// Entries found but not decodable since the last call.
    pub fn take_unreadable(&mut self) -> Vec<Unreadable> {
        std::mem::take(&mut self.unreadable)
    }

    pub fn next_entry(&mut self) -> Option<DecodedEntry> {
        self.file = None;
        loop {
            let level = self.stack.last_mut()?;
            let Some(child) = level.children.pop_front() else {
                self.stack.pop();
                continue;
            };
            let following = level.children.front().map(|next| match next {
                Ok(entry) => entry.filename_offset,
                Err((offset, _)) => *offset,
            });
            let depth = self.stack.len();
            let parent = &self.stack[depth - 1].path;
            let child = match child {
                Ok(child) => child,
                Err((offset, error)) => {
                    if offset > self.after {
                        let name = format!("<name unreadable, at offset {offset}>");
                        let path = child_path(parent, name.as_bytes());
                        self.unreadable.push(Unreadable { path, error });
                    }
                    continue;
                }
            };
            let path = child_path(parent, &child.name);
            if child.filename_offset <= self.after {
                // Already seen by the decoder; only the last such child can hold `after`
                // (a directory the decoder was inside when it stopped).
                if following.is_some_and(|next| next <= self.after) {
                    continue;
                }
                if let Ok(entry) = self.accessor.open_dir_entry(&child) {
                    if entry.dir_end.is_some_and(|end| end > self.after) {
                        self.enter(path, &entry);
                    }
                }
                continue;
            }
            let entry = match self.accessor.open_dir_entry(&child) {
                Ok(entry) => entry,
                Err(error) => {
                    self.unreadable.push(Unreadable { path, error });
                    continue;
                }
            };
            if entry.is_dir() {
                self.enter(path.clone(), &entry);
            } else if matches!(entry.kind, EntryKind::File { .. }) {
                self.file = Some((entry.clone(), 0));
            }
            return Some(DecodedEntry { path, depth, entry });
        }
    }

    fn enter(&mut self, path: Vec<u8>, dir: &Entry) {
        match self.accessor.read_dir_each(dir) {
            Ok(children) => self.stack.push(Level {
                path,
                children: children.into(),
            }),
            Err(error) => self.unreadable.push(Unreadable { path, error }),
        }
    }

    /// Contents of the file returned last; 0 at its end.
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize> {
        let Some((file, read)) = &mut self.file else {
            return Ok(0);
        };
        let n = self.accessor.read_file(file, *read, buf)?;
        *read += n as u64;
        Ok(n)
    }
}

fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}
