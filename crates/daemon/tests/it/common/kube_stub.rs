//! A stand-in Kubernetes API server for one Node: enough of `/api/v1/nodes`
//! for the daemon's client to get, watch and patch it. Hand-written HTTP/1.1 on
//! 127.0.0.1, one request per connection (`Connection: close`).
//!
//! The Node lives here; the test changes it ([`KubeStub::set_label`]), which
//! bumps its resourceVersion and records a MODIFIED event; every watch gets
//! the events after the resourceVersion it asked for, then live ones, as a
//! chunked stream (like the real server, so no change is lost between a get
//! and a watch). PATCH applies a JSON merge patch, honours a
//! `metadata.resourceVersion` precondition (409 when stale), and is recorded.
//! Pods bound to the Node can be added and deleted ([`KubeStub::add_pod`],
//! [`KubeStub::delete_pod`]); a watch of them (`fieldSelector=spec.nodeName=`)
//! works like the Node's, and without a resourceVersion first lists them as
//! added.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Called when a PATCH arrives, before it is applied; what it returns is
/// recorded with the patch (e.g. what the kubelet saw at that moment).
pub type PatchHook = Arc<dyn Fn() -> String + Send + Sync>;

/// Picks the PATCHes (by body) to answer with 500.
pub type PatchFilter = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Debug, Clone)]
pub struct RecordedPatch {
    pub content_type: String,
    pub body: Value,
    /// The hook's output at arrival.
    pub seen: String,
}

struct Inner {
    node: Value,
    version: u64,
    /// (resourceVersion, one watch-event JSON line)
    events: Vec<(u64, String)>,
    /// The Pods bound to the Node, and their watch events, as for the Node.
    pods: Vec<Value>,
    pod_events: Vec<(u64, String)>,
    patches: Vec<RecordedPatch>,
    /// Request lines, in order ("GET /api/v1/nodes/n1").
    requests: Vec<String>,
    /// Events created (`POST /api/v1/namespaces/<ns>/events`), as sent.
    created_events: Vec<Value>,
    hook: Option<PatchHook>,
    /// Watches from a resourceVersion below this get 410 Gone (history compacted).
    compacted: u64,
    /// Answer the next PATCHes with 409 Conflict.
    conflicts: usize,
    /// While set, every request is answered 500 (an API server in trouble).
    failing: bool,
    /// Requests answered 500 because of `failing`.
    failed: usize,
    /// The next PATCHes matching the filter are answered 500 (recorded, not applied).
    failing_patches: Option<(usize, PatchFilter)>,
}

struct State {
    inner: Mutex<Inner>,
    /// Bumped on every change (node or patch list): watches and waiters wake.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (as the server does at its timeout).
    ends: watch::Sender<u64>,
    name: String,
}

pub struct KubeStub {
    pub url: String,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for KubeStub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl KubeStub {
    /// Serves Node `name` with `labels` and `taints` (a JSON array).
    pub async fn start(name: &str, labels: &[(&str, &str)], taints: Value) -> KubeStub {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "resourceVersion": "1", "labels": labels },
            "spec": { "taints": taints },
        });
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                node,
                version: 1,
                events: Vec::new(),
                pods: Vec::new(),
                pod_events: Vec::new(),
                patches: Vec::new(),
                requests: Vec::new(),
                created_events: Vec::new(),
                hook: None,
                compacted: 0,
                conflicts: 0,
                failing: false,
                failed: 0,
                failing_patches: None,
            }),
            changed: watch::channel(1).0,
            ends: watch::channel(0).0,
            name: name.to_string(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let (s, st) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = st.cancelled() => return,
                    conn = listener.accept() => conn,
                };
                if let Ok((stream, _)) = conn {
                    tokio::spawn(handle(stream, s.clone(), st.clone()));
                }
            }
        });
        KubeStub { url, state, stop }
    }

    /// Sets (`Some`) or removes (`None`) a label: a MODIFIED event.
    pub fn set_label(&self, key: &str, value: Option<&str>) {
        self.modify(|node| {
            let labels = &mut node["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            let labels = labels.as_object_mut().expect("object");
            match value {
                Some(v) => labels.insert(key.into(), v.into()),
                None => labels.remove(key),
            };
        });
    }

    /// Sets (`Some`) or removes (`None`) an annotation: a MODIFIED event.
    pub fn set_annotation(&self, key: &str, value: Option<&str>) {
        self.modify(|node| {
            let annotations = &mut node["metadata"]["annotations"];
            if !annotations.is_object() {
                *annotations = json!({});
            }
            let annotations = annotations.as_object_mut().expect("object");
            match value {
                Some(v) => annotations.insert(key.into(), v.into()),
                None => annotations.remove(key),
            };
        });
    }

    /// A Pod `namespace/name` bound to the Node, running: an ADDED event.
    pub fn add_pod(&self, namespace: &str, name: &str) {
        let mut inner = self.state.inner.lock().expect("stub");
        inner.version += 1;
        let version = inner.version;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace, "resourceVersion": version.to_string() },
            "spec": { "nodeName": self.state.name },
            "status": { "phase": "Running" },
        });
        let event = json!({ "type": "ADDED", "object": pod }).to_string();
        inner.pods.push(pod);
        inner.pod_events.push((version, event));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Deletes the Pod `namespace/name`: a DELETED event.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut inner = self.state.inner.lock().expect("stub");
        let Some(at) = inner
            .pods
            .iter()
            .position(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == namespace)
        else {
            panic!("stub: no pod {namespace}/{name}");
        };
        let mut pod = inner.pods.remove(at);
        inner.version += 1;
        let version = inner.version;
        pod["metadata"]["resourceVersion"] = Value::String(version.to_string());
        let event = json!({ "type": "DELETED", "object": pod }).to_string();
        inner.pod_events.push((version, event));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// A Node annotation's value now.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.node()["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Ends every open watch cleanly (the server's watch timeout).
    pub fn end_watches(&self) {
        self.state.ends.send_modify(|n| *n += 1);
    }

    /// Changes a label so that no watch reports it: the history before is
    /// compacted and open watches end, so a client learns of the change only
    /// by getting the Node again after its watch fails with 410 Gone.
    pub fn set_label_unseen(&self, key: &str, value: Option<&str>) {
        // One critical section, and no event pushed or announced: an open
        // watch must not see this change before the history is compacted.
        let mut inner = self.state.inner.lock().expect("stub");
        let labels = &mut inner.node["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            match value {
                Some(v) => labels.insert(key.into(), v.into()),
                None => labels.remove(key),
            };
        }
        inner.version += 1;
        let version = inner.version;
        inner.node["metadata"]["resourceVersion"] = Value::String(version.to_string());
        inner.compacted = version;
        inner.events.clear();
        drop(inner);
        self.end_watches();
    }

    /// Sets (`Some`) or removes (`None`) several labels one after the other
    /// with nothing in between: one MODIFIED event each, announced at once,
    /// so a watch delivers them together (label steps that arrive together).
    pub fn set_labels_at_once(&self, changes: &[(&str, Option<&str>)]) {
        let mut inner = self.state.inner.lock().expect("stub");
        for (key, value) in changes {
            let labels = &mut inner.node["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            if let Some(labels) = labels.as_object_mut() {
                match value {
                    Some(v) => labels.insert(key.to_string(), (*v).into()),
                    None => labels.remove(*key),
                };
            }
            inner.version += 1;
            let version = inner.version;
            inner.node["metadata"]["resourceVersion"] = Value::String(version.to_string());
            let event = json!({ "type": "MODIFIED", "object": inner.node }).to_string();
            inner.events.push((version, event));
        }
        let version = inner.version;
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// While `failing`, every request is answered 500 Internal Server Error
    /// and open watches end (the Node still changes: what a client misses
    /// meanwhile it must read afterwards).
    pub fn fail_requests(&self, failing: bool) {
        self.state.inner.lock().expect("stub").failing = failing;
        if failing {
            self.end_watches();
        }
        self.state.changed.send_modify(|_| {});
    }

    /// How many requests were answered 500 by [`Self::fail_requests`].
    pub fn failed_requests(&self) -> usize {
        self.state.inner.lock().expect("stub").failed
    }

    /// The next `times` PATCHes whose body `which` picks are answered 500
    /// (recorded, not applied).
    pub fn fail_patches(&self, times: usize, which: PatchFilter) {
        self.state.inner.lock().expect("stub").failing_patches = Some((times, which));
    }

    /// The next `n` PATCHes get 409 Conflict (someone else changed the Node).
    pub fn conflict_next_patches(&self, n: usize) {
        self.state.inner.lock().expect("stub").conflicts = n;
    }

    pub fn on_patch(&self, hook: PatchHook) {
        self.state.inner.lock().expect("stub").hook = Some(hook);
    }

    pub fn node(&self) -> Value {
        self.state.inner.lock().expect("stub").node.clone()
    }

    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.state.inner.lock().expect("stub").patches.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.inner.lock().expect("stub").requests.clone()
    }

    /// The Events created so far, as sent.
    pub fn created_events(&self) -> Vec<Value> {
        self.state
            .inner
            .lock()
            .expect("stub")
            .created_events
            .clone()
    }

    /// A node label's value now.
    pub fn label(&self, key: &str) -> Option<String> {
        self.node()["metadata"]["labels"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Waits (on change notifications, not a timer) until `pred` holds.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&KubeStub) -> bool, limit: Duration) {
        let mut changed = self.state.changed.subscribe();
        let wait = async {
            loop {
                if pred(self) {
                    return;
                }
                changed.changed().await.expect("stub alive");
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("stub: timed out waiting for {what}"));
    }

    fn modify(&self, change: impl FnOnce(&mut Value)) {
        modify(&self.state, change);
    }
}

fn modify(state: &State, change: impl FnOnce(&mut Value)) -> Value {
    let mut inner = state.inner.lock().expect("stub");
    change(&mut inner.node);
    inner.version += 1;
    let version = inner.version;
    inner.node["metadata"]["resourceVersion"] = Value::String(version.to_string());
    let event = json!({ "type": "MODIFIED", "object": inner.node }).to_string();
    inner.events.push((version, event));
    let node = inner.node.clone();
    drop(inner);
    state.changed.send_replace(version);
    node
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("object");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let mut length = 0usize;
    let mut content_type = String::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().ok()?,
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        body,
    })
}

/// Percent-decoding (enough for field selectors).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

async fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

async fn handle(mut stream: TcpStream, state: Arc<State>, stop: CancellationToken) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let failing = {
        let mut inner = state.inner.lock().expect("stub");
        inner
            .requests
            .push(format!("{} {}", request.method, request.path));
        if inner.failing {
            inner.failed += 1;
        }
        inner.failing
    };
    if failing {
        state.changed.send_modify(|_| {});
        let body = status(500, "InternalError", "the stub is failing on purpose");
        respond(&mut stream, "500 Internal Server Error", &body).await;
        return;
    }
    let own = format!("/api/v1/nodes/{}", state.name);
    let param = |k: &str| {
        request
            .query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", p) if p == own => {
            let node = state.inner.lock().expect("stub").node.clone();
            respond(&mut stream, "200 OK", &node).await;
        }
        ("GET", "/api/v1/nodes") if param("watch").as_deref() == Some("true") => {
            let selector = param("fieldSelector").unwrap_or_default();
            if selector != format!("metadata.name={}", state.name) {
                let body = status(
                    400,
                    "BadRequest",
                    &format!("unexpected fieldSelector {selector:?}"),
                );
                respond(&mut stream, "400 Bad Request", &body).await;
                return;
            }
            let from: u64 = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            watch(stream, state, stop, from, Vec::new(), |i| &i.events).await;
        }
        ("GET", "/api/v1/pods") if param("watch").as_deref() == Some("true") => {
            let selector = param("fieldSelector").unwrap_or_default();
            if selector != format!("spec.nodeName={}", state.name) {
                let body = status(
                    400,
                    "BadRequest",
                    &format!("unexpected fieldSelector {selector:?}"),
                );
                respond(&mut stream, "400 Bad Request", &body).await;
                return;
            }
            // No resourceVersion: the pods as they are, as ADDED, then changes.
            let (from, initial) = match param("resourceVersion").and_then(|v| v.parse().ok()) {
                Some(from) => (from, Vec::new()),
                None => {
                    let inner = state.inner.lock().expect("stub");
                    let initial = inner
                        .pods
                        .iter()
                        .map(|p| json!({ "type": "ADDED", "object": p }).to_string())
                        .collect();
                    (inner.version, initial)
                }
            };
            watch(stream, state, stop, from, initial, |i| &i.pod_events).await;
        }
        ("POST", "/api/v1/namespaces/default/events") => {
            // As the API server: an Event needs its involved object and reason.
            let Ok(event) = serde_json::from_slice::<Value>(&request.body) else {
                let body = status(400, "BadRequest", "bad JSON");
                respond(&mut stream, "400 Bad Request", &body).await;
                return;
            };
            if event["involvedObject"]["name"].as_str().is_none()
                || event["reason"].as_str().is_none()
                || request.content_type != "application/json"
            {
                let body = status(
                    422,
                    "Invalid",
                    "involvedObject.name and reason are required",
                );
                respond(&mut stream, "422 Unprocessable Entity", &body).await;
                return;
            }
            state
                .inner
                .lock()
                .expect("stub")
                .created_events
                .push(event.clone());
            state.changed.send_modify(|_| {});
            respond(&mut stream, "201 Created", &event).await;
        }
        ("PATCH", p) if p == own => {
            let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
                respond(
                    &mut stream,
                    "400 Bad Request",
                    &status(400, "BadRequest", "bad JSON"),
                )
                .await;
                return;
            };
            let hook = state.inner.lock().expect("stub").hook.clone();
            let seen = hook.map(|h| h()).unwrap_or_default();
            let (current, conflict, fail) = {
                let mut inner = state.inner.lock().expect("stub");
                inner.patches.push(RecordedPatch {
                    content_type: request.content_type.clone(),
                    body: patch.clone(),
                    seen,
                });
                let conflict = inner.conflicts > 0;
                inner.conflicts = inner.conflicts.saturating_sub(1);
                let fail = match &mut inner.failing_patches {
                    Some((times, which)) if *times > 0 && which(&patch) => {
                        *times -= 1;
                        true
                    }
                    _ => false,
                };
                (inner.version, conflict, fail)
            };
            state.changed.send_modify(|_| {});
            if fail {
                let body = status(500, "InternalError", "the stub fails this patch on purpose");
                respond(&mut stream, "500 Internal Server Error", &body).await;
                return;
            }
            if conflict
                || patch["metadata"]["resourceVersion"]
                    .as_str()
                    .is_some_and(|want| want != current.to_string())
            {
                let body = status(409, "Conflict", "the object has been modified");
                respond(&mut stream, "409 Conflict", &body).await;
                return;
            }
            if request.content_type != "application/merge-patch+json" {
                let body = status(415, "UnsupportedMediaType", "the stub only merges");
                respond(&mut stream, "415 Unsupported Media Type", &body).await;
                return;
            }
            let node = modify(&state, |node| merge(node, &patch));
            respond(&mut stream, "200 OK", &node).await;
        }
        _ => {
            let body = status(
                404,
                "NotFound",
                &format!("the stub does not serve {}", request.path),
            );
            respond(&mut stream, "404 Not Found", &body).await;
        }
    }
}

/// A chunked stream of `initial`, then the events (of the list `events`
/// picks) after `from`, then live ones, until the client goes away or the
/// stub stops.
async fn watch(
    mut stream: TcpStream,
    state: Arc<State>,
    stop: CancellationToken,
    from: u64,
    initial: Vec<String>,
    events: fn(&Inner) -> &Vec<(u64, String)>,
) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut changed = state.changed.subscribe();
    let mut ends = state.ends.subscribe();
    let compacted = state.inner.lock().expect("stub").compacted;
    if from < compacted {
        let gone = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") });
        let line = format!("{gone}\n");
        let chunk = format!("{:x}\r\n{line}\r\n0\r\n\r\n", line.len());
        let _ = stream.write_all(chunk.as_bytes()).await;
        return;
    }
    for event in initial {
        let line = format!("{event}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
    let mut sent = from;
    loop {
        // An ended watch, or a server that fails every request, reports
        // nothing more: checked before each send, since a label set just
        // after `fail_requests` wakes this loop as well as the end does.
        let (failing, pending): (bool, Vec<(u64, String)>) = {
            let inner = state.inner.lock().expect("stub");
            let pending = events(&inner)
                .iter()
                .filter(|(v, _)| *v > sent)
                .cloned()
                .collect();
            (inner.failing, pending)
        };
        if failing || ends.has_changed().unwrap_or(true) {
            let _ = stream.write_all(b"0\r\n\r\n").await;
            return;
        }
        for (version, event) in pending {
            let line = format!("{event}\n");
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            sent = version;
        }
        let _ = stream.flush().await;
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                return;
            }
            _ = ends.changed() => {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                return;
            }
            c = changed.changed() => if c.is_err() { return },
        }
    }
}
