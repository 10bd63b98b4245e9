//! The agent's side of the protocol: serves its roots read-only over a byte stream (stdin
//! and stdout under SSH), one request after another in the order they came. Replies are
//! flushed when no further request is waiting, so a pipelined client gets them in batches.
//! A block read that is all zeros (a hole of a sparse file, or zeros written) goes back as
//! a count, not the bytes, to a client whose version knows that reply.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};

use super::confined::{ListError, Roots};
use super::protocol::{
    negotiate, read_frame, write_data_frame, write_frame, Errno, Frame, Message, ProtocolError,
    LIST_PART_BYTES, MAGIC, MAX_READ, MIN_VERSION, VERSION, ZEROS_SINCE,
};

/// Serves `roots` until the client closes the stream, in the highest protocol version both
/// sides speak. A client too old, a garbled stream or a root that cannot be opened is an
/// error (the client is told when it can be).
pub fn serve(roots: &[PathBuf], input: impl Read, output: impl Write) -> Result<()> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut output = BufWriter::with_capacity(256 * 1024, output);
    let hello = match read_frame(&mut input) {
        Ok(frame) => frame,
        Err(ProtocolError::Closed) => return Ok(()),
        Err(err) => return Err(anyhow!("no valid greeting from the client: {err}")),
    };
    let version = match hello.message {
        Message::Hello { magic, version } if magic == MAGIC => match negotiate(version) {
            Some(version) => version,
            None => {
                let message = format!(
                    "protocol version {version} is not known to this agent (it speaks \
                     {MIN_VERSION} to {VERSION})"
                );
                refuse(&mut output, &message);
                bail!(message);
            }
        },
        _ => bail!("the client did not greet with the agent protocol"),
    };
    let mut session = Session {
        zeros_as_counts: version >= ZEROS_SINCE,
        read_buffer: Vec::new(),
    };
    let mut roots = match Roots::open(roots) {
        Ok(roots) => roots,
        Err(err) => {
            let message = format!("cannot serve: {err}");
            refuse(&mut output, &message);
            bail!(message);
        }
    };
    let welcome = Message::Welcome {
        magic: MAGIC,
        version,
        hostname: host_name().into_bytes(),
        time: now(),
        roots: roots
            .names()
            .iter()
            .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
            .collect(),
    };
    send(&mut output, 0, welcome)?;
    output.flush()?;
    loop {
        let frame = match read_frame(&mut input) {
            Ok(frame) => frame,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(err) => return Err(err).context("reading a request"),
        };
        answer(&mut roots, &mut session, frame, &mut output)?;
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}

fn refuse(output: &mut impl Write, message: &str) {
    let refused = Message::Refused {
        message: message.as_bytes().to_vec(),
    };
    // The client may be gone already: the error is reported here either way.
    let _ = send(output, 0, refused).and_then(|()| output.flush());
}

fn send(output: &mut impl Write, id: u32, message: Message) -> io::Result<()> {
    write_frame(output, &Frame { id, message })
}

fn reply<T>(
    output: &mut impl Write,
    id: u32,
    result: Errno<T>,
    ok: impl FnOnce(T) -> Message,
) -> io::Result<()> {
    match result {
        Ok(value) => send(output, id, ok(value)),
        Err(errno) => send_failed(output, id, errno),
    }
}

/// The reply to a request the file system refused with `errno`.
fn send_failed(output: &mut impl Write, id: u32, errno: i32) -> io::Result<()> {
    let failed = Message::Failed {
        errno,
        message: Vec::new(),
    };
    send(output, id, failed)
}

/// What the negotiated version allows.
struct Session {
    /// Blocks of zeros are answered with [`Message::Zeros`].
    zeros_as_counts: bool,
    /// Every read goes into this one buffer: a fresh megabyte per block would cost fresh
    /// pages each time.
    read_buffer: Vec<u8>,
}

/// A read's reply, the first `len` bytes of the session's read buffer: the bytes, or their
/// count when they are all zeros and the client knows that reply (an empty read stays
/// data: the end of the file).
fn send_data(output: &mut impl Write, session: &Session, id: u32, len: usize) -> io::Result<()> {
    let data = &session.read_buffer[..len];
    if session.zeros_as_counts && !data.is_empty() && all_zeros(data) {
        send(output, id, Message::Zeros(len as u32))
    } else {
        write_data_frame(output, id, data)
    }
}

/// Compared with a zeroed buffer a slice at a time: `memcmp` speed, and data that is not
/// zero usually differs in its first bytes.
fn all_zeros(data: &[u8]) -> bool {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    data.chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Answers one request; an error here ends the session (the stream is broken or the
/// client does not follow the protocol).
fn answer(
    roots: &mut Roots,
    session: &mut Session,
    frame: Frame,
    output: &mut impl Write,
) -> Result<()> {
    let id = frame.id;
    match frame.message {
        Message::Stat(target) => reply(output, id, roots.stat(&target), Message::StatOk)?,
        Message::List { target, with_attrs } => {
            let listed = roots.list(&target, with_attrs, LIST_PART_BYTES, |entries| {
                send(
                    output,
                    id,
                    Message::ListPart {
                        more: true,
                        entries,
                    },
                )
            });
            match listed {
                Ok(()) => send(
                    output,
                    id,
                    Message::ListPart {
                        more: false,
                        entries: Vec::new(),
                    },
                )?,
                Err(ListError::Fs(errno)) => send_failed(output, id, errno)?,
                Err(ListError::Io(err)) => return Err(err.into()),
            }
        }
        Message::Read {
            target,
            offset,
            len,
        } => {
            let len = (len as usize).min(MAX_READ);
            match roots.read_into(&target, offset, len, &mut session.read_buffer) {
                Ok(got) => send_data(output, session, id, got)?,
                Err(errno) => send_failed(output, id, errno)?,
            }
        }
        Message::ReadLink(target) => reply(output, id, roots.read_link(&target), Message::Data)?,
        Message::GetAttrs(target) => reply(output, id, roots.attrs(&target), Message::AttrsOk)?,
        Message::FsMagic(target) => reply(output, id, roots.fs_magic(&target), Message::Number)?,
        Message::ImageSize(target) => {
            reply(output, id, roots.image_size(&target), Message::Number)?
        }
        other => bail!("unexpected message from the client: {}", kind_name(&other)),
    }
    Ok(())
}

fn kind_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "a second greeting",
        _ => "a reply",
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// This host's short name: the default backup id of a pull.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    name.split('.').next().unwrap_or("localhost").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let message = Message::Hello {
            magic: MAGIC,
            version,
        };
        write_frame(&mut out, &Frame { id: 0, message }).unwrap();
        out
    }

    #[test]
    fn a_client_below_the_lowest_version_is_refused() {
        let mut reply = Vec::new();
        let err = serve(&[PathBuf::from("/")], &hello(0)[..], &mut reply).unwrap_err();
        assert!(err.to_string().contains("protocol version 0"), "{err}");
        match read_frame(&mut &reply[..]).unwrap().message {
            Message::Refused { message } => {
                assert!(String::from_utf8_lossy(&message).contains("protocol version 0"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// The welcome and the replies to a read of zeros, a read of data and a read at the
    /// end, for a client greeting with `version`.
    fn session_replies(version: u16) -> Vec<Message> {
        let dir = tempfile::TempDir::new().unwrap();
        let mut content = vec![0u8; 300 * 1024];
        content[200 * 1024 + 5] = 1;
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let mut input = hello(version);
        for (id, offset) in [(1, 0), (2, 200 * 1024), (3, 300 * 1024)] {
            let target = super::super::protocol::Target {
                root: 0,
                path: b"f".to_vec(),
            };
            let message = Message::Read {
                target,
                offset,
                len: 100 * 1024,
            };
            write_frame(&mut input, &Frame { id, message }).unwrap();
        }
        let mut reply = Vec::new();
        serve(&[dir.path().to_path_buf()], &input[..], &mut reply).unwrap();
        let mut replies = &reply[..];
        std::iter::from_fn(|| read_frame(&mut replies).ok())
            .map(|frame| frame.message)
            .collect()
    }

    #[test]
    fn zeros_go_back_as_a_count_only_to_clients_that_know_it() {
        let current = session_replies(VERSION);
        assert!(matches!(current[0], Message::Welcome { version, .. } if version == VERSION));
        assert_eq!(current[1], Message::Zeros(100 * 1024));
        assert!(matches!(&current[2], Message::Data(data) if data.len() == 100 * 1024));
        assert_eq!(current[3], Message::Data(Vec::new()));
        // A later client gets this agent's version; an older one plain data.
        let later = session_replies(VERSION + 1);
        assert!(matches!(later[0], Message::Welcome { version, .. } if version == VERSION));
        assert_eq!(later[1], Message::Zeros(100 * 1024));
        let older = session_replies(ZEROS_SINCE - 1);
        assert!(matches!(older[0], Message::Welcome { version, .. } if version == ZEROS_SINCE - 1));
        assert_eq!(older[1], Message::Data(vec![0; 100 * 1024]));
        assert_eq!(older.len(), 4);
    }

    #[test]
    fn all_zeros_looks_at_every_byte() {
        assert!(all_zeros(&[]));
        let mut data = vec![0u8; 200_000];
        assert!(all_zeros(&data));
        for at in [0, 65_535, 65_536, 199_999] {
            data[at] = 1;
            assert!(!all_zeros(&data), "{at}");
            data[at] = 0;
        }
    }

    #[test]
    fn requests_are_answered_and_misbehaviour_ends_the_session() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let mut input = hello(VERSION);
        let target = |path: &str| super::super::protocol::Target {
            root: 0,
            path: path.as_bytes().to_vec(),
        };
        for (id, message) in [
            (1, Message::Stat(target("f"))),
            (2, Message::Stat(target("../etc"))),
            (
                3,
                Message::Read {
                    target: target("f"),
                    offset: u64::MAX - 1,
                    len: 4096,
                },
            ),
            (4, Message::Number(5)),
        ] {
            write_frame(&mut input, &Frame { id, message }).unwrap();
        }
        let mut reply = Vec::new();
        let err = serve(&[dir.path().to_path_buf()], &input[..], &mut reply).unwrap_err();
        assert!(err.to_string().contains("unexpected message"), "{err}");
        let mut replies = &reply[..];
        assert!(matches!(
            read_frame(&mut replies).unwrap().message,
            Message::Welcome { .. }
        ));
        let stat = read_frame(&mut replies).unwrap();
        assert!(matches!(stat.message, Message::StatOk(s) if s.size == 4) && stat.id == 1);
        let refused = read_frame(&mut replies).unwrap();
        assert_eq!(refused.id, 2);
        assert!(matches!(refused.message, Message::Failed { errno, .. } if errno == libc::EACCES));
        // An offset past what a file can have is an error, not an overflow.
        let far = read_frame(&mut replies).unwrap();
        assert_eq!(far.id, 3);
        assert!(matches!(
            far.message,
            Message::Failed { .. } | Message::Data(_)
        ));
    }
}
