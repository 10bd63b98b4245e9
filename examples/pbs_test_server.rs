//! The in-process PBS test server of the integration tests as a program, for benchmarks
//! (`scripts/bench-remote.sh`): serves a datastore directory on 127.0.0.1 until killed.
//!
//! Usage: pbs_test_server DATASTORE
//! Prints, one per line, then serves: `port=N`, `fingerprint=aa:bb:…`, `auth-id=…`,
//! `secret=…` (the test server's fixed token secret, not a real one), `store=…`.

#[path = "../tests/it/common/pbs_server/mod.rs"]
mod pbs_server;

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, datastore] = args.as_slice() else {
        anyhow::bail!("usage: pbs_test_server DATASTORE");
    };
    let server = pbs_server::TestServer::start(datastore.as_ref(), Default::default());
    let mut out = std::io::stdout().lock();
    writeln!(out, "port={}", server.addr.port())?;
    writeln!(out, "fingerprint={}", server.fingerprint)?;
    writeln!(out, "auth-id={}", server.config.token_id)?;
    writeln!(out, "secret={}", server.config.token_secret)?;
    writeln!(out, "store={}", server.config.store_name)?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
