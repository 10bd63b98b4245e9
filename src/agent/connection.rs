//! The client's end of an agent stream: requests go out as they are made, many at a time;
//! a reader thread hands each reply to the [`Ticket`] of its request id. A broken,
//! closed or garbled stream fails every waiting request with the reason and calls the
//! failure hook once (the pull's abort flag), so a backup stops instead of storing a
//! tree with holes. Requests are written by a writer thread of their own, so no caller
//! blocks on an agent that stops reading, and a watchdog fails the connection when
//! requests wait and nothing has come back for the timeout.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::protocol::{
    read_frame, write_frame, Frame, Message, ProtocolError, MAGIC, MIN_VERSION, VERSION,
    ZEROS_SINCE,
};

/// What the agent said about itself.
#[derive(Clone, Debug)]
pub struct Welcome {
    /// The protocol version of the session.
    pub version: u16,
    pub hostname: String,
    /// The agent's clock minus ours, in seconds (a round trip's precision).
    pub clock_skew: i64,
    pub roots: Vec<Vec<u8>>,
}

/// The error of a greeting refused by an agent that speaks only an older version and does
/// not negotiate (version 1 agents): greet it again, in a new session, with `version`.
#[derive(Debug, thiserror::Error)]
#[error("the agent speaks only protocol version {version}")]
pub struct OlderAgent {
    pub version: u16,
}

impl OlderAgent {
    /// The older version an error of [`Connection::open`] asks to greet with, if any.
    pub fn of(err: &io::Error) -> Option<u16> {
        let older = err.get_ref()?.downcast_ref::<OlderAgent>()?;
        Some(older.version)
    }
}

/// The version a version-1 agent's refusal ("... (it speaks N)") names, if this side
/// speaks it too. Agents since version 2 answer in the version both speak instead.
fn refused_for_an_older_version(message: &str) -> Option<u16> {
    let (_, named) = message
        .strip_suffix(')')?
        .rsplit_once(" is not known to this agent (it speaks ")?;
    let version = named.parse().ok()?;
    (MIN_VERSION..VERSION).contains(&version).then_some(version)
}

type Reply = Result<Message, String>;

struct Shared {
    state: Mutex<State>,
    on_failure: Box<dyn Fn() + Send + Sync>,
    /// Set by [`Connection::close`]: the end of the stream is expected then.
    closing: AtomicBool,
    /// When the agent last sent a frame, or requests started waiting (whichever is
    /// later): what the watchdog measures the timeout from.
    last_heard: Mutex<Instant>,
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

    fn heard_now(&self) {
        *self.last_heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Fails every waiting request; the first reason is kept.
    fn fail(&self, reason: String) {
        let mut state = self.lock();
        if state.failure.is_some() {
            return;
        }
        let waiting: Vec<_> = state.pending.drain().map(|(_, waiting)| waiting).collect();
        state.failure = Some(reason.clone());
        drop(state);
        // The hook first (the pull's abort flag): whoever the error wakes sees it set.
        if !self.closing.load(Ordering::SeqCst) {
            (self.on_failure)();
        }
        for waiting in waiting {
            let _ = waiting.send(Err(reason.clone()));
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
        // Never forever: the watchdog fails every waiting request of a silent agent.
        match self.receiver.recv() {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(reason)) => Err(lost(&reason)),
            Err(_) => Err(lost(
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
    /// Frames for the writer thread; taken by [`Connection::close`].
    outgoing: Mutex<Option<Sender<Frame>>>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
}

impl Connection {
    /// Greets the agent with `version` (the highest it may answer in; [`VERSION`] unless
    /// an [`OlderAgent`] asked for less) and starts the reader, writer and watchdog
    /// threads. `on_failure` is called once if the connection breaks before
    /// [`Connection::close`], or when requests wait and the agent has sent nothing for
    /// `timeout` (a hung agent, or one that stopped reading).
    pub fn open(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        on_failure: Box<dyn Fn() + Send + Sync>,
        timeout: Duration,
        version: u16,
    ) -> io::Result<(Self, Welcome)> {
        let greeted = version;
        let mut output = BufWriter::with_capacity(64 * 1024, output);
        let hello = Frame {
            id: 0,
            message: Message::Hello {
                magic: MAGIC,
                version: greeted,
            },
        };
        // A failed send is reported after what the other end said (garbage, or nothing).
        let sent = write_frame(&mut output, &hello).and_then(|()| output.flush());
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            on_failure,
            closing: AtomicBool::new(false),
            last_heard: Mutex::new(Instant::now()),
        });
        // The reader thread reads the answer to the greeting first, so that waiting for it
        // is bounded too; it goes on reading replies once the answer is a welcome.
        let (answer_sender, answer) = mpsc::channel();
        let reader_shared = shared.clone();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || {
                let mut input = BufReader::with_capacity(256 * 1024, input);
                let first = read_frame(&mut input);
                let welcomed = match &first {
                    Ok(Frame {
                        message: Message::Welcome { magic, version, .. },
                        ..
                    }) if *magic == MAGIC && speaks(*version, greeted) => Some(*version),
                    _ => None,
                };
                let _ = answer_sender.send(first);
                if let Some(version) = welcomed {
                    read_replies(input, &reader_shared, version);
                }
            })?;
        let first = answer.recv_timeout(timeout).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the agent did not answer in {} s", timeout.as_secs_f64()),
            )
        })?;
        let welcome = match first {
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
            }) if magic == MAGIC && speaks(version, greeted) => Welcome {
                version,
                hostname: String::from_utf8_lossy(&hostname).into_owned(),
                clock_skew: time.saturating_sub(now()),
                roots,
            },
            Ok(Frame {
                message: Message::Welcome { version, .. },
                ..
            }) => {
                return Err(invalid(format!(
                    "the agent answered in protocol version {version}, this host greeted \
                     with {greeted} and speaks {MIN_VERSION} to {VERSION}"
                )))
            }
            Ok(Frame {
                message: Message::Refused { message },
                ..
            }) => {
                let message = String::from_utf8_lossy(&message);
                if let Some(version) = refused_for_an_older_version(&message) {
                    return Err(invalid(OlderAgent { version }));
                }
                return Err(invalid(format!("the agent refused: {message}")));
            }
            Ok(_) => return Err(invalid("the agent did not answer the greeting")),
            Err(ProtocolError::Closed) => {
                return Err(invalid(
                    "the agent ended without answering (is pbsfs installed there? see \
                     --remote-path)",
                ))
            }
            Err(err) => return Err(invalid(format!("not a pbsfs agent: {err}"))),
        };
        sent?;
        let (outgoing, frames) = mpsc::channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("agent-writer".into())
            .spawn(move || write_requests(output, frames, &writer_shared))?;
        let watched = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("agent-watchdog".into())
            .spawn(move || watch(watched, timeout))?;
        Ok((
            Connection {
                outgoing: Mutex::new(Some(outgoing)),
                shared,
                next_id: AtomicU32::new(1),
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
            if state.pending.is_empty() {
                // Waiting starts now, however long the agent was not asked anything.
                self.shared.heard_now();
            }
            state.pending.insert(id, sender);
        }
        let queued = match &*self.outgoing.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(outgoing) => outgoing.send(Frame { id, message }).is_ok(),
            None => false,
        };
        if !queued {
            self.shared.fail("the connection is closed".into());
        }
        ticket
    }

    /// Why the connection broke, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Ends the session: once the writer has sent what is queued, the agent sees the end
    /// of its input and exits. The threads are not joined: a hung agent must not hang the
    /// client; they end with the stream (or the process).
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        drop(
            self.outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

/// Writes queued requests, flushing whenever the queue is empty, until the connection is
/// closed (then the output is dropped: the agent's end of input) or a write fails.
fn write_requests(
    mut output: BufWriter<Box<dyn Write + Send>>,
    frames: Receiver<Frame>,
    shared: &Shared,
) {
    while let Ok(frame) = frames.recv() {
        let mut written = write_frame(&mut output, &frame);
        while written.is_ok() {
            match frames.try_recv() {
                Ok(frame) => written = write_frame(&mut output, &frame),
                Err(_) => break,
            }
        }
        if let Err(err) = written.and_then(|()| output.flush()) {
            return shared.fail(format!("cannot send to the agent: {err}"));
        }
    }
}

/// Fails the connection when requests have waited `timeout` with nothing from the agent.
fn watch(shared: Weak<Shared>, timeout: Duration) {
    let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        std::thread::sleep(period);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let waiting = {
            let state = shared.lock();
            if state.failure.is_some() {
                return;
            }
            !state.pending.is_empty()
        };
        if waiting && shared.silent_for() >= timeout {
            return shared.fail(format!(
                "no answer from the agent in {} s",
                timeout.as_secs_f64()
            ));
        }
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

/// Whether a version the agent chose is one this side speaks (it may not choose one
/// above the greeting's).
fn speaks(version: u16, greeted: u16) -> bool {
    (MIN_VERSION..=greeted.min(VERSION)).contains(&version)
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Hands replies to their tickets until the stream ends or breaks; `version` is the
/// session's (a reply it does not have is a garbled stream).
fn read_replies(mut input: impl Read, shared: &Shared, version: u16) {
    loop {
        let frame = match read_frame(&mut input) {
            Ok(frame) => frame,
            Err(ProtocolError::Closed) => {
                return shared.fail("the agent closed the connection".into());
            }
            Err(err) => return shared.fail(err.to_string()),
        };
        shared.heard_now();
        let last = !matches!(frame.message, Message::ListPart { more: true, .. });
        if is_request(&frame.message) {
            return shared.fail("garbled stream: the agent sent a request".into());
        }
        if matches!(frame.message, Message::Zeros(_)) && version < ZEROS_SINCE {
            return shared.fail(format!(
                "garbled stream: a zeros reply in a protocol version {version} session"
            ));
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
