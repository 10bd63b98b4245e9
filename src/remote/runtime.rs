//! One tokio runtime for all server connections of the process. The rest of pbsfs is
//! synchronous (FUSE threads, the CLI); it enters here through [`block_on`].

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pbsfs-remote")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    })
}

/// Runs `future` to completion from synchronous code; many threads may wait at once.
/// Must not be called from inside an async task.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
