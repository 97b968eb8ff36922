//! What the benchmarks of Sakuga share: latency statistics and the report that `make bench`
//! writes as JSON and as Markdown.

use std::{fmt::Write as _, time::Duration};

use serde::Serialize;
use serde_json::{Value, json};

pub mod peer;

/// A setting from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    /// Samples.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `samples` (sorted here). `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            ms(samples[rank - 1])
        };
        let total: Duration = samples.iter().sum();
        #[allow(clippy::cast_possible_truncation)]
        let mean = total / samples.len() as u32;
        Some(Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: ms(samples[samples.len() - 1]),
            mean_ms: ms(mean),
        })
    }
}

/// One table of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Short key (`rpc`, `dispatch`, ...).
    pub key: String,
    /// Heading.
    pub title: String,
    /// How it was measured.
    pub method: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, as strings for the table.
    pub rows: Vec<Vec<String>>,
    /// The same figures as numbers, one object a row.
    pub data: Vec<Value>,
    /// Conclusions and caveats.
    pub notes: Vec<String>,
}

impl Section {
    /// An empty section.
    pub fn new(key: &str, title: &str, method: &str, columns: &[&str]) -> Self {
        Self {
            key: key.to_owned(),
            title: title.to_owned(),
            method: method.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            data: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row: its cells for the table and its figures for the JSON.
    pub fn row(&mut self, cells: Vec<String>, data: Value) {
        self.rows.push(cells);
        self.data.push(data);
    }

    /// The section as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n{}\n\n", self.title, self.method);
        let _ = writeln!(out, "| {} |", self.columns.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.columns.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        for n in &self.notes {
            let _ = write!(out, "\n{n}\n");
        }
        out.push('\n');
        out
    }
}

/// The whole report: what it ran on and each section.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine, versions and settings.
    pub environment: Value,
    /// Sections in the order they ran.
    pub sections: Vec<Section>,
}

impl Report {
    /// A report whose environment is `extra` (from the calling script: versions, commit)
    /// plus this machine's cores and memory.
    #[allow(clippy::needless_pass_by_value, clippy::cast_precision_loss)]
    pub fn new(extra: Value, settings: Value) -> Self {
        let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        });
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        });
        let environment = json!({
            "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            "cpu": cpu,
            "versions": extra,
            "settings": settings,
        });
        Self { environment, sections: Vec::new() }
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let env = &self.environment;
        let mut out = format!(
            "# Sakuga load benchmark\n\nMachine: {} cores, {} GiB, {}.\n\nVersions: {}\n\nSettings: {}\n\n",
            env["cores"],
            env["memory_gib"],
            env["cpu"].as_str().unwrap_or("unknown CPU"),
            inline(&env["versions"]),
            inline(&env["settings"]),
        );
        for s in &self.sections {
            out.push_str(&s.markdown());
        }
        out
    }
}

/// `key value, key value` of a JSON object, for one line of Markdown.
fn inline(v: &Value) -> String {
    v.as_object().map_or_else(
        || v.to_string(),
        |o| {
            o.iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let st = Stats::of(&mut s).unwrap();
        assert_eq!((st.p50_ms, st.p95_ms, st.p99_ms, st.max_ms), (50.0, 95.0, 99.0, 100.0));
        assert!((st.mean_ms - 50.5).abs() < 1e-9);
        assert!(Stats::of(&mut []).is_none());
    }

    #[test]
    fn a_section_renders_as_a_markdown_table() {
        let mut s = Section::new("k", "Title", "How.", &["a", "b"]);
        s.row(vec!["1".into(), "2".into()], json!({"a": 1}));
        s.notes.push("Note.".into());
        assert_eq!(s.markdown(), "## Title\n\nHow.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nNote.\n\n");
    }
}
