//! `run --follow --metrics-addr`: Prometheus metrics of the stream, in the text exposition
//! format (encoded by `prometheus-client`), served at `/metrics` by a small HTTP responder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// A label set of one label.
type Label = Vec<(&'static str, String)>;

/// Every metric of a follow session.
pub struct Metrics {
    registry: Registry,
    /// Rows read from landing files.
    pub rows_in: Counter,
    /// Rows added to `customer_transactions`.
    pub rows_out: Counter,
    /// Rows quarantined.
    pub rows_quarantined: Counter,
    /// Duplicate rows dropped.
    pub duplicates: Counter,
    /// Landing files ingested.
    pub files_ingested: Counter,
    /// Landing files set aside as unusable.
    pub files_set_aside: Counter,
    /// Rows written to ScyllaDB.
    pub rows_loaded: Counter,
    /// Micro-batches that did work.
    pub micro_batches: Counter,
    /// Failures by stage.
    pub errors: Family<Label, Counter>,
    /// Unix time of the last micro-batch that ended with every stage succeeding.
    pub last_success: Gauge<f64, AtomicU64>,
    /// Files waiting: `stage="ingest"` found but not consumed, `stage="load"` ingested but
    /// not yet acknowledged by ScyllaDB.
    pub backlog_files: Family<Label, Gauge>,
    /// Landing -> acknowledged by ScyllaDB, per file, in seconds.
    pub freshness: Histogram,
}

impl Metrics {
    /// The metrics, registered.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("pipeline"),
            rows_in: Counter::default(),
            rows_out: Counter::default(),
            rows_quarantined: Counter::default(),
            duplicates: Counter::default(),
            files_ingested: Counter::default(),
            files_set_aside: Counter::default(),
            rows_loaded: Counter::default(),
            micro_batches: Counter::default(),
            errors: Family::default(),
            last_success: Gauge::default(),
            backlog_files: Family::default(),
            // 0.05 s .. ~105 s
            freshness: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
        };
        let r = &mut m.registry;
        r.register("rows_in", "Rows read from landing files", m.rows_in.clone());
        r.register(
            "rows_out",
            "Rows added to customer_transactions",
            m.rows_out.clone(),
        );
        r.register(
            "rows_quarantined",
            "Rows quarantined",
            m.rows_quarantined.clone(),
        );
        r.register("duplicates", "Duplicate rows dropped", m.duplicates.clone());
        r.register(
            "files_ingested",
            "Landing files ingested",
            m.files_ingested.clone(),
        );
        r.register(
            "files_set_aside",
            "Landing files set aside as unusable",
            m.files_set_aside.clone(),
        );
        r.register(
            "rows_loaded",
            "Rows written to ScyllaDB",
            m.rows_loaded.clone(),
        );
        r.register(
            "micro_batches",
            "Micro-batches that did work",
            m.micro_batches.clone(),
        );
        r.register(
            "errors",
            "Failed stage attempts, by stage",
            m.errors.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last micro-batch in which every stage succeeded",
            m.last_success.clone(),
        );
        r.register(
            "backlog_files",
            "Files waiting for a stage (ingest: landed, load: not yet in ScyllaDB)",
            m.backlog_files.clone(),
        );
        r.register(
            "freshness_seconds",
            "From a file's landing to its rows acknowledged by ScyllaDB",
            m.freshness.clone(),
        );
        m
    }

    /// Count a failure of `stage`.
    pub fn error(&self, stage: &str) {
        self.errors
            .get_or_create(&vec![("stage", stage.to_string())])
            .inc();
    }

    /// Set the backlog of `stage`.
    pub fn backlog(&self, stage: &str, files: usize) {
        self.backlog_files
            .get_or_create(&vec![("stage", stage.to_string())])
            .set(files as i64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String");
        s
    }

    /// Serve `/metrics` at `addr` until the process ends.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot serve metrics at {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("metrics address", e))?;
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let path = request.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = if path == "/metrics" {
                        ("200 OK", me.render())
                    } else {
                        ("404 Not Found", "try /metrics\n".to_string())
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                });
            }
        });
        Ok(bound)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.rows_in.inc_by(5);
        m.error("load");
        m.backlog("load", 3);
        m.freshness.observe(1.5);
        let text = m.render();
        assert!(text.contains("pipeline_rows_in_total 5"), "{text}");
        assert!(
            text.contains("pipeline_errors_total{stage=\"load\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pipeline_backlog_files{stage=\"load\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pipeline_freshness_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("# EOF"), "{text}");
    }
}

/// `pipeline health`: whether the metrics endpoint of a running `run --follow` answers (the
/// container's HEALTHCHECK). Without an address there is no service to check: healthy.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthOptions {
    /// Where `run --follow --metrics-addr` serves (0.0.0.0 is checked on 127.0.0.1).
    #[arg(long, env = "PIPELINE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// What `pipeline health` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    /// The address checked (none: no service configured).
    pub metrics_addr: Option<String>,
    /// It answered 200 at `/metrics`.
    pub healthy: bool,
    /// What it answered, or why it did not.
    pub detail: String,
}

impl crate::report::Report for HealthReport {
    fn stage(&self) -> &'static str {
        "health"
    }

    fn skipped(&self) -> bool {
        false
    }

    fn text(&self) -> String {
        match &self.metrics_addr {
            None => "health: no metrics endpoint configured (not a service): healthy".into(),
            Some(a) => format!(
                "health: {a}: {} ({})",
                if self.healthy { "healthy" } else { "UNHEALTHY" },
                self.detail
            ),
        }
    }

    fn summary(&self) -> crate::report::Summary {
        crate::report::Summary::default()
    }

    fn exit_code(&self) -> u8 {
        if self.healthy { 0 } else { 1 }
    }
}

/// Probe `GET /metrics` with a 3 s budget.
pub async fn health(o: &HealthOptions) -> Result<HealthReport> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut addr) = o.metrics_addr else {
        return Ok(HealthReport {
            metrics_addr: None,
            healthy: true,
            detail: String::new(),
        });
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).to_string())
    };
    let (healthy, detail) =
        match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
            Ok(Ok(head)) => {
                let line = head.lines().next().unwrap_or_default().to_string();
                (line.contains(" 200 "), line)
            }
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "no answer within 3 s".into()),
        };
    Ok(HealthReport {
        metrics_addr: Some(addr.to_string()),
        healthy,
        detail,
    })
}
