//! Fuzz target: arbitrary bytes as a pxar archive. The whole input is tried as a v1
//! archive, then, split at a position taken from its first two bytes, as a v2 metadata +
//! payload pair. Opening, walking every directory, looking up every name, reading every
//! file and decoding sequentially to the end may fail, but must never panic or hang.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pbsfs::format::ReadAt;
use pbsfs::pxar::{Accessor, Decoder, EntryKind};

/// Bounds that keep one input fast even when a hostile archive decodes into many entries.
const MAX_ENTRIES: usize = 20_000;
const MAX_FILE_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    exercise(Arc::new(data.to_vec()), None);
    if data.len() >= 2 {
        let rest = &data[2..];
        let split = u16::from_le_bytes([data[0], data[1]]) as usize % (rest.len() + 1);
        let (meta, payload) = rest.split_at(split);
        exercise(Arc::new(meta.to_vec()), Some(Arc::new(payload.to_vec())));
    }
});

fn exercise(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) {
    walk(meta.clone(), payload.clone());
    decode(meta, payload);
}

/// Random access: every directory, every child (by listing and by name), every file.
fn walk(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) {
    let Ok(accessor) = Accessor::open(meta, payload) else {
        return;
    };
    let mut pending: Vec<_> = accessor.root().into_iter().collect();
    let mut visited = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while let Some(dir) = pending.pop() {
        let Ok(listing) = accessor.read_dir(&dir) else {
            continue;
        };
        for child in listing.iter() {
            visited += 1;
            assert!(visited <= MAX_ENTRIES * 4, "walk does not end");
            let _ = accessor.lookup(&dir, &child.name);
            let Ok(entry) = accessor.open_dir_entry(child) else {
                continue;
            };
            if let Some(id) = entry.id() {
                let _ = accessor.entry_at(id);
            }
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
                _ => continue,
            };
            let size = file.file_size().min(MAX_FILE_BYTES);
            let mut offset = 0;
            while offset < size {
                match accessor.read_file(&file, offset, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => offset += n as u64,
                }
            }
            let _ = accessor.read_file(&file, file.file_size().saturating_sub(1), &mut buf);
        }
    }
}

/// Sequential decoding to the end, reading every file's contents.
fn decode(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) {
    let mut decoder = Decoder::from_read_at(meta, payload);
    let mut buf = [0u8; 4096];
    let mut entries = 0usize;
    while let Ok(Some(_)) = decoder.next_entry() {
        entries += 1;
        assert!(entries <= MAX_ENTRIES * 4, "decoder does not end");
        let mut read = 0u64;
        while read < MAX_FILE_BYTES {
            match decoder.read_contents(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n as u64,
            }
        }
    }
}
