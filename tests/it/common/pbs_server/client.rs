//! How the tests' clients reach this server: its repository, token options, a connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pbsfs::remote::{ConnectOptions, Fingerprint, RemoteDatastore, Secret};
use pbsfs::repository::RemoteRepository;

use super::TestServer;

impl TestServer {
    /// This server's datastore as `auth_id` would name it.
    pub fn repository(&self, auth_id: &str) -> RemoteRepository {
        RemoteRepository {
            auth_id: auth_id.to_string(),
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            datastore: self.config.store_name.clone(),
        }
    }

    /// Options for the API token, pinned to this server's certificate; the request timeout
    /// is generous for uploads on a busy machine.
    pub fn token_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(
            "127.0.0.1",
            self.addr.port(),
            &self.config.token_id,
            Secret::new(self.config.token_secret.clone()),
        );
        options.fingerprint = Some(Fingerprint::parse(&self.fingerprint).unwrap());
        options.request_timeout = Duration::from_secs(30);
        options
    }

    /// A client of this server's datastore with the API token.
    pub fn connect(&self) -> RemoteDatastore {
        RemoteDatastore::connect(
            &self.repository(&self.config.token_id),
            self.token_options(),
        )
        .unwrap()
    }

    /// Logins (password or ticket renewal) so far.
    pub fn logins(&self) -> u64 {
        self.counters.logins.load(Ordering::SeqCst)
    }
}
