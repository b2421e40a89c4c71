//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! The endpoint is off unless an address is given (`--metrics-address`); the
//! manifests and the chart bind it to the pod's own IP, where the kubelet's
//! probes (`/healthz`, `/readyz`) and a scraper reach it. hyper's HTTP/1.1 server
//! (already linked through tonic) answers three GET routes, one request per
//! connection, with a header-read timeout, a connection cap and a per
//! connection deadline, so no HTTP client can hold resources the kubelet
//! side needs.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use gpu_slicer_core::backoff::Backoff;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub resource: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XidLabel {
    pub xid: String,
}

/// One GPU, labelled as dcgm-exporter labels it: `gpu` is the NVML index,
/// `UUID` the GPU's UUID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
#[allow(non_snake_case)] // the label's name is dcgm-exporter's
pub struct GpuLabel {
    pub gpu: String,
    pub UUID: String,
}

/// Every metric gpu-slicer exports. Cheap to clone (all handles are `Arc`s).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub devices: Family<ResourceLabel, Gauge>,
    pub healthy_devices: Family<ResourceLabel, Gauge>,
    pub allocations: Family<ResultLabel, Counter>,
    pub registrations: Family<ResultLabel, Counter>,
    pub kubelet_restarts: Counter,
    /// ListAndWatch streams the kubelet closed without restarting.
    pub stream_losses: Family<ResourceLabel, Counter>,
    /// Plugin sockets that could not be bound (each retried on a back-off).
    pub serve_failures: Family<ResourceLabel, Counter>,
    pub config_reloads: Family<OutcomeLabel, Counter>,
    pub mig_applies: Family<OutcomeLabel, Counter>,
    pub health_events: Family<XidLabel, Counter>,
    /// GPUs NVML counts that the last discovery could not read (not advertised).
    /// With `gpus_unreachable`: each GPU is counted once, in one or neither.
    pub gpus_undiscovered: Gauge,
    /// Advertised GPUs that are not watched: they stopped answering NVML,
    /// their XID events cannot be read (or are not registered yet), or the
    /// driver says they need a reset (their devices Unhealthy). GPUs that are
    /// not advertised are not counted here (see `gpus_undiscovered`).
    pub gpus_unreachable: Gauge,
    /// Per advertised GPU: 1 while every device on it is advertised Healthy.
    pub gpu_healthy: Family<GpuLabel, Gauge>,
    /// The GPUs `gpu_healthy` has a line for (stale ones are removed).
    gpu_health_lines: Arc<std::sync::Mutex<std::collections::BTreeSet<GpuLabel>>>,
    /// Failed NVML health-check calls, per call.
    pub health_check_errors: Family<CallLabel, Counter>,
    /// 1 while MIG Manager reports a layout change in progress.
    pub mig_repartitioning: Gauge,
    /// 1 while a resource's MPS control daemon is ready.
    pub mps_ready: Family<ResourceLabel, Gauge>,
    /// Restarts of a resource's MPS control daemon.
    pub mps_restarts: Family<ResourceLabel, Counter>,
    /// Readiness, observable: the start-up taint waits on it.
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("gpu_slicer");
        registry.register(
            "devices",
            "Devices advertised to the kubelet, per resource",
            self.devices.clone(),
        );
        registry.register(
            "healthy_devices",
            "Devices advertised as Healthy, per resource",
            self.healthy_devices.clone(),
        );
        registry.register(
            "allocations",
            "Allocate calls, per resource and result (ok, refused)",
            self.allocations.clone(),
        );
        registry.register(
            "registrations",
            "Registrations with the kubelet, per resource and result (ok, failed)",
            self.registrations.clone(),
        );
        registry.register(
            "kubelet_restarts",
            "Kubelet restarts detected",
            self.kubelet_restarts.clone(),
        );
        registry.register(
            "stream_losses",
            "ListAndWatch streams the kubelet closed while it kept running, per resource",
            self.stream_losses.clone(),
        );
        registry.register(
            "serve_failures",
            "Plugin sockets that could not be bound, per resource (retried with back-off)",
            self.serve_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, per result (applied, rejected)",
            self.config_reloads.clone(),
        );
        registry.register(
            "health_events",
            "GPU health events (XIDs) received, per XID",
            self.health_events.clone(),
        );
        registry.register(
            "gpus_undiscovered",
            "GPUs NVML counts that the last discovery could not read; not advertised, rediscovered with back-off",
            self.gpus_undiscovered.clone(),
        );
        registry.register(
            "gpus_unreachable",
            "Advertised GPUs that are not watched (NVML calls fail, XID events cannot be read or are not registered yet, or the driver says a reset is needed); their devices are Unhealthy. Not advertised GPUs are counted in gpus_undiscovered instead",
            self.gpus_unreachable.clone(),
        );
        registry.register(
            "gpu_healthy",
            "1 while every device of the GPU is advertised Healthy, 0 otherwise; one line per advertised GPU (gpu: NVML index, UUID), as dcgm-exporter labels them",
            self.gpu_healthy.clone(),
        );
        registry.register(
            "mig_applies",
            "MIG layout changes gpu-slicer applied itself (--apply-mig-layouts), by result (success, failed)",
            self.mig_applies.clone(),
        );
        registry.register(
            "mig_repartitioning",
            "1 while a MIG layout change is under way or not applied yet (nvidia.com/mig.config.state pending or rebooting, from MIG Manager or --apply-mig-layouts); the MIG-capable GPUs' devices are Unhealthy meanwhile",
            self.mig_repartitioning.clone(),
        );
        registry.register(
            "mps_daemon_ready",
            "1 while the resource's MPS control daemon is ready (its devices are Unhealthy otherwise)",
            self.mps_ready.clone(),
        );
        registry.register(
            "mps_daemon_restarts",
            "Restarts of the resource's MPS control daemon (after it exited or failed to become ready)",
            self.mps_restarts.clone(),
        );
        registry.register(
            "health_check_errors",
            "Failed NVML health-check calls, per call",
            self.health_check_errors.clone(),
        );
        registry
    }

    pub fn resource(&self, resource: &str) -> ResourceLabel {
        ResourceLabel {
            resource: resource.to_owned(),
        }
    }

    pub fn count_allocation(&self, resource: &str, ok: bool) {
        self.allocations
            .get_or_create(&ResultLabel {
                resource: resource.to_owned(),
                result: if ok { "ok" } else { "refused" }.into(),
            })
            .inc();
    }

    pub fn count_registration(&self, resource: &str, ok: bool) {
        self.registrations
            .get_or_create(&ResultLabel {
                resource: resource.to_owned(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn count_reload(&self, applied: bool) {
        self.config_reloads
            .get_or_create(&OutcomeLabel {
                result: if applied { "applied" } else { "rejected" }.into(),
            })
            .inc();
    }

    pub fn count_mig_apply(&self, success: bool) {
        self.mig_applies
            .get_or_create(&OutcomeLabel {
                result: if success { "success" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Sets `gpu_healthy` for the advertised GPUs (index, UUID, healthy);
    /// GPUs no longer advertised lose their line.
    pub fn set_gpu_health(&self, gpus: impl Iterator<Item = (u32, String, bool)>) {
        let mut lines = self
            .gpu_health_lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut now = std::collections::BTreeSet::new();
        for (index, uuid, healthy) in gpus {
            let label = GpuLabel {
                gpu: index.to_string(),
                UUID: uuid,
            };
            self.gpu_healthy
                .get_or_create(&label)
                .set(i64::from(healthy));
            now.insert(label);
        }
        for stale in lines.difference(&now) {
            self.gpu_healthy.remove(stale);
        }
        *lines = now;
    }

    /// Ready = every planned resource is registered with the kubelet.
    pub fn set_ready(&self, ready: bool) {
        self.ready.send_if_modified(|current| {
            let changed = *current != ready;
            *current = ready;
            changed
        });
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows readiness (e.g. `wait_for(|ready| *ready)`).
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

/// At most this many HTTP connections at once; more are closed at accept.
/// A scraper and a probe or two need a handful: the cap keeps a flood of
/// idle clients from taking the process's file descriptors, which the
/// kubelet side needs.
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// A client must send its whole request head within this time.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing.
pub const HTTP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Accept errors (file descriptors exhausted) back off instead of spinning.
const ACCEPT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until `stop`,
/// with hyper's HTTP/1.1 server (one request per connection). Returns the
/// bound address (useful with port 0).
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(metrics.registry());
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!("metrics endpoint: accept failed: {e}; pausing {delay:?}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            // Over the cap: the connection is dropped (closed) at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let registry = registry.clone();
            let metrics = metrics.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |request| {
                    let response = respond(&request, &registry, &metrics);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP_HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(HTTP_CONNECTION_TIMEOUT) => {}
                    _ = connection => {}
                }
            });
        }
    });
    Ok(bound)
}

fn respond(
    request: &hyper::Request<Incoming>,
    registry: &Registry,
    metrics: &Metrics,
) -> hyper::Response<Full<Bytes>> {
    let accept = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (status, content_type, body) = route(
        request.method().as_str(),
        request.uri().path(),
        accept,
        registry,
        metrics,
    );
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    // The body of /metrics depends on Accept: caches must not mix them.
    response.headers_mut().insert(
        hyper::header::VARY,
        hyper::header::HeaderValue::from_static("Accept"),
    );
    response
}

fn route(
    method: &str,
    path: &str,
    accept: Option<&str>,
    registry: &Registry,
    metrics: &Metrics,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => match negotiate(accept) {
                    Exposition::OpenMetrics => (StatusCode::OK, OPENMETRICS, body),
                    Exposition::PrometheusText => {
                        (StatusCode::OK, PROMETHEUS_TEXT, prometheus_text(&body))
                    }
                },
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "encoding failed\n".into(),
                ),
            }
        }
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: not every resource is registered with the kubelet\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// `/metrics` in OpenMetrics (prometheus-client's encoding).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `/metrics` in Prometheus' text format 0.0.4, for scrapers that ask for it.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    PrometheusText,
}

/// The format a request's `Accept` prefers (the highest `q`; on a tie, or
/// with no preference, OpenMetrics). Prometheus itself sends
/// `application/openmetrics-text;version=1.0.0;q=0.5,...,text/plain;version=0.0.4;q=0.3`;
/// a scraper that reads only the 0.0.4 format asks for `text/plain` alone,
/// and an OpenMetrics body would split every counter into an empty family
/// and an untyped `_total` series for it.
pub fn negotiate(accept: Option<&str>) -> Exposition {
    let mut best: Option<(f32, Exposition)> = None;
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0_f32;
        for param in parts {
            if let Some(v) = param
                .strip_prefix("q=")
                .or_else(|| param.strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text" => Exposition::OpenMetrics,
            "text/plain" => Exposition::PrometheusText,
            _ => continue,
        };
        let better = match best {
            None => true,
            Some((best_q, best_format)) => {
                q > best_q
                    || (q == best_q && format == Exposition::OpenMetrics && best_format != format)
            }
        };
        if q > 0.0 && better {
            best = Some((q, format));
        }
    }
    best.map_or(Exposition::OpenMetrics, |(_, format)| format)
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus' text format
/// 0.0.4: a counter's family is named with its `_total` suffix (as its
/// samples are), `info` becomes a gauge named `_info`, `unknown` is
/// `untyped`, and what 0.0.4 lacks (`# UNIT`, `# EOF`, exemplars,
/// `_created` samples) is left out.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, String)> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                "stateset" => (name.to_string(), "gauge"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                other => (name.to_string(), other),
            };
            counter = (kind == "counter").then(|| name.to_string());
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
        let name = sample.split(['{', ' ']).next().unwrap_or_default();
        if counter
            .as_deref()
            .is_some_and(|c| name == format!("{c}_created"))
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod exposition_tests {
    use super::*;

    #[test]
    fn accept_picks_the_format() {
        use Exposition::*;
        for (accept, want) in [
            (None, OpenMetrics),
            (Some("*/*"), OpenMetrics),
            (Some("text/plain; version=0.0.4"), PrometheusText),
            (
                Some("text/plain;version=0.0.4;q=0.9, */*;q=0.1"),
                PrometheusText,
            ),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.2, text/plain;q=0.8"),
                PrometheusText,
            ),
            (Some("text/plain;q=0, application/json"), OpenMetrics),
            (
                Some("application/openmetrics-text, text/plain"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn metrics_answers_in_the_format_asked() {
        let metrics = Metrics::default();
        let registry = metrics.registry();
        let (status, content_type, body) = route(
            "GET",
            "/metrics",
            Some("text/plain; version=0.0.4"),
            &registry,
            &metrics,
        );
        assert_eq!((status, content_type), (StatusCode::OK, PROMETHEUS_TEXT));
        assert!(!body.contains("# EOF"), "{body}");
        let (status, content_type, body) = route("GET", "/metrics", None, &registry, &metrics);
        assert_eq!((status, content_type), (StatusCode::OK, OPENMETRICS));
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    /// Every 0.0.4 sample belongs to the family its TYPE line declares, so
    /// a 0.0.4 parser sees one typed family per metric.
    #[test]
    fn the_text_format_names_counters_as_their_samples() {
        let metrics = Metrics::default();
        metrics.count_allocation("nvidia.com/gpu", true);
        metrics.kubelet_restarts.inc();
        metrics
            .devices
            .get_or_create(&ResourceLabel {
                resource: "nvidia.com/gpu".into(),
            })
            .set(4);
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &metrics.registry()).unwrap();
        let text = prometheus_text(&om);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let mut families = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.insert(name.to_string(), kind.to_string());
            }
        }
        assert_eq!(families["gpu_slicer_kubelet_restarts_total"], "counter");
        assert_eq!(families["gpu_slicer_devices"], "gauge");
        assert!(
            !families.contains_key("gpu_slicer_kubelet_restarts"),
            "{text}"
        );
        let mut samples = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                families.contains_key(name),
                "{name} has no TYPE line:\n{text}"
            );
            samples += 1;
        }
        assert!(samples >= 3, "{text}");
        assert!(
            text.contains("# HELP gpu_slicer_kubelet_restarts_total "),
            "{text}"
        );
        assert!(
            text.contains("gpu_slicer_kubelet_restarts_total 1\n"),
            "{text}"
        );
    }
}
