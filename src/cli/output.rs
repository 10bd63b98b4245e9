//! Printing results: aligned text tables for people, JSON for scripts.

use std::io::Write;

use clap::ValueEnum;
use serde_json::Value;

/// Writes one line of results to stdout (see `outln!`). When the reader has closed the pipe
/// the program ends as other Unix tools do: killed by SIGPIPE, with nothing on stderr.
pub fn write_stdout_line(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => exit_for_closed_stdout(),
        Err(err) => {
            eprintln!("pbsfs: error: cannot write to stdout: {err}");
            std::process::exit(1);
        }
    }
}

/// Ends the program the way a closed pipe ends `cat`: by SIGPIPE (status 141 in a shell).
/// Rust ignores SIGPIPE so that writes report EPIPE; here it is put back and raised.
pub fn exit_for_closed_stdout() -> ! {
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for reading.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
    /// Indented JSON.
    JsonPretty,
}

impl OutputFormat {
    pub fn is_json(self) -> bool {
        self != OutputFormat::Text
    }

    pub fn print_json(self, value: &Value) {
        let text = if self == OutputFormat::JsonPretty {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        };
        outln!("{}", text.expect("a JSON value always serialises"));
    }
}

/// A table printed with columns padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// Columns aligned to the right (numbers).
    right: Vec<bool>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
            right: vec![false; headers.len()],
        }
    }

    pub fn align_right(mut self, column: usize) -> Self {
        self.right[column] = true;
        self
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    out.push_str("  ");
                }
                if self.right[i] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if i + 1 < cells.len() {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            outln!("{out}");
        };
        line(self.headers.clone());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
    }
}

/// `1.5 MiB` style sizes for tables.
/// A count with its noun in the right number: `count(1, "chunk", "chunks")` is "1 chunk".
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(1u64, "chunk", "chunks"), "1 chunk");
        assert_eq!(count(0u64, "chunk", "chunks"), "0 chunks");
        assert_eq!(count(2u32, "directory", "directories"), "2 directories");
    }
}
