//! What `wsx connect` sends: stdin lines or chunks (plain mode), or lines typed at a rustyline
//! prompt with slash commands (interactive mode). Each source runs on its own OS thread, so
//! that a blocking read never holds up the runtime or its shutdown, and hands its input to the
//! session through a channel.

use std::borrow::Cow;
use std::io::{BufRead as _, Read as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rustyline::completion::{Completer, FilenameCompleter};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hint, Hinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, ExternalPrinter as _, Helper};
use tokio::sync::mpsc;
use wsx::CloseCode;

use super::format::parse_hex;
use super::history;
use super::ui::Printer;

/// How much of stdin one binary message carries at most in `--binary` mode.
pub const BINARY_CHUNK: usize = 64 * 1024;

/// Input for the session loop.
#[derive(Debug)]
pub enum Input {
    /// A text message (plain mode).
    Text(String),
    /// A binary message (plain `--binary` mode).
    Binary(Bytes),
    /// A typed line (interactive mode); the prompt comes back once `ack` is answered.
    Line(String, std::sync::mpsc::Sender<Ack>),
    /// Ctrl-C pressed twice at the prompt.
    Interrupt,
    /// End of input: stdin ended, Ctrl-D at the prompt.
    Eof,
}

/// The session's answer to a typed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Show the prompt again.
    Continue,
    /// The session is closing: stop reading.
    Stop,
}

/// Reads stdin line by line; each line (without its `\n` or `\r\n`) is a text message.
pub fn spawn_lines(tx: mpsc::Sender<Input>, warn: impl Fn(String) + Send + 'static) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn(format!("cannot read stdin: {e}"));
                    break;
                }
            }
            number += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            match String::from_utf8(std::mem::take(&mut buf)) {
                Ok(line) => {
                    if tx.blocking_send(Input::Text(line)).is_err() {
                        return;
                    }
                }
                Err(_) => warn(format!("stdin line {number} is not valid UTF-8: not sent (use --binary)")),
            }
        }
        let _ = tx.blocking_send(Input::Eof);
    });
}

/// Reads stdin in chunks; each read (at most [`BINARY_CHUNK`] bytes) is a binary message.
pub fn spawn_binary(tx: mpsc::Sender<Input>, warn: impl Fn(String) + Send + 'static) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; BINARY_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Input::Binary(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn(format!("cannot read stdin: {e}"));
                    break;
                }
            }
        }
        let _ = tx.blocking_send(Input::Eof);
    });
}

// ------------------------------------------------------------------ interactive commands

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a text message.
    Text(String),
    /// Send a binary message (`/hex`).
    Binary(Vec<u8>),
    /// Send the contents of this file as one binary message (`/binary`; see [`read_binary_arg`]).
    BinaryFile(String),
    /// Send a ping with this payload.
    Ping(Vec<u8>),
    /// Send an unsolicited pong.
    Pong(Vec<u8>),
    /// Start the closing handshake.
    Close(CloseCode, String),
    /// Show the commands.
    Help,
    /// A mistake to report; nothing is sent.
    Invalid(String),
}

/// The slash commands: name, arguments, what it does.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("/ping", " [payload]", "send a ping (the pong is shown with its round-trip time)"),
    ("/pong", " [payload]", "send an unsolicited pong"),
    ("/hex", " <hex bytes>", "send a binary message, e.g. /hex 01 02 ff (also 0x0102ff, 01:02:ff)"),
    ("/binary", " <file>", "send a file as one binary message (at most 64 MiB; Tab completes names)"),
    ("/text", " <text>", "send the text as it is (also: start a line with // to send /...)"),
    ("/close", " [code [reason]]", "close with a code (default 1000) and a reason, then exit"),
    ("/quit", "", "close normally (1000) and exit; also /exit, Ctrl-D, Ctrl-C twice"),
    ("/help", "", "show this help"),
];

/// The interactive help text.
pub fn help_text() -> String {
    let mut out = String::from("Type a line to send it as a text message. Commands:");
    for (name, args, what) in COMMANDS {
        let usage = format!("{name}{args}");
        out.push_str(&format!("\n  {usage:<26}{what}"));
    }
    out.push_str(
        "\n/binary with hex instead of a file that exists still sends the bytes, as it did before /hex, \
         with a note.\nUp/Down and Ctrl-R search the history (one per server, --no-history for none); \
         lines starting with a space are not saved.",
    );
    out
}

/// Interprets a typed line; `None` for an empty line (nothing is sent).
pub fn parse_command(line: &str) -> Option<Command> {
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Some(Command::Text(format!("/{rest}")));
    }
    let Some(body) = line.strip_prefix('/') else {
        return Some(Command::Text(line.to_owned()));
    };
    let (name, rest) = match body.split_once(' ') {
        Some((name, rest)) => (name, rest),
        None => (body, ""),
    };
    let control = |payload: &str| -> Result<Vec<u8>, String> {
        if payload.len() > 125 {
            Err(format!("a control frame payload is at most 125 bytes, not {}", payload.len()))
        } else {
            Ok(payload.as_bytes().to_vec())
        }
    };
    Some(match name {
        "help" | "h" | "?" => Command::Help,
        "ping" => control(rest).map_or_else(Command::Invalid, Command::Ping),
        "pong" => control(rest).map_or_else(Command::Invalid, Command::Pong),
        "hex" | "x" => match parse_hex(rest) {
            Ok(bytes) => Command::Binary(bytes),
            Err(e) => Command::Invalid(format!("/hex: {e}")),
        },
        "binary" | "bin" | "b" => match rest.trim() {
            "" => Command::Invalid("/binary: name the file to send (/hex 01 02 sends bytes given in hex)".into()),
            file => Command::BinaryFile(file.to_owned()),
        },
        "text" | "t" => Command::Text(rest.to_owned()),
        "close" | "c" => parse_close(rest),
        "quit" | "exit" | "q" => Command::Close(CloseCode::NORMAL, String::new()),
        _ => Command::Invalid(format!(
            "unknown command /{name}: /help lists the commands; start a line with // to send text beginning with /"
        )),
    })
}

fn parse_close(args: &str) -> Command {
    let args = args.trim_start();
    if args.is_empty() {
        return Command::Close(CloseCode::NORMAL, String::new());
    }
    let (code, reason) = args.split_once(' ').unwrap_or((args, ""));
    let Ok(code) = code.parse::<u16>() else {
        return Command::Invalid(format!("/close: {code:?} is not a close code (e.g. 1000, 4000)"));
    };
    if !CloseCode(code).is_valid_on_wire() {
        return Command::Invalid(format!("/close: {code} may not be sent; use 1000-1003, 1007-1014 or 3000-4999"));
    }
    if reason.len() > 123 {
        return Command::Invalid(format!("/close: the reason is at most 123 bytes, not {}", reason.len()));
    }
    Command::Close(CloseCode(code), reason.to_owned())
}

/// The largest file `/binary` sends (one message is held in memory whole).
pub const MAX_BINARY_FILE: u64 = 64 << 20;

/// The message `/binary ARG` sends: the contents of the file ARG (`~/` is the home directory),
/// at most `limit` bytes. For compatibility with the `/binary <hex>` of earlier versions, an ARG
/// that names no file but is hex is sent as those bytes, with a note (second value) saying so.
/// An error is a message for the user.
pub async fn read_binary_arg(arg: &str, limit: u64) -> Result<(Bytes, Option<String>), String> {
    use tokio::io::AsyncReadExt as _;
    let path = match (arg.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => PathBuf::from(arg),
    };
    let shown = path.display();
    let meta = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match parse_hex(arg) {
                Ok(bytes) if !bytes.is_empty() => {
                    let n = bytes.len();
                    let note = format!(
                        "/binary: no file {arg:?}: sent it as {n} byte{} of hex (use /hex for bytes, /binary for files)",
                        if n == 1 { "" } else { "s" }
                    );
                    Ok((Bytes::from(bytes), Some(note)))
                }
                _ => Err(format!("/binary: no such file: {shown} (/hex sends bytes given in hex)")),
            };
        }
        Err(e) => return Err(format!("/binary: cannot read {shown}: {e}")),
    };
    if meta.is_dir() {
        return Err(format!("/binary: {shown} is a directory, not a file"));
    }
    if !meta.is_file() {
        // A FIFO, a socket or a device could block the session for ever or never end.
        return Err(format!("/binary: {shown} is not a regular file (a pipe, socket or device)"));
    }
    if meta.len() > limit {
        return Err(format!(
            "/binary: {shown} has {} bytes, more than the {} that /binary sends in one message",
            meta.len(),
            size_text(limit)
        ));
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| format!("/binary: cannot open {shown}: {e}"))?;
    // The file may grow after the check: never read more than the limit (and one byte to tell).
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut data).await.map_err(|e| format!("/binary: cannot read {shown}: {e}"))?;
    if data.len() as u64 > limit {
        return Err(format!("/binary: {shown} grew past {} while it was read: not sent", size_text(limit)));
    }
    Ok((Bytes::from(data), None))
}

/// `64 MiB`, `1000 bytes`.
fn size_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

// ------------------------------------------------------------------ the line editor

/// Completion and greyed hints for the slash commands; file names after `/binary`.
struct CommandHelper {
    color: bool,
    files: FilenameCompleter,
}

struct CommandHint {
    display: String,
    complete: String,
}

impl Hint for CommandHint {
    fn display(&self) -> &str {
        &self.display
    }
    fn completion(&self) -> Option<&str> {
        (!self.complete.is_empty()).then_some(self.complete.as_str())
    }
}

impl Completer for CommandHelper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        if let Some(rest) = ["/binary ", "/bin ", "/b "].iter().find_map(|c| line.strip_prefix(c)) {
            let start = line.len() - rest.len();
            if pos >= start {
                let (at, found) = self.files.complete(rest, pos - start, ctx)?;
                return Ok((start + at, found.into_iter().map(|pair| pair.replacement).collect()));
            }
        }
        if !line.starts_with('/') || line[..pos].contains(' ') {
            return Ok((0, Vec::new()));
        }
        let prefix = &line[..pos];
        let found = COMMANDS.iter().filter(|(n, ..)| n.starts_with(prefix)).map(|(n, ..)| format!("{n} ")).collect();
        Ok((0, found))
    }
}

impl Hinter for CommandHelper {
    type Hint = CommandHint;

    fn hint(&self, line: &str, pos: usize, _: &Context<'_>) -> Option<CommandHint> {
        if pos != line.len() || !line.starts_with('/') || line.starts_with("//") {
            return None;
        }
        let (name, typed_args) = match line.split_once(' ') {
            Some((n, a)) => (n, Some(a)),
            None => (line, None),
        };
        match typed_args {
            None => {
                let mut matches = COMMANDS.iter().filter(|(n, ..)| n.starts_with(name));
                let (full, args, _) = matches.next()?;
                if matches.next().is_some() {
                    return None;
                }
                let rest = &full[name.len()..];
                Some(CommandHint { display: format!("{rest}{args}"), complete: rest.to_owned() })
            }
            Some("") => {
                let (_, args, _) = COMMANDS.iter().find(|(n, ..)| *n == name)?;
                let args = args.trim_start();
                (!args.is_empty()).then(|| CommandHint { display: args.to_owned(), complete: String::new() })
            }
            Some(_) => None,
        }
    }
}

impl Highlighter for CommandHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }
}

impl Validator for CommandHelper {}
impl Helper for CommandHelper {}

/// The interactive prompt, running on its own thread.
pub struct Interactive {
    /// Prints above the prompt.
    pub printer: Printer,
    /// Ends the prompt.
    pub prompt: Prompt,
}

/// What the session needs to end the prompt thread and take the terminal back.
pub struct Prompt {
    /// Whether the thread is inside `readline` (the terminal is in raw mode).
    reading: Arc<AtomicBool>,
    /// Set when the session ends: the thread calls `readline` no more.
    stop: Arc<AtomicBool>,
    /// The terminal's settings before rustyline touched them.
    terminal: TerminalGuard,
}

impl Prompt {
    /// Stops the prompt; if it is waiting for a key, puts the terminal back as it was (call
    /// once nothing prints through the printer any more).
    pub async fn end(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Let the editor finish a redraw it may be in the middle of.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        if self.reading.load(Ordering::SeqCst) {
            self.terminal.restore();
        }
    }
}

/// Starts the line editor; typed lines arrive on `tx`. `history` is the history file (see
/// [`history::path`]), read at start and appended to after each line; `None`: no history.
pub fn spawn_interactive(
    tx: mpsc::Sender<Input>,
    color: bool,
    history: Option<PathBuf>,
) -> anyhow::Result<Interactive> {
    let terminal = TerminalGuard::save();
    let config = Config::builder()
        .auto_add_history(false)
        .history_ignore_space(true)
        .history_ignore_dups(true)?
        .max_history_size(history::MAX_LINES)?
        .build();
    let mut editor: Editor<CommandHelper, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(CommandHelper { color, files: FilenameCompleter::new() }));
    let history = history.filter(|path| match history::prepare(path) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("wsx: {e}: no history this time");
            false
        }
    });
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let mut external = editor.create_external_printer()?;
    let printer: Printer = Box::new(move |line| external.print(line).map_err(std::io::Error::other));
    let reading = Arc::new(AtomicBool::new(false));
    let flag = reading.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let prompt = if color { "\x1b[1m>\x1b[0m " } else { "> " };
        let mut interrupted = false;
        loop {
            flag.store(true, Ordering::SeqCst);
            if stopped.load(Ordering::SeqCst) {
                flag.store(false, Ordering::SeqCst);
                return;
            }
            let read = editor.readline(prompt);
            flag.store(false, Ordering::SeqCst);
            match read {
                Ok(line) => {
                    interrupted = false;
                    if !line.trim().is_empty() && editor.add_history_entry(line.as_str()).unwrap_or(false) {
                        if let Some(path) = &history {
                            let _ = editor.append_history(path);
                        }
                    }
                    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
                    if tx.blocking_send(Input::Line(line, ack_tx)).is_err() {
                        return;
                    }
                    if ack_rx.recv() != Ok(Ack::Continue) {
                        return;
                    }
                }
                Err(ReadlineError::Interrupted) if !interrupted => {
                    interrupted = true;
                    println!("(press Ctrl-C again, Ctrl-D or type /quit to close the connection)");
                }
                Err(ReadlineError::Interrupted) => {
                    let _ = tx.blocking_send(Input::Interrupt);
                    return;
                }
                Err(ReadlineError::Eof) => {
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
                Err(e) => {
                    eprintln!("wsx: line editor failed: {e}");
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
            }
        }
    });
    Ok(Interactive { printer, prompt: Prompt { reading, stop, terminal } })
}

/// The terminal settings from before the line editor ran. rustyline puts the terminal in raw
/// mode only inside `readline` and restores it on return, but there is no way to make a blocked
/// `readline` return when the server closes the connection; the session then puts these
/// settings back itself before exiting.
struct TerminalGuard {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl TerminalGuard {
    fn save() -> Self {
        #[cfg(unix)]
        {
            Self { saved: nix::sys::termios::tcgetattr(std::io::stdin()).ok() }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Leaves raw mode and bracketed paste, and clears the half-typed prompt line.
    fn restore(&self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?2004l\r\x1b[J");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_commands() {
        assert_eq!(parse_command(""), None);
        assert_eq!(parse_command("hello"), Some(Command::Text("hello".into())));
        assert_eq!(parse_command(" spaced "), Some(Command::Text(" spaced ".into())));
        assert_eq!(parse_command("//etc"), Some(Command::Text("/etc".into())));
        assert_eq!(parse_command("/text /x y"), Some(Command::Text("/x y".into())));
        assert_eq!(parse_command("/text"), Some(Command::Text(String::new())));
        assert_eq!(parse_command("/ping"), Some(Command::Ping(Vec::new())));
        assert_eq!(parse_command("/ping are you there"), Some(Command::Ping(b"are you there".to_vec())));
        assert!(matches!(parse_command(&format!("/ping {}", "x".repeat(126))), Some(Command::Invalid(_))));
        assert_eq!(parse_command("/pong x"), Some(Command::Pong(b"x".to_vec())));
        assert_eq!(parse_command("/hex 01 ff"), Some(Command::Binary(vec![1, 255])));
        assert!(matches!(parse_command("/hex 1"), Some(Command::Invalid(_))));
        assert_eq!(parse_command("/binary  data.bin "), Some(Command::BinaryFile("data.bin".into())));
        assert!(matches!(parse_command("/binary"), Some(Command::Invalid(_))));
        assert_eq!(parse_command("/close"), Some(Command::Close(CloseCode::NORMAL, String::new())));
        assert_eq!(parse_command("/close 4000 see you"), Some(Command::Close(CloseCode(4000), "see you".into())));
        assert!(matches!(parse_command("/close 1006"), Some(Command::Invalid(_))));
        assert!(matches!(parse_command("/close soon"), Some(Command::Invalid(_))));
        assert_eq!(parse_command("/quit"), Some(Command::Close(CloseCode::NORMAL, String::new())));
        assert_eq!(parse_command("/exit"), Some(Command::Close(CloseCode::NORMAL, String::new())));
        assert_eq!(parse_command("/help"), Some(Command::Help));
        assert!(matches!(parse_command("/nope"), Some(Command::Invalid(_))));
    }

    #[tokio::test]
    async fn binary_reads_files_within_the_limit_and_takes_hex_for_compatibility() {
        let dir = std::env::temp_dir().join(format!("wsx-binary-arg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data.bin");
        std::fs::write(&file, b"\x00\x01hello").unwrap();
        let arg = file.to_str().unwrap();
        assert_eq!(read_binary_arg(arg, 64).await.unwrap(), (Bytes::from_static(b"\x00\x01hello"), None));
        let too_big = read_binary_arg(arg, 6).await.unwrap_err();
        assert!(too_big.contains("has 7 bytes, more than the 6 bytes"), "{too_big}");
        let missing = dir.join("missing.bin");
        let missing = read_binary_arg(missing.to_str().unwrap(), 64).await.unwrap_err();
        assert!(missing.starts_with("/binary: no such file: ") && missing.contains("/hex"), "{missing}");
        let (bytes, note) = read_binary_arg("00 68 69", 64).await.unwrap();
        assert_eq!(bytes, Bytes::from_static(b"\x00hi"));
        assert!(note.unwrap().contains("use /hex"));
        let dir_error = read_binary_arg(dir.to_str().unwrap(), 64).await.unwrap_err();
        assert!(dir_error.contains("is a directory"), "{dir_error}");
        // A FIFO would block the session until someone writes to it: refused at once.
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
            assert!(made.success(), "mkfifo {}", fifo.display());
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_binary_arg(fifo.to_str().unwrap(), 64));
            let fifo_error = read.await.expect("/binary on a FIFO must not block").unwrap_err();
            assert!(fifo_error.contains("not a regular file"), "{fifo_error}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completes_file_names_after_binary() {
        let dir = std::env::temp_dir().join(format!("wsx-binary-complete-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("payload-one.bin"), b"x").unwrap();
        let helper = CommandHelper { color: false, files: FilenameCompleter::new() };
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let line = format!("/binary {}/payl", dir.display());
        let (start, found) = helper.complete(&line, line.len(), &ctx).unwrap();
        let completed = format!("{}{}", &line[..start], found.first().map_or("", String::as_str));
        assert_eq!(completed, format!("/binary {}/payload-one.bin", dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hints_and_completes_commands() {
        let helper = CommandHelper { color: false, files: FilenameCompleter::new() };
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let hint = helper.hint("/cl", 3, &ctx).unwrap();
        assert_eq!(hint.display(), "ose [code [reason]]");
        assert_eq!(hint.completion(), Some("ose"));
        assert!(helper.hint("/p", 2, &ctx).is_none(), "ambiguous: /ping, /pong");
        assert_eq!(helper.hint("/close ", 7, &ctx).unwrap().display(), "[code [reason]]");
        assert!(helper.hint("hello", 5, &ctx).is_none());
        let (start, found) = helper.complete("/p", 2, &ctx).unwrap();
        assert_eq!((start, found), (0, vec!["/ping ".to_owned(), "/pong ".to_owned()]));
        assert!(help_text().contains("/close [code [reason]]"));
    }
}
