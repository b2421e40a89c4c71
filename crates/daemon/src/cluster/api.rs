//! The daemon's Kubernetes client: exactly what it needs of `/api/v1/nodes`
//! (get its own Node, watch it, merge-patch it) and of `/api/v1/pods` (watch
//! the pods of its node, for [`crate::cluster::mig_state`]), over hyper
//! (already linked through tonic) and rustls.
//!
//! Why not kube-rs: measured on the release daemon (docs/benchmarks.md),
//! kube-client and what only it pulls in (jsonpath-rust, regex, pest, jiff,
//! k8s-openapi's decoders, tower-http) were about 2 MiB of a 7.5 MiB binary,
//! against a 5 MiB budget for the binary every GPU node runs; the daemon uses
//! three calls on one object. kube-runtime's watcher would add to that: its
//! shape (a state enum and a step function) is rebuilt for one Node in
//! [`crate::cluster::node::step`].
//!
//! Credentials: the in-cluster service account (the token file is read on
//! every request, so the kubelet's rotation of bound tokens is picked up;
//! the cluster CA is the only trusted root), or an explicit API URL without
//! credentials (`--kube-api-url`: tests, or a local `kubectl proxy`).
//! Kubeconfig files are not read: the daemon runs in a pod.
//!
//! Every input is bounded: a response body (and one watch event) may be at
//! most [`MAX_BODY`]; every request has an absolute deadline; a watch that
//! sends nothing for longer than the server's own timeout is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

/// Where a pod finds its service account.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Largest response body or watch event read: a Node object is a few tens
/// of KiB; anything near this is not a Node.
pub const MAX_BODY: usize = 4 << 20;
/// Deadline of a get or patch, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Asked of the API server: it ends a watch after this long, and the
/// caller watches again.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// A watch silent for longer than the server's timeout plus this is dead.
const WATCH_SLACK: Duration = Duration::from_secs(60);

/// Why a call failed; each says what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot set up the Kubernetes client: {0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Transport {
        what: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{what}: reading the response failed: {source}")]
    Body {
        what: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what}: the response is larger than {MAX_BODY} bytes")]
    TooLarge { what: String },
    #[error("{what}: the API server answered {code}: {message}")]
    Status {
        what: String,
        code: u16,
        message: String,
    },
    #[error("{what}: cannot decode the response: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl KubeError {
    /// The HTTP status the API server answered, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The parts of a Node the daemon reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeSpec {
    /// Kept as JSON: a patch writes back the ones it keeps unchanged.
    #[serde(default)]
    pub taints: Vec<Value>,
}

/// The parts of a Pod the daemon reads: who it is and whether it ended.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: PodMetadata,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub resource_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: String,
}

impl Pod {
    /// `namespace/name`, as the PodResources API names a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Its containers will not run again: the kubelet releases its devices.
    pub fn ended(&self) -> bool {
        matches!(self.status.phase.as_str(), "Succeeded" | "Failed")
    }
}

/// An object a watch reports, with its resourceVersion.
pub trait Watched: serde::de::DeserializeOwned {
    fn resource_version(&self) -> &str;
}

impl Watched for Node {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

impl Watched for Pod {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T = Node> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Only a newer resourceVersion to resume from.
    Bookmark(String),
    /// The server's `Status` (410 Gone: the version is too old).
    Error {
        code: u16,
        message: String,
    },
}

enum Auth {
    /// `Authorization: Bearer <token file's content>`, read per request.
    TokenFile(PathBuf),
    None,
}

/// A client for one API server.
pub struct KubeClient {
    base: String,
    auth: Auth,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl KubeClient {
    /// The in-cluster service account: `KUBERNETES_SERVICE_HOST`/`_PORT`,
    /// its token and the cluster CA.
    pub fn in_cluster() -> Result<KubeClient, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            KubeError::Setup(
                "KUBERNETES_SERVICE_HOST is not set: not running in a pod? Pass --kube-api-url"
                    .into(),
            )
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]") // IPv6
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| {
            KubeError::Setup(format!(
                "cannot read the cluster CA {}: {e} (is the service account token mounted? \
                 automountServiceAccountToken must not be false)",
                ca_path.display()
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| {
                KubeError::Setup(format!("{}: not a PEM certificate: {e}", ca_path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                KubeError::Setup(format!("{}: unusable certificate: {e}", ca_path.display()))
            })?;
        }
        let tls = tls_config(roots)?;
        Ok(KubeClient {
            base: format!("https://{host}:{port}"),
            auth: Auth::TokenFile(dir.join("token")),
            http: http_client(tls, true),
        })
    }

    /// An API server at `url`, without credentials: plain http only (tests,
    /// or a local `kubectl proxy`).
    pub fn with_url(url: &str) -> Result<KubeClient, KubeError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| KubeError::Setup(format!("--kube-api-url {url}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(KubeError::Setup(format!(
                "--kube-api-url {url}: expected http://HOST:PORT (a local `kubectl proxy`); \
                 in a cluster, leave it unset to use the service account"
            )));
        }
        Ok(KubeClient {
            base: url.trim_end_matches('/').to_string(),
            auth: Auth::None,
            // Plain http: the TLS side (no roots) is never used.
            http: http_client(tls_config(rustls::RootCertStore::empty())?, false),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, KubeError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        if let Auth::TokenFile(path) = &self.auth {
            let token = std::fs::read_to_string(path).map_err(|e| {
                KubeError::Setup(format!(
                    "cannot read the service account token {}: {e}",
                    path.display()
                ))
            })?;
            request = request.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        request
            .body(Full::new(body))
            .map_err(|e| KubeError::Setup(format!("invalid request {path}: {e}")))
    }

    /// Sends a request and reads the whole (bounded) answer by `deadline`.
    async fn call(&self, what: &str, request: Request<Full<Bytes>>) -> Result<Bytes, KubeError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let timeout = || KubeError::Timeout {
            what: what.to_string(),
            after: REQUEST_TIMEOUT,
        };
        let response = tokio::time::timeout_at(deadline, self.http.request(request))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| KubeError::Transport {
                what: what.to_string(),
                source,
            })?;
        let status = response.status();
        let body = tokio::time::timeout_at(deadline, read_bounded(what, response.into_body()))
            .await
            .map_err(|_| timeout())??;
        if !status.is_success() {
            return Err(status_error(what, status, &body));
        }
        Ok(body)
    }

    /// `GET /api/v1/nodes/<name>`.
    pub async fn get_node(&self, name: &str) -> Result<Node, KubeError> {
        let what = format!("get node {name}");
        let request = self.request(
            Method::GET,
            &format!("/api/v1/nodes/{}", encode(name)),
            None,
            Bytes::new(),
        )?;
        let body = self.call(&what, request).await?;
        serde_json::from_slice(&body).map_err(|source| KubeError::Decode { what, source })
    }

    /// A JSON merge patch of the Node (`PATCH /api/v1/nodes/<name>`).
    pub async fn merge_patch_node(&self, name: &str, patch: &Value) -> Result<(), KubeError> {
        let what = format!("patch node {name}");
        let request = self.request(
            Method::PATCH,
            &format!("/api/v1/nodes/{}", encode(name)),
            Some("application/merge-patch+json"),
            Bytes::from(patch.to_string()),
        )?;
        self.call(&what, request).await.map(|_| ())
    }

    /// Records a Kubernetes Event about the Node `node` (core/v1, in the
    /// `default` namespace, where the kubelet records node events too), so
    /// that `kubectl describe node` shows it.
    pub async fn node_event(
        &self,
        node: &str,
        kind: EventKind,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        let what = format!("create event {reason} for node {node}");
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        // The API server limits an event's message to 1 kB.
        let message: String = message.chars().take(1000).collect();
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "generateName": format!("{node}.gpu-slicer.") },
            "involvedObject": { "apiVersion": "v1", "kind": "Node", "name": node, "uid": node },
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": { "component": "gpu-slicer", "host": node },
            "reportingComponent": "gpu-slicer",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let request = self.request(
            Method::POST,
            "/api/v1/namespaces/default/events",
            Some("application/json"),
            Bytes::from(event.to_string()),
        )?;
        self.call(&what, request).await.map(|_| ())
    }

    /// Watches the Node `name` from `resource_version` (field-selected, so
    /// only that Node; bookmarks on; the server ends it after
    /// [`WATCH_TIMEOUT`]).
    pub async fn watch_node(
        &self,
        name: &str,
        resource_version: &str,
    ) -> Result<NodeWatch, KubeError> {
        let what = format!("watch node {name}");
        let path = format!(
            "/api/v1/nodes?fieldSelector={}&watch=true&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
            encode(&format!("metadata.name={name}")),
            WATCH_TIMEOUT.as_secs(),
            encode(resource_version),
        );
        self.watch(what, &path).await
    }

    /// Watches the pods bound to node `node` (field-selected on
    /// `spec.nodeName`; bookmarks on; the server ends it after
    /// [`WATCH_TIMEOUT`]). Without `resource_version` the server first sends
    /// every such pod as added, then the changes.
    pub async fn watch_pods(
        &self,
        node: &str,
        resource_version: Option<&str>,
    ) -> Result<PodWatch, KubeError> {
        let what = format!("watch the pods of node {node}");
        let mut path = format!(
            "/api/v1/pods?fieldSelector={}&watch=true&allowWatchBookmarks=true&timeoutSeconds={}",
            encode(&format!("spec.nodeName={node}")),
            WATCH_TIMEOUT.as_secs(),
        );
        if let Some(version) = resource_version {
            path.push_str(&format!("&resourceVersion={}", encode(version)));
        }
        self.watch(what, &path).await
    }

    async fn watch<T: Watched>(&self, what: String, path: &str) -> Result<Watch<T>, KubeError> {
        let request = self.request(Method::GET, path, None, Bytes::new())?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| KubeError::Timeout {
                what: what.clone(),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|source| KubeError::Transport {
                what: what.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = read_bounded(&what, response.into_body()).await?;
            return Err(status_error(&what, status, &body));
        }
        Ok(Watch {
            what,
            body: response.into_body(),
            buffer: BytesMut::new(),
            objects: std::marker::PhantomData,
        })
    }
}

/// An open watch: newline-delimited JSON events about `T`s.
pub struct Watch<T> {
    what: String,
    body: Incoming,
    buffer: BytesMut,
    objects: std::marker::PhantomData<fn() -> T>,
}

/// A watch of the daemon's own Node.
pub type NodeWatch = Watch<Node>;
/// A watch of the pods of the daemon's node.
pub type PodWatch = Watch<Pod>;

impl<T: Watched> Watch<T> {
    /// The next event; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<WatchEvent<T>, KubeError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(decode_event(&self.what, line));
            }
            if self.buffer.len() > MAX_BODY {
                return Some(Err(KubeError::TooLarge {
                    what: self.what.clone(),
                }));
            }
            let frame =
                match tokio::time::timeout(WATCH_TIMEOUT + WATCH_SLACK, self.body.frame()).await {
                    Err(_) => {
                        return Some(Err(KubeError::Timeout {
                            what: self.what.clone(),
                            after: WATCH_TIMEOUT + WATCH_SLACK,
                        }));
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(source))) => {
                        return Some(Err(KubeError::Body {
                            what: self.what.clone(),
                            source,
                        }));
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    self.buffer.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
    }
}

/// An Event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}

fn decode_event<T: Watched>(what: &str, line: &[u8]) -> Result<WatchEvent<T>, KubeError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: String,
        object: Value,
    }
    let decode = |source| KubeError::Decode {
        what: what.to_string(),
        source,
    };
    let raw: Raw = serde_json::from_slice(line).map_err(decode)?;
    let object = || serde_json::from_value::<T>(raw.object.clone()).map_err(decode);
    Ok(match raw.kind.as_str() {
        "ADDED" => WatchEvent::Added(object()?),
        "MODIFIED" => WatchEvent::Modified(object()?),
        "DELETED" => WatchEvent::Deleted(object()?),
        "BOOKMARK" => WatchEvent::Bookmark(object()?.resource_version().to_string()),
        _ => {
            let status: ApiStatus = serde_json::from_value(raw.object).map_err(decode)?;
            WatchEvent::Error {
                code: status.code,
                message: status.message,
            }
        }
    })
}

/// The API server's `Status` object (errors).
#[derive(Debug, Default, Deserialize)]
struct ApiStatus {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
}

fn status_error(what: &str, status: StatusCode, body: &[u8]) -> KubeError {
    let message = serde_json::from_slice::<ApiStatus>(body)
        .map(|s| s.message)
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.chars().take(200).collect()
        });
    KubeError::Status {
        what: what.to_string(),
        code: status.as_u16(),
        message,
    }
}

/// The whole body, refusing one larger than [`MAX_BODY`].
async fn read_bounded(what: &str, mut body: Incoming) -> Result<Bytes, KubeError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| KubeError::Body {
            what: what.to_string(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > MAX_BODY {
                return Err(KubeError::TooLarge {
                    what: what.to_string(),
                });
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// rustls with ring, trusting only `roots`.
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, KubeError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeError::Setup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn http_client(
    tls: rustls::ClientConfig,
    https_only: bool,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if https_only {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    let connector = builder.enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Percent-encodes a query or path value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_and_errors_carry_the_status() {
        let line = br#"{"type":"MODIFIED","object":{"kind":"Node","metadata":{"name":"n1","resourceVersion":"7","labels":{"a":"b"}},"spec":{"taints":[{"key":"k","effect":"NoSchedule"}]}}}"#;
        match decode_event::<Node>("w", line).unwrap() {
            WatchEvent::Modified(node) => {
                assert_eq!(node.metadata.resource_version, "7");
                assert_eq!(node.metadata.labels["a"], "b");
                assert_eq!(node.spec.taints.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#;
        assert_eq!(
            decode_event::<Node>("w", gone).unwrap(),
            WatchEvent::Error {
                code: 410,
                message: "too old resource version".into()
            }
        );
        let bookmark =
            br#"{"type":"BOOKMARK","object":{"kind":"Node","metadata":{"resourceVersion":"12"}}}"#;
        assert_eq!(
            decode_event::<Node>("w", bookmark).unwrap(),
            WatchEvent::Bookmark("12".into())
        );
        assert!(decode_event::<Node>("w", b"not json").is_err());
        let ended = br#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"p","namespace":"ns","resourceVersion":"9"},"status":{"phase":"Succeeded"}}}"#;
        match decode_event::<Pod>("w", ended).unwrap() {
            WatchEvent::Modified(pod) => {
                assert_eq!(pod.key(), "ns/p");
                assert!(pod.ended());
                assert_eq!(pod.resource_version(), "9");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(
            encode("metadata.name=ip-10-0-1-2"),
            "metadata.name%3Dip-10-0-1-2"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert!(KubeClient::with_url("http://127.0.0.1:8001").is_ok());
        let e = KubeClient::with_url("https://example.com").err().unwrap();
        assert!(e.to_string().contains("expected http://HOST:PORT"), "{e}");
        assert!(KubeClient::with_url("not a url").is_err());
    }
}
