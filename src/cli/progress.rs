//! A one-line status on stderr for long commands (push, restore, verify, gc, prune), redrawn a few
//! times a second and cut to the terminal's width. Shown only when stderr is a terminal and
//! not with --quiet; cleared when the work ends.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::output::human_size;

/// What a status line shows: a head that is always shown whole and a tail (a path) that
/// loses its beginning when the line is too long.
pub struct Status {
    pub head: String,
    pub tail: String,
}

/// The running display; [`StatusLine::stop`] clears it.
pub struct StatusLine {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    /// Held while the line is drawn, and while other output clears it and is printed.
    drawing: Arc<Mutex<()>>,
}

impl StatusLine {
    /// Redraws `status(elapsed)` until stopped; `None` when stderr is no terminal or quiet.
    pub fn start(
        quiet: bool,
        status: impl Fn(Duration) -> Status + Send + 'static,
    ) -> Option<StatusLine> {
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let drawing = Arc::new(Mutex::new(()));
        let (stop_flag, lock) = (stop.clone(), drawing.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut stderr = std::io::stderr();
            // Drawn at once and then every 250 ms; `stop` wakes the thread, so a command
            // does not wait out the interval at its end.
            loop {
                let line = fit(&status(started.elapsed()), terminal_width());
                {
                    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = write!(stderr, "\r\x1b[K{line}");
                    let _ = stderr.flush();
                }
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(250));
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            let _ = write!(stderr, "\r\x1b[K");
            let _ = stderr.flush();
        });
        Some(StatusLine {
            stop,
            thread,
            drawing,
        })
    }

    /// Runs `print` (which writes whole lines) with the status line cleared, so the two do
    /// not mix; the line is drawn again below on the next redraw.
    pub fn print_above(&self, print: impl FnOnce()) {
        let _guard = self.drawing.lock().unwrap_or_else(|e| e.into_inner());
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r\x1b[K");
        let _ = stderr.flush();
        print();
        let _ = std::io::stdout().flush();
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

/// Stops the display, if there is one.
pub fn stop(line: Option<StatusLine>) {
    if let Some(line) = line {
        line.stop();
    }
}

/// "12.5 MiB of 1.0 GiB, 80 MiB/s, 12 s left": the amount done, its rate and, with a known
/// total, the time left.
pub fn amount(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    match total {
        Some(total) if total > 0 => {
            let left = total.saturating_sub(done) as f64 / rate.max(1.0);
            let eta = if done == 0 {
                String::new()
            } else {
                format!(", {} left", duration(left))
            };
            format!(
                "{} of {}, {}/s{eta}",
                human_size(done),
                human_size(total),
                human_size(rate as u64)
            )
        }
        _ => format!("{}, {}/s", human_size(done), human_size(rate as u64)),
    }
}

/// "12/40, 3 s left": steps done of a known total and, once one is done, the time left
/// at the rate so far (`elapsed` since the first step).
pub fn steps(done: u64, total: u64, elapsed: Duration) -> String {
    if done == 0 || done >= total {
        return format!("{done}/{total}");
    }
    let per_step = elapsed.as_secs_f64() / done as f64;
    let left = per_step * (total - done) as f64;
    format!("{done}/{total}, {} left", duration(left))
}

fn duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    match secs {
        0..=99 => format!("{secs} s"),
        100..=5999 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{:.1} h", secs as f64 / 3600.0),
    }
}

/// The terminal's width in columns (80 when it cannot be told).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize it is given.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// The line in at most `width - 1` columns (the last column would wrap on some
/// terminals): the tail loses its beginning first, then the head its end.
fn fit(status: &Status, width: usize) -> String {
    let room = width.saturating_sub(1);
    let head: String = status.head.chars().take(room).collect();
    let left = room - head.chars().count();
    let tail_len = status.tail.chars().count();
    let tail = if tail_len <= left {
        status.tail.clone()
    } else if left >= 2 {
        let kept: String = status.tail.chars().skip(tail_len - (left - 1)).collect();
        format!("…{kept}")
    } else {
        String::new()
    };
    format!("{head}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_the_width_cutting_the_path_first() {
        let status = Status {
            head: "10 entries, 1 MiB read ".into(),
            tail: "/home/user/some/long/path/file.txt".into(),
        };
        let line = fit(&status, 40);
        assert_eq!(line.chars().count(), 39);
        assert!(line.starts_with("10 entries, 1 MiB read …"), "{line}");
        assert!(line.ends_with("file.txt"), "{line}");
        assert_eq!(fit(&status, 200), format!("{}{}", status.head, status.tail));
        assert_eq!(fit(&status, 10).chars().count(), 9);
    }

    #[test]
    fn amounts_with_a_total_say_how_long_is_left() {
        let text = amount(512 << 20, Some(1 << 30), Duration::from_secs(4));
        assert!(text.contains("of 1.00 GiB"), "{text}");
        assert!(text.ends_with("4 s left"), "{text}");
        assert!(!amount(10, None, Duration::from_secs(1)).contains("left"));
    }

    #[test]
    fn steps_say_how_long_is_left_once_one_is_done() {
        assert_eq!(steps(0, 40, Duration::from_secs(3)), "0/40");
        assert_eq!(steps(10, 40, Duration::from_secs(5)), "10/40, 15 s left");
        assert_eq!(steps(40, 40, Duration::from_secs(9)), "40/40");
    }
}
