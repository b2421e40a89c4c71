//! The controller's metrics, served as OpenMetrics text on `/metrics`
//! (`/healthz` answers while the process runs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this long, whatever it is doing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct Metrics {
    /// Passes that ran the decision.
    pub decisions: Counter,
    /// GPU changes in targets the API server accepted (one GPU of one
    /// target counts once, as `simulate`'s reconfigurations do).
    pub reconfigurations: Counter,
    /// Pods a written target was for that were then bound.
    pub pods_unblocked: Counter,
    /// Seconds from a pod's creation to its binding, for those pods.
    pub pending_to_schedulable: Histogram,
    /// Pending pods asking for MIG slices, as of the last pass.
    pub pending_pods: Gauge,
    /// Nodes whose target has not applied for `pass::STALE_TARGET_S`, as of
    /// the last pass (each is a node refusing its target: its Events say why).
    pub stale_targets: Gauge,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            decisions: Counter::default(),
            reconfigurations: Counter::default(),
            pods_unblocked: Counter::default(),
            // 1 s to about 4.5 hours.
            pending_to_schedulable: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            pending_pods: Gauge::default(),
            stale_targets: Gauge::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("gpu_slicer_controller");
        r.register(
            "decisions",
            "Passes that ran the demand-driven MIG decision",
            self.decisions.clone(),
        );
        r.register(
            "reconfigurations",
            "GPU changes in MIG targets written to Nodes",
            self.reconfigurations.clone(),
        );
        r.register(
            "pods_unblocked",
            "Pending pods a written MIG target was for that were then bound",
            self.pods_unblocked.clone(),
        );
        r.register(
            "pending_to_schedulable_seconds",
            "Seconds from creation to binding of the pods a MIG target unblocked",
            self.pending_to_schedulable.clone(),
        );
        r.register(
            "pending_pods",
            "Pending pods asking for MIG slices at the last pass",
            self.pending_pods.clone(),
        );
        r.register(
            "stale_targets",
            "Nodes whose MIG target has stayed unapplied for 10 minutes or more at the last pass",
            self.stale_targets.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the Lease",
            self.leader.clone(),
        );
        r
    }
}

/// Serves `/metrics` and `/healthz` on `address` until `stop`; returns the
/// bound address.
pub async fn serve(
    address: SocketAddr,
    metrics: &Metrics,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(metrics.registry());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                // File descriptors exhausted: pause rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let registry = registry.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let response =
                        respond(request.method().as_str(), request.uri().path(), &registry);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(CONNECTION_TIMEOUT) => {}
                    _ = connection => {}
                }
            });
        }
    });
    Ok(bound)
}

fn respond(method: &str, path: &str, registry: &Registry) -> hyper::Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, body),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "encoding failed\n".into(),
                ),
            }
        }
        ("GET", "/healthz") => (StatusCode::OK, TEXT, "ok\n".into()),
        ("GET", _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
