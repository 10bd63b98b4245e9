//! The client's end of an agent stream: requests go out as they are made, many at a time;
//! a reader thread hands each reply to the [`Ticket`] of its request id. A broken,
//! closed or garbled stream fails every waiting request with the reason and calls the
//! failure hook once (the pull's abort flag), so a backup stops instead of storing a
//! tree with holes.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{read_frame, write_frame, Frame, Message, ProtocolError, MAGIC, VERSION};

/// How long a request may wait for its reply before the agent counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// What the agent said about itself.
#[derive(Clone, Debug)]
pub struct Welcome {
    pub hostname: String,
    /// The agent's clock minus ours, in seconds (a round trip's precision).
    pub clock_skew: i64,
    pub roots: Vec<Vec<u8>>,
}

type Reply = Result<Message, String>;

struct Shared {
    state: Mutex<State>,
    on_failure: Box<dyn Fn() + Send + Sync>,
    /// Set by [`Connection::close`]: the end of the stream is expected then.
    closing: AtomicBool,
}

#[derive(Default)]
struct State {
    pending: HashMap<u32, Sender<Reply>>,
    failure: Option<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails every waiting request; the first reason is kept.
    fn fail(&self, reason: String) {
        let mut state = self.lock();
        if state.failure.is_some() {
            return;
        }
        for (_, waiting) in state.pending.drain() {
            let _ = waiting.send(Err(reason.clone()));
        }
        state.failure = Some(reason);
        drop(state);
        if !self.closing.load(Ordering::SeqCst) {
            (self.on_failure)();
        }
    }
}

/// A request's reply, to be waited for.
pub struct Ticket {
    receiver: Receiver<Reply>,
    shared: Arc<Shared>,
}

impl Ticket {
    /// The next reply to the request (a listing has several).
    pub fn wait(&self) -> io::Result<Message> {
        match self.receiver.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(reason)) => Err(lost(&reason)),
            Err(RecvTimeoutError::Timeout) => {
                self.shared.fail(format!(
                    "no reply from the agent in {} s",
                    REPLY_TIMEOUT.as_secs()
                ));
                Err(lost(
                    &self.shared.lock().failure.clone().unwrap_or_default(),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(lost(
                &self
                    .shared
                    .lock()
                    .failure
                    .clone()
                    .unwrap_or_else(|| "the connection ended".into()),
            )),
        }
    }
}

/// The error a request gets when the connection is gone.
fn lost(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("connection to the agent lost: {reason}"),
    )
}

/// A pipelined connection to an agent.
pub struct Connection {
    writer: Mutex<Option<BufWriter<Box<dyn Write + Send>>>>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Connection {
    /// Greets the agent and starts the reader thread. `on_failure` is called once if the
    /// connection breaks before [`Connection::close`].
    pub fn open(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        on_failure: Box<dyn Fn() + Send + Sync>,
    ) -> io::Result<(Self, Welcome)> {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut output = BufWriter::with_capacity(64 * 1024, output);
        let hello = Frame {
            id: 0,
            message: Message::Hello {
                magic: MAGIC,
                version: VERSION,
            },
        };
        // A failed send is reported after what the other end said (garbage, or nothing).
        let sent = write_frame(&mut output, &hello).and_then(|()| output.flush());
        let welcome = match read_frame(&mut input) {
            Ok(Frame {
                message:
                    Message::Welcome {
                        magic,
                        version,
                        hostname,
                        time,
                        roots,
                    },
                ..
            }) if magic == MAGIC && version == VERSION => Welcome {
                hostname: String::from_utf8_lossy(&hostname).into_owned(),
                clock_skew: time.saturating_sub(now()),
                roots,
            },
            Ok(Frame {
                message: Message::Welcome { version, .. },
                ..
            }) => {
                return Err(invalid(format!(
                    "the agent speaks protocol version {version}, not {VERSION}"
                )))
            }
            Ok(Frame {
                message: Message::Refused { message },
                ..
            }) => {
                return Err(invalid(format!(
                    "the agent refused: {}",
                    String::from_utf8_lossy(&message)
                )))
            }
            Ok(_) => return Err(invalid("the agent did not answer the greeting".into())),
            Err(ProtocolError::Closed) => {
                return Err(invalid(
                    "the agent ended without answering (is pbsfs installed there? see \
                     --remote-path)"
                        .into(),
                ))
            }
            Err(err) => return Err(invalid(format!("not a pbsfs agent: {err}"))),
        };
        sent?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            on_failure,
            closing: AtomicBool::new(false),
        });
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_replies(input, &reader_shared))?;
        Ok((
            Connection {
                writer: Mutex::new(Some(output)),
                shared,
                next_id: AtomicU32::new(1),
                reader: Mutex::new(Some(reader)),
            },
            welcome,
        ))
    }

    /// Sends a request; its reply comes through the ticket.
    pub fn send(&self, message: Message) -> Ticket {
        let (sender, receiver) = mpsc::channel();
        let ticket = Ticket {
            receiver,
            shared: self.shared.clone(),
        };
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        {
            let mut state = self.shared.lock();
            if let Some(reason) = &state.failure {
                let _ = sender.send(Err(reason.clone()));
                return ticket;
            }
            state.pending.insert(id, sender);
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let written = match writer.as_mut() {
            Some(out) => write_frame(out, &Frame { id, message }).and_then(|()| out.flush()),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed",
            )),
        };
        drop(writer);
        if let Err(err) = written {
            self.shared.fail(format!("cannot send to the agent: {err}"));
        }
        ticket
    }

    /// Why the connection broke, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Ends the session: the agent sees the end of its input and exits.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(writer);
        // Not joined: a hung agent must not hang the client; the thread ends with the stream.
        drop(self.reader.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Hands replies to their tickets until the stream ends or breaks.
fn read_replies(mut input: impl Read, shared: &Shared) {
    loop {
        let frame = match read_frame(&mut input) {
            Ok(frame) => frame,
            Err(ProtocolError::Closed) => {
                return shared.fail("the agent closed the connection".into());
            }
            Err(err) => return shared.fail(err.to_string()),
        };
        let last = !matches!(frame.message, Message::ListPart { more: true, .. });
        if is_request(&frame.message) {
            return shared.fail("garbled stream: the agent sent a request".into());
        }
        let mut state = shared.lock();
        let waiting = if last {
            state.pending.remove(&frame.id)
        } else {
            state.pending.get(&frame.id).cloned()
        };
        drop(state);
        match waiting {
            // A request whose ticket was dropped (a read-ahead not needed): ignored.
            Some(waiting) => {
                let _ = waiting.send(Ok(frame.message));
            }
            None => {
                return shared.fail(format!(
                    "garbled stream: a reply to request {} that is not waiting",
                    frame.id
                ))
            }
        }
    }
}

fn is_request(message: &Message) -> bool {
    matches!(
        message,
        Message::Hello { .. }
            | Message::Stat(_)
            | Message::List { .. }
            | Message::Read { .. }
            | Message::ReadLink(_)
            | Message::GetAttrs(_)
            | Message::FsMagic(_)
            | Message::ImageSize(_)
            | Message::Welcome { .. }
            | Message::Refused { .. }
    )
}
