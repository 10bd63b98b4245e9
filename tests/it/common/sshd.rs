//! A real OpenSSH server for the pull tests: `/usr/sbin/sshd -D` on 127.0.0.1 on a free port,
//! with a host key and the user's keys generated in a temporary directory (`.ci/run`
//! installs openssh-server). Stopped when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

/// A user key: its private key file and public key line.
pub struct UserKey {
    pub private: PathBuf,
    pub public: String,
}

fn keygen(path: &Path, kind: &str) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "pbsfs-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl Sshd {
    /// Starts sshd; `authorized_keys` lines are written as given (each a key line,
    /// possibly with options such as a forced command).
    pub fn start(authorized_keys: &[String]) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (.ci/run does)"
        );
        let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        keygen(&dir.path().join("host_key"), "ed25519");
        std::fs::write(
            dir.path().join("authorized_keys"),
            authorized_keys.join("\n") + "\n",
        )
        .unwrap();
        // sshd wants its privilege separation directory even when it does not use it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nPermitRootLogin yes\nLogLevel FATAL\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let sshd = Sshd { dir, child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sshd did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// A new user key in `dir`.
    pub fn user_key(dir: &Path, name: &str) -> UserKey {
        let private = dir.join(name);
        let public = keygen(&private, "ed25519");
        UserKey { private, public }
    }

    /// The transport command for `pbsfs pull --rsh` with `key`.
    pub fn rsh(&self, key: &UserKey) -> String {
        format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR",
            self.port,
            key.private.display()
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
