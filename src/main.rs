mod alloc;
mod cli;

/// Big buffers (1 MiB and up) come from their own huge-page mappings (see `alloc`): the
/// program's choice, so the library and its tests run on whatever allocator they get.
#[global_allocator]
static ALLOCATOR: alloc::BigBufferAlloc = alloc::BigBufferAlloc;

/// Below 1 MiB glibc serves allocations. A fixed mmap threshold keeps its adaptive one from
/// moving mid-size buffers into per-thread heaps that never shrink, and few arenas keep the
/// heaps of many worker threads from multiplying RSS.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, (1 << 20) + (64 << 10));
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() {
    tune_allocator();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `mount -t fuse.pbsfs SOURCE DIR -o ...` calls us as `pbsfs SOURCE DIR -o ...`.
    let args = match cli::helper::translate(&args) {
        Ok(Some(translated)) => translated,
        Ok(None) => args,
        Err(err) => {
            eprintln!("pbsfs: error: {err:#}");
            std::process::exit(1);
        }
    };
    // Exit statuses (README "Exit statuses"): 0 done, 1 error, 2 usage error (clap),
    // 3 push snapshot made with entries left out, 128 + N stopped by signal N (cleaned up).
    let parsed = cli::parse_from(args);
    cli::logging::init(&parsed.log);
    match cli::run(parsed) {
        Ok(outcome) => std::process::exit(outcome.exit_status()),
        // A closed pipe (`pbsfs restore ... - | head`) is not an error worth reporting.
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            cli::output::exit_for_closed_stdout()
        }
        Err(err) => {
            eprintln!("pbsfs: error: {err:#}");
            let interrupted = err.downcast_ref::<cli::Interrupted>();
            std::process::exit(interrupted.map_or(1, |signal| 128 + signal.0));
        }
    }
}
