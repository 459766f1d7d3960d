//! Where `wsx connect` prints: received data, and status lines (pings, the close, errors).
//!
//! - Interactive mode: everything goes to the terminal through rustyline's external printer,
//!   which prints above the prompt and redraws it; received messages are marked `< `.
//! - Plain mode: received data goes to stdout, status lines to stderr. Data is written as it
//!   came when stdout is a pipe or file, and escaped (binary: summarised) when it is a terminal.
//!   With `--hex`, binary messages are hex dumps wherever they go.
//! - `--jsonl`: stdout has only the JSON lines of [`super::jsonl`]; status lines go to stderr.

use std::io::{self, Write as _};
use std::sync::Mutex;

use super::format::{binary_summary, escape_controls, hexdump, pretty_json, HexDump, HEXDUMP_DISPLAY_LIMIT};
use super::jsonl::{self, Event};

/// How output is formatted; decided once at start.
#[derive(Debug, Clone, Default)]
pub struct UiConfig {
    /// Line editing with rustyline; all output goes through its printer.
    pub interactive: bool,
    /// stdout is a terminal (or `WSX_FORCE_TTY=1`): escape text, summarise binary.
    pub display: bool,
    /// Colours on the terminal output (interactive mode).
    pub color: bool,
    /// Colours on stderr status lines (plain mode, stderr a terminal).
    pub err_color: bool,
    /// Prefix lines with the local time.
    pub timestamps: bool,
    /// Pretty-print JSON text messages.
    pub json: bool,
    /// `--binary`: received messages are written to a non-terminal stdout without added newlines.
    pub binary: bool,
    /// `--hex`: binary messages are shown as hex dumps (text messages as lines, even with
    /// `--binary`).
    pub hex: bool,
    /// `--jsonl`: every event is a JSON line on stdout (see [`jsonl`]).
    pub jsonl: bool,
}

/// The kind of a status line, which picks its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connection information, the close.
    Info,
    /// Pings and pongs.
    Ping,
    /// Something went wrong.
    Error,
    /// Answers to interactive commands (`/help`).
    Plain,
}

/// A line sink for rustyline's external printer.
pub type Printer = Box<dyn FnMut(String) -> io::Result<()> + Send>;

/// The printer shared by the reader task and the main loop.
pub struct Ui {
    pub config: UiConfig,
    printer: Mutex<Option<Printer>>,
}

const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

fn paint(on: bool, style: &str, text: &str) -> String {
    if on && !text.is_empty() {
        format!("{style}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

fn timestamp() -> String {
    chrono::Local::now().format("%H:%M:%S%.3f").to_string()
}

/// Indents every line after the first by `width` spaces.
fn indent_rest(text: &str, width: usize) -> String {
    if !text.contains('\n') || width == 0 {
        return text.to_owned();
    }
    let pad = format!("\n{}", " ".repeat(width));
    text.replace('\n', &pad)
}

impl Ui {
    pub fn new(config: UiConfig, printer: Option<Printer>) -> Self {
        Self { config, printer: Mutex::new(printer) }
    }

    /// Stops printing through rustyline (the terminal is taken back for the final lines).
    pub fn detach_printer(&self) {
        self.printer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The time prefix (`12:34:56.789 `), or nothing.
    fn ts(&self, color: bool) -> String {
        if self.config.timestamps {
            format!("{} ", paint(color, DIM, &timestamp()))
        } else {
            String::new()
        }
    }

    /// Width of the time prefix, to align continuation lines.
    fn ts_width(&self) -> usize {
        if self.config.timestamps {
            13
        } else {
            0
        }
    }

    /// Writes a whole line (no trailing newline) to the terminal in interactive mode, else to
    /// `stderr` or stdout.
    fn emit(&self, line: String, to_stderr: bool) -> io::Result<()> {
        let mut printer = self.printer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(print) = printer.as_mut() {
            // The printer writes straight to the terminal between prompts: end the line.
            return print(line + "\n");
        }
        drop(printer);
        if to_stderr {
            let mut err = io::stderr().lock();
            writeln!(err, "{line}")?;
            err.flush()
        } else {
            let mut out = io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()
        }
    }

    /// An event for `--jsonl` (nothing without it).
    pub fn event(&self, event: &Event<'_>) -> io::Result<()> {
        if self.config.jsonl {
            jsonl::emit(event)
        } else {
            Ok(())
        }
    }

    /// An event for `--jsonl`, ignoring a closed output.
    pub fn note_event(&self, event: &Event<'_>) {
        let _ = self.event(event);
    }

    /// A received text message.
    pub fn text(&self, text: &str) -> io::Result<()> {
        let c = &self.config;
        if c.jsonl {
            return jsonl::emit(&Event::Text(text));
        }
        let pretty = if c.json { pretty_json(text) } else { None };
        let body = pretty.as_deref().unwrap_or(text);
        if c.interactive {
            let body = escape_controls(body, true);
            let line = format!("{}{}{}", self.ts(c.color), paint(c.color, GREEN, "< "), body);
            return self.emit(indent_rest(&line, self.ts_width() + 2), false);
        }
        if c.display {
            let line = format!("{}{}", self.ts(false), escape_controls(body, true));
            return self.emit(line, false);
        }
        // stdout is a pipe or a file: the text as it came.
        let mut out = io::stdout().lock();
        let raw = c.binary && !c.hex;
        if c.timestamps && !raw {
            write!(out, "{}", self.ts(false))?;
        }
        out.write_all(body.as_bytes())?;
        if !raw {
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// A received binary message.
    pub fn binary(&self, data: &[u8]) -> io::Result<()> {
        let c = &self.config;
        if c.jsonl {
            return jsonl::emit(&Event::Binary(data));
        }
        // On a terminal, a dump shows the first HEXDUMP_DISPLAY_LIMIT bytes.
        let shown = || if c.hex { hexdump(data, HEXDUMP_DISPLAY_LIMIT) } else { binary_summary(data) };
        if c.interactive {
            let line = format!("{}{}{}", self.ts(c.color), paint(c.color, GREEN, "< "), paint(c.color, CYAN, &shown()));
            return self.emit(indent_rest(&line, self.ts_width() + 2), false);
        }
        if c.display {
            let line = format!("{}{}", self.ts(false), shown());
            return self.emit(line, false);
        }
        if c.hex {
            // To a pipe or file: all of it, written a line at a time.
            let mut out = io::BufWriter::new(io::stdout().lock());
            write!(out, "{}", self.ts(false))?;
            for line in HexDump::new(data) {
                writeln!(out, "{line}")?;
            }
            return out.flush();
        }
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }

    /// A status line: to the terminal in interactive mode, else to stderr. `text` must already
    /// be escaped where it holds anything from the peer.
    pub fn status(&self, kind: Kind, text: &str) -> io::Result<()> {
        let color = if self.config.interactive { self.config.color } else { self.config.err_color };
        let style = match kind {
            Kind::Info => YELLOW,
            Kind::Ping => DIM,
            Kind::Error => RED,
            Kind::Plain => "",
        };
        let line = format!("{}{}", self.ts(color), paint(color && !style.is_empty(), style, text));
        self.emit(indent_rest(&line, self.ts_width()), true)
    }

    /// A status line, ignoring a closed output.
    pub fn note(&self, kind: Kind, text: &str) {
        let _ = self.status(kind, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indents_continuation_lines() {
        assert_eq!(indent_rest("a\nb\nc", 2), "a\n  b\n  c");
        assert_eq!(indent_rest("a", 2), "a");
        assert_eq!(indent_rest("a\nb", 0), "a\nb");
    }

    #[test]
    fn paints_only_when_asked() {
        assert_eq!(paint(false, RED, "x"), "x");
        assert_eq!(paint(true, RED, "x"), "\x1b[31mx\x1b[0m");
        assert_eq!(paint(true, RED, ""), "");
    }

    /// A printer that keeps every line it is given, and those lines.
    fn recording_printer() -> (std::sync::Arc<Mutex<Vec<String>>>, Printer) {
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let printer: Printer = Box::new(move |line| {
            sink.lock().unwrap().push(line);
            Ok(())
        });
        (lines, printer)
    }

    #[test]
    fn interactive_lines_go_to_the_printer() {
        let (lines, printer) = recording_printer();
        let ui =
            Ui::new(UiConfig { interactive: true, display: true, json: true, ..UiConfig::default() }, Some(printer));
        ui.text("hi\x1b[2J").unwrap();
        ui.text("{\"a\":[1]}").unwrap();
        ui.binary(b"\x01\x02").unwrap();
        ui.status(Kind::Info, "closed: 1000 normal").unwrap();
        let lines = lines.lock().unwrap();
        assert_eq!(lines[0], "< hi\\x1b[2J\n");
        assert_eq!(lines[1], "< {\n    \"a\": [\n      1\n    ]\n  }\n");
        assert_eq!(lines[2], "< binary, 2 bytes: 01 02  |..|\n");
        assert_eq!(lines[3], "closed: 1000 normal\n");
    }

    #[test]
    fn interactive_hex_dumps_are_indented_under_the_marker() {
        let (lines, printer) = recording_printer();
        let ui =
            Ui::new(UiConfig { interactive: true, display: true, hex: true, ..UiConfig::default() }, Some(printer));
        ui.binary(b"\x00hi").unwrap();
        let lines = lines.lock().unwrap();
        assert_eq!(
            lines[0],
            "< binary, 3 bytes:\n  00000000  00 68 69                                          |.hi|\n"
        );
    }
}
