//! Prometheus metrics: counters, gauges and histograms with labels, one registry per
//! service, served as the text exposition format on `GET /metrics` (plain HTTP on the
//! service's metrics port; the network policy decides who may scrape).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::MeshError;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    help: BTreeMap<&'static str, (Kind, &'static str)>,
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// Runs before each scrape (to refresh gauges read from elsewhere, e.g. the database).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, l: &[(&'static str, &str)], by: f64) {
        self.with(|i| {
            i.help.insert(name, (Kind::Counter, help));
            *i.values.entry((name, labels(l))).or_insert(0.0) += by;
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, l: &[(&'static str, &str)], value: f64) {
        self.with(|i| {
            i.help.insert(name, (Kind::Gauge, help));
            i.values.insert((name, labels(l)), value);
        });
    }

    /// Records one observation (seconds, or any unit the name says) in a histogram.
    pub fn observe(&self, name: &'static str, help: &'static str, l: &[(&'static str, &str)], value: f64) {
        self.with(|i| {
            i.help.insert(name, (Kind::Histogram, help));
            let h = i
                .histograms
                .entry((name, labels(l)))
                .or_insert_with(|| Histogram { buckets: vec![0; BUCKETS.len()], ..Histogram::default() });
            for (b, bound) in h.buckets.iter_mut().zip(BUCKETS) {
                if value <= *bound {
                    *b += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        });
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.with(|i| {
            let mut out = String::new();
            for (name, (kind, help)) in &i.help {
                let kind_text = match kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_text}");
                if *kind == Kind::Histogram {
                    for ((n, l), h) in i.histograms.iter().filter(|((n, _), _)| n == name) {
                        for (count, bound) in h.buckets.iter().zip(BUCKETS) {
                            let _ = writeln!(
                                out,
                                "{n}_bucket{} {count}",
                                label_text(l, Some(("le", bound.to_string())))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{n}_bucket{} {}",
                            label_text(l, Some(("le", "+Inf".to_owned()))),
                            h.count
                        );
                        let _ = writeln!(out, "{n}_sum{} {}", label_text(l, None), h.sum);
                        let _ = writeln!(out, "{n}_count{} {}", label_text(l, None), h.count);
                    }
                } else {
                    for ((n, l), v) in i.values.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{n}{} {v}", label_text(l, None));
                    }
                }
            }
            out
        })
    }
}

/// The bound metrics port, not yet serving.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (`None`: no metrics port).
    pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<Self>, MeshError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| MeshError::Config(format!("metrics_listen: cannot bind {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| MeshError::Config(format!("metrics_listen: {e}")))?;
        Ok(Some(Self { listener, addr }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` until `shutdown`, running `refresh` before each scrape.
    pub fn spawn(self, metrics: Arc<Metrics>, refresh: Option<Refresh>, shutdown: CancellationToken) {
        let Self { listener, addr } = self;
        info!(%addr, "metrics on /metrics");
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => { warn!(error = %e, "metrics accept failed"); continue; }
                    },
                };
                tokio::spawn(answer(stream, metrics.clone(), refresh.clone()));
            }
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: Arc<Metrics>, refresh: Option<Refresh>) {
    let mut buf = vec![0_u8; 4096];
    let mut read = 0;
    while read < buf.len() {
        match stream.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..read]);
    let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
        if let Some(r) = refresh {
            r().await;
        }
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".to_owned())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_exposition_format() {
        let m = Metrics::new();
        m.inc("sakuga_jobs_total", "Jobs.", &[("outcome", "succeeded")], 1.0);
        m.inc("sakuga_jobs_total", "Jobs.", &[("outcome", "succeeded")], 2.0);
        m.set("sakuga_queue", "Queue.", &[("state", "queued")], 4.0);
        m.observe("sakuga_latency_seconds", "Latency.", &[("method", "A\"b")], 0.02);
        m.observe("sakuga_latency_seconds", "Latency.", &[("method", "A\"b")], 7.0);
        let text = m.render();
        assert!(
            text.contains("# TYPE sakuga_jobs_total counter\nsakuga_jobs_total{outcome=\"succeeded\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sakuga_queue{state=\"queued\"} 4\n"), "{text}");
        assert!(text.contains("sakuga_latency_seconds_bucket{method=\"A\\\"b\",le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("sakuga_latency_seconds_bucket{method=\"A\\\"b\",le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("sakuga_latency_seconds_count{method=\"A\\\"b\"} 2\n"), "{text}");
    }
}
