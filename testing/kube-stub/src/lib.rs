//! A stand-in Kubernetes API server for end-to-end tests: enough of
//! `/api/v1/nodes`, `/api/v1/pods`, coordination.k8s.io Leases and Events for
//! the node daemon's client and for kube-rs watchers (the controller's).
//! Hand-written HTTP/1.1 on 127.0.0.1, one request per connection
//! (`Connection: close`).
//!
//! The objects live here; the test changes them ([`KubeStub::set_label`],
//! [`KubeStub::create_pod`], [`KubeStub::bind_pod`]), each change bumping the
//! one resourceVersion counter and recording the object before and after.
//! Lists answer with the objects that match the request's `fieldSelector`
//! (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`;
//! `=` and `!=`) and the current resourceVersion, in pages of `limit` with a
//! `continue` token; every watch gets the
//! changes after the resourceVersion it asked for, then live ones, as a
//! chunked stream, filtered as the API server does: an object that comes
//! to match is ADDED, one that stops matching is DELETED (so a pending pod
//! leaves a `spec.nodeName=` watch when it is bound). PATCH of a Node
//! applies a JSON merge patch, honours a `metadata.resourceVersion`
//! precondition (409 when stale), and is recorded. Leases are got, created
//! and replaced (PUT, 409 on a stale resourceVersion) as the API server
//! does. A watch of pods without a resourceVersion first lists the matching
//! pods as ADDED (the node daemon's watch starts that way). Karpenter's
//! NodeClaims (`/apis/karpenter.sh/v1/nodeclaims`) are listed and watched
//! like Nodes once [`KubeStub::serve_nodeclaims`] is called; before, that
//! path is 404, as on a cluster without Karpenter's CRDs.
#![allow(clippy::missing_panics_doc)]

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
    /// The Node patched.
    pub node: String,
    pub content_type: String,
    pub body: Value,
    /// The hook's output at arrival.
    pub seen: String,
}

/// The kinds a watch can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Pod,
    NodeClaim,
}

const NODECLAIMS: &str = "/apis/karpenter.sh/v1/nodeclaims";

/// One change of one object: what it was and what it became (`None`:
/// created, deleted).
struct Change {
    version: u64,
    kind: Kind,
    before: Option<Value>,
    after: Option<Value>,
}

struct Inner {
    /// The first is the Node of [`KubeStub::start`], which the methods
    /// without a node name change.
    nodes: Vec<Value>,
    pods: Vec<Value>,
    /// Karpenter's NodeClaims, served once `nodeclaims_served`.
    claims: Vec<Value>,
    nodeclaims_served: bool,
    leases: Vec<Value>,
    version: u64,
    changes: Vec<Change>,
    patches: Vec<RecordedPatch>,
    /// Request lines, in order ("GET /api/v1/nodes/n1").
    requests: Vec<String>,
    /// Events created (`POST /api/v1/namespaces/<ns>/events`), as sent.
    created_events: Vec<Value>,
    /// Every Lease as written (created or replaced), in order.
    lease_writes: Vec<Value>,
    hook: Option<PatchHook>,
    /// Node watches from a resourceVersion below this get 410 Gone (history compacted).
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

impl Inner {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn record(&mut self, kind: Kind, before: Option<Value>, after: Option<Value>) {
        let version = self.version;
        self.changes.push(Change {
            version,
            kind,
            before,
            after,
        });
    }

    fn objects(&self, kind: Kind) -> &[Value] {
        match kind {
            Kind::Node => &self.nodes,
            Kind::Pod => &self.pods,
            Kind::NodeClaim => &self.claims,
        }
    }

    fn node_mut(&mut self, name: &str) -> &mut Value {
        self.nodes
            .iter_mut()
            .find(|n| n["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("stub: no node {name}"))
    }
}

struct State {
    inner: Mutex<Inner>,
    /// Bumped on every change (object or request list): watches and waiters wake.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (as the server does at its timeout).
    ends: watch::Sender<u64>,
    /// The Node of [`KubeStub::start`].
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

fn node_object(name: &str, labels: &[(&str, &str)], taints: Value, version: u64) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "resourceVersion": version.to_string(), "labels": labels },
        "spec": { "taints": taints },
        "status": { "conditions": [{ "type": "Ready", "status": "True" }] },
    })
}

fn set_key(object: &mut Value, field: &str, key: &str, value: Option<&str>) {
    let map = &mut object["metadata"][field];
    if !map.is_object() {
        *map = json!({});
    }
    if let Some(map) = map.as_object_mut() {
        match value {
            Some(v) => map.insert(key.into(), v.into()),
            None => map.remove(key),
        };
    }
}

impl KubeStub {
    /// Serves Node `name` with `labels` and `taints` (a JSON array), Ready.
    pub async fn start(name: &str, labels: &[(&str, &str)], taints: Value) -> KubeStub {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                nodes: vec![node_object(name, labels, taints, 1)],
                pods: Vec::new(),
                claims: Vec::new(),
                nodeclaims_served: false,
                leases: Vec::new(),
                version: 1,
                changes: Vec::new(),
                patches: Vec::new(),
                requests: Vec::new(),
                created_events: Vec::new(),
                lease_writes: Vec::new(),
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

    /// Another Node, Ready: an ADDED event.
    pub fn add_node(&self, name: &str, labels: &[(&str, &str)], taints: Value) {
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        let node = node_object(name, labels, taints, version);
        inner.nodes.push(node.clone());
        inner.record(Kind::Node, None, Some(node));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Another Node, as given (its resourceVersion filled in): an ADDED event.
    pub fn create_node(&self, mut node: Value) {
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        node["metadata"]["resourceVersion"] = Value::String(version.to_string());
        inner.nodes.push(node.clone());
        inner.record(Kind::Node, None, Some(node));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Sets (`Some`) or removes (`None`) a label: a MODIFIED event.
    pub fn set_label(&self, key: &str, value: Option<&str>) {
        self.set_label_on(&self.state.name.clone(), key, value);
    }

    /// Sets (`Some`) or removes (`None`) a label of Node `node`.
    pub fn set_label_on(&self, node: &str, key: &str, value: Option<&str>) {
        modify(&self.state, node, |n| set_key(n, "labels", key, value));
    }

    /// Sets (`Some`) or removes (`None`) an annotation: a MODIFIED event.
    pub fn set_annotation(&self, key: &str, value: Option<&str>) {
        self.set_annotation_on(&self.state.name.clone(), key, value);
    }

    /// Sets (`Some`) or removes (`None`) an annotation of Node `node`.
    pub fn set_annotation_on(&self, node: &str, key: &str, value: Option<&str>) {
        modify(&self.state, node, |n| set_key(n, "annotations", key, value));
    }

    /// A Pod `namespace/name` bound to the first Node, running: an ADDED event.
    pub fn add_pod(&self, namespace: &str, name: &str) {
        self.create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
            "spec": { "nodeName": self.state.name },
            "status": { "phase": "Running" },
        }));
    }

    /// Creates `pod` as given (its resourceVersion, uid and
    /// creationTimestamp filled in when absent): an ADDED event.
    pub fn create_pod(&self, mut pod: Value) {
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        let meta = &mut pod["metadata"];
        meta["resourceVersion"] = Value::String(version.to_string());
        if meta["uid"].is_null() {
            meta["uid"] = Value::String(format!("uid-{version}"));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = Value::String("2026-12-07T00:00:00Z".into());
        }
        inner.pods.push(pod.clone());
        inner.record(Kind::Pod, None, Some(pod));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Binds Pod `namespace/name` to `node` (as the scheduler's binding
    /// does: `spec.nodeName` set): a MODIFIED event, which a watch of
    /// unbound pods sees as DELETED.
    pub fn bind_pod(&self, namespace: &str, name: &str, node: &str) {
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        let Some(pod) = inner
            .pods
            .iter_mut()
            .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == namespace)
        else {
            panic!("stub: no pod {namespace}/{name}");
        };
        let before = pod.clone();
        pod["spec"]["nodeName"] = Value::String(node.to_string());
        pod["metadata"]["resourceVersion"] = Value::String(version.to_string());
        let after = pod.clone();
        inner.record(Kind::Pod, Some(before), Some(after));
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
        let before = inner.pods.remove(at);
        let version = inner.bump();
        let mut gone = before.clone();
        gone["metadata"]["resourceVersion"] = Value::String(version.to_string());
        inner.record(Kind::Pod, Some(before), None);
        if let Some(last) = inner.changes.last_mut() {
            // A DELETED event carries the object at its last version.
            last.before = Some(gone);
        }
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Serves `/apis/karpenter.sh/v1/nodeclaims` from now on (the CRD
    /// installed).
    pub fn serve_nodeclaims(&self) {
        self.state.inner.lock().expect("stub").nodeclaims_served = true;
        self.state.changed.send_modify(|_| {});
    }

    /// Creates or replaces the NodeClaim named in `claim` (its
    /// resourceVersion filled in): an ADDED or MODIFIED event.
    pub fn put_nodeclaim(&self, mut claim: Value) {
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        claim["metadata"]["resourceVersion"] = Value::String(version.to_string());
        let name = claim["metadata"]["name"].clone();
        let before = match inner
            .claims
            .iter()
            .position(|c| c["metadata"]["name"] == name)
        {
            Some(at) => Some(std::mem::replace(&mut inner.claims[at], claim.clone())),
            None => {
                inner.claims.push(claim.clone());
                None
            }
        };
        inner.record(Kind::NodeClaim, before, Some(claim));
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// Deletes the NodeClaim `name`: a DELETED event.
    pub fn delete_nodeclaim(&self, name: &str) {
        let mut inner = self.state.inner.lock().expect("stub");
        let Some(at) = inner
            .claims
            .iter()
            .position(|c| c["metadata"]["name"] == name)
        else {
            panic!("stub: no NodeClaim {name}");
        };
        let mut before = inner.claims.remove(at);
        let version = inner.bump();
        before["metadata"]["resourceVersion"] = Value::String(version.to_string());
        inner.record(Kind::NodeClaim, Some(before), None);
        drop(inner);
        self.state.changed.send_replace(version);
    }

    /// A Node annotation's value now.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.annotation_on(&self.state.name, key)
    }

    /// An annotation of Node `node` now.
    pub fn annotation_on(&self, node: &str, key: &str) -> Option<String> {
        self.node_named(node)["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Ends every open watch cleanly (the server's watch timeout).
    pub fn end_watches(&self) {
        self.state.ends.send_modify(|n| *n += 1);
    }

    /// Changes a label so that no watch reports it: the Node history before
    /// is compacted and open watches end, so a client learns of the change
    /// only by getting the Node again after its watch fails with 410 Gone.
    pub fn set_label_unseen(&self, key: &str, value: Option<&str>) {
        // One critical section, and no event pushed or announced: an open
        // watch must not see this change before the history is compacted.
        let mut inner = self.state.inner.lock().expect("stub");
        let version = inner.bump();
        let name = self.state.name.clone();
        let node = inner.node_mut(&name);
        set_key(node, "labels", key, value);
        node["metadata"]["resourceVersion"] = Value::String(version.to_string());
        inner.compacted = version;
        inner.changes.retain(|c| c.kind != Kind::Node);
        drop(inner);
        self.end_watches();
    }

    /// Sets (`Some`) or removes (`None`) several labels one after the other
    /// with nothing in between: one MODIFIED event each, announced at once,
    /// so a watch delivers them together (label steps that arrive together).
    pub fn set_labels_at_once(&self, changes: &[(&str, Option<&str>)]) {
        let mut inner = self.state.inner.lock().expect("stub");
        let name = self.state.name.clone();
        for (key, value) in changes {
            let version = inner.bump();
            let node = inner.node_mut(&name);
            let before = node.clone();
            set_key(node, "labels", key, *value);
            node["metadata"]["resourceVersion"] = Value::String(version.to_string());
            let after = node.clone();
            inner.record(Kind::Node, Some(before), Some(after));
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

    /// The Node of [`Self::start`] now.
    pub fn node(&self) -> Value {
        self.node_named(&self.state.name)
    }

    /// Node `name` now.
    pub fn node_named(&self, name: &str) -> Value {
        let inner = self.state.inner.lock().expect("stub");
        inner
            .nodes
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("stub: no node {name}"))
    }

    /// Pod `namespace/name` now, if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.state.inner.lock().expect("stub");
        inner
            .pods
            .iter()
            .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == namespace)
            .cloned()
    }

    /// The PATCHes of every Node, in order of arrival.
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

    /// Lease `namespace/name` now, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.state.inner.lock().expect("stub");
        inner
            .leases
            .iter()
            .find(|l| l["metadata"]["name"] == name && l["metadata"]["namespace"] == namespace)
            .cloned()
    }

    /// Every Lease as written (created or replaced), in order.
    pub fn lease_writes(&self) -> Vec<Value> {
        self.state.inner.lock().expect("stub").lease_writes.clone()
    }

    /// A node label's value now.
    pub fn label(&self, key: &str) -> Option<String> {
        self.label_on(&self.state.name, key)
    }

    /// A label of Node `node` now.
    pub fn label_on(&self, node: &str, key: &str) -> Option<String> {
        self.node_named(node)["metadata"]["labels"][key]
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
}

fn modify(state: &State, name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut inner = state.inner.lock().expect("stub");
    let version = inner.bump();
    let node = inner.node_mut(name);
    let before = node.clone();
    change(node);
    node["metadata"]["resourceVersion"] = Value::String(version.to_string());
    let after = node.clone();
    inner.record(Kind::Node, Some(before), Some(after.clone()));
    drop(inner);
    state.changed.send_replace(version);
    after
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
    let Some(object) = target.as_object_mut() else {
        return;
    };
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// One term of a field selector: `path=value` or `path!=value`.
struct FieldTerm {
    path: Vec<String>,
    value: String,
    equal: bool,
}

/// Parses a field selector of the fields the API server allows for Nodes
/// and Pods here; `Err` names what it does not serve.
fn field_selector(selector: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("not a field selector term: {term:?}"));
        };
        if !matches!(
            field,
            "metadata.name" | "metadata.namespace" | "spec.nodeName" | "status.phase"
        ) {
            return Err(format!("field label not supported: {field}"));
        }
        terms.push(FieldTerm {
            path: field.split('.').map(str::to_string).collect(),
            value: value.to_string(),
            equal,
        });
    }
    Ok(terms)
}

fn matches(object: &Value, terms: &[FieldTerm]) -> bool {
    terms.iter().all(|t| {
        let mut at = object;
        for part in &t.path {
            at = &at[part.as_str()];
        }
        let actual = at.as_str().unwrap_or("");
        (actual == t.value) == t.equal
    })
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

fn bad_request(message: &str) -> (&'static str, Value) {
    ("400 Bad Request", status(400, "BadRequest", message))
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

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
    state.changed.send_modify(|_| {});
    if failing {
        let body = status(500, "InternalError", "the stub is failing on purpose");
        respond(&mut stream, "500 Internal Server Error", &body).await;
        return;
    }
    let param = |k: &str| {
        request
            .query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let watching = param("watch").as_deref() == Some("true");
    let selector = match field_selector(&param("fieldSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(message) => {
            let (code, body) = bad_request(&message);
            respond(&mut stream, code, &body).await;
            return;
        }
    };
    let path = request.path.as_str();
    let node_name = path.strip_prefix("/api/v1/nodes/");
    let nodeclaims_served = state.inner.lock().expect("stub").nodeclaims_served;
    match (request.method.as_str(), path) {
        ("GET", "/api/v1/nodes" | "/api/v1/pods") | ("GET", NODECLAIMS)
            if path != NODECLAIMS || nodeclaims_served =>
        {
            let kind = match path {
                "/api/v1/nodes" => Kind::Node,
                "/api/v1/pods" => Kind::Pod,
                _ => Kind::NodeClaim,
            };
            let from: Option<u64> = param("resourceVersion").and_then(|v| v.parse().ok());
            if watching {
                // The node daemon's pod watch starts without a
                // resourceVersion: the pods as they are, as ADDED, then changes.
                let (from, initial) = match from {
                    Some(from) if from > 0 => (from, Vec::new()),
                    _ => {
                        let inner = state.inner.lock().expect("stub");
                        let initial = inner
                            .objects(kind)
                            .iter()
                            .filter(|o| matches(o, &selector))
                            .map(|o| json!({ "type": "ADDED", "object": o }).to_string())
                            .collect();
                        (inner.version, initial)
                    }
                };
                watch(stream, state, stop, kind, selector, from, initial).await;
            } else {
                let list = {
                    let inner = state.inner.lock().expect("stub");
                    let objects = inner.objects(kind);
                    let (api_version, list_kind) = match kind {
                        Kind::Node => ("v1", "NodeList"),
                        Kind::Pod => ("v1", "PodList"),
                        Kind::NodeClaim => ("karpenter.sh/v1", "NodeClaimList"),
                    };
                    // Pages of `limit`, the offset as the continue token
                    // (the next page reads the objects as they are then).
                    let offset: usize = param("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
                    let limit: usize = param("limit")
                        .and_then(|l| l.parse().ok())
                        .filter(|l| *l > 0)
                        .unwrap_or(usize::MAX);
                    let matching: Vec<&Value> =
                        objects.iter().filter(|o| matches(o, &selector)).collect();
                    let end = offset.saturating_add(limit).min(matching.len());
                    let items: Vec<Value> = matching[offset.min(end)..end]
                        .iter()
                        .map(|o| (*o).clone())
                        .collect();
                    let mut metadata = json!({ "resourceVersion": inner.version.to_string() });
                    if end < matching.len() {
                        metadata["continue"] = Value::String(end.to_string());
                    }
                    json!({
                        "apiVersion": api_version, "kind": list_kind,
                        "metadata": metadata,
                        "items": items,
                    })
                };
                respond(&mut stream, "200 OK", &list).await;
            }
        }
        ("GET", _) if node_name.is_some() => {
            let name = node_name.unwrap_or_default();
            let node = {
                let inner = state.inner.lock().expect("stub");
                inner
                    .nodes
                    .iter()
                    .find(|n| n["metadata"]["name"] == name)
                    .cloned()
            };
            match node {
                Some(node) => respond(&mut stream, "200 OK", &node).await,
                None => {
                    let body = status(404, "NotFound", &format!("nodes \"{name}\" not found"));
                    respond(&mut stream, "404 Not Found", &body).await;
                }
            }
        }
        ("POST", p) if p.starts_with("/api/v1/namespaces/") && p.ends_with("/events") => {
            // As the API server: an Event needs its involved object and reason.
            let Ok(event) = serde_json::from_slice::<Value>(&request.body) else {
                let (code, body) = bad_request("bad JSON");
                respond(&mut stream, code, &body).await;
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
        ("PATCH", _) if node_name.is_some() => {
            let name = node_name.unwrap_or_default().to_string();
            patch_node(&mut stream, &state, &name, &request).await;
        }
        (method, p) if p.starts_with(LEASES) && p.contains("/leases") => {
            lease(&mut stream, &state, method, p, &request.body).await;
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

async fn patch_node(stream: &mut TcpStream, state: &State, name: &str, request: &Request) {
    let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
        let (code, body) = bad_request("bad JSON");
        respond(stream, code, &body).await;
        return;
    };
    let hook = state.inner.lock().expect("stub").hook.clone();
    let seen = hook.map(|h| h()).unwrap_or_default();
    let (current, conflict, fail, exists) = {
        let mut inner = state.inner.lock().expect("stub");
        inner.patches.push(RecordedPatch {
            node: name.to_string(),
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
        let node = inner.nodes.iter().find(|n| n["metadata"]["name"] == name);
        let current = node
            .and_then(|n| n["metadata"]["resourceVersion"].as_str())
            .unwrap_or("")
            .to_string();
        (current, conflict, fail, node.is_some())
    };
    state.changed.send_modify(|_| {});
    if fail {
        let body = status(500, "InternalError", "the stub fails this patch on purpose");
        respond(stream, "500 Internal Server Error", &body).await;
        return;
    }
    if !exists {
        let body = status(404, "NotFound", &format!("nodes \"{name}\" not found"));
        respond(stream, "404 Not Found", &body).await;
        return;
    }
    if conflict
        || patch["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|want| want != current)
    {
        let body = status(409, "Conflict", "the object has been modified");
        respond(stream, "409 Conflict", &body).await;
        return;
    }
    if request.content_type != "application/merge-patch+json" {
        let body = status(415, "UnsupportedMediaType", "the stub only merges");
        respond(stream, "415 Unsupported Media Type", &body).await;
        return;
    }
    let node = modify(state, name, |node| merge(node, &patch));
    respond(stream, "200 OK", &node).await;
}

/// GET, POST (create) and PUT (replace, with the resourceVersion
/// precondition the API server applies to updates) of Leases.
async fn lease(stream: &mut TcpStream, state: &State, method: &str, path: &str, body: &[u8]) {
    let rest = path.strip_prefix(LEASES).unwrap_or_default();
    let mut parts = rest.split('/');
    let (namespace, _, name) = (parts.next(), parts.next(), parts.next());
    let namespace = namespace.unwrap_or_default().to_string();
    let find = |inner: &Inner, name: &str| {
        inner
            .leases
            .iter()
            .position(|l| l["metadata"]["name"] == name && l["metadata"]["namespace"] == namespace)
    };
    let sent = serde_json::from_slice::<Value>(body).ok();
    let (code, answer) = {
        let mut inner = state.inner.lock().expect("stub");
        match (method, name, sent) {
            ("GET", Some(name), _) => match find(&inner, name) {
                Some(at) => ("200 OK", inner.leases[at].clone()),
                None => (
                    "404 Not Found",
                    status(404, "NotFound", &format!("leases \"{name}\" not found")),
                ),
            },
            ("POST", None, Some(mut lease)) => {
                let name = lease["metadata"]["name"].as_str().unwrap_or("").to_string();
                if name.is_empty() {
                    (
                        "422 Unprocessable Entity",
                        status(422, "Invalid", "metadata.name is required"),
                    )
                } else if find(&inner, &name).is_some() {
                    (
                        "409 Conflict",
                        status(
                            409,
                            "AlreadyExists",
                            &format!("leases \"{name}\" already exists"),
                        ),
                    )
                } else {
                    let version = inner.bump();
                    lease["metadata"]["namespace"] = Value::String(namespace.clone());
                    lease["metadata"]["resourceVersion"] = Value::String(version.to_string());
                    inner.leases.push(lease.clone());
                    inner.lease_writes.push(lease.clone());
                    ("201 Created", lease)
                }
            }
            ("PUT", Some(name), Some(mut lease)) => match find(&inner, name) {
                None => (
                    "404 Not Found",
                    status(404, "NotFound", &format!("leases \"{name}\" not found")),
                ),
                Some(at) => {
                    let current = inner.leases[at]["metadata"]["resourceVersion"].clone();
                    if lease["metadata"]["resourceVersion"] != current {
                        (
                            "409 Conflict",
                            status(409, "Conflict", "the object has been modified"),
                        )
                    } else {
                        let version = inner.bump();
                        lease["metadata"]["namespace"] = Value::String(namespace.clone());
                        lease["metadata"]["resourceVersion"] = Value::String(version.to_string());
                        inner.leases[at] = lease.clone();
                        inner.lease_writes.push(lease.clone());
                        ("200 OK", lease)
                    }
                }
            },
            _ => bad_request("the stub serves GET, POST and PUT of leases"),
        }
    };
    state.changed.send_modify(|_| {});
    respond(stream, code, &answer).await;
}

/// What a watch filtered by `selector` reports of `change`, as the API
/// server does: an object that comes to match is ADDED, one that stops
/// matching (or is deleted) is DELETED, one that matches before and after
/// is MODIFIED.
fn event_for(change: &Change, selector: &[FieldTerm]) -> Option<String> {
    let before = change.before.as_ref().filter(|o| matches(o, selector));
    let after = change.after.as_ref().filter(|o| matches(o, selector));
    let (kind, object) = match (before, after) {
        (None, Some(a)) => ("ADDED", a),
        (Some(_), Some(a)) => ("MODIFIED", a),
        (Some(b), None) => ("DELETED", change.after.as_ref().unwrap_or(b)),
        (None, None) => return None,
    };
    Some(json!({ "type": kind, "object": object }).to_string())
}

/// A chunked stream of `initial`, then the changes of `kind` after `from`
/// that `selector` lets through, then live ones, until the client goes
/// away or the stub stops.
async fn watch(
    mut stream: TcpStream,
    state: Arc<State>,
    stop: CancellationToken,
    kind: Kind,
    selector: Vec<FieldTerm>,
    from: u64,
    initial: Vec<String>,
) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut changed = state.changed.subscribe();
    let mut ends = state.ends.subscribe();
    let compacted = state.inner.lock().expect("stub").compacted;
    if kind == Kind::Node && from < compacted {
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
        let (failing, pending): (bool, Vec<(u64, Option<String>)>) = {
            let inner = state.inner.lock().expect("stub");
            let pending = inner
                .changes
                .iter()
                .filter(|c| c.kind == kind && c.version > sent)
                .map(|c| (c.version, event_for(c, &selector)))
                .collect();
            (inner.failing, pending)
        };
        if failing || ends.has_changed().unwrap_or(true) {
            let _ = stream.write_all(b"0\r\n\r\n").await;
            return;
        }
        for (version, event) in pending {
            if let Some(event) = event {
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
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
