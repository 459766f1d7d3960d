//! Plain HTTP answers on the WebSocket port: the demo page, static files (`--static DIR`) and
//! the errors, for requests that are not WebSocket upgrades. [`respond`] builds the answer, the
//! same over HTTP/1.1 and HTTP/2; files are served by tower-http's `ServeFile` (HEAD, `Range`,
//! `If-Modified-Since` and the other conditional requests) once [`resolve_static`] has decided,
//! by this server's own rules, which file a path names.
//!
//! Over HTTP/1.1 ([`write()`]) every answer carries `Connection: close`, and the connection is
//! closed after it (no keep-alive): a request body is never read, and a client is never left
//! waiting. Over HTTP/2 (see `serve/h2.rs`) hyper writes it on the request's stream.
//!
//! | request                                   | answer                                    |
//! |-------------------------------------------|-------------------------------------------|
//! | `GET /` (no `index.html` in `--static`)   | 200, the demo page                        |
//! | `GET /path` of a file under `--static`    | 200 (206 for a `Range`, 304 when unchanged), the file, `Content-Type` by extension |
//! | `GET /dir` of a directory                 | 301 to `/dir/` (one leading `/`), which serves its `index.html` |
//! | `GET` on a WebSocket endpoint             | 426 Upgrade Required (over HTTP/2 without the `Upgrade` header, which HTTP/2 forbids) |
//! | `..`, `.`, `\`, NUL or bad `%` escapes    | 400                                       |
//! | anything else (also dot files, symlinks leading out of `DIR`) | 404                   |
//! | a method other than GET/HEAD on something that exists | 405 with `Allow`              |

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::ServiceExt as _;

/// The demo page served at `/`: one self-contained HTML file.
pub const DEMO_HTML: &str = include_str!("../../assets/demo.html");

/// How long a client may take to send what follows the request head (a body we do not want)
/// before we stop waiting and close.
const LINGER: Duration = Duration::from_secs(2);

/// What the plain HTTP side serves.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// The canonical `--static` directory.
    pub static_root: Option<PathBuf>,
}

/// The body of a plain HTTP answer: bytes in memory, or a file read as it is sent.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A plain HTTP answer.
pub type Response = http::Response<Body>;

/// A `text/plain` answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = bytes_response(status, Bytes::from(body.into()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    with_nosniff(response)
}

/// `response` with `X-Content-Type-Options: nosniff` (every answer of this server has it).
pub fn with_nosniff<B>(mut response: http::Response<B>) -> http::Response<B> {
    response.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// Whether an answer with this status has no body, and so no `Content-Length` unless it is
/// the length a GET would have (RFC 9110 §8.6: 1xx, 204 and 304 send none).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// A body of these bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An answer with this body and, so far, only its `Content-Length`.
fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response
}

/// `response` with one more header (`value` from this server, never from a request).
fn with_header(mut response: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Where a request path leads under the static directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file (canonical path).
    File(PathBuf),
    /// A directory asked for without the trailing slash.
    Redirect,
    /// Nothing to serve.
    NotFound,
    /// A path we refuse to interpret (`..`, `.`, backslash, NUL, bad escapes, not UTF-8).
    BadPath,
}

/// Maps a raw (still percent-encoded) request path to a file under `root` (canonical), without
/// ever leaving it: `..` and `.` segments are refused outright, dot files are not served, and
/// the result is canonicalized and must still lie under `root` (no escape through a symlink).
/// A directory serves its `index.html`. Blocking (file system calls).
pub fn resolve_static(root: &Path, raw_path: &str) -> Resolved {
    let Some(decoded) = percent_decode(raw_path).and_then(|b| String::from_utf8(b).ok()) else {
        return Resolved::BadPath;
    };
    if !decoded.starts_with('/') || decoded.contains(['\0', '\\']) {
        return Resolved::BadPath;
    }
    let mut path = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." | ".." => return Resolved::BadPath,
            s if s.starts_with('.') => return Resolved::NotFound,
            s if cfg!(windows) && s.contains(':') => return Resolved::BadPath,
            s => path.push(s),
        }
    }
    let inside = |p: &Path| p.canonicalize().ok().filter(|c| c.starts_with(root));
    let Some(canonical) = inside(&path) else { return Resolved::NotFound };
    let Ok(meta) = std::fs::metadata(&canonical) else { return Resolved::NotFound };
    if meta.is_dir() {
        if !raw_path.ends_with('/') {
            return Resolved::Redirect;
        }
        return match inside(&canonical.join("index.html")) {
            Some(index) if index.is_file() => Resolved::File(index),
            _ => Resolved::NotFound,
        };
    }
    if meta.is_file() {
        Resolved::File(canonical)
    } else {
        Resolved::NotFound
    }
}

/// The `Location` of a directory asked for without its trailing slash: the path's non-empty
/// segments (still percent-encoded, as received) joined under exactly one leading `/`, plus the
/// slash. Empty segments are dropped because `//name/` would be a protocol-relative URL that
/// sends the browser to the host `name` (an open redirect); the file lookup ignores them too.
fn directory_location(raw_path: &str) -> String {
    let mut location = String::with_capacity(raw_path.len() + 1);
    for segment in raw_path.split('/').filter(|s| !s.is_empty()) {
        location.push('/');
        location.push_str(segment);
    }
    location.push('/');
    location
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The value of `name` in a query string (`+` for space, `%XX` escapes, UTF-8): `Ok(None)` when
/// absent, `Err` when badly encoded.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ()> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let bytes = percent_decode(&v.replace('+', " ")).ok_or(())?;
            return String::from_utf8(bytes).map(Some).map_err(|_| ());
        }
    }
    Ok(None)
}

/// The `Content-Type` for a file name's extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// Builds the answer to a plain HTTP request, over HTTP/1.1 or HTTP/2 (`request.version()`).
/// `websocket_endpoint`: the path is one of the server's WebSocket endpoints (answered 426 to a
/// plain GET unless a static file shadows it).
pub async fn respond(site: &Site, request: &Request<()>, websocket_endpoint: bool) -> Response {
    let mut response = with_nosniff(answer(site, request, websocket_endpoint).await);
    if request.method() == Method::HEAD && !bodiless(response.status()) {
        // The length the GET would have, and no body (over HTTP/1.1 and HTTP/2 alike).
        let (mut parts, body) = response.into_parts();
        if let Some(len) = body.size_hint().exact() {
            parts.headers.entry(header::CONTENT_LENGTH).or_insert(HeaderValue::from(len));
        }
        response = http::Response::from_parts(parts, full(Bytes::new()));
    }
    response
}

async fn answer(site: &Site, request: &Request<()>, websocket_endpoint: bool) -> Response {
    let path = request.uri().path();
    let method = request.method();
    let readable = method == Method::GET || method == Method::HEAD;

    let mut resolved = Resolved::NotFound;
    if let Some(root) = &site.static_root {
        let (root, raw) = (root.clone(), path.to_owned());
        resolved = tokio::task::spawn_blocking(move || resolve_static(&root, &raw)).await.unwrap_or(Resolved::NotFound);
    }
    let found = match resolved {
        Resolved::BadPath => return text(StatusCode::BAD_REQUEST, "bad request path\n"),
        Resolved::NotFound => false,
        Resolved::File(_) | Resolved::Redirect => true,
    };
    if !readable && (found || path == "/") {
        let response = text(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here\n"));
        return with_header(response, header::ALLOW, "GET, HEAD");
    }
    if !readable && websocket_endpoint {
        let response = text(StatusCode::METHOD_NOT_ALLOWED, "this is a WebSocket endpoint: use a WebSocket\n");
        // Over HTTP/2 a WebSocket opens with CONNECT (RFC 8441), over HTTP/1.1 with a GET.
        let allow = if request.version() >= Version::HTTP_2 { "CONNECT" } else { "GET" };
        return with_header(response, header::ALLOW, allow);
    }
    match resolved {
        Resolved::File(file) => serve_file(&file, request).await,
        Resolved::Redirect => {
            let mut location = directory_location(path);
            if let Some(q) = request.uri().query() {
                location = format!("{location}?{q}");
            }
            let response = text(StatusCode::MOVED_PERMANENTLY, format!("see {location}\n"));
            with_header(response, header::LOCATION, &location)
        }
        _ if readable && path == "/" => {
            let mut response = bytes_response(StatusCode::OK, Bytes::from_static(DEMO_HTML.as_bytes()));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        _ if websocket_endpoint => {
            let response =
                text(StatusCode::UPGRADE_REQUIRED, "this is a WebSocket endpoint: connect with a WebSocket\n");
            if request.version() >= Version::HTTP_2 {
                // A connection-specific header, which HTTP/2 forbids: a WebSocket over HTTP/2 is
                // an extended CONNECT (RFC 8441) instead.
                response
            } else {
                with_header(response, header::UPGRADE, "websocket")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the file `resolve_static` chose with tower-http's `ServeFile`, which answers `HEAD`,
/// `Range` and the conditional requests, with this server's content types.
async fn serve_file(file: &Path, request: &Request<()>) -> Response {
    let response = match tower_http::services::ServeFile::new(file).oneshot(request.clone()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    if parts.headers.contains_key(header::CONTENT_TYPE) {
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(file)));
    }
    // The length the head promised (the file's, or the range's), and not a byte more or less:
    // a file that grows or shrinks while it is sent must not break the framing.
    let promised = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = match promised {
        Some(len) if !bodiless(parts.status) => Exact { body: body.boxed_unsync(), remaining: len }.boxed_unsync(),
        _ => body.boxed_unsync(),
    };
    http::Response::from_parts(parts, body)
}

/// A body cut to the `remaining` bytes its head promised: what comes beyond is dropped, and an
/// end before them is an error (the connection is then closed, not left short).
struct Exact {
    body: Body,
    remaining: u64,
}

impl http_body::Body for Exact {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() as u64 > self.remaining {
                        data.truncate(self.remaining as usize);
                    }
                    self.remaining -= data.len() as u64;
                    Poll::Ready(Some(Ok(http_body::Frame::data(data))))
                }
                // Trailers: a file has none; nothing to count.
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Writes `response` over HTTP/1.1 (no body for HEAD), then closes the connection: shuts down
/// our side and reads (and drops) whatever the client still sends for a short while, so that a
/// client whose request body we ignored gets the whole answer instead of a reset.
pub async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &Method,
    response: Response,
) -> std::io::Result<()> {
    let (mut parts, mut body) = with_nosniff(response).into_parts();
    if bodiless(parts.status) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""))
        .into_bytes();
    if !parts.headers.contains_key(header::CONTENT_LENGTH) && !bodiless(parts.status) {
        // Every body here has a known length (bytes, or a file's length or range).
        let len = body.size_hint().exact().unwrap_or(0);
        head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    if method != Method::HEAD {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                stream.write_all(&data).await?;
            }
        }
    }
    stream.flush().await?;
    stream.shutdown().await?;
    let mut sink = BytesMut::with_capacity(4096);
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0usize;
        while total < (1 << 20) {
            sink.clear();
            match stream.read_buf(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("wsx-http-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p.canonicalize().unwrap())
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn static_paths_stay_inside_the_root() {
        let outside = TempDir::new("outside");
        std::fs::write(outside.0.join("secret.txt"), "secret").unwrap();
        let tmp = TempDir::new("root");
        let root = tmp.0.join("site");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a b.txt"), "a").unwrap();
        std::fs::write(root.join("sub/index.html"), "<p>").unwrap();
        std::fs::write(root.join(".hidden"), "h").unwrap();
        std::fs::write(tmp.0.join("secret.txt"), "secret").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.0.join("secret.txt"), root.join("escape.txt")).unwrap();
            std::os::unix::fs::symlink(&outside.0, root.join("escape-dir")).unwrap();
            std::os::unix::fs::symlink(root.join("a b.txt"), root.join("inside.txt")).unwrap();
        }
        let r = |p: &str| resolve_static(&root, p);
        assert_eq!(r("/a%20b.txt"), Resolved::File(root.join("a b.txt")));
        assert_eq!(r("/sub/"), Resolved::File(root.join("sub/index.html")));
        assert_eq!(r("/sub"), Resolved::Redirect);
        assert_eq!(r("/"), Resolved::NotFound, "no index.html at the top");
        assert_eq!(r("/missing"), Resolved::NotFound);
        assert_eq!(r("/.hidden"), Resolved::NotFound);
        for bad in ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/%2E%2E%2fsecret.txt"] {
            assert_eq!(r(bad), Resolved::BadPath, "{bad}");
        }
        for bad in ["/./a", "/a%5c..%5csecret.txt", "/a%00", "/%zz", "/%ff", "relative"] {
            assert_eq!(r(bad), Resolved::BadPath, "{bad}");
        }
        #[cfg(unix)]
        {
            assert_eq!(r("/escape.txt"), Resolved::NotFound);
            assert_eq!(r("/escape-dir/secret.txt"), Resolved::NotFound);
            assert_eq!(r("/inside.txt"), Resolved::File(root.join("a b.txt")));
        }
    }

    #[test]
    fn directory_redirects_stay_on_this_server() {
        assert_eq!(directory_location("/sub%20dir"), "/sub%20dir/");
        assert_eq!(directory_location("//evil.example"), "/evil.example/");
        assert_eq!(directory_location("///evil.example//a"), "/evil.example/a/");
        assert_eq!(directory_location("/"), "/");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9").unwrap(), "a bé".as_bytes());
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(query_param(Some("code=4001&reason=bye+now%21"), "reason"), Ok(Some("bye now!".into())));
        assert_eq!(query_param(Some("code=4001"), "reason"), Ok(None));
        assert_eq!(query_param(None, "code"), Ok(None));
        assert_eq!(query_param(Some("reason=%ff"), "reason"), Err(()));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("x/INDEX.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("app.js")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("logo.png")), "image/png");
        assert_eq!(content_type(Path::new("README")), "application/octet-stream");
    }
}
