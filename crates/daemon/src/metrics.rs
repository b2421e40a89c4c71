//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! The endpoint is off unless an address is given (`--metrics-address`), and
//! the deployment binds it to localhost by default. It is a deliberately
//! tiny HTTP/1.1 responder: three GET routes, one response per connection,
//! so the daemon carries no web framework.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
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
pub struct XidLabel {
    pub xid: String,
}

/// Every metric gpu-slicer exports. Cheap to clone (all handles are `Arc`s).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub devices: Family<ResourceLabel, Gauge>,
    pub healthy_devices: Family<ResourceLabel, Gauge>,
    pub allocations: Family<ResultLabel, Counter>,
    pub registrations: Family<ResultLabel, Counter>,
    pub kubelet_restarts: Counter,
    pub config_reloads: Family<OutcomeLabel, Counter>,
    pub health_events: Family<XidLabel, Counter>,
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
            "config_reloads",
            "Configuration reloads, per result (applied, rejected)",
            self.config_reloads.clone(),
        );
        registry.register(
            "health_events",
            "GPU health events (XIDs) received, per XID",
            self.health_events.clone(),
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until `stop`.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(metrics.registry());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let registry = registry.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = respond(stream, &registry, &metrics).await;
            });
        }
    });
    Ok(bound)
}

async fn respond(
    mut stream: tokio::net::TcpStream,
    registry: &Registry,
    metrics: &Metrics,
) -> std::io::Result<()> {
    // Read the whole request head: a client may send it in several pieces.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = route(method, path, registry, metrics);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn route(
    method: &str,
    path: &str,
    registry: &Registry,
    metrics: &Metrics,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    TEXT,
                    "encoding failed\n".into(),
                ),
            }
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if metrics.is_ready() => ("200 OK", TEXT, "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "not ready: not every resource is registered with the kubelet\n".into(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
