//! Hostile input: the fixture archives with bytes changed at random places in their
//! metadata (entries, names, goodbye tables) or cut short. Opening, walking the whole tree,
//! reading files and decoding sequentially must end in data or errors: never a panic (which
//! fails this test), a hang or a runaway allocation.

use crate::common;

use std::sync::Arc;

use common::*;
use pbsfs::format::ReadAt;
use pbsfs::pxar::dir_table::DirTable;
use pbsfs::pxar::{Accessor, Decoder, EntryKind, FileData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A stream with some bytes replaced and possibly a smaller size, over a shared original.
struct Mutated {
    base: Arc<dyn ReadAt>,
    patches: Vec<(u64, u8)>,
    size: u64,
}

impl ReadAt for Mutated {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset) as usize;
        let n = self.base.read_at(&mut buf[..len], offset)?;
        for &(at, byte) in &self.patches {
            if at >= offset && at < offset + n as u64 {
                buf[(at - offset) as usize] = byte;
            }
        }
        Ok(n)
    }
}

/// Byte ranges worth mutating: every entry's items and every goodbye table.
fn metadata_regions(accessor: &Accessor, stream: &dyn ReadAt) -> Vec<(u64, u64)> {
    let mut regions = Vec::new();
    let root = accessor.root().unwrap();
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        let end = dir.dir_end.unwrap();
        let table = DirTable::open(stream, end).unwrap();
        regions.push((table.goodbye, end));
        regions.push((dir.entry_offset, dir.entry_offset + 128));
        for child in accessor.read_dir(&dir).unwrap().iter() {
            let entry = accessor.open_dir_entry(child).unwrap();
            let stop = match entry.kind {
                EntryKind::File {
                    data: FileData::Inline { data_offset },
                    ..
                } => data_offset,
                _ => entry.entry_offset + 128,
            };
            regions.push((child.filename_offset, stop));
            if entry.is_dir() {
                pending.push(entry);
            }
        }
    }
    regions
}

/// Changes 1–8 bytes at `at`: a flipped byte, or a u64 set to a boundary or random value.
fn mutate(rng: &mut StdRng, at: u64, size: u64) -> Vec<(u64, u8)> {
    let value: u64 = match rng.gen_range(0..8) {
        0 => {
            let byte = rng.gen::<u8>() | 1;
            return vec![(at, byte)];
        }
        1 => 0,
        2 => u64::MAX,
        3 => 1 << 63,
        4 => size,
        5 => rng.gen_range(0..size),
        6 => rng.gen_range(0..64),
        _ => rng.gen(),
    };
    value
        .to_le_bytes()
        .iter()
        .enumerate()
        .map(|(i, &b)| (at + i as u64, b))
        .filter(|&(pos, _)| pos < size)
        .collect()
}

/// Everything a reader does with an archive; errors are fine, panics are not.
fn exercise(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) -> usize {
    let mut visited = 0usize;
    if let Ok(accessor) = Accessor::open(meta.clone(), payload.clone()) {
        let mut pending: Vec<_> = accessor.root().into_iter().collect();
        let mut buf = vec![0u8; 64 << 10];
        while let Some(dir) = pending.pop() {
            let Ok(listing) = accessor.read_dir(&dir) else {
                continue;
            };
            for child in listing.iter() {
                visited += 1;
                assert!(visited < 100_000, "walk does not end");
                let _ = accessor.lookup(&dir, &child.name);
                let Ok(entry) = accessor.open_dir_entry(child) else {
                    continue;
                };
                let file = match entry.kind {
                    EntryKind::Directory => {
                        pending.push(entry);
                        continue;
                    }
                    EntryKind::Hardlink { .. } => match accessor.follow_hardlink(&entry) {
                        Ok(target) => target,
                        Err(_) => continue,
                    },
                    EntryKind::File { .. } => entry,
                    _ => {
                        if let Some(id) = entry.id() {
                            let _ = accessor.entry_at(id);
                        }
                        continue;
                    }
                };
                let size = file.file_size();
                for offset in [0, size / 2, size.saturating_sub(100)] {
                    let _ = accessor.read_file(&file, offset, &mut buf);
                }
            }
        }
    }
    let mut decoder = Decoder::from_read_at(meta, payload);
    let mut buf = [0u8; 4096];
    let mut decoded = 0usize;
    while let Ok(Some(_)) = decoder.next_entry() {
        decoded += 1;
        assert!(decoded < 100_000, "decoder does not end");
        let _ = decoder.read_contents(&mut buf);
    }
    visited + decoded
}

/// Rounds per archive: 300, or `PXAR_MUTATION_ROUNDS` for longer hunts.
fn rounds() -> usize {
    std::env::var("PXAR_MUTATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn run(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>, seed: u64, rounds: usize) {
    let accessor = Accessor::open(meta.clone(), payload.clone()).unwrap();
    let regions = metadata_regions(&accessor, &*meta);
    let clean = exercise(meta.clone(), payload.clone());
    assert!(clean > 6000, "the clean archive is walked fully");
    let mut rng = StdRng::seed_from_u64(seed);
    let size = meta.size();
    let mut changed = 0;
    for round in 0..rounds {
        let mutated: Arc<dyn ReadAt> = if round % 10 == 9 {
            // Cut short inside the metadata.
            let (start, end) = regions[rng.gen_range(0..regions.len())];
            Arc::new(Mutated {
                base: meta.clone(),
                patches: Vec::new(),
                size: rng.gen_range(start..end.max(start + 1)).min(size),
            })
        } else {
            let mut patches = Vec::new();
            for _ in 0..rng.gen_range(1..=3) {
                let (start, end) = regions[rng.gen_range(0..regions.len())];
                let at = rng.gen_range(start..end.max(start + 1)).min(size - 1);
                patches.extend(mutate(&mut rng, at, size));
            }
            Arc::new(Mutated {
                base: meta.clone(),
                patches,
                size,
            })
        };
        if exercise(mutated, payload.clone()) != clean {
            changed += 1;
        }
    }
    // The mutations hit structure often enough to change what is read.
    assert!(
        changed * 4 > rounds,
        "only {changed} of {rounds} mutations had an effect"
    );
}

#[test]
fn mutated_legacy_archive_never_panics() {
    run(fixture_archive(LEGACY, "root.pxar"), None, 1, rounds());
}

#[test]
fn mutated_split_archive_never_panics() {
    let meta = fixture_archive(DATA, "root.mpxar");
    let payload = fixture_archive(DATA, "root.ppxar");
    run(meta.clone(), Some(payload.clone()), 2, rounds());

    // Damaged PAYLOAD headers in the payload stream: reads fail, nothing panics.
    let accessor = Accessor::open(meta.clone(), Some(payload.clone())).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let files: Vec<u64> = accessor
        .read_dir(&accessor.lookup_path(b"data").unwrap().unwrap())
        .unwrap()
        .iter()
        .filter_map(|c| match accessor.open_dir_entry(c).unwrap().kind {
            EntryKind::File {
                data: FileData::PayloadRef { payload_offset },
                ..
            } => Some(payload_offset),
            _ => None,
        })
        .collect();
    for _ in 0..30 {
        let at = files[rng.gen_range(0..files.len())] + rng.gen_range(0..16);
        let patches = mutate(&mut rng, at, payload.size());
        let bad: Arc<dyn ReadAt> = Arc::new(Mutated {
            base: payload.clone(),
            patches,
            size: payload.size(),
        });
        exercise(meta.clone(), Some(bad));
    }
}
