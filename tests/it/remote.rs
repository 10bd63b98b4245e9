//! The PBS client (src/remote) against the in-process test server: listing, reading through
//! the reader protocol, authentication and certificate errors, dropped connections.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use common::pbs_server::{fixture_datastore, ServerConfig, TestServer};
use common::{index_file_name, HashWriter, UNENCRYPTED_ARCHIVES};
use pbsfs::format::index::ChunkIndex;
use pbsfs::remote::access::RemoteAccess;
use pbsfs::remote::{ConnectOptions, Fingerprint, RemoteDatastore, RemoteError, Secret};
use pbsfs::repository::RemoteRepository;
use pbsfs::store::access::{open_index, DatastoreAccess, SnapshotAccess};
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::open::open_index_reader;
use pbsfs::store::ChunkSource;

fn remote_error(err: &anyhow::Error) -> &RemoteError {
    err.chain()
        .find_map(|e| e.downcast_ref::<RemoteError>())
        .unwrap_or_else(|| panic!("not a RemoteError: {err:#}"))
}

/// Connecting with `options` fails on the certificate; the error shows the server's
/// fingerprint.
fn certificate_error(server: &TestServer, options: ConnectOptions) -> anyhow::Error {
    let err = RemoteDatastore::connect(&server.repository(&server.config.token_id), options)
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains(&server.fingerprint), "{err:#}");
    err
}

#[test]
fn listing_matches_the_local_store() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let remote = server.connect();
    let local = LocalDatastore::open(&fixture_datastore()).unwrap();
    let root = BackupNamespace::root();

    assert_eq!(
        remote.list_namespaces(&root).unwrap(),
        local.list_namespaces(&root).unwrap()
    );
    for ns in local.list_namespaces(&root).unwrap() {
        let remote_list = remote.list_snapshots(&ns, None).unwrap();
        let entries: Vec<_> = remote_list.iter().map(|s| s.entry.clone()).collect();
        assert_eq!(entries, local.list_snapshots(&ns, None).unwrap(), "ns {ns}");
        assert!(!entries.is_empty());
        for snapshot in &remote_list {
            let manifest = local.read_manifest(&ns, &snapshot.entry.dir).unwrap();
            // The manifest's files, then the manifest itself, with the manifest's sizes.
            let names: Vec<_> = snapshot.files.iter().map(|f| f.filename.as_str()).collect();
            let mut expected: Vec<_> = manifest.files.iter().map(|f| f.filename.as_str()).collect();
            expected.push("index.json.blob");
            assert_eq!(names, expected);
            for (file, info) in snapshot.files.iter().zip(&manifest.files) {
                assert_eq!(file.size, Some(info.size));
                assert_eq!(file.crypt_mode, Some(info.crypt_mode));
            }
            assert_eq!(
                remote.snapshot_files(&ns, &snapshot.entry.dir).unwrap(),
                snapshot.files
            );
            assert_eq!(
                remote.read_manifest(&ns, &snapshot.entry.dir).unwrap(),
                manifest
            );
        }
        let groups: Vec<_> = remote
            .list_groups(&ns)
            .unwrap()
            .into_iter()
            .map(|g| g.group)
            .collect();
        assert_eq!(groups, local.list_groups(&ns).unwrap());
    }
    // One group only.
    let meta = pbsfs::store::names::BackupGroup::parse("host/fixture-meta").unwrap();
    let list = remote.list_snapshots(&root, Some(&meta)).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].entry.dir.time < list[1].entry.dir.time);
}

#[test]
fn every_unencrypted_fixture_archive_reassembles_through_the_reader_protocol() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let remote = RemoteAccess(Arc::new(server.connect()));
    for (ns, dir, archive, sha) in UNENCRYPTED_ARCHIVES {
        let file = index_file_name(archive);
        let ns = BackupNamespace::parse(ns).unwrap();
        let dir = BackupDir::parse(dir).unwrap();
        let snapshot = remote.open_snapshot(&ns, &dir).unwrap();
        let chunks = Arc::new(VerifyingChunkReader::new(snapshot.chunk_source()));
        let archive = open_index_reader(&*snapshot, &file, chunks).unwrap();
        let mut hash = HashWriter(Sha256::new());
        let written = archive.copy_to(&mut hash).unwrap();
        assert_eq!(written, archive.index().total_size());
        assert_eq!(hex::encode(hash.0.finalize()), *sha, "{dir}/{file}");
    }
}

#[test]
fn many_concurrent_chunk_reads_share_one_session() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let remote = RemoteAccess(Arc::new(server.connect()));
    let dir = BackupDir::parse("host/fixture-meta/2026-11-25T08:28:55Z").unwrap();
    let snapshot = remote
        .open_snapshot(&BackupNamespace::root(), &dir)
        .unwrap();
    let index = open_index(&*snapshot, "root.ppxar.didx").unwrap();
    let reader = snapshot.chunk_source();
    let local = LocalDatastore::open(&fixture_datastore()).unwrap();
    let upgrades_before = server
        .counters
        .upgrades
        .load(std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|scope| {
        for round in 0..4 {
            let reader = reader.clone();
            let index = &index;
            let local = &local;
            scope.spawn(move || {
                for i in 0..index.chunk_count() {
                    let digest = index
                        .chunk_info((i + round) % index.chunk_count())
                        .unwrap()
                        .digest;
                    assert_eq!(
                        reader.fetch_raw_chunk(&digest).unwrap(),
                        local.fetch_raw_chunk(&digest).unwrap()
                    );
                }
            });
        }
    });
    assert_eq!(
        server
            .counters
            .upgrades
            .load(std::sync::atomic::Ordering::SeqCst),
        upgrades_before,
        "no new connection was needed"
    );
}

#[test]
fn a_chunk_outside_the_downloaded_indexes_is_refused() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let remote = server.connect();
    let legacy = BackupDir::parse("host/fixture-legacy/2026-11-25T08:28:42Z").unwrap();
    let vm = BackupDir::parse("vm/100/2026-11-25T08:29:01Z").unwrap();
    let root = BackupNamespace::root();
    let local = LocalDatastore::open(&fixture_datastore()).unwrap();
    let vm_manifest = local.read_manifest(&root, &vm).unwrap();
    let vm_index = pbsfs::format::index::AnyIndex::parse(
        &local
            .read_snapshot_file(&root, &vm, "drive-scsi0.img.fidx")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(vm_manifest.files.len(), 1);
    let reader = remote.open_reader(&root, &legacy).unwrap();
    let err = reader.fetch_raw_chunk(&vm_index.digests()[0]).unwrap_err();
    assert_eq!(remote_error(&err).status(), Some(401), "{err:#}");
    assert!(format!("{err:#}").contains("not allowed"), "{err:#}");
}

#[test]
fn ticket_login_is_done_once_and_reused() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let options = password_options(&server);
    let remote =
        RemoteDatastore::connect(&server.repository(&server.config.user), options).unwrap();
    let root = BackupNamespace::root();
    assert!(!remote.list_snapshots(&root, None).unwrap().is_empty());
    let dir = BackupDir::parse("host/fixture-legacy/2026-11-25T08:28:42Z").unwrap();
    let reader = remote.open_reader(&root, &dir).unwrap();
    assert_eq!(reader.read_manifest().unwrap().files.len(), 2);
    assert_eq!(server.logins(), 1);
}

#[test]
fn an_old_ticket_is_renewed_with_itself() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let mut options = password_options(&server);
    // Every ticket counts as old: each request after the first login renews it.
    options.ticket_renew_after = std::time::Duration::ZERO;
    let remote =
        RemoteDatastore::connect(&server.repository(&server.config.user), options).unwrap();
    let root = BackupNamespace::root();
    for _ in 0..3 {
        assert!(!remote.list_snapshots(&root, None).unwrap().is_empty());
    }
    let renewals = server
        .counters
        .renewals
        .load(std::sync::atomic::Ordering::SeqCst);
    let logins = server
        .counters
        .logins
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(renewals >= 2, "renewals {renewals}");
    // One login with the password, every other one a renewal with the ticket.
    assert_eq!(logins, renewals + 1);
}

#[test]
fn a_wrong_secret_is_a_clear_authentication_error() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    for (auth_id, secret) in [
        (
            server.config.token_id.clone(),
            "00000000-0000-0000-0000-000000000000",
        ),
        (server.config.user.clone(), "wrong-password"),
    ] {
        let mut options = server.token_options();
        options.auth_id = auth_id.clone();
        options.secret = Secret::new(secret);
        let started = Instant::now();
        let err = RemoteDatastore::connect(&server.repository(&auth_id), options)
            .err()
            .expect("must fail");
        assert!(
            matches!(remote_error(&err), RemoteError::AuthenticationFailed { .. }),
            "{err:#}"
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("authentication") && text.contains(&auth_id),
            "{text}"
        );
        assert!(
            !text.contains(secret),
            "the secret must not be shown: {text}"
        );
        assert!(started.elapsed() >= server.config.auth_fail_delay);
    }
}

#[test]
fn a_wrong_fingerprint_is_refused_and_the_real_one_shown() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let mut options = server.token_options();
    options.fingerprint = Some(Fingerprint([0x11; 32]));
    let err = certificate_error(&server, options);
    assert!(
        matches!(remote_error(&err), RemoteError::FingerprintMismatch { .. }),
        "{err:#}"
    );
    // Without a pin, the self-signed certificate is untrusted; its fingerprint is shown.
    let mut options = server.token_options();
    options.fingerprint = None;
    let err = certificate_error(&server, options);
    assert!(
        matches!(remote_error(&err), RemoteError::UntrustedCertificate { .. }),
        "{err:#}"
    );
    assert_eq!(server.logins(), 0);
}

#[test]
fn an_unreachable_server_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut options = ConnectOptions::new("127.0.0.1", port, "root@pam!x", Secret::new("s"));
    options.connect_timeout = Duration::from_secs(2);
    let repo = RemoteRepository {
        auth_id: "root@pam!x".into(),
        host: "127.0.0.1".into(),
        port,
        datastore: "store1".into(),
    };
    let started = Instant::now();
    let err = RemoteDatastore::connect(&repo, options)
        .err()
        .expect("must fail");
    assert!(
        matches!(remote_error(&err), RemoteError::Unreachable { .. }),
        "{err:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn first_chunks(snapshot: &dyn SnapshotAccess, file: &str) -> Vec<pbsfs::format::Digest> {
    open_index(snapshot, file).unwrap().digests().to_vec()
}

#[test]
fn reads_recover_after_dropped_connections_and_a_restart() {
    let mut server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let remote = RemoteAccess(Arc::new(server.connect()));
    let dir = BackupDir::parse("host/fixture-legacy/2026-11-25T08:28:42Z").unwrap();
    let snapshot = remote
        .open_snapshot(&BackupNamespace::root(), &dir)
        .unwrap();
    let digests = first_chunks(&*snapshot, "root.pxar.didx");
    let reader = snapshot.chunk_source();
    let local = LocalDatastore::open(&fixture_datastore()).unwrap();
    assert_eq!(
        reader.fetch_raw_chunk(&digests[0]).unwrap(),
        local.fetch_raw_chunk(&digests[0]).unwrap()
    );

    // The server drops every connection: the next read reconnects, downloads the index
    // again (the new session must know it) and succeeds.
    server.kill_connections();
    std::thread::sleep(Duration::from_millis(100));
    // API calls notice the stale keep-alive connection and use a new one.
    assert_eq!(
        remote
            .list_snapshots(&BackupNamespace::root(), None)
            .unwrap()
            .len(),
        local
            .list_snapshots(&BackupNamespace::root(), None)
            .unwrap()
            .len()
    );
    assert_eq!(
        reader.fetch_raw_chunk(&digests[1]).unwrap(),
        local.fetch_raw_chunk(&digests[1]).unwrap()
    );

    // The server is gone: reads fail promptly with a connection error.
    server.stop();
    let started = Instant::now();
    let err = reader.fetch_raw_chunk(&digests[2]).unwrap_err();
    assert!(remote_error(&err).is_connection_error(), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // Back again: the same reader works without being reopened.
    server.restart();
    assert_eq!(
        reader.fetch_raw_chunk(&digests[2]).unwrap(),
        local.fetch_raw_chunk(&digests[2]).unwrap()
    );
}

/// Connection options that log in with the test user's password instead of the token.
fn password_options(server: &TestServer) -> ConnectOptions {
    let mut options = server.token_options();
    options.auth_id = server.config.user.clone();
    options.secret = Secret::new(server.config.password.clone());
    options
}
