//! Benchmark baseline for `scripts/bench-mount.sh`: reads every chunk of one archive of a
//! snapshot in-process, decompressing and verifying on all cores, with no FUSE in between.
//!
//! Usage: bench_chunk_read DATASTORE SNAPSHOT ARCHIVE-FILE   (e.g. host/bench/latest root.ppxar.didx)
//! Prints: bytes seconds

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use pbsfs::format::index::ChunkIndex;
use pbsfs::store::access::{open_index, DatastoreAccess, LocalAccess};
use pbsfs::store::chunk_reader::{ChunkReader, VerifyingChunkReader};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::BackupNamespace;
use pbsfs::store::snapshot::resolve_snapshot;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, datastore, snapshot, archive] = args.as_slice() else {
        anyhow::bail!("usage: bench_chunk_read DATASTORE SNAPSHOT ARCHIVE-FILE");
    };
    let store = Arc::new(LocalDatastore::open(datastore.as_ref())?);
    let access = LocalAccess(store.clone());
    let ns = BackupNamespace::root();
    let entries: Vec<_> = access
        .list_snapshots(&ns, None)?
        .into_iter()
        .map(|s| s.entry)
        .collect();
    let dir = resolve_snapshot(snapshot, &entries)?;
    let snap = access.open_snapshot(&ns, &dir)?;
    let index = Arc::new(open_index(&*snap, archive).context("open index")?);
    let reader = Arc::new(VerifyingChunkReader::new(store));
    let next = Arc::new(AtomicUsize::new(0));
    // One thread per core, as the benchmark defines it; BENCH_THREADS=N for more I/O in
    // flight (the mount itself runs 8 prefetch workers).
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (index, reader, next) = (index.clone(), reader.clone(), next.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut bytes = 0;
                loop {
                    let position = next.fetch_add(1, Ordering::Relaxed);
                    let Some(info) = index.chunk_info(position) else {
                        return Ok(bytes);
                    };
                    bytes += reader
                        .read_chunk(&info.digest, info.end - info.start)?
                        .len() as u64;
                }
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.join().expect("worker panicked")?;
    }
    println!("{total} {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}
