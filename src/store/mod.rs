//! Chunk sources and sinks: the local PBS-layout datastore, verified chunk reads, and the range
//! reader that turns an index plus a [`ChunkSource`] into a random-access byte stream.

pub mod access;
pub mod admin;
pub mod archive;
pub mod cache;
pub mod chunk_reader;
pub mod chunk_source;
mod chunk_tmp;
pub mod diff;
pub mod find;
pub mod fs_modes;
pub mod gc;
pub mod local;
pub mod local_target;
pub mod manage;
pub mod names;
pub mod open;
pub mod process_lock;
pub mod prune;
pub mod range;
pub mod snapshot;
pub mod sync;
pub mod target;
pub use crate::format::time;
pub mod verify;
pub mod worker_pool;
pub mod writer;

pub use chunk_source::ChunkSource;
