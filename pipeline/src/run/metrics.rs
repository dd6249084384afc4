//! `run --follow --metrics-addr`: Prometheus metrics of the stream in the OpenMetrics text
//! format (encoded by `prometheus-client`), served at `/metrics` by hyper, with `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::error::{Error, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The stages whose failures are counted (every series exists from the start, at 0).
const ERROR_STAGES: [&str; 5] = ["ingest", "aggregate", "profiles", "load", "compact"];

/// The micro-batch steps whose durations are observed.
const STEPS: [&str; 5] = ["ingest", "aggregate", "load", "profiles", "load_profiles"];

/// The OpenMetrics text format's content type (its specification's).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format's content type (Prometheus's exposition formats).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Files waiting: `stage="load"`, ingested but not yet acknowledged by ScyllaDB.
    pub backlog_files: Family<Label, Gauge>,
    /// Landing -> acknowledged by ScyllaDB, per file, in seconds.
    pub freshness: Histogram,
    /// Each micro-batch step's duration, by step.
    pub step_seconds: Family<Label, Histogram>,
    /// A Kafka source's lag, by partition: offsets not yet ingested when the micro-batch
    /// ended its read (its latest offset at the start, less the next offset).
    pub kafka_lag_offsets: Family<Label, Gauge>,
    /// A Kafka source's lag, by partition, in seconds: 0 when caught up, else the age of the
    /// newest message ingested (the oldest one waiting is at least that old).
    pub kafka_lag_seconds: Family<Label, Gauge<f64, AtomicU64>>,
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
            // 0.01 s .. ~41 s
            step_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 13))
            }),
            kafka_lag_offsets: Family::default(),
            kafka_lag_seconds: Family::default(),
        };
        for stage in ERROR_STAGES {
            let _ = m.errors.get_or_create(&vec![("stage", stage.to_string())]);
        }
        m.backlog("load", 0);
        for step in STEPS {
            let _ = m
                .step_seconds
                .get_or_create(&vec![("step", step.to_string())]);
        }
        m.register();
        m
    }

    /// Register every metric, with its help text.
    fn register(&mut self) {
        self.register_kafka();
        let m = self;
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
        r.register(
            "step_duration_seconds",
            "How long each micro-batch step took, by step",
            m.step_seconds.clone(),
        );
        // A gauge at 1, as Prometheus's own `prometheus_build_info` (the OpenMetrics `info`
        // type is not understood by promtool's text parser).
        let build = Family::<Label, Gauge>::default();
        build
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", env!("PIPELINE_GIT_COMMIT").to_string()),
            ])
            .set(1);
        r.register(
            "build_info",
            "The running binary's version and commit (always 1)",
            build,
        );
    }

    /// Observe how long a micro-batch step took.
    pub fn step(&self, step: &str, seconds: f64) {
        self.step_seconds
            .get_or_create(&vec![("step", step.to_string())])
            .observe(seconds);
    }

    /// Register a Kafka source's metrics (series appear once a micro-batch read a topic).
    fn register_kafka(&mut self) {
        let r = &mut self.registry;
        r.register(
            "kafka_lag_offsets",
            "A Kafka source's offsets not yet ingested, by partition",
            self.kafka_lag_offsets.clone(),
        );
        r.register(
            "kafka_lag_seconds",
            "A Kafka source's lag in seconds, by partition (0 when caught up)",
            self.kafka_lag_seconds.clone(),
        );
    }

    /// Record a Kafka source's lag after a micro-batch's read.
    pub fn kafka_lag(&self, read: &crate::ingest::KafkaRead) {
        let now_us = chrono::Utc::now().timestamp_micros();
        for p in &read.partitions {
            let label = vec![("partition", p.partition.to_string())];
            let behind = (p.latest - p.next).max(0);
            self.kafka_lag_offsets.get_or_create(&label).set(behind);
            let seconds = match p.newest_us {
                Some(us) if behind > 0 => (now_us - us).max(0) as f64 / 1e6,
                _ => 0.0,
            };
            self.kafka_lag_seconds.get_or_create(&label).set(seconds);
        }
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String");
        s
    }

    /// The classic Prometheus text format, for clients that do not ask for OpenMetrics
    /// (promtool, curl): the same samples; a counter's HELP and TYPE name its `_total`
    /// sample, as that format wants (OpenMetrics names the family), and no `# EOF`.
    pub fn render_classic(&self) -> String {
        let open = self.render();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let meta = ["# HELP ", "# TYPE "]
                .into_iter()
                .find(|p| line.starts_with(p));
            match meta {
                Some(prefix) => {
                    let rest = &line[prefix.len()..];
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(name) {
                        out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Serve `/metrics` and `/healthz` at `addr` until the process ends.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot serve metrics at {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("metrics address", e))?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // An accept that fails (out of file descriptors) is retried, not the end of
                // the endpoint (health would report unhealthy for good).
                let sock = match listener.accept().await {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let me = me.clone();
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.respond(&req)) }
                });
                tokio::spawn(async move {
                    // A client that sends no request within 10 s is dropped.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    /// The answer to one request: the path decides, the query string does not.
    fn respond<B>(
        &self,
        req: &hyper::Request<B>,
    ) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        let readable = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
        let (status, content_type, body) = match req.uri().path() {
            _ if !readable => (405, TEXT, "only GET and HEAD\n".to_string()),
            // Prometheus asks for OpenMetrics in its Accept header; others get the classic
            // format (its content type says which: it said 0.0.4 over OpenMetrics text).
            "/metrics" => {
                let accept = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if accept.contains("application/openmetrics-text") {
                    (200, OPENMETRICS, self.render())
                } else {
                    (200, PROMETHEUS_TEXT, self.render_classic())
                }
            }
            "/healthz" => (200, TEXT, "ok\n".to_string()),
            _ => (
                404,
                TEXT,
                "not found: try /metrics or /healthz\n".to_string(),
            ),
        };
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a valid response")
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
        // The classic format: a counter's HELP and TYPE name its sample; no EOF marker.
        let classic = m.render_classic();
        assert!(
            classic.contains("# TYPE pipeline_rows_in_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP pipeline_rows_in_total Rows read"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE pipeline_freshness_seconds histogram\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&classic), samples(&text));
    }

    /// Every labelled series is there before its first event (a scrape before the first
    /// failure showed no errors series at all), with the build's version and commit.
    #[test]
    fn every_series_exists_from_the_start() {
        let text = Metrics::new().render();
        for stage in ERROR_STAGES {
            let series = format!("pipeline_errors_total{{stage=\"{stage}\"}} 0");
            assert!(text.contains(&series), "{series}: {text}");
        }
        assert!(
            text.contains("pipeline_backlog_files{stage=\"load\"} 0"),
            "{text}"
        );
        for step in STEPS {
            let series = format!("pipeline_step_duration_seconds_count{{step=\"{step}\"}} 0");
            assert!(text.contains(&series), "{series}: {text}");
        }
        let build = format!(
            "pipeline_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("PIPELINE_GIT_COMMIT")
        );
        assert!(text.contains(&build), "{build}: {text}");
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
    /// It answered 200 at `/healthz`.
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

/// Probe `GET /healthz` with a 3 s budget.
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
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
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
