//! Where the interactive mode of `wsx connect` keeps its history: one file per server.
//!
//! - `$WSX_HISTORY`, when set, names one file for every server (empty: no history at all);
//! - otherwise `$XDG_DATA_HOME/wsx/history/<name>` (`$XDG_DATA_HOME` defaults to
//!   `~/.local/share`, as the XDG base directory specification says; a relative value is
//!   ignored, as it also says), where `<name>` is the URL's scheme, host and port joined by `_`:
//!   `ws://localhost:8080/chat` → `ws_localhost_8080`, `wss://Example.com/` → `wss_example.com_443`,
//!   `ws://[::1]:9001` → `ws___1_9001`. The path and query are ignored: every endpoint of a server
//!   shares its history. The host is lower-cased and every byte but ASCII letters, digits, `.` and
//!   `-` becomes `_`, so the name is a plain file name on every system (the port keeps two
//!   servers on one host apart; the scheme keeps ws and wss apart).
//!
//! The directory is created readable by the user only (0700) and the file too (0600): a history
//! holds what was typed, tokens included. `--no-history` turns it all off; the number of lines is
//! bounded by the line editor ([`MAX_LINES`]).

use std::path::{Path, PathBuf};

/// The most lines a history file keeps (older ones are dropped when it is saved).
pub const MAX_LINES: usize = 1000;

/// The history file for the server at `url` (an absolute `ws://` or `wss://` URL), or `None`
/// when there is to be none (`WSX_HISTORY` empty, no home directory, a URL without a host).
pub fn path(url: &str) -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name);
    resolve(url, var("WSX_HISTORY"), var("XDG_DATA_HOME"), var("HOME"))
}

fn resolve(
    url: &str,
    wsx_history: Option<std::ffi::OsString>,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if let Some(file) = wsx_history {
        return (!file.is_empty()).then(|| PathBuf::from(file));
    }
    let data = match xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(dir) => dir,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local/share"),
    };
    Some(data.join("wsx").join("history").join(file_name(url)?))
}

/// `<scheme>_<host>_<port>` of an absolute WebSocket URL, made safe as a file name.
pub fn file_name(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host().filter(|h| !h.is_empty())?;
    let port = uri.port_u16().unwrap_or(if scheme == "wss" { 443 } else { 80 });
    let host: String = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let scheme: String = scheme.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    Some(format!("{scheme}_{host}_{port}"))
}

/// Makes sure the history file can be written: creates its directory (0700) and the file
/// (0600) when they are missing; an existing file or directory is left as it is. An error is a
/// message for the user; the session goes on without history.
pub fn prepare(file: &Path) -> Result<(), String> {
    if file.exists() {
        return Ok(());
    }
    let shown = file.display();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| format!("cannot create the history directory {}: {e}", dir.display()))?;
    }
    create_private_file(file).map_err(|e| format!("cannot create the history file {shown}: {e}"))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_private_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(not(unix))]
fn create_private_file(file: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(file).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_after_scheme_host_and_port() {
        assert_eq!(file_name("ws://localhost:8080/chat?x=1").as_deref(), Some("ws_localhost_8080"));
        assert_eq!(file_name("wss://Example.COM/").as_deref(), Some("wss_example.com_443"));
        assert_eq!(file_name("ws://127.0.0.1/").as_deref(), Some("ws_127.0.0.1_80"));
        assert_eq!(file_name("ws://[::1]:9001/").as_deref(), Some("ws___1_9001"));
        assert_eq!(file_name("ws://user:pw@h:1/").as_deref(), Some("ws_h_1"));
        assert_eq!(file_name("not a url"), None);
    }

    #[test]
    fn resolves_the_override_the_data_dir_and_home() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let url = "ws://h:1/p";
        assert_eq!(resolve(url, os("/tmp/h"), os("/x"), os("/home/u")), Some(PathBuf::from("/tmp/h")));
        assert_eq!(resolve(url, os(""), os("/x"), os("/home/u")), None);
        assert_eq!(resolve(url, None, os("/x"), os("/home/u")), Some(PathBuf::from("/x/wsx/history/ws_h_1")));
        let home = Some(PathBuf::from("/home/u/.local/share/wsx/history/ws_h_1"));
        assert_eq!(resolve(url, None, os("relative"), os("/home/u")), home);
        assert_eq!(resolve(url, None, None, os("/home/u")), home);
        assert_eq!(resolve(url, None, None, None), None);
    }
}
