//! Chunk sources and sinks: the local PBS-layout datastore, and the range reader that turns
//! an index plus a [`ChunkSource`] into a random-access byte stream.

pub mod chunk_source;

pub use chunk_source::ChunkSource;
