//! Running the `pbsfs` binary against the in-process test server.
#![allow(dead_code)]

use std::process::{Command, Output};

use super::pbs_server::TestServer;

/// The server's datastore as a repository string (token auth-id, loopback port).
pub fn repository(server: &TestServer) -> String {
    format!(
        "{}@127.0.0.1:{}:{}",
        server.config.token_id,
        server.addr.port(),
        server.config.store_name
    )
}

/// `pbsfs` against the server (token secret from PBS_PASSWORD, pinned fingerprint).
pub fn pbsfs(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--repository",
            &repository(server),
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(args)
        .env("PBS_PASSWORD", &server.config.token_secret)
        .env_remove("PBS_FINGERPRINT")
        .env_remove("PBS_NAMESPACE")
        .output()
        .unwrap()
}

/// The output's stdout, after asserting the command succeeded.
pub fn ok(out: &Output) -> &[u8] {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}
