//! What every part of the server shares: its configuration, counters and state.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use pbsfs::store::local::LocalDatastore;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub store_name: String,
    pub token_id: String,
    pub token_secret: String,
    pub user: String,
    pub password: String,
    /// PBS waits about 3 s before answering 401; tests use less.
    pub auth_fail_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            store_name: "store1".into(),
            token_id: "root@pam!pbsfs".into(),
            token_secret: "0e4c8e8c-1111-2222-3333-444455556666".into(),
            user: "tester@pbs".into(),
            password: "tester-password".into(),
            auth_fail_delay: Duration::from_millis(300),
        }
    }
}

/// What the server saw, for assertions.
#[derive(Default)]
pub struct Counters {
    pub chunk_reads: AtomicU64,
    pub chunk_uploads: AtomicU64,
    pub upgrades: AtomicU64,
    pub logins: AtomicU64,
    /// Logins that renewed a ticket (the password was a valid ticket).
    pub renewals: AtomicU64,
}

pub(super) struct State {
    pub(super) config: ServerConfig,
    pub(super) store: Arc<LocalDatastore>,
    pub(super) tickets: Mutex<HashSet<String>>,
    pub(super) counters: Arc<Counters>,
    pub(super) kill: watch::Sender<u64>,
    pub(super) tasks: Arc<super::tasks::Tasks>,
}
