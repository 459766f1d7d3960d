//! `wsx bench compare A.json B.json`: two reports written by `wsx bench … --json` side by side.
//!
//! Generic over the modes: every report is an object with `"wsx_bench": 1` and a `"mode"`, whose
//! numeric leaves are flattened into dotted keys (`latency.p99_ms`, `errors.close 1006`) and
//! compared one by one. Arrays (the latency histogram) are skipped. The settings of the runs
//! ([`SETTINGS`]) are shown apart, with a warning when they differ. Whether a higher or a lower
//! figure is better is guessed from its name ([`better`]); only those figures can be "better",
//! "worse", or fail `--fail-if-worse`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{Map, Value};

use super::report::{fmt_count, fmt_duration};

/// The help after the options of `wsx bench compare`.
pub const AFTER_HELP: &str = "\
Reads two reports written by `wsx bench … --json FILE` (any mode) and prints each figure of A,
of B, the change B − A, and the change as a percentage of A. Where the better direction is
known from the figure's name, it says whether B is better or worse: higher is better for rates
(*_per_s); lower is better for times (*_ms: latency, lag, handshake, …), errors, CPU shares and
memory (*_bytes). Other figures are shown without a verdict. Histograms are not compared.

The runs' settings (mode, loop, conns, size, …) are shown first, with a warning when they
differ (a different URL is not warned about: comparing two servers is what this is for).

Examples:
  wsx bench compare before.json after.json
  wsx bench compare --fail-if-worse 10 baseline.json candidate.json
      Exit status 1 when a figure with a known direction got more than 10% worse; the figures
      are listed on stderr. A figure that was 0 in A and got worse counts as worse by any
      percentage (0 errors, then 3).

Exit status: 0, or 1 for --fail-if-worse, or 2 when a file cannot be read or is not a report.";

/// Options of `wsx bench compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The baseline: a report written by `wsx bench … --json FILE`.
    a: PathBuf,
    /// The run compared with it (the change is B − A).
    b: PathBuf,
    /// Exit with status 1 when a figure whose better direction is known is worse in B by more
    /// than PCT percent of A (e.g. 10).
    #[arg(long, value_name = "PCT", value_parser = parse_pct)]
    fail_if_worse: Option<f64>,
}

/// Reports larger than this are refused: a report is a few kilobytes.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The `"wsx_bench"` version this `wsx` reads.
pub const VERSION: u64 = 1;

/// Top-level keys that describe how a run was made rather than what it measured: shown in the
/// settings header, not in the table. Those of one mode are simply absent from the others'.
pub const SETTINGS: &[&str] = &[
    "mode",
    "url",
    "loop",
    "payload",
    "deflate",
    "conns",
    "size",
    "depth",
    "rate_scheduled",
    "threads",
    "duration_s",
    "warmup_s",
    // bench connect
    "ramp",
    "hold_s",
    // bench pubsub
    "rooms",
    "publishers",
    "subscribers",
];

/// Settings that may differ without a warning.
const FREE_SETTINGS: &[&str] = &["url"];

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Rates: more is better.
    Higher,
    /// Times, errors, CPU, memory: less is better.
    Lower,
}

/// `wsx bench compare`: prints the comparison; the exit status is 1 for `--fail-if-worse`, 2 for
/// a file that cannot be read or is not a report.
pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = match load(&args.a).and_then(|a| Ok((a, load(&args.b)?))) {
        Ok(reports) => reports,
        Err(e) => {
            // As `main` prints errors, but with status 2: 1 means "worse" here.
            eprintln!("wsx: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let comparison = Comparison::new(&a, &b);
    print!("{}", comparison.render(&args.a, &args.b));
    if let Some(pct) = args.fail_if_worse {
        let worse = comparison.worse_than(pct);
        if !worse.is_empty() {
            eprintln!("wsx: bench compare: worse by more than {pct}%: {}", worse.join(", "));
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--fail-if-worse`: a percentage, 0 or more.
fn parse_pct(s: &str) -> Result<f64, String> {
    let n: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if n.is_finite() && n >= 0.0 {
        Ok(n)
    } else {
        Err(format!("{s:?}: the percentage must be 0 or more"))
    }
}

/// Reads a report: at most [`MAX_REPORT_BYTES`], JSON, an object with a supported `"wsx_bench"`.
fn load(path: &Path) -> anyhow::Result<Map<String, Value>> {
    load_at_most(path, MAX_REPORT_BYTES)
}

/// [`load`] with another limit (tests).
fn load_at_most(path: &Path, limit: u64) -> anyhow::Result<Map<String, Value>> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {name}"))?;
    if bytes.len() as u64 > limit {
        bail!("{name}: larger than {}, not a wsx bench report", fmt_limit(limit));
    }
    parse(&bytes).with_context(|| name.to_string())
}

/// The size limit for the error message: `64 MiB`, `15 bytes`.
fn fmt_limit(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The checks of [`load`] on a file's contents.
fn parse(bytes: &[u8]) -> anyhow::Result<Map<String, Value>> {
    let value: Value = serde_json::from_slice(bytes).context("not JSON")?;
    let Value::Object(map) = value else {
        bail!("not a wsx bench report (not a JSON object)");
    };
    match map.get("wsx_bench") {
        None => bail!("not a wsx bench report (no \"wsx_bench\" key; write one with `wsx bench … --json FILE`)"),
        Some(v) if v.as_u64() == Some(VERSION) => Ok(map),
        Some(v) => bail!("report version {v} (\"wsx_bench\") is not supported: this wsx reads version {VERSION}"),
    }
}

/// A figure of a report.
#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Num(f64),
    /// A string or a boolean.
    Text(String),
    /// No value (`null`: a latency without samples, a share that could not be measured).
    Null,
}

/// A report's leaves under dotted keys, in order, and the keys of its objects.
#[derive(Debug, Default)]
struct Flat {
    leaves: Vec<(String, Leaf)>,
    objects: HashSet<String>,
}

fn flatten(report: &Map<String, Value>) -> Flat {
    let mut flat = Flat::default();
    walk("", report, &mut flat);
    flat
}

fn walk(prefix: &str, object: &Map<String, Value>, flat: &mut Flat) {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    // Stable: only percentiles and max/min/mean move, the rest keeps the report's order.
    entries.sort_by(|(x, _), (y, _)| {
        let (x, y) = (sibling_rank(x), sibling_rank(y));
        x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
    });
    for (key, value) in entries {
        if prefix.is_empty() && key == "wsx_bench" {
            continue;
        }
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.is_finite() => flat.leaves.push((path, Leaf::Num(x))),
                _ => flat.leaves.push((path, Leaf::Null)),
            },
            Value::String(s) => flat.leaves.push((path, Leaf::Text(s.clone()))),
            Value::Bool(b) => flat.leaves.push((path, Leaf::Text(b.to_string()))),
            Value::Null => flat.leaves.push((path, Leaf::Null)),
            // Histograms: their points are not figures to compare one by one.
            Value::Array(_) => {}
            Value::Object(inner) => {
                walk(&path, inner, flat);
                flat.objects.insert(path);
            }
        }
    }
}

/// Where a key goes among its siblings: percentiles in numeric order (the report's keys are
/// sorted by name, which puts `p99.9_ms` before `p99_ms`), then max, min, mean, then the rest.
fn sibling_rank(key: &str) -> (u8, f64) {
    let percentile = key.strip_prefix('p').and_then(|rest| rest.split('_').next()?.parse::<f64>().ok());
    match percentile {
        Some(p) if p.is_finite() => (0, p),
        _ if key == "max" || key.starts_with("max_") => (1, 0.0),
        _ if key == "min" || key.starts_with("min_") => (2, 0.0),
        _ if key == "mean" || key.starts_with("mean_") => (3, 0.0),
        _ => (4, 0.0),
    }
}

/// Whether a higher or a lower value of the figure under `key` is better, from its name; `None`
/// when the name does not say (counts, connections, …).
pub fn better(key: &str) -> Option<Better> {
    let mut parts = key.rsplit('.');
    let leaf = parts.next().unwrap_or(key);
    let under_errors = parts.any(|group| group == "errors");
    if under_errors
        || leaf.starts_with("error")
        || leaf.ends_with("errors")
        || leaf.ends_with("timeouts")
        || leaf.ends_with("failures")
    {
        return Some(Better::Lower);
    }
    if leaf.ends_with("_per_s") {
        return Some(Better::Higher);
    }
    if ["_ms", "_us", "_ns"].iter().any(|unit| leaf.ends_with(unit))
        || leaf.contains("cpu")
        || leaf.ends_with("_bytes")
        || leaf.starts_with("bytes_per_")
        || leaf.contains("rss")
        || leaf.contains("memory")
    {
        return Some(Better::Lower);
    }
    None
}

/// How a figure is printed, from its name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// A time; the value times this is seconds.
    Time(f64),
    /// A count or a rate; bytes get a `B`.
    Count { bytes: bool },
    /// A fraction, printed as a percentage.
    Share,
}

fn unit(key: &str) -> Unit {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if leaf.ends_with("_per_s") {
        return Unit::Count { bytes: leaf.starts_with("bytes") };
    }
    for (suffix, scale) in [("_ms", 1e-3), ("_us", 1e-6), ("_ns", 1e-9), ("_s", 1.0)] {
        if leaf.ends_with(suffix) {
            return Unit::Time(scale);
        }
    }
    if leaf.contains("share") {
        return Unit::Share;
    }
    Unit::Count { bytes: leaf == "bytes" || leaf.ends_with("_bytes") || leaf.starts_with("bytes_") }
}

/// A value for people, as `report.rs` prints them: `12.3 ms`, `45.6k`, `1.23MB`, `45%`.
fn fmt_value(unit: Unit, x: f64) -> String {
    if x < 0.0 {
        return format!("-{}", fmt_value(unit, -x));
    }
    match unit {
        Unit::Time(scale) => match Duration::try_from_secs_f64(x * scale) {
            Ok(d) => fmt_duration(d),
            Err(_) => fmt_count(x),
        },
        Unit::Count { bytes } => format!("{}{}", fmt_count(x), if bytes { "B" } else { "" }),
        Unit::Share => format!("{:.0}%", x * 100.0),
    }
}

/// A change for people: `+1.20 ms`, `-22.8k`, `+5 pts` (a share's change, in percentage points).
fn fmt_delta(unit: Unit, d: f64) -> String {
    if d == 0.0 {
        return "0".into();
    }
    let sign = if d > 0.0 { "+" } else { "-" };
    match unit {
        Unit::Share => format!("{sign}{:.0} pts", d.abs() * 100.0),
        _ => format!("{sign}{}", fmt_value(unit, d.abs())),
    }
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    key: String,
    /// `None`: not in that report (or `null` there).
    a: Option<Leaf>,
    b: Option<Leaf>,
}

/// The verdict on a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Better,
    Worse,
}

impl Row {
    fn numbers(&self) -> Option<(f64, f64)> {
        match (&self.a, &self.b) {
            (Some(Leaf::Num(a)), Some(Leaf::Num(b))) => Some((*a, *b)),
            _ => None,
        }
    }

    /// B − A.
    fn delta(&self) -> Option<f64> {
        self.numbers().map(|(a, b)| b - a)
    }

    /// B − A as a percentage of A; `None` when A is 0 (no percentage says "from 0 to 3").
    fn percent(&self) -> Option<f64> {
        let (a, b) = self.numbers()?;
        (a != 0.0).then(|| (b - a) * 100.0 / a.abs()).filter(|p| p.is_finite())
    }

    fn verdict(&self) -> Option<Verdict> {
        let delta = self.delta()?;
        let improved = match better(&self.key)? {
            Better::Higher => delta > 0.0,
            Better::Lower => delta < 0.0,
        };
        if delta == 0.0 {
            None
        } else if improved {
            Some(Verdict::Better)
        } else {
            Some(Verdict::Worse)
        }
    }

    /// Worse by more than `pct` percent of A (from 0, worse by any percentage).
    fn worse_than(&self, pct: f64) -> bool {
        self.verdict() == Some(Verdict::Worse) && self.percent().is_none_or(|p| p.abs() > pct)
    }

    fn cells(&self) -> [String; 5] {
        let unit = unit(&self.key);
        let show = |leaf: &Option<Leaf>| match leaf {
            Some(Leaf::Num(x)) => fmt_value(unit, *x),
            Some(Leaf::Text(s)) => s.clone(),
            Some(Leaf::Null) | None => "-".into(),
        };
        let text = matches!(self.a, Some(Leaf::Text(_))) || matches!(self.b, Some(Leaf::Text(_)));
        let (delta, percent) = match self.delta() {
            Some(d) => (fmt_delta(unit, d), self.percent().map_or_else(|| "-".into(), |p| format!("{p:+.1}%"))),
            None if text => (String::new(), String::new()),
            None => ("-".into(), "-".into()),
        };
        let word = match self.verdict() {
            Some(Verdict::Better) => "better",
            Some(Verdict::Worse) => "worse",
            None if matches!((&self.a, &self.b), (Some(Leaf::Text(a)), Some(Leaf::Text(b))) if a != b) => "changed",
            None => "",
        };
        [show(&self.a), show(&self.b), delta, percent, word.into()]
    }
}

/// Two reports, figure by figure.
#[derive(Debug)]
struct Comparison {
    /// Each setting in either report: its name and its values in A and B (`null` when absent).
    settings: Vec<(&'static str, Value, Value)>,
    rows: Vec<Row>,
    /// Both are `bench connect --ramp` runs.
    ramp: bool,
}

impl Comparison {
    fn new(a: &Map<String, Value>, b: &Map<String, Value>) -> Self {
        let settings = SETTINGS
            .iter()
            .filter(|s| a.contains_key(**s) || b.contains_key(**s))
            .map(|s| (*s, a.get(*s).cloned().unwrap_or(Value::Null), b.get(*s).cloned().unwrap_or(Value::Null)))
            .collect();
        let (fa, fb) = (flatten(a), flatten(b));
        let index = |flat: &Flat| -> HashMap<String, Leaf> { flat.leaves.iter().cloned().collect() };
        let (ia, ib) = (index(&fa), index(&fb));
        // A's keys in A's order, then those only in B, in B's order.
        let keys =
            fa.leaves.iter().map(|(k, _)| k).chain(fb.leaves.iter().map(|(k, _)| k).filter(|k| !ia.contains_key(*k)));
        let mut rows = Vec::new();
        for key in keys {
            if SETTINGS.contains(&key.as_str()) {
                continue;
            }
            let side = |index: &HashMap<String, Leaf>, flat: &Flat| match index.get(key) {
                Some(Leaf::Null) | None => absent(key, flat),
                Some(leaf) => Some(leaf.clone()),
            };
            let row = Row { key: key.clone(), a: side(&ia, &fa), b: side(&ib, &fb) };
            if row.a.is_some() || row.b.is_some() {
                rows.push(row);
            }
        }
        let ramp = a.contains_key("ramp") && b.contains_key("ramp");
        Self { settings, rows, ramp }
    }

    /// The settings that differ between the runs (the URL may).
    fn differing_settings(&self) -> Vec<&'static str> {
        self.settings
            .iter()
            // A ramp's duration is how long it took to open its connections: a result.
            .filter(|(name, _, _)| !(*name == "duration_s" && self.ramp))
            .filter(|(name, a, b)| !FREE_SETTINGS.contains(name) && !same_value(a, b))
            .map(|(name, _, _)| *name)
            .collect()
    }

    /// The warnings about what is compared: a different mode, different settings.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut differ = self.differing_settings();
        if let Some(at) = differ.iter().position(|s| *s == "mode") {
            differ.remove(at);
            let mode = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            let (a, b) = self
                .settings
                .iter()
                .find(|(name, _, _)| *name == "mode")
                .map_or_else(|| ("?".into(), "?".into()), |(_, a, b)| (mode(a), mode(b)));
            warnings.push(format!(
                "WARNING: DIFFERENT MODES: A is a `bench {a}` run, B a `bench {b}` run; they measure different things, \
                 and a figure with the same name may not mean the same"
            ));
        }
        if !differ.is_empty() {
            warnings.push(format!(
                "warning: the runs' settings differ ({}): the comparison may be meaningless",
                differ.join(", ")
            ));
        }
        warnings
    }

    /// The figures with a known direction that got worse by more than `pct` percent, with
    /// their change, e.g. `msgs_per_s -50.0%`.
    fn worse_than(&self, pct: f64) -> Vec<String> {
        self.rows
            .iter()
            .filter(|row| row.worse_than(pct))
            .map(|row| {
                let [a, b, _, percent, _] = row.cells();
                match row.percent() {
                    Some(_) => format!("{} {percent}", row.key),
                    None => format!("{} ({a} to {b})", row.key),
                }
            })
            .collect()
    }

    /// The whole comparison as printed.
    fn render(&self, a: &Path, b: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "A  {}", a.display());
        let _ = writeln!(s, "B  {}", b.display());
        let settings: Vec<[String; 4]> = self
            .settings
            .iter()
            .map(|(name, a, b)| {
                let mark = if same_value(a, b) { "" } else { "differs" };
                [name.to_string(), show_setting(a), show_setting(b), mark.into()]
            })
            .collect();
        if !settings.is_empty() {
            s.push('\n');
            table(&mut s, ["setting", "A", "B", ""].map(String::from), &settings, &[false, false, false, false]);
        }
        let warnings = self.warnings();
        if !warnings.is_empty() {
            s.push('\n');
        }
        for w in warnings {
            let _ = writeln!(s, "{w}");
        }
        s.push('\n');
        let rows: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|row| {
                let [a, b, delta, percent, word] = row.cells();
                [row.key.clone(), a, b, delta, percent, word]
            })
            .collect();
        let header = ["metric", "A", "B", "B − A", "% of A", ""].map(String::from);
        table(&mut s, header, &rows, &[false, true, true, true, true, false]);
        s
    }
}

/// A missing figure: 0 for an error kind when the report has the `errors` object it would be in
/// (reports list only the kinds that occurred), absent otherwise.
fn absent(key: &str, flat: &Flat) -> Option<Leaf> {
    let (parent, _) = key.rsplit_once('.')?;
    let group = parent.rsplit('.').next().unwrap_or(parent);
    (group == "errors" && flat.objects.contains(parent)).then_some(Leaf::Num(0.0))
}

/// Whether two settings are the same (`10` and `10.0` are).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn show_setting(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Appends an aligned table, two spaces between columns; `right[i]` aligns column `i` right.
fn table<const N: usize>(s: &mut String, header: [String; N], rows: &[[String; N]], right: &[bool; N]) {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let w = widths[i];
            if right[i] {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn echo(msgs: f64, p99: f64) -> Map<String, Value> {
        report(json!({
            "wsx_bench": 1,
            "mode": "echo",
            "url": "ws://127.0.0.1:1/",
            "loop": "closed",
            "conns": 4,
            "size": 20,
            "depth": 4,
            "duration_s": 1.0,
            "msgs_per_s": msgs,
            "bytes_per_s": msgs * 20.0,
            "latency": {
                "p50_ms": 0.5, "p90_ms": 1.0, "p99_ms": p99, "p99.9_ms": 3.0, "max_ms": 4.0,
                "min_ms": 0.1, "mean_ms": 0.6, "count": 1000,
                "histogram": [{"percentile": 50.0, "ms": 0.5, "count": 500}],
            },
            "lag": null,
            "errors": {},
            "error_count": 0,
            "generator_cpu_share": 0.5,
            "generator_bound": false,
        }))
    }

    fn row<'a>(c: &'a Comparison, key: &str) -> &'a Row {
        c.rows.iter().find(|r| r.key == key).unwrap_or_else(|| panic!("no row {key}: {c:?}"))
    }

    #[test]
    fn flattens_numbers_into_dotted_keys_without_histograms() {
        let flat = flatten(&echo(1000.0, 2.0));
        let keys: Vec<&str> = flat.leaves.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!keys.contains(&"wsx_bench"));
        assert!(!keys.iter().any(|k| k.contains("histogram")), "{keys:?}");
        assert!(keys.contains(&"latency.count"));
        assert!(flat.leaves.contains(&("latency.p99_ms".into(), Leaf::Num(2.0))));
        assert!(flat.leaves.contains(&("lag".into(), Leaf::Null)));
        assert!(flat.leaves.contains(&("generator_bound".into(), Leaf::Text("false".into()))));
        assert!(flat.objects.contains("errors") && flat.objects.contains("latency"));
        // Percentiles in numeric order, then max, min, mean, then the rest in the report's order.
        let latency: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("latency.")).collect();
        assert_eq!(latency, ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "min_ms", "mean_ms", "count"]);
        let nested = flatten(&report(json!({"wsx_bench": 1, "errors": {"close 1006": 2}, "a": {"b": {"c": 1}}})));
        assert_eq!(
            nested.leaves,
            [("a.b.c".to_string(), Leaf::Num(1.0)), ("errors.close 1006".to_string(), Leaf::Num(2.0))]
        );
    }

    #[test]
    fn knows_which_way_is_better() {
        for key in ["msgs_per_s", "bytes_per_s", "handshakes_per_s", "deliveries_per_s", "x.published_per_s"] {
            assert_eq!(better(key), Some(Better::Higher), "{key}");
        }
        for key in [
            "latency.p99_ms",
            "latency.max_ms",
            "lag.p99_ms",
            "handshake.p50_ms",
            "tcp.mean_us",
            "errors.close 1006",
            "errors.timeout",
            "error_count",
            "generator_cpu_share",
            "errors.lost",
            "server.rss_bytes",
            "server.bytes_per_conn",
            "server.cpu_s",
            "server.cpu_share",
            "server.cpu_us_per_unit",
            "memory_per_conn_bytes",
        ] {
            assert_eq!(better(key), Some(Better::Lower), "{key}");
        }
        for key in ["messages", "latency.count", "connected", "deflate_negotiated", "generator_bound", "counts.held"] {
            assert_eq!(better(key), None, "{key}");
        }
        assert_eq!(fmt_value(unit("server.bytes_per_conn"), 20_480.0), "20.5kB");
        assert_eq!(fmt_value(unit("server.cpu_s"), 1.5), "1.50 s");
        assert_eq!(fmt_value(unit("server.cpu_share"), 0.25), "25%");
        assert_eq!(fmt_value(unit("tls.p50_us"), 812.0), "812 µs");
    }

    #[test]
    fn changes_and_percentages() {
        let c = Comparison::new(&echo(1000.0, 2.0), &echo(500.0, 3.0));
        let msgs = row(&c, "msgs_per_s");
        assert_eq!(msgs.cells(), ["1000", "500", "-500", "-50.0%", "worse"].map(String::from));
        let p99 = row(&c, "latency.p99_ms");
        assert_eq!(p99.cells(), ["2.00 ms", "3.00 ms", "+1.00 ms", "+50.0%", "worse"].map(String::from));
        assert_eq!(row(&c, "bytes_per_s").cells()[..2], ["20.0kB".to_string(), "10.0kB".into()]);
        let same = row(&c, "latency.p50_ms").cells();
        assert_eq!(same[2..], ["0".to_string(), "+0.0%".into(), String::new()]);
        let better = Comparison::new(&echo(500.0, 3.0), &echo(1000.0, 2.0));
        assert_eq!(row(&better, "msgs_per_s").cells()[4], "better");
        assert_eq!(row(&better, "latency.p99_ms").cells()[4], "better");
        assert_eq!(row(&c, "generator_cpu_share").cells()[..3], ["50%".to_string(), "50%".into(), "0".into()]);
        assert_eq!(row(&c, "generator_bound").cells(), ["false", "false", "", "", ""].map(String::from));
        let mut bound = echo(500.0, 3.0);
        bound.insert("generator_bound".into(), json!(true));
        let changed = Comparison::new(&echo(1000.0, 2.0), &bound);
        assert_eq!(row(&changed, "generator_bound").cells(), ["false", "true", "", "", "changed"].map(String::from));
        // Settings are in the header, not in the table.
        assert!(c.rows.iter().all(|r| !SETTINGS.contains(&r.key.as_str())));
    }

    #[test]
    fn zero_in_a_prints_no_inf_or_nan() {
        let mut a = echo(0.0, 2.0);
        let mut b = echo(0.0, 2.0);
        a.insert("error_count".into(), json!(0));
        b.insert("error_count".into(), json!(3));
        b.insert("errors".into(), json!({"close 1006": 3}));
        let c = Comparison::new(&a, &b);
        let errors = row(&c, "error_count");
        assert_eq!(errors.percent(), None);
        assert_eq!(errors.cells(), ["0", "3", "+3", "-", "worse"].map(String::from));
        // Both 0: no change.
        assert_eq!(row(&c, "msgs_per_s").cells()[2..], ["0".to_string(), "-".into(), String::new()]);
        // An error kind only in B is 0 in A, whose report has an `errors` object.
        assert_eq!(row(&c, "errors.close 1006").cells(), ["0", "3", "+3", "-", "worse"].map(String::from));
        let text = c.render(Path::new("a.json"), Path::new("b.json"));
        for bad in ["inf", "NaN"] {
            assert!(!text.contains(bad), "{bad} in\n{text}");
        }
        // From 0, worse by any percentage.
        assert_eq!(c.worse_than(1000.0), ["error_count (0 to 3)", "errors.close 1006 (0 to 3)"]);
    }

    #[test]
    fn missing_figures_show_a_dash() {
        let mut a = echo(1000.0, 2.0);
        a.insert("only_in_a".into(), json!(7));
        let mut b = echo(1000.0, 2.0);
        b.insert("handshake".into(), json!({"p50_ms": 1.5}));
        if let Some(Value::Object(latency)) = b.get_mut("latency") {
            latency.insert("p99_ms".into(), Value::Null);
        }
        let c = Comparison::new(&a, &b);
        assert_eq!(row(&c, "only_in_a").cells(), ["7", "-", "-", "-", ""].map(String::from));
        assert_eq!(row(&c, "handshake.p50_ms").cells(), ["-", "1.50 ms", "-", "-", ""].map(String::from));
        assert_eq!(row(&c, "latency.p99_ms").cells()[..3], ["2.00 ms".to_string(), "-".into(), "-".into()]);
        // Null on both sides (no lag in closed loop): no row.
        assert!(c.rows.iter().all(|r| r.key != "lag"));
        // A's order, then B's extra keys.
        assert_eq!(c.rows.last().map(|r| r.key.as_str()), Some("handshake.p50_ms"));
        assert!(c.worse_than(0.0).is_empty(), "a missing figure is not worse");
    }

    #[test]
    fn warns_when_settings_differ() {
        let a = echo(1000.0, 2.0);
        let mut b = echo(1000.0, 2.0);
        b.insert("url".into(), json!("ws://other:2/"));
        b.insert("duration_s".into(), json!(1));
        assert!(Comparison::new(&a, &b).warnings().is_empty(), "another URL, and 1 = 1.0");
        b.insert("size".into(), json!(1024));
        b.insert("loop".into(), json!("open"));
        let c = Comparison::new(&a, &b);
        assert_eq!(
            c.warnings(),
            ["warning: the runs' settings differ (loop, size): the comparison may be meaningless"]
        );
        let text = c.render(Path::new("a.json"), Path::new("b.json"));
        let size = text.lines().find(|l| l.starts_with("size ")).unwrap_or_default();
        assert!(size.contains(" 20 ") && size.contains(" 1024 ") && size.ends_with("differs"), "{text}");
        b.insert("mode".into(), json!("connect"));
        let w = Comparison::new(&a, &b).warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("WARNING: DIFFERENT MODES") && w[0].contains("B a `bench connect` run"), "{w:?}");
        assert!(!w[1].contains("mode"), "{w:?}");
    }

    #[test]
    fn fail_if_worse_lists_what_got_worse() {
        let c = Comparison::new(&echo(1000.0, 2.0), &echo(850.0, 2.1));
        assert_eq!(c.worse_than(10.0), ["bytes_per_s -15.0%", "msgs_per_s -15.0%"]);
        assert!(c.worse_than(15.0).is_empty(), "not more than 15%");
        assert_eq!(c.worse_than(4.0).len(), 3, "p99 +5%");
        // Better figures never fail.
        assert!(Comparison::new(&echo(850.0, 2.1), &echo(1000.0, 2.0)).worse_than(0.0).is_empty());
        assert_eq!(parse_pct("10"), Ok(10.0));
        assert_eq!(parse_pct("2.5%"), Ok(2.5));
        assert!(parse_pct("-1").is_err() && parse_pct("NaN").is_err() && parse_pct("ten").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_report() {
        let err = |bytes: &[u8]| format!("{:#}", parse(bytes).unwrap_err());
        assert!(err(b"not json").starts_with("not JSON"), "{}", err(b"not json"));
        assert!(err(b"[1, 2]").contains("not a JSON object"));
        assert!(err(b"{\"mode\": \"echo\"}").contains("no \"wsx_bench\" key"));
        assert!(err(b"{\"wsx_bench\": 2}").contains("version 2"));
        assert!(err(b"{\"wsx_bench\": \"1\"}").contains("not supported"));
        assert!(parse(b"{\"wsx_bench\": 1}").is_ok());
        let missing = load(Path::new("/nonexistent/wsx-compare.json")).unwrap_err();
        assert!(format!("{missing:#}").contains("cannot open /nonexistent/wsx-compare.json"), "{missing:#}");
        // The size is bounded: a file one byte over the limit is refused before it is parsed.
        let path = std::env::temp_dir().join(format!("wsx-compare-unit-{}.json", std::process::id()));
        std::fs::write(&path, "{\"wsx_bench\": 1}").unwrap();
        assert!(load_at_most(&path, 16).is_ok());
        let big = format!("{:#}", load_at_most(&path, 15).unwrap_err());
        assert!(big.ends_with("larger than 15 bytes, not a wsx bench report"), "{big}");
        let _ = std::fs::remove_file(&path);
        assert_eq!(fmt_limit(MAX_REPORT_BYTES), "64 MiB");
    }
}
