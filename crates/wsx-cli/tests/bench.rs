//! `wsx bench echo` against `wsx serve --echo` and against test servers that misbehave on
//! purpose: one that stalls 200 ms every second, one that corrupts one echo in 1,000, one that
//! never echoes. Short runs (1–2 s) at low rates, so the whole file stays well under 30 s.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, WSX};
use wsx::Message;

/// What a test server does to each data message.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Echoes, but holds every echo while the clock is in the first 200 ms of a second.
    Stall,
    /// Echoes, flipping the last byte of one message in 1,000.
    Corrupt,
    /// Completes the handshake, then never answers.
    Silent,
    /// Reads nothing for the first second, then echoes, each echo written before the next read
    /// (so it stops reading while the generator is not reading its echoes).
    LateReader,
}

/// Starts a test server on its own thread; returns its address.
fn test_server(behaviour: Behaviour) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let epoch = Instant::now();
            let count = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = wsx::accept(tcp).await else { return };
                    if let Behaviour::LateReader = behaviour {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    while let Some(Ok(msg)) = ws.recv().await {
                        let reply = match (behaviour, msg) {
                            (Behaviour::Silent, _) => continue,
                            (_, msg @ Message::Text(_)) => msg,
                            (Behaviour::Corrupt, Message::Binary(b)) => {
                                if count.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                                    let mut v = b.to_vec();
                                    if let Some(last) = v.last_mut() {
                                        *last ^= 0x20;
                                    }
                                    Message::Binary(v.into())
                                } else {
                                    Message::Binary(b)
                                }
                            }
                            (_, msg @ Message::Binary(_)) => msg,
                            _ => continue,
                        };
                        if let Behaviour::Stall = behaviour {
                            let phase = epoch.elapsed().as_millis() as u64 % 1000;
                            if phase < 200 {
                                tokio::time::sleep(Duration::from_millis(200 - phase)).await;
                            }
                        }
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("test server started")
}

/// Runs `wsx bench echo ARGS… URL --json FILE` (with a 0.2 s warm-up unless ARGS set one).
fn bench(url: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let warmup: &[&str] = if args.contains(&"--warmup") { &[] } else { &["--warmup", "0.2"] };
    common::bench_json("echo", url, &[warmup, args].concat())
}

fn ms(j: &serde_json::Value, key: &str) -> f64 {
    j["latency"][key].as_f64().unwrap_or_else(|| panic!("latency.{key} in {j}"))
}

#[test]
fn closed_loop_against_wsx_serve() {
    let server = Server::start(&["--echo"]);
    let (out, j) = bench(&server.url("/"), &["--conns", "4", "--depth", "4", "--duration", "1", "--threads", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["loop"], "closed");
    assert_eq!(j["threads"], 2);
    assert_eq!(j["connected"], 4);
    assert_eq!(j["error_count"], 0);
    assert!(j["messages"].as_u64().unwrap() > 500, "{j}");
    assert!(ms(&j, "p50_ms") > 0.0 && ms(&j, "p50_ms") <= ms(&j, "p99_ms") && ms(&j, "p99_ms") <= ms(&j, "max_ms"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in ["msgs/s", "bytes/s", "p99.9", "max", "errors", "closed loop"] {
        assert!(stdout.contains(word), "{word} missing from the summary:\n{stdout}");
    }
    // No live status line in a pipe.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\r'), "status line in a pipe");
}

#[test]
fn open_loop_keeps_its_schedule_with_text_deflate() {
    let server = Server::start(&["--echo"]);
    let (out, j) = bench(
        &server.url("/"),
        &["--rate", "400", "--conns", "4", "--duration", "1", "--text", "--deflate", "--size", "100", "--status"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(j["loop"], "open");
    assert_eq!(j["deflate"], true);
    assert_eq!(j["deflate_negotiated"], 4, "{j}");
    // --status forces the once-a-second line (it is otherwise for terminals only).
    assert!(stderr.contains('\r') && stderr.contains("msgs/s, p99"), "{stderr}");
    assert_eq!(j["payload"], "text");
    assert_eq!(j["error_count"], 0);
    assert_eq!(j["size"], 100);
    // Exactly the messages scheduled in the window are counted.
    assert_eq!(j["messages"], 400, "{j}");
    assert!(j["lag"]["max_ms"].is_number(), "{j}");
}

#[test]
fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let addr = test_server(Behaviour::Stall);
    let url = format!("ws://{addr}/");
    let args = ["--duration", "2", "--warmup", "0"];
    let (open, jo) = bench(&url, &[&args[..], &["--conns", "4", "--rate", "500"]].concat());
    let (closed, jc) = bench(&url, &[&args[..], &["--conns", "1", "--depth", "1"]].concat());
    assert!(open.status.success() && closed.status.success());
    // Open loop: about 20% of the messages are scheduled inside a stall and wait for its end,
    // so the 99th percentile is near 200 ms.
    assert!(ms(&jo, "p99_ms") >= 150.0, "open loop p99 {} ms", ms(&jo, "p99_ms"));
    // Closed loop: during a stall one message waits and nothing else is sent, so the stall is
    // one sample in thousands: it shows in max only (what --help and docs/bench.md say).
    assert!(ms(&jc, "max_ms") >= 150.0, "closed loop max {} ms", ms(&jc, "max_ms"));
    assert!(ms(&jc, "p99_ms") < 150.0, "closed loop p99 {} ms", ms(&jc, "p99_ms"));
}

#[test]
fn open_loop_charges_the_generators_own_hiccups() {
    // The generator itself blocks 200 ms once a second: messages due meanwhile leave late, and
    // open loop must time them from when they were due (and report the lag), not from when
    // they finally left.
    let server = Server::start(&["--echo"]);
    let (out, j) = bench(
        &server.url("/"),
        &["--rate", "500", "--conns", "4", "--duration", "2", "--warmup", "0", "--test-hiccup", "200ms"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["messages"], 1000, "every scheduled message is sent, late or not: {j}");
    assert!(ms(&j, "p99_ms") >= 150.0, "p99 {} ms", ms(&j, "p99_ms"));
    assert!(j["lag"]["max_ms"].as_f64().unwrap() >= 150.0, "lag {}", j["lag"]);
}

#[test]
fn open_loop_keeps_reading_while_its_output_is_blocked() {
    // 64 KiB messages pile up while the server reads nothing; when it starts, its echoes must
    // be read even though the generator still has a lot to write, or both sides wait on each
    // other until the write timeout.
    let addr = test_server(Behaviour::LateReader);
    let (out, j) = bench(
        &format!("ws://{addr}/"),
        &["--rate", "600", "--conns", "2", "--size", "64k", "--duration", "1.5", "--warmup", "0", "--timeout", "4"],
    );
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["messages"], 900, "{j}");
    assert!(ms(&j, "max_ms") >= 800.0, "the first messages waited for the server: {j}");
}

#[test]
fn corrupted_echoes_are_counted_and_fail_the_run() {
    let addr = test_server(Behaviour::Corrupt);
    let (out, j) =
        bench(&format!("ws://{addr}/"), &["--conns", "2", "--depth", "8", "--duration", "1", "--size", "64"]);
    let mismatches = j["errors"]["echo mismatch"].as_u64().unwrap_or(0);
    let messages = j["messages"].as_u64().unwrap();
    assert!(messages > 2000, "{j}");
    // One in 1,000 (give or take the warm-up's share).
    assert!(mismatches >= 1 && mismatches <= messages / 500 + 2, "{mismatches} mismatches in {messages}: {j}");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bench failed"));
}

#[test]
fn a_silent_server_times_out_within_the_deadline() {
    let addr = test_server(Behaviour::Silent);
    let started = Instant::now();
    let (out, j) = bench(
        &format!("ws://{addr}/"),
        &["--conns", "2", "--rate", "100", "--duration", "1", "--warmup", "0", "--timeout", "1"],
    );
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    assert!(j["errors"]["timeout"].as_u64().unwrap_or(0) > 0, "{j}");
    assert_eq!(j["messages"], 0);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_server_that_never_answers_the_handshake_cannot_hang_the_generator() {
    // Accepts TCP connections and holds them, reading nothing and answering nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for tcp in listener.incoming().flatten() {
            held.push(tcp);
        }
    });
    let started = Instant::now();
    let (out, j) = bench(&format!("ws://{addr}/"), &["--conns", "2", "--duration", "0.5", "--timeout", "1"]);
    // The handshake timeout (--timeout), then the report at once: no connection, nothing to wait for.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(j["errors"]["connect timeout"], 2, "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn connect_errors_are_sorted_by_kind() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (out, j) = bench(&format!("ws://{refused}/"), &["--conns", "3", "--duration", "0.2"]);
    assert_eq!(j["errors"]["connect refused"], 3, "{j}");
    assert_eq!(out.status.code(), Some(1));

    let server = Server::start(&[]);
    let (out, j) = bench(&server.url("/no-such-path"), &["--conns", "2", "--duration", "0.2"]);
    let kinds: Vec<_> = j["errors"].as_object().unwrap().keys().cloned().collect();
    assert!(kinds.iter().any(|k| k.starts_with("handshake status 4")), "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn wss_headers_and_subprotocols() {
    let server = Server::start(&["--echo", "--tls-self-signed"]);
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let short = ["--conns", "2", "--depth", "2", "--duration", "0.3", "--warmup", "0"];
    // The self-signed certificate is refused unless --insecure.
    let (out, j) = bench(&url, &short);
    assert_eq!(j["errors"]["tls"], 2, "{j}");
    assert_eq!(out.status.code(), Some(1));
    let with = [&short[..], &["--text", "--insecure", "-H", "X-Bench: 1", "--subprotocol", "echo.v1"]].concat();
    let (out, j) = bench(&url, &with);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["connected"], 2);
    assert!(j["messages"].as_u64().unwrap() > 0);
    assert_eq!((&j["payload"], &j["size"]), (&"text".into(), &40.into()), "text's default size is its header");
    server.expect_log(&["open", "echo.v1"]);
    // A malformed header is refused before anything is sent.
    let bad = Command::new(WSX).args(["bench", "echo", "-H", "no colon", &url]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Name: value"));
}

#[test]
fn a_server_close_is_counted_by_its_code() {
    let server = Server::start(&[]);
    let (out, j) = bench(&server.url("/close?code=4000&reason=bye&after=300"), &["--conns", "2", "--duration", "1"]);
    assert_eq!(j["errors"]["close 4000"], 2, "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn fail_if_sets_the_exit_status() {
    let server = Server::start(&["--echo"]);
    let url = server.url("/");
    let (out, _) = bench(&url, &["--conns", "1", "--depth", "1", "--duration", "0.5", "--fail-if", "p99>1ns"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-if p99>1ns"));
    let (out, _) =
        bench(&url, &["--conns", "1", "--depth", "1", "--duration", "0.5", "--fail-if", "p99>10s,rate<1,errors>0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = Command::new(WSX).args(["bench", "echo", "--fail-if", "p99>20", &url]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap refuses a latency without a unit");
}

#[test]
fn help_explains_both_loops() {
    let out = Command::new(WSX).args(["bench", "echo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["Closed loop", "Open loop", "--rate", "coordinated omission", "Examples:", "--fail-if"] {
        assert!(help.contains(word), "{word} missing:\n{help}");
    }
}

#[test]
fn compare_two_runs_and_fail_if_worse() {
    let server = Server::start(&["--echo"]);
    let short = ["--conns", "2", "--depth", "2", "--duration", "0.5"];
    let (out_a, a) = bench(&server.url("/"), &short);
    let (out_b, b) = bench(&server.url("/"), &short);
    assert!(out_a.status.success() && out_b.status.success(), "{}", String::from_utf8_lossy(&out_b.stderr));
    let dir = std::env::temp_dir();
    let write = |name: &str, contents: String| {
        let path = dir.join(format!("wsx-compare-test-{}-{name}.json", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    };
    let pretty = |j: &serde_json::Value| serde_json::to_string_pretty(j).unwrap();
    let compare = |args: &[&std::path::Path], extra: &[&str]| {
        let out = Command::new(WSX).args(["bench", "compare"]).args(extra).args(args).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("wsx bench compare {extra:?} {args:?}: {:?}\n{stdout}{stderr}", out.status);
        (out.status.code(), stdout.into_owned(), stderr.into_owned())
    };
    let (pa, pb) = (write("a", pretty(&a)), write("b", pretty(&b)));

    let (code, stdout, _) = compare(&[&pa, &pb], &[]);
    assert_eq!(code, Some(0));
    let line = |key: &str| stdout.lines().find(|l| l.starts_with(&format!("{key} "))).map(str::to_string);
    for key in ["msgs_per_s", "bytes_per_s", "latency.p99_ms", "error_count"] {
        assert!(line(key).is_some(), "no {key} row:\n{stdout}");
    }
    assert!(line("msgs_per_s").is_some_and(|l| l.contains('%')), "{stdout}");
    assert!(!stdout.contains("warning"), "same settings:\n{stdout}");

    // A copy of A with half the throughput: worse by 50%, named on stderr, exit status 1.
    let mut slow = a.clone();
    slow["msgs_per_s"] = (a["msgs_per_s"].as_f64().unwrap() / 2.0).into();
    let ps = write("slow", pretty(&slow));
    let (code, stdout, stderr) = compare(&[&pa, &ps], &["--fail-if-worse", "10"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("msgs_per_s -50.0%") && !stderr.contains("latency"), "{stderr}");
    let msgs = stdout.lines().find(|l| l.starts_with("msgs_per_s ")).unwrap_or_default();
    assert!(msgs.contains("-50.0%") && msgs.ends_with("worse"), "{stdout}");
    // Within the threshold, and nothing changed: status 0.
    assert_eq!(compare(&[&pa, &ps], &["--fail-if-worse", "60"]).0, Some(0));
    assert_eq!(compare(&[&pa, &pa], &["--fail-if-worse", "0"]).0, Some(0));

    // Different settings are warned about.
    let mut big = a.clone();
    big["size"] = 1024.into();
    let pbig = write("big", pretty(&big));
    let (code, stdout, _) = compare(&[&pa, &pbig], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("warning: the runs' settings differ (size)"), "{stdout}");

    // What is not a report: a clear error naming the file, status 2.
    let junk = write("junk", "not json at all".into());
    let (code, _, stderr) = compare(&[&pa, &junk], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains(&format!("{}: not JSON", junk.display())), "{stderr}");
    let other = write("other", "{\"mode\": \"echo\"}".into());
    let (code, _, stderr) = compare(&[&other, &pb], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a wsx bench report"), "{stderr}");
    let missing = dir.join("wsx-compare-test-no-such-file.json");
    let (code, _, stderr) = compare(&[&pa, &missing], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot open") && stderr.contains("no-such-file"), "{stderr}");
    for path in [pa, pb, ps, pbig, junk, other] {
        let _ = std::fs::remove_file(path);
    }
}
