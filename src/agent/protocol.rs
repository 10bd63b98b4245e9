//! The agent protocol: length-prefixed binary frames over any byte stream.
//!
//! A frame is `u32` body length (little endian), then the body: a `u8` kind, a `u32`
//! request id and the kind's fields. The client opens with [`Message::Hello`] (magic and
//! the highest version it speaks); the agent answers [`Message::Welcome`] with the version
//! both speak ([`negotiate`]), or [`Message::Refused`]. After that
//! every request carries an id of the client's choosing and the agent answers each with
//! one reply of the same id (a listing with several [`Message::ListPart`]s, the last
//! with `more == false`), in order. Decoding checks every length against hard limits and
//! never panics: a hostile or garbled stream is an error, not a crash or a huge
//! allocation.

use std::io::{self, Read, Write};

use crate::backup::fs_accessor::FileStat;
use crate::pxar::format::MTime;

/// Identifies the protocol in the first frame of each side.
pub const MAGIC: [u8; 8] = *b"PBSFSAGT";
/// The highest protocol version this build speaks.
pub const VERSION: u16 = 2;
/// The lowest protocol version this build still speaks.
pub const MIN_VERSION: u16 = 1;
/// The version that brought [`Message::Zeros`]: never sent in a session below it.
pub const ZEROS_SINCE: u16 = 2;
/// Largest frame body either side accepts.
pub const MAX_FRAME: usize = MAX_READ + 64 * 1024;
/// Largest file read one request may ask for.
pub const MAX_READ: usize = 4 << 20;
/// Largest path, name, link target, xattr name or value, host name or message.
pub const MAX_BYTES: usize = 64 * 1024;
/// Largest number of served roots.
pub const MAX_ROOTS: usize = 1024;
/// A listing part is cut when it reaches this many bytes (well below [`MAX_FRAME`]).
pub const LIST_PART_BYTES: usize = 1 << 20;

/// The version a session speaks when the client greets with `client_version` (the highest
/// it speaks): the lower of both sides' highest; `None` when the client is too old.
pub fn negotiate(client_version: u16) -> Option<u16> {
    (client_version >= MIN_VERSION).then(|| client_version.min(VERSION))
}

/// A path below one of the agent's roots: `root` indexes the roots of the welcome, `path`
/// is relative (empty: the root itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub root: u32,
    pub path: Vec<u8>,
}

/// A result carrying an OS error number, as the agent saw it.
pub type Errno<T> = Result<T, i32>;

/// An extended attribute's name and value (`None`: vanished since listed).
pub type Xattr = (Vec<u8>, Errno<Option<Vec<u8>>>);

/// The attributes the metadata capture reads from an opened entry, read in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub chattr: Errno<Option<u64>>,
    pub fat: Errno<Option<u64>>,
    pub project_id: Errno<Option<u64>>,
    /// Names in listing order with their values (`None`: vanished since listed).
    pub xattrs: Errno<Vec<Xattr>>,
}

/// What a listing adds to an entry's stat so the walk needs no more round trips for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extra {
    None,
    /// A directory's or regular file's attributes (opening it may have failed).
    Attrs(Errno<Attrs>),
    /// A symlink's target.
    Link(Errno<Vec<u8>>),
}

/// One directory entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub name: Vec<u8>,
    pub stat: Errno<FileStat>,
    pub extra: Extra,
}

/// Everything that crosses the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // Client to agent.
    Hello {
        magic: [u8; 8],
        version: u16,
    },
    Stat(Target),
    List {
        target: Target,
        with_attrs: bool,
    },
    Read {
        target: Target,
        offset: u64,
        len: u32,
    },
    ReadLink(Target),
    GetAttrs(Target),
    FsMagic(Target),
    ImageSize(Target),
    // Agent to client.
    Welcome {
        magic: [u8; 8],
        version: u16,
        hostname: Vec<u8>,
        /// The agent's clock (seconds since the epoch), to tell a skew from the client's.
        time: i64,
        roots: Vec<Vec<u8>>,
    },
    Refused {
        message: Vec<u8>,
    },
    Failed {
        errno: i32,
        message: Vec<u8>,
    },
    StatOk(FileStat),
    ListPart {
        more: bool,
        entries: Vec<ListEntry>,
    },
    Data(Vec<u8>),
    AttrsOk(Attrs),
    Number(u64),
    /// A read's answer when the bytes read are all zeros (a hole or a real zero run):
    /// that many zero bytes, from version [`ZEROS_SINCE`] on.
    Zeros(u32),
}

/// A frame: the request id (0 for hello, welcome and refusal) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub id: u32,
    pub message: Message,
}

/// Why a stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the stream ended")]
    Closed,
    #[error("garbled stream: {0}")]
    Garbled(String),
}

fn garbled<T>(what: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError::Garbled(what.into()))
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const STAT: u8 = 2;
    pub const LIST: u8 = 3;
    pub const READ: u8 = 4;
    pub const READ_LINK: u8 = 5;
    pub const GET_ATTRS: u8 = 6;
    pub const FS_MAGIC: u8 = 7;
    pub const IMAGE_SIZE: u8 = 8;
    pub const WELCOME: u8 = 64;
    pub const REFUSED: u8 = 65;
    pub const FAILED: u8 = 66;
    pub const STAT_OK: u8 = 67;
    pub const LIST_PART: u8 = 68;
    pub const DATA: u8 = 69;
    pub const ATTRS_OK: u8 = 70;
    pub const NUMBER: u8 = 71;
    pub const ZEROS: u8 = 72;
}

/// Makes a pipe that carries the protocol hold a whole data block (the default holds 64
/// KiB): fewer wakeups and system calls on both of its ends. Best effort: on what is not a
/// pipe, or above the system's limit for pipes, nothing changes.
pub fn widen_pipe(fd: std::os::unix::io::RawFd) {
    // SAFETY: fcntl on a descriptor the caller holds open; it changes only a pipe's size.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETPIPE_SZ,
            (MAX_READ + 64 * 1024) as libc::c_int,
        );
    }
}

/// Bytes before the content of a [`Message::Data`] body: kind, id and length.
const DATA_HEADER: usize = 1 + 4 + 4;

/// Writes one frame (not flushed). File data, most of what crosses, is written from where
/// it is, not copied into an encoded body first.
pub fn write_frame(out: &mut impl Write, frame: &Frame) -> io::Result<()> {
    if let Message::Data(data) = &frame.message {
        return write_data_frame(out, frame.id, data);
    }
    let body = encode(frame);
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "agent frame over the size limit",
        ));
    }
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)
}

/// Writes the frame of a [`Message::Data`] holding `data` (not flushed), from where the
/// bytes are.
pub fn write_data_frame(out: &mut impl Write, id: u32, data: &[u8]) -> io::Result<()> {
    if DATA_HEADER + data.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "agent frame over the size limit",
        ));
    }
    let mut header = [0u8; 4 + DATA_HEADER];
    header[..4].copy_from_slice(&((DATA_HEADER + data.len()) as u32).to_le_bytes());
    header[4] = kind::DATA;
    header[5..9].copy_from_slice(&id.to_le_bytes());
    header[9..].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(data)
}

/// Reads one frame; [`ProtocolError::Closed`] at a clean end between frames.
pub fn read_frame(input: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return garbled("the stream ended inside a frame"),
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return garbled(format!("frame of {len} bytes is over the limit"));
    }
    // File data, most of what crosses, is read straight into its own buffer: no zeroed
    // body first, no copy out of it.
    let mut header = [0u8; DATA_HEADER];
    let head = header.len().min(len);
    read_exact_in_frame(input, &mut header[..head])?;
    if let Some(id) = data_frame_id(&header[..head], len) {
        let mut data = Vec::with_capacity(len - DATA_HEADER);
        input
            .take((len - DATA_HEADER) as u64)
            .read_to_end(&mut data)?;
        if data.len() != len - DATA_HEADER {
            return garbled("the stream ended inside a frame");
        }
        return Ok(Frame {
            id,
            message: Message::Data(data),
        });
    }
    let mut body = vec![0u8; len];
    body[..head].copy_from_slice(&header[..head]);
    read_exact_in_frame(input, &mut body[head..])?;
    decode(&body)
}

fn read_exact_in_frame(input: &mut impl Read, buf: &mut [u8]) -> Result<(), ProtocolError> {
    input.read_exact(buf).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            ProtocolError::Garbled("the stream ended inside a frame".into())
        } else {
            err.into()
        }
    })
}

/// The id of a well-formed [`Message::Data`] frame of `len` body bytes that starts with
/// `header`; None for anything else (which the full decoder then reads and judges).
fn data_frame_id(header: &[u8], len: usize) -> Option<u32> {
    if header.len() < DATA_HEADER || header[0] != kind::DATA {
        return None;
    }
    let id = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes"));
    let data_len = u32::from_le_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
    (data_len <= MAX_READ && data_len == len - DATA_HEADER).then_some(id)
}

/// A frame's body.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Encoder(Vec::new());
    let kind = match &frame.message {
        Message::Hello { .. } => kind::HELLO,
        Message::Stat(_) => kind::STAT,
        Message::List { .. } => kind::LIST,
        Message::Read { .. } => kind::READ,
        Message::ReadLink(_) => kind::READ_LINK,
        Message::GetAttrs(_) => kind::GET_ATTRS,
        Message::FsMagic(_) => kind::FS_MAGIC,
        Message::ImageSize(_) => kind::IMAGE_SIZE,
        Message::Welcome { .. } => kind::WELCOME,
        Message::Refused { .. } => kind::REFUSED,
        Message::Failed { .. } => kind::FAILED,
        Message::StatOk(_) => kind::STAT_OK,
        Message::ListPart { .. } => kind::LIST_PART,
        Message::Data(_) => kind::DATA,
        Message::AttrsOk(_) => kind::ATTRS_OK,
        Message::Number(_) => kind::NUMBER,
        Message::Zeros(_) => kind::ZEROS,
    };
    out.u8(kind);
    out.u32(frame.id);
    match &frame.message {
        Message::Hello { magic, version } => {
            out.0.extend_from_slice(magic);
            out.u16(*version);
        }
        Message::Stat(t)
        | Message::ReadLink(t)
        | Message::GetAttrs(t)
        | Message::FsMagic(t)
        | Message::ImageSize(t) => out.target(t),
        Message::List { target, with_attrs } => {
            out.target(target);
            out.u8(u8::from(*with_attrs));
        }
        Message::Read {
            target,
            offset,
            len,
        } => {
            out.target(target);
            out.u64(*offset);
            out.u32(*len);
        }
        Message::Welcome {
            magic,
            version,
            hostname,
            time,
            roots,
        } => {
            out.0.extend_from_slice(magic);
            out.u16(*version);
            out.bytes(hostname);
            out.u64(*time as u64);
            out.u32(roots.len() as u32);
            for root in roots {
                out.bytes(root);
            }
        }
        Message::Refused { message } => out.bytes(message),
        Message::Failed { errno, message } => {
            out.u32(*errno as u32);
            out.bytes(message);
        }
        Message::StatOk(stat) => out.stat(stat),
        Message::ListPart { more, entries } => {
            out.u8(u8::from(*more));
            out.u32(entries.len() as u32);
            for entry in entries {
                out.bytes(&entry.name);
                out.errno(&entry.stat, Encoder::stat);
                match &entry.extra {
                    Extra::None => out.u8(0),
                    Extra::Attrs(attrs) => {
                        out.u8(1);
                        out.errno(attrs, Encoder::attrs);
                    }
                    Extra::Link(link) => {
                        out.u8(2);
                        out.errno(link, |out, link| out.bytes(link));
                    }
                }
            }
        }
        Message::Data(data) => {
            out.u32(data.len() as u32);
            out.0.extend_from_slice(data);
        }
        Message::AttrsOk(attrs) => out.attrs(attrs),
        Message::Number(n) => out.u64(*n),
        Message::Zeros(len) => out.u32(*len),
    }
    out.0
}

/// Decodes a frame's body; any inconsistency is [`ProtocolError::Garbled`].
pub fn decode(body: &[u8]) -> Result<Frame, ProtocolError> {
    let mut d = Decoder { buf: body, pos: 0 };
    let kind = d.u8()?;
    let id = d.u32()?;
    let message = match kind {
        kind::HELLO => Message::Hello {
            magic: d.magic()?,
            version: d.u16()?,
        },
        kind::STAT => Message::Stat(d.target()?),
        kind::LIST => Message::List {
            target: d.target()?,
            with_attrs: d.flag()?,
        },
        kind::READ => Message::Read {
            target: d.target()?,
            offset: d.u64()?,
            len: d.u32()?,
        },
        kind::READ_LINK => Message::ReadLink(d.target()?),
        kind::GET_ATTRS => Message::GetAttrs(d.target()?),
        kind::FS_MAGIC => Message::FsMagic(d.target()?),
        kind::IMAGE_SIZE => Message::ImageSize(d.target()?),
        kind::WELCOME => {
            let magic = d.magic()?;
            let version = d.u16()?;
            let hostname = d.bytes()?;
            let time = d.u64()? as i64;
            let count = d.u32()? as usize;
            if count > MAX_ROOTS {
                return garbled(format!("{count} roots"));
            }
            let mut roots = Vec::new();
            for _ in 0..count {
                roots.push(d.bytes()?);
            }
            Message::Welcome {
                magic,
                version,
                hostname,
                time,
                roots,
            }
        }
        kind::REFUSED => Message::Refused {
            message: d.bytes()?,
        },
        kind::FAILED => Message::Failed {
            errno: d.u32()? as i32,
            message: d.bytes()?,
        },
        kind::STAT_OK => Message::StatOk(d.stat()?),
        kind::LIST_PART => {
            let more = d.flag()?;
            let count = d.u32()? as usize;
            // Each entry takes at least 7 bytes: no count can make this allocate more
            // than the frame holds.
            let mut entries = Vec::with_capacity(count.min(d.remaining() / 7));
            for _ in 0..count {
                let name = d.bytes()?;
                let stat = d.errno(Decoder::stat)?;
                let extra = match d.u8()? {
                    0 => Extra::None,
                    1 => Extra::Attrs(d.errno(Decoder::attrs)?),
                    2 => Extra::Link(d.errno(Decoder::bytes)?),
                    other => return garbled(format!("entry extra {other}")),
                };
                entries.push(ListEntry { name, stat, extra });
            }
            Message::ListPart { more, entries }
        }
        kind::DATA => {
            let len = d.u32()? as usize;
            if len > MAX_READ {
                return garbled(format!("{len} bytes of data"));
            }
            Message::Data(d.take(len)?.to_vec())
        }
        kind::ATTRS_OK => Message::AttrsOk(d.attrs()?),
        kind::NUMBER => Message::Number(d.u64()?),
        kind::ZEROS => {
            // Checked here as data is, and against the request by the client.
            let len = d.u32()?;
            if len as usize > MAX_READ {
                return garbled(format!("{len} zero bytes"));
            }
            Message::Zeros(len)
        }
        other => return garbled(format!("unknown frame kind {other}")),
    };
    if d.remaining() != 0 {
        return garbled(format!("{} bytes after a frame's fields", d.remaining()));
    }
    Ok(Frame { id, message })
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Longer byte strings than [`MAX_BYTES`] are cut there (the decoder refuses them).
    fn bytes(&mut self, v: &[u8]) {
        let v = &v[..v.len().min(MAX_BYTES)];
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn target(&mut self, t: &Target) {
        self.u32(t.root);
        self.bytes(&t.path);
    }
    fn time(&mut self, t: &MTime) {
        self.u64(t.secs as u64);
        self.u32(t.nanos);
    }
    fn stat(&mut self, s: &FileStat) {
        self.u32(s.mode);
        self.u32(s.uid);
        self.u32(s.gid);
        self.u64(s.size);
        self.time(&s.mtime);
        self.time(&s.ctime);
        self.u64(s.dev);
        self.u64(s.ino);
        self.u64(s.nlink);
        self.u64(s.rdev);
    }
    fn errno<T>(&mut self, v: &Errno<T>, ok: impl FnOnce(&mut Self, &T)) {
        match v {
            Ok(v) => {
                self.u8(0);
                ok(self, v);
            }
            Err(errno) => {
                self.u8(1);
                self.u32(*errno as u32);
            }
        }
    }
    fn opt_u64(&mut self, v: &Errno<Option<u64>>) {
        self.errno(v, |out, v| match v {
            None => out.u8(0),
            Some(v) => {
                out.u8(1);
                out.u64(*v);
            }
        });
    }
    fn attrs(&mut self, a: &Attrs) {
        self.opt_u64(&a.chattr);
        self.opt_u64(&a.fat);
        self.opt_u64(&a.project_id);
        self.errno(&a.xattrs, |out, list| {
            out.u32(list.len() as u32);
            for (name, value) in list {
                out.bytes(name);
                out.errno(value, |out, value| match value {
                    None => out.u8(0),
                    Some(value) => {
                        out.u8(1);
                        out.bytes(value);
                    }
                });
            }
        });
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return garbled("a frame is shorter than its fields");
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    fn flag(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => garbled(format!("flag {other}")),
        }
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn magic(&mut self) -> Result<[u8; 8], ProtocolError> {
        self.array()
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let len = self.u32()? as usize;
        if len > MAX_BYTES {
            return garbled(format!("a string of {len} bytes"));
        }
        Ok(self.take(len)?.to_vec())
    }
    fn target(&mut self) -> Result<Target, ProtocolError> {
        Ok(Target {
            root: self.u32()?,
            path: self.bytes()?,
        })
    }
    fn time(&mut self) -> Result<MTime, ProtocolError> {
        let secs = self.u64()? as i64;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return garbled(format!("{nanos} nanoseconds"));
        }
        Ok(MTime { secs, nanos })
    }
    fn stat(&mut self) -> Result<FileStat, ProtocolError> {
        Ok(FileStat {
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            size: self.u64()?,
            mtime: self.time()?,
            ctime: self.time()?,
            dev: self.u64()?,
            ino: self.u64()?,
            nlink: self.u64()?,
            rdev: self.u64()?,
        })
    }
    fn errno<T>(
        &mut self,
        ok: impl FnOnce(&mut Self) -> Result<T, ProtocolError>,
    ) -> Result<Errno<T>, ProtocolError> {
        match self.u8()? {
            0 => Ok(Ok(ok(self)?)),
            1 => Ok(Err(self.u32()? as i32)),
            other => garbled(format!("result tag {other}")),
        }
    }
    fn opt_u64(&mut self) -> Result<Errno<Option<u64>>, ProtocolError> {
        self.errno(|d| match d.u8()? {
            0 => Ok(None),
            1 => Ok(Some(d.u64()?)),
            other => garbled(format!("option tag {other}")),
        })
    }
    fn attrs(&mut self) -> Result<Attrs, ProtocolError> {
        Ok(Attrs {
            chattr: self.opt_u64()?,
            fat: self.opt_u64()?,
            project_id: self.opt_u64()?,
            xattrs: self.errno(|d| {
                let count = d.u32()? as usize;
                let mut list = Vec::with_capacity(count.min(d.remaining() / 5));
                for _ in 0..count {
                    let name = d.bytes()?;
                    let value = d.errno(|d| match d.u8()? {
                        0 => Ok(None),
                        1 => Ok(Some(d.bytes()?)),
                        other => garbled(format!("option tag {other}")),
                    })?;
                    list.push((name, value));
                }
                Ok(list)
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_stat() -> FileStat {
        FileStat {
            mode: libc::S_IFREG | 0o644,
            uid: 1000,
            gid: 100,
            size: 12345,
            mtime: MTime {
                secs: -5,
                nanos: 999_999_999,
            },
            ctime: MTime {
                secs: 1_700_000_000,
                nanos: 1,
            },
            dev: 42,
            ino: 7,
            nlink: 2,
            rdev: 0,
        }
    }

    fn samples() -> Vec<Frame> {
        let target = Target {
            root: 1,
            path: b"a/b".to_vec(),
        };
        let attrs = Attrs {
            chattr: Ok(Some(0x10)),
            fat: Ok(None),
            project_id: Err(libc::EACCES),
            xattrs: Ok(vec![
                (b"user.a".to_vec(), Ok(Some(b"v".to_vec()))),
                (b"user.b".to_vec(), Ok(None)),
                (b"user.c".to_vec(), Err(libc::E2BIG)),
            ]),
        };
        let messages = vec![
            Message::Hello {
                magic: MAGIC,
                version: VERSION,
            },
            Message::Stat(target.clone()),
            Message::List {
                target: target.clone(),
                with_attrs: true,
            },
            Message::Read {
                target: target.clone(),
                offset: u64::MAX,
                len: 77,
            },
            Message::ReadLink(target.clone()),
            Message::GetAttrs(target.clone()),
            Message::FsMagic(target.clone()),
            Message::ImageSize(target),
            Message::Welcome {
                magic: MAGIC,
                version: VERSION,
                hostname: b"host".to_vec(),
                time: -1,
                roots: vec![b"/home".to_vec(), b"/srv".to_vec()],
            },
            Message::Refused {
                message: b"no".to_vec(),
            },
            Message::Failed {
                errno: libc::ENOENT,
                message: b"gone".to_vec(),
            },
            Message::StatOk(sample_stat()),
            Message::ListPart {
                more: true,
                entries: vec![
                    ListEntry {
                        name: b"f".to_vec(),
                        stat: Ok(sample_stat()),
                        extra: Extra::Attrs(Ok(attrs.clone())),
                    },
                    ListEntry {
                        name: b"g".to_vec(),
                        stat: Err(libc::ENOENT),
                        extra: Extra::None,
                    },
                    ListEntry {
                        name: b"l".to_vec(),
                        stat: Ok(sample_stat()),
                        extra: Extra::Link(Ok(b"target".to_vec())),
                    },
                    ListEntry {
                        name: b"d".to_vec(),
                        stat: Ok(sample_stat()),
                        extra: Extra::Attrs(Err(libc::EACCES)),
                    },
                ],
            },
            Message::Data(vec![1, 2, 3]),
            Message::AttrsOk(attrs),
            Message::Number(1 << 40),
            Message::Zeros(MAX_READ as u32),
        ];
        messages
            .into_iter()
            .enumerate()
            .map(|(i, message)| Frame {
                id: i as u32 * 7919,
                message,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips_through_a_stream() {
        let mut stream = Vec::new();
        for frame in samples() {
            write_frame(&mut stream, &frame).unwrap();
        }
        let mut input = &stream[..];
        for frame in samples() {
            assert_eq!(read_frame(&mut input).unwrap(), frame);
        }
        assert!(matches!(read_frame(&mut input), Err(ProtocolError::Closed)));
    }

    /// File data is written and read without the general encoder's copy: the same bytes
    /// on the wire, the same frames back.
    #[test]
    fn data_frames_take_the_short_way_with_the_same_bytes() {
        for len in [0, 1, 4096, MAX_READ] {
            let frame = Frame {
                id: 77,
                message: Message::Data((0..len).map(|i| i as u8).collect()),
            };
            let mut stream = Vec::new();
            write_frame(&mut stream, &frame).unwrap();
            let body = encode(&frame);
            assert_eq!(stream[..4], (body.len() as u32).to_le_bytes());
            assert!(stream[4..] == body[..], "{len} bytes");
            assert_eq!(read_frame(&mut &stream[..]).unwrap(), frame);
        }
    }

    #[test]
    fn a_session_speaks_the_lower_of_both_versions() {
        assert_eq!(negotiate(0), None);
        assert_eq!(negotiate(1), Some(1));
        assert_eq!(negotiate(VERSION), Some(VERSION));
        assert_eq!(negotiate(u16::MAX), Some(VERSION));
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(ProtocolError::Garbled(_))
        ));
        let mut stream = Vec::new();
        write_frame(&mut stream, &samples()[12]).unwrap();
        for cut in 1..stream.len() {
            assert!(
                matches!(
                    read_frame(&mut &stream[..cut]),
                    Err(ProtocolError::Garbled(_))
                ),
                "cut at {cut}"
            );
        }
        // A string longer than the limit, and a data block longer than a read.
        let mut body = vec![kind::REFUSED, 0, 0, 0, 0];
        body.extend_from_slice(&((MAX_BYTES + 1) as u32).to_le_bytes());
        assert!(decode(&body).is_err());
        let mut body = vec![kind::DATA, 0, 0, 0, 0];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&body).is_err());
        // A zero run longer than any read, and one cut short.
        let mut body = vec![kind::ZEROS, 0, 0, 0, 0];
        body.extend_from_slice(&((MAX_READ + 1) as u32).to_le_bytes());
        assert!(decode(&body).is_err());
        assert!(decode(&body[..7]).is_err());
        // Trailing bytes.
        let mut body = encode(&samples()[0]);
        body.push(0);
        assert!(decode(&body).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Random bytes never panic the decoder, whichever side reads them.
        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = read_frame(&mut &bytes[..]);
        }

        /// Valid frames with random bytes changed still decode or fail cleanly.
        #[test]
        fn decoder_never_panics_on_mutated_frames(
            which in 0usize..64,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let frames = samples();
            let mut body = encode(&frames[which % frames.len()]);
            for (at, value) in flips {
                let at = at % body.len();
                body[at] = value;
            }
            // The reading side's short way for data reads what the full decoder does.
            let mut stream = (body.len() as u32).to_le_bytes().to_vec();
            stream.extend_from_slice(&body);
            prop_assert_eq!(read_frame(&mut &stream[..]).ok(), decode(&body).ok());
        }
    }
}
