//! What every `strata bench` scenario leaves behind: `<out>/<scenario>-<unix time>.json` (the
//! figures, as printed by `--json`) and a self-contained `.html` next to it (titles, the command
//! that produced it, the machine, tables of figures, charts as inline SVG).
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use strata_bench::report::Report;
//! use strata_bench::svg::{Chart, Series};
//!
//! let mut report = Report::new("example", &["strata".into(), "bench".into()]);
//! report
//!     .figures(&serde_json::json!({ "hit_ratio": 0.93 }))?
//!     .table("Figures", &["metric", "value"], vec![vec!["hit ratio".into(), "93 %".into()]])
//!     .line_chart(Chart::new("Hit ratio", "s", "ratio"), vec![Series::new("run", vec![(0.0, 0.5), (1.0, 0.93)])]);
//! let dir = tempfile::tempdir()?;
//! let written = report.write(dir.path())?;
//! assert!(std::fs::read_to_string(&written.html)?.contains("<svg"));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::svg::{Chart, Series, bar_chart, cdf_chart, cdf_chart_coloured, escape, line_chart};

/// Default directory of the reports (relative to the working directory).
pub const DEFAULT_DIR: &str = "target/strata-bench";

/// A report under construction.
#[derive(Debug, Clone)]
pub struct Report {
    scenario: String,
    command: String,
    cores: usize,
    unix_time: u64,
    figures: Map<String, Value>,
    sections: Vec<String>,
}

/// Where [`Report::write`] put the files, and the JSON document it wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The JSON file.
    pub json: PathBuf,
    /// The HTML file.
    pub html: PathBuf,
    /// The JSON document (what `--json` prints).
    pub document: Value,
}

impl Report {
    /// A report of `scenario`, produced by the command line `command` (usually `std::env::args()`).
    pub fn new(scenario: &str, command: &[String]) -> Self {
        Self {
            scenario: scenario.to_owned(),
            command: command.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" "),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            figures: Map::new(),
            sections: Vec::new(),
        }
    }

    /// Adds the fields of `figures` (a struct or map) to the top level of the JSON document.
    pub fn figures<T: Serialize>(&mut self, figures: &T) -> anyhow::Result<&mut Self> {
        match serde_json::to_value(figures)? {
            Value::Object(map) => self.figures.extend(map),
            other => anyhow::bail!("report figures must be a JSON object, not {other}"),
        }
        Ok(self)
    }

    /// Adds a paragraph of plain text.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.sections.push(format!("<p>{}</p>", escape(text)));
        self
    }

    /// Adds preformatted text (a table rendered for the terminal).
    pub fn preformatted(&mut self, text: &str) -> &mut Self {
        self.sections.push(format!("<pre>{}</pre>", escape(text)));
        self
    }

    /// Adds a table.
    pub fn table(&mut self, title: &str, headers: &[&str], rows: Vec<Vec<String>>) -> &mut Self {
        let mut html = format!("<h2>{}</h2><table><tr>", escape(title));
        for h in headers {
            let _ = write!(html, "<th>{}</th>", escape(h));
        }
        html.push_str("</tr>");
        for row in rows {
            html.push_str("<tr>");
            for cell in row {
                let _ = write!(html, "<td>{}</td>", escape(&cell));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
        self.sections.push(html);
        self
    }

    /// Adds a line chart of several series.
    pub fn line_chart(&mut self, chart: Chart, series: Vec<Series>) -> &mut Self {
        self.sections.push(format!("<figure>{}</figure>", line_chart(&chart, &series)));
        self
    }

    /// Adds grouped bars: one group per category, one bar per series.
    pub fn bar_chart(&mut self, chart: Chart, categories: &[String], series: Vec<(String, Vec<f64>)>) -> &mut Self {
        self.sections.push(format!("<figure>{}</figure>", bar_chart(&chart, categories, &series)));
        self
    }

    /// Adds a latency CDF of each histogram (nanoseconds).
    pub fn cdf(&mut self, title: &str, histograms: &[(&str, &Histogram<u64>)]) -> &mut Self {
        self.sections.push(format!("<figure>{}</figure>", cdf_chart(title, histograms)));
        self
    }

    /// Adds a latency CDF of each histogram (nanoseconds), each in the palette colour given
    /// (one colour per variant across a report's charts).
    pub fn cdf_coloured(&mut self, title: &str, histograms: &[(&str, &Histogram<u64>, usize)]) -> &mut Self {
        self.sections.push(format!("<figure>{}</figure>", cdf_chart_coloured(title, histograms)));
        self
    }

    /// The JSON document: the figures, plus `scenario`, `unix_time`, `command` and `cores`.
    pub fn document(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("scenario".into(), self.scenario.clone().into());
        doc.insert("unix_time".into(), self.unix_time.into());
        doc.insert("command".into(), self.command.clone().into());
        doc.insert("cores".into(), self.cores.into());
        doc.extend(self.figures.clone());
        Value::Object(doc)
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let title = format!("strata bench: {}", self.scenario);
        let mut html = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
            t = escape(&title)
        );
        let _ = write!(
            html,
            "<p class=\"meta\">Command: <code>{}</code><br>Machine: {} cores, {} {}<br>Unix time: {}</p>",
            escape(&self.command),
            self.cores,
            std::env::consts::OS,
            std::env::consts::ARCH,
            self.unix_time
        );
        for section in &self.sections {
            html.push_str(section);
        }
        let json = serde_json::to_string_pretty(&self.document()).unwrap_or_default();
        let _ = writeln!(html, "<h2>JSON</h2><pre>{}</pre></body></html>", escape(&json));
        html
    }

    /// Writes `<dir>/<scenario>-<unix time>.json` and `.html` (creating `dir`); the JSON gets a
    /// `files` object naming both. A name already taken gets a numeric suffix.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Written> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stem = format!("{}-{}", self.scenario, self.unix_time);
        for n in 2.. {
            if !dir.join(format!("{stem}.json")).exists() && !dir.join(format!("{stem}.html")).exists() {
                break;
            }
            stem = format!("{}-{}-{n}", self.scenario, self.unix_time);
        }
        let (json, html) = (dir.join(format!("{stem}.json")), dir.join(format!("{stem}.html")));
        let mut document = self.document();
        if let Value::Object(map) = &mut document {
            map.insert(
                "files".into(),
                serde_json::json!({ "json": json.display().to_string(), "html": html.display().to_string() }),
            );
        }
        std::fs::write(&json, format!("{}\n", serde_json::to_string_pretty(&document)?))
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&html, self.html()).with_context(|| format!("writing {}", html.display()))?;
        Ok(Written { json, html, document })
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.meta{color:#555}\
figure{margin:1.5em 0}pre{background:#f7f7f7;padding:1em;overflow:auto}";

/// Quotes an argument for display when it holds characters a shell would split or expand.
fn shell_word(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Milliseconds from nanoseconds, rounded to microseconds (readable JSON).
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 1_000.0).round() / 1_000.0
}

/// Rounds a ratio or rate to four decimals (readable JSON).
pub fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_and_self_contained_html() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = crate::stats::histogram();
        h.record(1_000_000).expect("record");
        let mut report = Report::new("demo<x>", &["strata".into(), "bench".into(), "--url".into(), "a b".into()]);
        report
            .figures(&serde_json::json!({ "p50_ms": 1.0, "nested": { "a": 1 } }))
            .expect("object")
            .text("hello & goodbye")
            .table("Figures", &["name", "value"], vec![vec!["p50".into(), "1 ms".into()]])
            .cdf("Latency", &[("run", &h)]);
        let first = report.write(dir.path()).expect("write");
        let second = report.write(dir.path()).expect("write again");
        assert_ne!(first.json, second.json, "a second report in the same second does not overwrite the first");

        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&first.json).expect("json")).expect("parse");
        assert_eq!(doc["scenario"], "demo<x>");
        assert_eq!(doc["p50_ms"], 1.0);
        assert_eq!(doc["nested"]["a"], 1);
        assert_eq!(doc["command"], "strata bench --url 'a b'");
        assert!(doc["cores"].as_u64().expect("cores") >= 1);
        assert_eq!(doc["files"]["html"], first.html.display().to_string());
        assert_eq!(doc, first.document);

        let html = std::fs::read_to_string(&first.html).expect("html");
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"));
        assert!(html.contains("hello &amp; goodbye") && html.contains("demo&lt;x&gt;"));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"), "self-contained");
    }

    #[test]
    fn figures_must_be_an_object() {
        let mut report = Report::new("x", &[]);
        assert!(report.figures(&3).is_err());
        assert_eq!(ms(1_234_567), 1.235);
        assert_eq!(round4(0.123_456), 0.1235);
    }
}
