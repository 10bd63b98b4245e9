//! Child sketches: what a walk over a whole archive (counting links) needs of each child,
//! read from the child's first item after its name, without decoding the entry.

use super::{Accessor, DecodeError, Result};
use crate::format::ReadAt;
use crate::pxar::entry::NON_DIR_ID_TAG;
use crate::pxar::format::{mode, PXAR_ENTRY, PXAR_ENTRY_V1, PXAR_FILENAME, PXAR_HARDLINK};
use crate::pxar::items::{self, AtSource, ItemSource};

/// What a walk needs of one child; ids as [`Entry::id`](crate::pxar::entry::Entry::id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildSketch {
    Directory { id: u64 },
    Hardlink { id: u64, target_id: u64 },
    Other,
}

impl Accessor {
    /// Sketches the children of directory `dir_id` (its entry id) in archive order, leaving
    /// out those that cannot be read; the first error of those comes with the others. A
    /// sketched directory lies inside its parent, so a walk following them ends; what a
    /// sketch does not check (the child directory's own table) fails when the walk opens it.
    pub fn sketch_children(&self, dir_id: u64) -> Result<(Vec<ChildSketch>, Option<DecodeError>)> {
        let table = self.dir_table(dir_id)?;
        let mut located = table
            .all_items(&*self.meta)?
            .iter()
            .map(|item| Ok((table.child_filename_offset(item)?, item.size)))
            .collect::<Result<Vec<_>>>()?;
        located.sort_unstable();
        let mut src = AtSource::new(&*self.meta, 0, table.goodbye);
        let mut failed = None;
        let mut sketches = Vec::with_capacity(located.len());
        for (filename_offset, extent) in located {
            src.seek(filename_offset);
            match sketch_child(&mut src, filename_offset, extent, table.goodbye) {
                Ok(sketch) => sketches.push(sketch),
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        Ok((sketches, failed))
    }
}

/// Reads the FILENAME at the cursor and the item after it, the child's HARDLINK or ENTRY.
fn sketch_child(
    src: &mut AtSource<&dyn ReadAt>,
    filename_offset: u64,
    extent: u64,
    parent_goodbye: u64,
) -> Result<ChildSketch> {
    let (_, header, content) = items::next_header(src)?;
    if header.htype != PXAR_FILENAME {
        return Err(DecodeError::invalid(
            filename_offset,
            "expected a FILENAME item",
        ));
    }
    src.skip(content)?;
    let (offset, header, _) = items::next_header(src)?;
    match header.htype {
        PXAR_HARDLINK => {
            let distance = src.read_u64()?;
            if distance == 0 || distance > filename_offset {
                return Err(DecodeError::invalid(
                    offset,
                    "hardlink offset does not point backwards",
                ));
            }
            Ok(ChildSketch::Hardlink {
                id: filename_offset | NON_DIR_ID_TAG,
                target_id: (filename_offset - distance) | NON_DIR_ID_TAG,
            })
        }
        PXAR_ENTRY | PXAR_ENTRY_V1 => {
            let mode = src.read_u64()?;
            if mode & mode::IFMT != mode::IFDIR {
                return Ok(ChildSketch::Other);
            }
            // A child directory lies entirely before its parent's GOODBYE.
            match filename_offset.checked_add(extent) {
                Some(end) if end > filename_offset && end <= parent_goodbye => {
                    Ok(ChildSketch::Directory { id: end })
                }
                _ => Err(DecodeError::invalid(
                    filename_offset,
                    "child directory overlaps its parent's table",
                )),
            }
        }
        _ => Err(DecodeError::invalid(offset, "expected an ENTRY item")),
    }
}
