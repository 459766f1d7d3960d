//! The figures of a run: histograms, counters, the summary table, the JSON file and `--fail-if`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds, from 1 ns to an hour, to 3 significant digits.
const HIGHEST_NS: u64 = 3_600_000_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("constant bounds are valid")
}

/// The percentiles of the summary, the status line and `--fail-if`.
pub const PERCENTILES: [(&str, f64); 5] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("max", 100.0)];

/// What one thread (or the whole run) counted.
#[derive(Debug, Clone)]
pub struct Stats {
    /// The mode's latency: echo round trips, handshakes, publish-to-receive times (of what was
    /// scheduled inside the measurement window).
    pub latency: Histogram<u64>,
    /// Open loop: how late the generator sent each counted message after its scheduled time.
    pub lag: Histogram<u64>,
    /// Parts of the latency timed apart (`bench connect`: "tcp", "tls", "upgrade").
    pub phases: BTreeMap<&'static str, Histogram<u64>>,
    /// What the report counts (echoes, handshakes, deliveries) inside the window.
    pub msgs: u64,
    /// The same, warm-up included, for the status line.
    pub seen: u64,
    /// The mode's own counters ("published", "own deliveries", …).
    pub counts: BTreeMap<&'static str, u64>,
    /// Errors by kind: "connect refused", "handshake status 403", "close 1011", "timeout",
    /// "echo mismatch", …
    pub errors: BTreeMap<String, u64>,
    /// Of the errors, the connections that could not be opened.
    pub connect_failed: u64,
    /// Connections that completed the opening handshake.
    pub connected: u64,
    /// Of those, the ones that have ended since (for the status line's open count).
    pub closed: u64,
    /// Of those, the ones on which the server accepted permessage-deflate.
    pub deflated: u64,
    /// When the last of them finished its handshake (a ramp's end).
    pub last_open: Option<std::time::Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: histogram(),
            lag: histogram(),
            phases: BTreeMap::new(),
            msgs: 0,
            seen: 0,
            counts: BTreeMap::new(),
            errors: BTreeMap::new(),
            connect_failed: 0,
            connected: 0,
            closed: 0,
            deflated: 0,
            last_open: None,
        }
    }
}

impl Stats {
    /// Counts `n` errors of a kind.
    pub fn error(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    /// Counts a connection that could not be opened.
    pub fn connect_error(&mut self, kind: impl Into<String>) {
        self.error(kind, 1);
        self.connect_failed += 1;
    }

    /// Connections that could not be opened.
    pub fn connect_errors(&self) -> u64 {
        self.connect_failed
    }

    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds to one of the mode's counters.
    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counts.entry(name).or_default() += n;
    }

    /// Records a latency sample.
    pub fn record_latency(&mut self, ns: u64) {
        self.latency.saturating_record(ns.max(1));
    }

    /// Records `n` latency samples of the same value.
    pub fn record_latency_n(&mut self, ns: u64, n: u64) {
        self.latency.saturating_record_n(ns.max(1), n);
    }

    /// Records a generator-lag sample.
    pub fn record_lag(&mut self, ns: u64) {
        self.lag.saturating_record(ns.max(1));
    }

    /// Records a sample of one phase of the latency.
    pub fn record_phase(&mut self, phase: &'static str, ns: u64) {
        self.phases.entry(phase).or_insert_with(histogram).saturating_record(ns.max(1));
    }

    /// Adds another thread's counts to these.
    pub fn merge(&mut self, other: &Stats) {
        // Every histogram has the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.lag.add(&other.lag);
        for (name, h) in &other.phases {
            let _ = self.phases.entry(name).or_insert_with(histogram).add(h);
        }
        self.msgs += other.msgs;
        self.seen += other.seen;
        for (k, v) in &other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        self.connect_failed += other.connect_failed;
        self.connected += other.connected;
        self.closed += other.closed;
        self.deflated += other.deflated;
        self.last_open = self.last_open.max(other.last_open);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// The latency at a percentile (100 is the maximum), `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        pct(&self.latency, p)
    }
}

/// CPU seconds (user + system) of the process whose `stat` file this is.
pub fn proc_cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters.
    Some((utime + stime) / 100.0)
}

/// The server's CPU time and memory (`--server-pid`), read from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerUsage {
    /// CPU seconds: since it started (a sample), or over the window (after [`since`](Self::since)).
    pub cpu_s: f64,
    /// Resident set size: now (a sample), or at the window's end.
    pub rss_bytes: u64,
    /// The measurement window's length (after [`since`](Self::since)).
    pub window_s: f64,
    /// Its resident set before the generator's traffic started (connections open).
    pub rss_before_start: Option<u64>,
    /// A ramp: connections open when it completed, and the resident set then.
    pub ramp: Option<(u64, u64)>,
}

impl ServerUsage {
    /// The process's CPU time and resident set now; `None` if it is gone.
    pub fn sample(pid: u32) -> Option<Self> {
        let cpu_s = proc_cpu_seconds(&format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(Self { cpu_s, rss_bytes: kb * 1024, ..Self::default() })
    }

    /// The sum over several processes; `None` without any, or if one is gone.
    pub fn sample_all(pids: &[u32]) -> Option<Self> {
        let mut sum: Option<Self> = None;
        for &pid in pids {
            let one = Self::sample(pid)?;
            let total = sum.get_or_insert_with(Self::default);
            total.cpu_s += one.cpu_s;
            total.rss_bytes += one.rss_bytes;
        }
        sum
    }

    /// The usage over a window that began at `before` and lasted `window`.
    pub fn since(&self, before: &Self, window: Duration) -> Self {
        Self { cpu_s: (self.cpu_s - before.cpu_s).max(0.0), window_s: window.as_secs_f64(), ..*self }
    }

    /// The server's CPU time over the window as a share of one core.
    pub fn cpu_share(&self) -> f64 {
        self.cpu_s / self.window_s.max(1e-9)
    }
}

fn pct(h: &Histogram<u64>, p: f64) -> Option<Duration> {
    if h.is_empty() {
        return None;
    }
    let ns = if p >= 100.0 { h.max() } else { h.value_at_percentile(p) };
    Some(Duration::from_nanos(ns))
}

/// A duration for people: `812 µs`, `12.3 ms`, `1.25 s`, three significant digits.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

/// A count or rate for people: `1234567` as `1.23M`, below 10,000 as it is.
pub fn fmt_count(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The run's settings and results, as reported.
#[derive(Debug)]
pub struct Report {
    pub url: String,
    pub mode: &'static str,
    /// What `stats.msgs` counts, plural: "messages", "handshakes", "deliveries".
    pub unit: &'static str,
    /// The JSON key of its count per second: "msgs_per_s", "handshakes_per_s", ….
    pub rate_key: &'static str,
    /// The run's shape for the summary's first line ("closed loop, depth 16; 64 conns …").
    pub shape: String,
    /// What each latency runs from and to, for the summary.
    pub latency_label: String,
    pub conns: usize,
    pub threads: usize,
    /// Message size (0 when the mode sends none).
    pub size: usize,
    pub depth: Option<usize>,
    pub rate: Option<f64>,
    pub text: bool,
    pub deflate: bool,
    pub warmup: Duration,
    /// The measurement window.
    pub duration: Duration,
    pub stats: Stats,
    /// CPU time of the generator during the window, as a share of its threads' capacity.
    pub cpu_share: Option<f64>,
    /// The server's CPU time and memory (`--server-pid`).
    pub server: Option<ServerUsage>,
    /// The mode's own figures: lines for the summary …
    pub extra_lines: Vec<String>,
    /// … and entries for the JSON file.
    pub extra_json: serde_json::Map<String, serde_json::Value>,
}

/// Above this share of its threads' CPU capacity, the generator may be what limits the result.
pub const GENERATOR_BOUND: f64 = 0.85;

/// Bytes for people: `812 B`, `4.20 KiB`, `45.1 MiB`.
pub fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

impl Report {
    /// The report's count (`msgs`) per second of the window.
    pub fn msgs_per_sec(&self) -> f64 {
        self.stats.msgs as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Payload bytes per second, one direction.
    pub fn bytes_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.size as f64
    }

    /// Whether the generator used so much CPU that it may be what limited the result.
    pub fn generator_bound(&self) -> bool {
        self.cpu_share.is_some_and(|c| c > GENERATOR_BOUND)
    }

    /// The server's CPU time per counted unit, in microseconds.
    pub fn server_cpu_us_per_unit(&self) -> Option<f64> {
        let server = self.server?;
        (self.stats.msgs > 0).then(|| server.cpu_s * 1e6 / self.stats.msgs as f64)
    }

    /// A ramp: the server's memory per connection held (resident set growth over connections).
    pub fn server_bytes_per_conn(&self) -> Option<f64> {
        let server = self.server?;
        let (open, rss) = server.ramp?;
        let before = server.rss_before_start?;
        (open > 0).then(|| (rss as f64 - before as f64) / open as f64)
    }

    /// The summary table printed at the end.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let warmup = if self.warmup.is_zero() {
            String::new()
        } else {
            format!(" (+{:.1} s warm-up)", self.warmup.as_secs_f64())
        };
        let _ = writeln!(
            s,
            "{} {}: {}; {} threads, {:.1} s{warmup}",
            self.mode,
            self.url,
            self.shape,
            self.threads,
            self.duration.as_secs_f64(),
        );
        let _ = writeln!(s, "  {:<12} {:>12}", self.unit, self.stats.msgs);
        let per_sec = if self.unit == "messages" { "msgs/s".into() } else { format!("{}/s", self.unit) };
        let _ = writeln!(s, "  {per_sec:<12} {:>12}", fmt_count(self.msgs_per_sec()));
        if self.size > 0 {
            let _ = writeln!(s, "  {:<12} {:>12}", "bytes/s", format!("{}B", fmt_count(self.bytes_per_sec())));
        }
        let _ = writeln!(s, "  latency ({}):", self.latency_label);
        for (name, p) in PERCENTILES {
            let v = self.stats.percentile(p).map_or_else(|| "-".into(), fmt_duration);
            let _ = writeln!(s, "    {name:<10} {v:>12}");
        }
        for (phase, h) in &self.stats.phases {
            let p = |q| pct(h, q).map_or_else(|| "-".into(), fmt_duration);
            let _ = writeln!(s, "  {phase:<12} p50 {}, p99 {}, max {}", p(50.0), p(99.0), p(100.0));
        }
        if self.rate.is_some() {
            let lag = |p| pct(&self.stats.lag, p).map_or_else(|| "-".into(), fmt_duration);
            let _ = writeln!(s, "  generator lag (actual − scheduled send): p99 {}, max {}", lag(99.0), lag(100.0));
        }
        for line in &self.extra_lines {
            let _ = writeln!(s, "  {line}");
        }
        if self.stats.errors.is_empty() {
            let _ = writeln!(s, "  errors       {:>12}", 0);
        } else {
            let _ = writeln!(s, "  errors       {:>12}", self.stats.error_count());
            for (kind, n) in &self.stats.errors {
                let _ = writeln!(s, "    {kind:<24} {n}");
            }
        }
        if self.deflate && self.stats.deflated < self.stats.connected {
            let _ = writeln!(
                s,
                "  warning: the server refused permessage-deflate on {} of {} connections",
                self.stats.connected - self.stats.deflated,
                self.stats.connected
            );
        }
        if let Some(server) = &self.server {
            let per = self.server_cpu_us_per_unit().map_or_else(|| "-".into(), |us| format!("{us:.2} µs"));
            let unit = match self.unit {
                "deliveries" => "delivery",
                unit => unit.trim_end_matches('s'),
            };
            let _ = writeln!(
                s,
                "  server CPU {per} per {unit} ({:.0}% of a core), RSS {}",
                server.cpu_share() * 100.0,
                fmt_bytes(server.rss_bytes as f64)
            );
            if let (Some((open, rss)), Some(before)) = (server.ramp, server.rss_before_start) {
                let per = self.server_bytes_per_conn().map_or_else(|| "-".into(), fmt_bytes);
                let _ = writeln!(
                    s,
                    "  server memory: RSS {} with {open} connections open, {} before: {per} per connection",
                    fmt_bytes(rss as f64),
                    fmt_bytes(before as f64)
                );
            }
        }
        if let Some(cpu) = self.cpu_share {
            let _ = write!(s, "  generator CPU {:.0}% of {} thread(s)", cpu * 100.0, self.threads);
            if self.generator_bound() {
                let _ = write!(s, ": generator-bound, the server may be faster than this shows (add --threads)");
            }
            s.push('\n');
        }
        s
    }

    /// Every figure, for `--json FILE`.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let summary = |h: &Histogram<u64>, points: bool| {
            let mut m = serde_json::Map::new();
            for (name, p) in PERCENTILES {
                m.insert(format!("{name}_ms"), json!(ms(pct(h, p))));
            }
            m.insert("min_ms".into(), json!(ms((!h.is_empty()).then(|| Duration::from_nanos(h.min())))));
            m.insert("mean_ms".into(), json!(h.mean() / 1e6));
            m.insert("count".into(), json!(h.len()));
            if points {
                m.insert("histogram".into(), histogram_points(h));
            }
            serde_json::Value::Object(m)
        };
        let mut j = json!({
            "wsx_bench": 1,
            "mode": self.mode,
            "url": self.url,
            "loop": if self.rate.is_some() { "open" } else { "closed" },
            "conns": self.conns,
            "connected": self.stats.connected,
            "threads": self.threads,
            "size": self.size,
            "depth": self.depth,
            "rate_scheduled": self.rate,
            "payload": if self.text { "text" } else { "binary" },
            "deflate": self.deflate,
            "deflate_negotiated": self.stats.deflated,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
            "bytes_per_s": self.bytes_per_sec(),
            "latency": summary(&self.stats.latency, true),
            "lag": self.rate.map(|_| json!({
                "p99_ms": ms(pct(&self.stats.lag, 99.0)),
                "max_ms": ms(pct(&self.stats.lag, 100.0)),
            })),
            "errors": self.stats.errors,
            "error_count": self.stats.error_count(),
            "generator_cpu_share": self.cpu_share,
            "generator_bound": self.generator_bound(),
        });
        if let Some(obj) = j.as_object_mut() {
            obj.insert(self.unit.into(), json!(self.stats.msgs));
            obj.insert(self.rate_key.into(), json!(self.msgs_per_sec()));
            for (phase, h) in &self.stats.phases {
                obj.insert((*phase).into(), summary(h, false));
            }
            if !self.stats.counts.is_empty() {
                obj.insert("counts".into(), json!(self.stats.counts));
            }
            if let Some(server) = &self.server {
                obj.insert(
                    "server".into(),
                    json!({
                        "cpu_s": server.cpu_s,
                        "cpu_share": server.cpu_share(),
                        "cpu_us_per_unit": self.server_cpu_us_per_unit(),
                        "rss_bytes": server.rss_bytes,
                        "rss_before_start_bytes": server.rss_before_start,
                        "ramp_conns": server.ramp.map(|r| r.0),
                        "ramp_rss_bytes": server.ramp.map(|r| r.1),
                        "bytes_per_conn": self.server_bytes_per_conn(),
                    }),
                );
            }
            for (k, v) in &self.extra_json {
                obj.insert(k.clone(), v.clone());
            }
        }
        j
    }
}

/// The histogram as percentile points (`[{"percentile": 50.0, "ms": 1.2, "count": n}, …]`), at
/// the quantile steps HdrHistogram's own percentile output uses (5 ticks per half-distance).
fn histogram_points(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    let mut count = 0;
    let points: Vec<_> = h
        .iter_quantiles(5)
        .map(|v| {
            count += v.count_since_last_iteration();
            serde_json::json!({
                "percentile": v.quantile_iterated_to() * 100.0,
                "ms": v.value_iterated_to() as f64 / 1e6,
                "count": count,
            })
        })
        .collect();
    serde_json::Value::Array(points)
}

/// One `--fail-if` condition: `p99>20ms`, `max>=1s`, `rate<5000`, `errors>0`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailIf {
    pub metric: Metric,
    pub greater: bool,
    pub or_equal: bool,
    pub value: f64,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency percentile (100 = max); the value is in seconds.
    Latency(f64),
    /// Messages per second.
    Rate,
    /// Errors of every kind.
    Errors,
}

impl std::fmt::Display for FailIf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for FailIf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text: String = s.split_whitespace().collect();
        let at = text
            .find(['<', '>'])
            .ok_or_else(|| format!("{s:?}: expected METRIC>VALUE or METRIC<VALUE, e.g. p99>20ms"))?;
        let (name, rest) = text.split_at(at);
        let greater = rest.starts_with('>');
        let (or_equal, value) = match rest[1..].strip_prefix('=') {
            Some(v) => (true, v),
            None => (false, &rest[1..]),
        };
        let metric = match name.to_ascii_lowercase().as_str() {
            "rate" | "msgs/s" => Metric::Rate,
            "errors" => Metric::Errors,
            "max" => Metric::Latency(100.0),
            "p999" => Metric::Latency(99.9),
            p => match p.strip_prefix('p').and_then(|n| n.parse::<f64>().ok()) {
                Some(n) if n > 0.0 && n <= 100.0 => Metric::Latency(n),
                _ => return Err(format!("{s:?}: unknown metric {name:?} (p50, p90, p99, p99.9, max, rate, errors)")),
            },
        };
        let value = match metric {
            Metric::Latency(_) => parse_latency(value)
                .ok_or_else(|| format!("{s:?}: {value:?} is not a latency with a unit (20ms, 500us, 1.5s)"))?,
            _ => value.parse::<f64>().map_err(|_| format!("{s:?}: {value:?} is not a number"))?,
        };
        Ok(Self { metric, greater, or_equal, value, text })
    }
}

/// `20ms`, `500us`, `500µs`, `1.5s` in seconds; the unit is required (`20` is ambiguous).
fn parse_latency(s: &str) -> Option<f64> {
    let (number, scale) = [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))?;
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

impl FailIf {
    /// Whether the report violates this condition (a latency without any sample does).
    pub fn violated(&self, report: &Report) -> bool {
        let actual = match self.metric {
            Metric::Latency(p) => match report.stats.percentile(p) {
                Some(d) => d.as_secs_f64(),
                None => return true,
            },
            Metric::Rate => report.msgs_per_sec(),
            Metric::Errors => report.stats.error_count() as f64,
        };
        match (self.greater, self.or_equal) {
            (true, false) => actual > self.value,
            (true, true) => actual >= self.value,
            (false, false) => actual < self.value,
            (false, true) => actual <= self.value,
        }
    }

    pub fn is_errors(&self) -> bool {
        self.metric == Metric::Errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stats: Stats) -> Report {
        Report {
            url: "ws://h/".into(),
            mode: "echo",
            unit: "messages",
            rate_key: "msgs_per_s",
            shape: "closed loop, depth 1; 2 conns".into(),
            latency_label: "from actual send".into(),
            conns: 2,
            threads: 1,
            size: 100,
            depth: Some(1),
            rate: None,
            text: false,
            deflate: false,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            stats,
            cpu_share: Some(0.5),
            server: None,
            extra_lines: Vec::new(),
            extra_json: serde_json::Map::new(),
        }
    }

    #[test]
    fn formats_durations_and_counts() {
        assert_eq!(fmt_duration(Duration::from_nanos(812)), "812 ns");
        assert_eq!(fmt_duration(Duration::from_micros(812)), "812 µs");
        assert_eq!(fmt_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(fmt_duration(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(fmt_count(1_234_567.0), "1.23M");
        assert_eq!(fmt_count(45_600.0), "45.6k");
        assert_eq!(fmt_count(200.0), "200");
        assert_eq!(fmt_count(0.5), "0.50");
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut s = Stats::default();
        for ms in 1..=1000u64 {
            s.record_latency(ms * 1_000_000);
        }
        let near = |p: f64, ms: f64| {
            let got = s.percentile(p).unwrap().as_secs_f64() * 1e3;
            assert!((got - ms).abs() <= ms * 0.002, "p{p}: {got} ms, expected {ms}");
        };
        near(50.0, 500.0);
        near(99.0, 990.0);
        near(99.9, 999.0);
        near(100.0, 1000.0);
        assert_eq!(Stats::default().percentile(99.0), None);
        let mut merged = Stats::default();
        merged.merge(&s);
        merged.merge(&s);
        assert_eq!(merged.latency.len(), 2000);
    }

    #[test]
    fn parses_fail_if() {
        let f: FailIf = "p99>20ms".parse().unwrap();
        assert_eq!((f.metric, f.greater, f.or_equal, f.value), (Metric::Latency(99.0), true, false, 0.02));
        let f: FailIf = " p99.9 >= 1s".parse().unwrap();
        assert_eq!((f.metric, f.or_equal, f.value), (Metric::Latency(99.9), true, 1.0));
        assert_eq!("max>500us".parse::<FailIf>().unwrap().value, 0.0005);
        assert_eq!("max>5ms".parse::<FailIf>().unwrap().metric, Metric::Latency(100.0));
        let f: FailIf = "rate<5000".parse().unwrap();
        assert_eq!((f.metric, f.greater, f.value), (Metric::Rate, false, 5000.0));
        assert!("errors>0".parse::<FailIf>().unwrap().is_errors());
        for bad in ["p99", "p99>20", "p0>1ms", "p101>1ms", "speed>3", "rate<fast", "errors>"] {
            assert!(bad.parse::<FailIf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fail_if_checks_the_report() {
        let mut s = Stats { msgs: 10_000, ..Default::default() };
        for _ in 0..100 {
            s.record_latency(30_000_000);
        }
        let r = report(s);
        let v = |c: &str| c.parse::<FailIf>().unwrap().violated(&r);
        assert!(v("p99>20ms"));
        assert!(!v("p99>40ms"));
        assert!(v("rate<6000")); // 5000 msgs/s
        assert!(!v("rate<5000"));
        assert!(v("rate<=5000"));
        assert!(!v("errors>0"));
        assert!("p99>1ms".parse::<FailIf>().unwrap().violated(&report(Stats::default())), "no samples");
    }

    #[test]
    fn json_has_every_figure() {
        let mut s = Stats { msgs: 4, connected: 2, ..Default::default() };
        for ms in [1, 2, 3, 40] {
            s.record_latency(ms * 1_000_000);
        }
        s.error("echo mismatch", 3);
        s.error("close 1011", 1);
        s.error("nothing", 0);
        let j = report(s).json();
        assert_eq!(j["loop"], "closed");
        assert_eq!(j["messages"], 4);
        assert_eq!(j["msgs_per_s"], 2.0);
        assert_eq!(j["bytes_per_s"], 200.0);
        assert_eq!(j["errors"]["echo mismatch"], 3);
        assert_eq!(j["errors"].as_object().unwrap().len(), 2);
        assert_eq!(j["error_count"], 4);
        for key in ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "min_ms", "mean_ms"] {
            assert!(j["latency"][key].is_number(), "{key}");
        }
        assert!((j["latency"]["max_ms"].as_f64().unwrap() - 40.0).abs() < 0.1);
        let points = j["latency"]["histogram"].as_array().unwrap();
        assert!(points.len() >= 4);
        assert_eq!(points.last().unwrap()["count"], 4);
        assert_eq!(j["generator_bound"], false);
        let mut busy = report(Stats::default());
        busy.cpu_share = Some(0.9);
        assert_eq!(busy.json()["generator_bound"], true);
        assert!(busy.summary().contains("generator-bound"), "{}", busy.summary());
        busy.deflate = true;
        busy.stats.connected = 2;
        busy.stats.deflated = 1;
        assert!(busy.summary().contains("refused permessage-deflate on 1 of 2"), "{}", busy.summary());
        let summary = report(Stats::default()).summary();
        assert!(summary.contains("p99.9") && summary.contains("errors"), "{summary}");
    }
}
