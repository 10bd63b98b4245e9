//! A PBS-compatible test server, written from protocol.md and the wire transcripts: HTTPS
//! with a generated self-signed certificate, token and ticket auth (401 after a delay), the
//! admin calls for browsing, and both upgraded HTTP/2 protocols over a local datastore
//! directory. It enforces what PBS enforces (index before chunk, known chunks at append,
//! offsets, counts and checksums at close, manifest at finish) and counts what it serves.

#![allow(dead_code)]

mod admin;
mod backup;
mod client;
mod http1;
mod manage;
mod reader;
mod session;
mod state;
mod tasks;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest as _;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use pbsfs::store::local::LocalDatastore;

use http1::accept_loop;
use state::State;
pub use state::{Counters, ServerConfig};

pub const READER_PROTOCOL: &str = "proxmox-backup-reader-protocol-v1";
pub const BACKUP_PROTOCOL: &str = "proxmox-backup-protocol-v1";

pub struct TestServer {
    pub addr: SocketAddr,
    /// `aa:bb:…` of the server certificate.
    pub fingerprint: String,
    pub config: ServerConfig,
    pub counters: Arc<Counters>,
    state: Arc<State>,
    tls: Arc<rustls::ServerConfig>,
    runtime: tokio::runtime::Runtime,
    stop: Option<watch::Sender<bool>>,
    /// The temporary directory of a server started on an empty datastore: removed after
    /// the server stopped.
    scratch: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Serves the datastore at `datastore` on a free port of 127.0.0.1.
    pub fn start(datastore: &Path, config: ServerConfig) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = certified.cert.der().clone();
        let fingerprint = sha2::Sha256::digest(cert_der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .unwrap();
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            config: config.clone(),
            store: Arc::new(LocalDatastore::open(datastore).unwrap()),
            tickets: Mutex::new(HashSet::new()),
            counters: counters.clone(),
            kill: watch::channel(0).0,
            tasks: Default::default(),
        });
        let mut server = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            fingerprint,
            config,
            counters,
            state,
            tls: Arc::new(tls),
            runtime,
            stop: None,
            scratch: None,
        };
        server.listen();
        server
    }

    /// Serves a fresh, empty datastore of its own with the default configuration.
    pub fn start_empty() -> TestServer {
        let scratch = tempfile::tempdir().unwrap();
        let mut server =
            TestServer::start(&empty_datastore(scratch.path()), ServerConfig::default());
        server.scratch = Some(scratch);
        server
    }

    fn listen(&mut self) {
        let addr = self.addr;
        let listener = self.runtime.block_on(async {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            socket.listen(64).unwrap()
        });
        self.addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        self.stop = Some(stop_tx);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        self.runtime
            .spawn(accept_loop(listener, acceptor, self.state.clone(), stop_rx));
    }

    pub fn store(&self) -> &Arc<LocalDatastore> {
        &self.state.store
    }

    /// Drops every open connection (API and sessions), as a crashing server would.
    pub fn kill_connections(&self) {
        self.state.kill.send_modify(|generation| *generation += 1);
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.kill_connections();
        // Let the accept loop notice before the port is reused.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.listen();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh, empty datastore directory (without the 65536 prefix directories, which the
/// chunk store creates on demand).
pub fn empty_datastore(parent: &Path) -> PathBuf {
    let path = parent.join("datastore");
    std::fs::create_dir_all(path.join(".chunks")).unwrap();
    std::fs::write(path.join(".lock"), b"").unwrap();
    path
}

pub fn fixture_datastore() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/datastore"
    ))
}
