//! The registration life cycle as a sans-IO state machine:
//! `(state, event, now) -> actions`.
//!
//! [`Machine`] decides when a resource is served, when its server is
//! replaced or stopped, and when it registers with the kubelet. It does no
//! I/O and reads no clock: the shell (the daemon crate's `daemon` module) feeds it events
//! with the current instant and executes the [`Action`]s it returns. Every
//! timer is an absolute deadline kept in the state ([`Machine::next_deadline`]),
//! so no event can postpone another's timer.
//!
//! # How a kubelet restart is told apart
//!
//! A real kubelet, on start, deletes every non-directory file in the
//! device-plugin directory but its checkpoint (so the stale `kubelet.sock` a
//! crash left and every plugin socket), then binds a fresh `kubelet.sock`.
//! Its predecessor's ListAndWatch streams ended when it died. Each of these
//! is a sign of the same restart; reacting to each separately registered
//! every resource twice, and a kubelet of 1.25–1.35 then tears down the newer
//! client when the older stream ends.
//!
//! The machine therefore reacts to *observations* rather than to the signs:
//! the shell reports what the directory holds now ([`Event::Observed`]: the
//! identity of `kubelet.sock` and which of our sockets are still in place),
//! before every event it feeds, so a late or duplicated inotify event changes
//! nothing. A resource is registered when its registration key, (kubelet
//! identity, server, stream epoch), differs from the one the kubelet last
//! accepted: a new kubelet, a replaced server or a confirmed stream loss
//! each change the key once, however many signs announced them.
//!
//! # A deleted socket
//!
//! The deletion of a plugin's own socket file is ambiguous on its own: a
//! restarting kubelet deletes it and then binds a new `kubelet.sock`, but
//! anyone else deleting it leaves the kubelet running with its connection
//! (and ListAndWatch stream) to the plugin alive: a Unix connection does
//! not depend on the file it was dialled through. The kubelet's own code
//! (v1.32 `pkg/kubelet/cm/devicemanager/plugin/v1beta1`) decides the rule:
//! its registration server keys clients by resource name only
//! (`handler.go`: `registerClient`, `deregisterClient`), and when a stream
//! ends `runClient` disconnects whichever client the map holds *now*, so a
//! second Register followed by the end of the first stream disconnects the
//! new client, and `PluginDisconnected` marks every device of the resource
//! Unhealthy (allocatable 0) until yet another registration.
//!
//! So a deleted socket is served again at once, and nothing else changes:
//! the new server listens at the path (for the next Register, the kubelet's
//! or ours), the old one is *retired*, not stopped: it keeps serving the
//! kubelet's connection until that stream ends, and is stopped once it has
//! no stream, no Register is in flight (one in flight may be dialling it)
//! and no dial-back is awaited: the kubelet dials the plugin from a
//! goroutine after answering Register, so for up to
//! [`Timings::stream_grace`] after an answer its connection may be to a
//! server whose socket was deleted since. A registration whose stream has
//! not opened by then is a lost stream (the kubelet's dial failed, and it
//! disconnected the plugin). A registration is keyed by (kubelet, stream
//! epoch), not by server, so the replacement registers nothing. Only a
//! real restart sign registers: a different `kubelet.sock`, or a stream
//! loss confirmed after [`Timings::stream_grace`].
//!
//! The shell closes the last gap: a Register names the kubelet it is meant
//! for ([`Action::Register`]'s `kubelet`), and the shell checks, after
//! connecting and before sending anything, that `kubelet.sock` is still
//! that file. A call that would reach a kubelet bound after the
//! observation sends nothing and fails; the machine registers with the new
//! kubelet once it observes it, so one restart is one Register.
//!
//! # Invariants
//!
//! Checked after every step by the simulation test (`lifecycle::sim`), over
//! thousands of random interleavings of kubelet crashes and restarts (0–10 s
//! down, stale sockets, sockets deleted in any order), plugin sockets
//! deleted, streams dropped, Register failing, hanging or answering late,
//! sockets that cannot be bound, reloads, health events and SIGTERM:
//!
//! 1. **One registration per cause.** Per kubelet instance, a resource has
//!    at most one Register accepted, plus one per later cause that needs
//!    another (its stream dropped by the kubelet, the resource removed and
//!    added back, its socket failing to bind). A deleted socket is no
//!    cause, whatever the order of a restart's signs and of pending retries.
//! 2. **A deleted socket under a live kubelet changes nothing the kubelet
//!    sees**: no Register, and no stream of the resource ends.
//! 3. **At most one Register in flight per resource**, never one aimed
//!    at a kubelet the machine no longer sees, and none delivered to a
//!    kubelet other than the one it was meant for.
//! 4. **No server left running without a purpose.** A resource has one
//!    server at its socket path, plus retired ones only while they carry a
//!    stream, a Register is in flight, or a dial-back is awaited after an
//!    answer (at most the stream grace); a removed resource's servers are
//!    stopped, which closes their connections and ends their streams.
//! 5. **Registered within a bound.** Once a kubelet accepts connections
//!    and nothing else goes wrong, every resource has a live stream from it
//!    within [`Timings::stream_grace`] plus the registration back-off cap.
//! 6. **SIGTERM removes every socket**: after [`Event::Shutdown`] no server
//!    is left live.
//! 7. **The running resource set is the last one applied**, plus resources
//!    draining their removal.
//! 8. **No timer is postponed** by an event that does not concern it.
//! 9. **Never stuck.** A resource without a stream from the kubelet that
//!    accepts connections has a Register in flight or a timer due, also
//!    when the kubelet opened and lost the stream before Register's answer
//!    arrived (its handler dials the plugin from a goroutine).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::ResourceName;

/// Identity of the `kubelet.sock` file: device, inode and change time. A
/// restarted kubelet's socket is a new file; the inode number alone may be
/// reused, the change time (nanoseconds) is not.
pub type KubeletId = (u64, u64, i64, i64);

/// One bound plugin socket, unique for the life of the process.
pub type ServerId = u64;

/// One Register call, unique for the life of the process.
pub type AttemptId = u64;

/// Register retries: fast at first, because a Register that reaches a new
/// `kubelet.sock` between its bind and its listen is refused and must not
/// wait long (the issue measured ~800 ms with a 100 ms first step).
pub const REGISTER_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(10), Duration::from_secs(10));
/// Retries of a socket that cannot be bound (fd exhaustion, a directory at
/// its path, the directory gone).
pub const SERVE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
/// The longest wait before registering again after a stream loss, when the
/// kubelet keeps closing the stream (a message it refuses, for instance).
pub const MAX_STREAM_LOSS_WAIT: Duration = Duration::from_secs(300);
/// A stream that stayed open this long was healthy: its loss starts the
/// stream back-off over.
pub const STABLE_STREAM: Duration = Duration::from_secs(30);
/// How long a removed resource keeps serving its empty list before it
/// stops, so the kubelet reads that its devices are gone.
pub const DRAIN: Duration = Duration::from_secs(1);

/// The machine's waits that tests may shorten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a registered resource may have no ListAndWatch stream before
    /// it registers again: long enough for a kubelet restart's own signs to
    /// arrive first.
    pub stream_grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            stream_grace: Duration::from_secs(2),
        }
    }
}

/// Why a Register call failed, as the shell words it (the kubelet's
/// answer, the dial, or `kubelet.sock` replaced while connecting): the
/// machine only reports it and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RegisterFailed(pub String);

impl From<&str> for RegisterFailed {
    fn from(reason: &str) -> Self {
        RegisterFailed(reason.to_owned())
    }
}

/// What happens to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// What the device-plugin directory holds now: `kubelet.sock`'s identity
    /// (`None`: absent) and the servers whose socket file is still the one
    /// they bound.
    Observed {
        kubelet: Option<KubeletId>,
        sockets: BTreeSet<ServerId>,
    },
    /// The resources to serve after a successful load (start or reload). A
    /// refused load is not fed: the running set stays.
    Apply(BTreeSet<ResourceName>),
    /// A [`Action::Serve`] could not bind its socket.
    ServeFailed { server: ServerId, error: String },
    /// The kubelet opened a ListAndWatch stream on `server`.
    StreamOpened { server: ServerId },
    /// A ListAndWatch stream on `server` ended.
    StreamClosed { server: ServerId },
    /// A Register call ended.
    Registered {
        attempt: AttemptId,
        result: Result<(), RegisterFailed>,
    },
    /// Nothing happened but time passed: due timers fire.
    Tick,
    /// SIGTERM: stop everything.
    Shutdown,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bind a fresh socket for `resource` and serve it as `server` (the
    /// previous server of the resource was stopped by an earlier action).
    /// On failure, feed [`Event::ServeFailed`].
    Serve {
        resource: ResourceName,
        server: ServerId,
    },
    /// Stop `server`: close its connections, which ends its streams, and
    /// remove its socket file if it is still the one it bound.
    Stop {
        resource: ResourceName,
        server: ServerId,
    },
    /// Advertise an empty list on `resource`: it is going away.
    Drain { resource: ResourceName },
    /// Call Register for `resource` on the kubelet `kubelet` (the shell
    /// dials `kubelet.sock`) and feed [`Event::Registered`] when it ends.
    Register {
        resource: ResourceName,
        attempt: AttemptId,
        kubelet: KubeletId,
    },
    /// Abandon a Register call in flight: its answer no longer matters.
    CancelRegister { attempt: AttemptId },
    /// Something an operator should know: the shell logs it and counts it.
    Notify(Notice),
}

/// Outcomes worth a log line and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A different `kubelet.sock` appeared after one had been seen.
    KubeletRestarted,
    Registered {
        resource: ResourceName,
    },
    RegisterFailed {
        resource: ResourceName,
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    ServeFailed {
        resource: ResourceName,
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    /// The resource's socket was deleted by someone else: served again,
    /// the kubelet's connection kept, nothing registered.
    SocketReplaced {
        resource: ResourceName,
    },
    /// The kubelet closed the resource's last stream and no restart
    /// explained it; `in_a_row` counts losses of streams that lived less than
    /// [`STABLE_STREAM`].
    StreamLost {
        resource: ResourceName,
        in_a_row: u32,
        register_in: Duration,
    },
    /// A resource's last stream stayed lost: it registers again now.
    StreamLossConfirmed {
        resource: ResourceName,
    },
}

/// What a registration was for: the kubelet, and the stream epoch (bumped
/// by each confirmed stream loss and each return from a drain). The server
/// is not part of it: a Register names the socket *path*, and which server
/// listens there changes nothing for a kubelet whose connection is alive
/// (see "A deleted socket" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    kubelet: KubeletId,
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Up(ServerId),
    /// Binding failed; try again at `at`.
    RetryAt {
        at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Resource {
    server: Server,
    /// Earlier servers of the resource whose socket file was deleted while
    /// the kubelet's connection to them was alive (or may be opening: a
    /// Register was in flight), with their open streams. They keep serving
    /// that connection, so nothing the kubelet holds changes; each stops
    /// once it has no stream and no Register is in flight.
    retired: BTreeMap<ServerId, u32>,
    /// Binds that failed in a row (reset once the kubelet accepts a
    /// registration, which proves the socket works).
    serve_failures: u32,
    /// Streams open on the current server.
    streams: u32,
    /// When the current server's oldest live stream opened.
    stream_opened_at: Option<Instant>,
    epoch: u64,
    /// The last stream closed: unless one opens or the key changes by
    /// then, the loss is confirmed at this deadline.
    loss_deadline: Option<Instant>,
    /// Losses of short-lived streams in a row (the stream back-off).
    losses_in_a_row: u32,
    registered: Option<Key>,
    in_flight: Option<(AttemptId, Key)>,
    /// The in-flight registration's stream opened and closed before its
    /// answer came (a kubelet dials back at once): a loss once it is
    /// registered.
    lost_while_registering: bool,
    register_failures: u32,
    /// Not before: the back-off after a failed Register.
    register_retry_at: Option<Instant>,
    /// Removed from the plan: stops at this deadline.
    draining_until: Option<Instant>,
    /// Registered, and no stream opened since the answer: the kubelet dials
    /// from a goroutine after answering, maybe through a socket deleted
    /// since, so retired servers are kept until a stream opens; if none has
    /// by this deadline, the registration is a lost stream.
    dial_deadline: Option<Instant>,
}

impl Resource {
    fn new(server: Server) -> Self {
        Resource {
            server,
            retired: BTreeMap::new(),
            serve_failures: 0,
            streams: 0,
            stream_opened_at: None,
            epoch: 0,
            loss_deadline: None,
            losses_in_a_row: 0,
            registered: None,
            in_flight: None,
            lost_while_registering: false,
            register_failures: 0,
            register_retry_at: None,
            draining_until: None,
            dial_deadline: None,
        }
    }

    fn server_id(&self) -> Option<ServerId> {
        match self.server {
            Server::Up(id) => Some(id),
            Server::RetryAt { .. } => None,
        }
    }

    /// Streams open on any of the resource's servers, retired ones included.
    fn all_streams(&self) -> u32 {
        self.retired
            .values()
            .fold(self.streams, |sum, n| sum.saturating_add(*n))
    }

    fn owns(&self, server: ServerId) -> bool {
        self.server_id() == Some(server) || self.retired.contains_key(&server)
    }

    /// Stops every retired server that no connection can need any more: no
    /// stream on it, no Register in flight and no dial awaited after one
    /// (the kubelet may be dialling).
    fn reap_retired(&mut self, name: &ResourceName, out: &mut Vec<Action>) {
        if self.in_flight.is_some() || self.dial_deadline.is_some() {
            return;
        }
        self.retired.retain(|server, streams| {
            if *streams > 0 {
                return true;
            }
            out.push(Action::Stop {
                resource: name.clone(),
                server: *server,
            });
            false
        });
    }
}

/// The life-cycle state of every resource. See the module docs.
#[derive(Debug)]
pub struct Machine {
    timings: Timings,
    kubelet: Option<KubeletId>,
    /// Whether any `kubelet.sock` was seen: the next different one is a restart.
    seen_kubelet: bool,
    resources: BTreeMap<ResourceName, Resource>,
    next_id: u64,
    stopped: bool,
}

impl Machine {
    pub fn new(timings: Timings) -> Self {
        Machine {
            timings,
            kubelet: None,
            seen_kubelet: false,
            resources: BTreeMap::new(),
            next_id: 0,
            stopped: false,
        }
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match event {
            Event::Observed { kubelet, sockets } => self.on_observed(kubelet, &sockets, &mut out),
            Event::Apply(names) => self.on_apply(names, now, &mut out),
            Event::ServeFailed { server, error } => {
                self.on_serve_failed(server, error, now, &mut out)
            }
            Event::StreamOpened { server } => {
                if let Some(r) = self.by_server(server) {
                    match r.retired.get_mut(&server) {
                        Some(streams) => *streams += 1,
                        None => r.streams += 1,
                    }
                    r.stream_opened_at.get_or_insert(now);
                    r.loss_deadline = None;
                    r.dial_deadline = None;
                }
            }
            Event::StreamClosed { server } => self.on_stream_closed(server, now, &mut out),
            Event::Registered { attempt, result } => {
                self.on_registered(attempt, result, now, &mut out)
            }
            Event::Tick => {}
            Event::Shutdown => {
                self.shutdown(&mut out);
                return out;
            }
        }
        self.fire_timers(now, &mut out);
        self.register_due(now, &mut out);
        // Last, once every stream and Register of this event is accounted for.
        for (name, r) in &mut self.resources {
            r.reap_retired(name, &mut out);
        }
        out
    }

    /// The earliest deadline of any timer; feed [`Event::Tick`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for r in self.resources.values() {
            consider(r.loss_deadline);
            consider(r.dial_deadline);
            consider(r.draining_until);
            if let Server::RetryAt { at } = r.server {
                consider(Some(at));
            }
            // A back-off only matters while a registration is wanted: a
            // past one that cannot fire (no socket bound yet, a loss still
            // in its grace) would wake the shell in a busy loop.
            if self.wants_register(r) {
                consider(r.register_retry_at);
            }
        }
        next
    }

    /// Live servers (those of draining resources and retired ones
    /// included) and their resources.
    pub fn servers(&self) -> impl Iterator<Item = (&ResourceName, ServerId)> {
        self.resources.iter().flat_map(|(name, r)| {
            r.server_id()
                .into_iter()
                .chain(r.retired.keys().copied())
                .map(move |id| (name, id))
        })
    }

    /// The resources of the last applied set (not those draining).
    pub fn planned(&self) -> BTreeSet<ResourceName> {
        self.resources
            .iter()
            .filter(|(_, r)| r.draining_until.is_none())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `name` is still the machine's: planned, draining, or waiting
    /// to bind its socket again.
    pub fn knows(&self, name: &ResourceName) -> bool {
        self.resources.contains_key(name)
    }

    /// The kubelet the machine sees.
    pub fn kubelet(&self) -> Option<KubeletId> {
        self.kubelet
    }

    /// Every planned resource is registered with the kubelet it sees, on its
    /// current server (readiness).
    pub fn all_registered(&self) -> bool {
        self.resources
            .values()
            .filter(|r| r.draining_until.is_none())
            .all(|r| self.current_key(r).is_some_and(|k| r.registered == Some(k)))
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn current_key(&self, r: &Resource) -> Option<Key> {
        Some(Key {
            kubelet: self.kubelet?,
            epoch: r.epoch,
        })
    }

    /// The resource needs a Register (now, or once its back-off ends): its
    /// registration is not for the kubelet and epoch of now, none is in
    /// flight, a socket is bound to point the kubelet at, and no stream loss
    /// is still in its grace.
    fn wants_register(&self, r: &Resource) -> bool {
        let Some(key) = self.current_key(r) else {
            return false;
        };
        r.registered != Some(key)
            && r.server_id().is_some()
            && r.in_flight.is_none()
            && r.draining_until.is_none()
            && r.loss_deadline.is_none()
    }

    fn by_server(&mut self, server: ServerId) -> Option<&mut Resource> {
        self.resources.values_mut().find(|r| r.owns(server))
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn on_observed(
        &mut self,
        kubelet: Option<KubeletId>,
        sockets: &BTreeSet<ServerId>,
        out: &mut Vec<Action>,
    ) {
        // Our sockets first: a new kubelet must find them in place when it
        // dials back after Register.
        let gone: Vec<ResourceName> = self
            .resources
            .iter()
            .filter(|(_, r)| r.server_id().is_some_and(|id| !sockets.contains(&id)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.replace_server(&name, out);
            if kubelet.is_some() && kubelet == self.kubelet {
                out.push(Action::Notify(Notice::SocketReplaced { resource: name }));
            }
        }
        if kubelet == self.kubelet {
            return;
        }
        if kubelet.is_some() {
            if self.seen_kubelet {
                out.push(Action::Notify(Notice::KubeletRestarted));
            }
            self.seen_kubelet = true;
        }
        self.kubelet = kubelet;
        for r in self.resources.values_mut() {
            // A Register aimed at the previous kubelet no longer matters, and
            // a new kubelet is tried at once, whatever the back-off was.
            if let Some((attempt, _)) = r.in_flight.take() {
                out.push(Action::CancelRegister { attempt });
            }
            r.register_failures = 0;
            r.register_retry_at = None;
            r.loss_deadline = None;
            r.dial_deadline = None;
            // Streams lost to a kubelet restart say nothing about ours.
            r.losses_in_a_row = 0;
        }
    }

    /// The resource's socket file is gone: binds a new server at the path.
    /// The old one keeps serving a connection that is (or may be becoming)
    /// the kubelet's, so nothing the kubelet holds changes and nothing is
    /// registered; it stops once no connection can need it. See "A deleted
    /// socket" in the module docs.
    fn replace_server(&mut self, name: &ResourceName, out: &mut Vec<Action>) {
        let id = self.new_id();
        let Some(r) = self.resources.get_mut(name) else {
            return;
        };
        if let Some(old) = r.server_id() {
            r.retired.insert(old, r.streams);
        }
        r.server = Server::Up(id);
        r.streams = 0;
        out.push(Action::Serve {
            resource: name.clone(),
            server: id,
        });
    }

    fn on_apply(&mut self, names: BTreeSet<ResourceName>, now: Instant, out: &mut Vec<Action>) {
        for (name, r) in &mut self.resources {
            if !names.contains(name) && r.draining_until.is_none() {
                r.draining_until = Some(now + DRAIN);
                r.dial_deadline = None;
                if let Some((attempt, _)) = r.in_flight.take() {
                    out.push(Action::CancelRegister { attempt });
                }
                out.push(Action::Drain {
                    resource: name.clone(),
                });
            }
        }
        for name in names {
            match self.resources.get_mut(&name) {
                // Back before its drain ended: it keeps its server, and its
                // registration is renewed (the kubelet saw an empty list).
                Some(r) if r.draining_until.is_some() => {
                    r.draining_until = None;
                    r.epoch += 1;
                }
                Some(_) => {}
                None => {
                    let id = self.new_id();
                    self.resources
                        .insert(name.clone(), Resource::new(Server::Up(id)));
                    out.push(Action::Serve {
                        resource: name,
                        server: id,
                    });
                }
            }
        }
    }

    fn on_serve_failed(
        &mut self,
        server: ServerId,
        error: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((name, r)) = self
            .resources
            .iter_mut()
            .find(|(_, r)| r.server_id() == Some(server))
        else {
            return;
        };
        r.serve_failures = r.serve_failures.saturating_add(1);
        let failures = r.serve_failures;
        let retry_in = delay_after(SERVE_BACKOFF, failures);
        r.server = Server::RetryAt { at: now + retry_in };
        if let Some((attempt, _)) = r.in_flight.take() {
            out.push(Action::CancelRegister { attempt });
        }
        // The failed server never listened: it had no stream. A loss
        // pending on a retired server's stream stays pending.
        r.streams = 0;
        out.push(Action::Notify(Notice::ServeFailed {
            resource: name.clone(),
            error,
            failures,
            retry_in,
        }));
    }

    fn on_stream_closed(&mut self, server: ServerId, now: Instant, out: &mut Vec<Action>) {
        let grace = self.timings.stream_grace;
        let current_kubelet = self.kubelet;
        let Some((name, r)) = self.resources.iter_mut().find(|(_, r)| r.owns(server)) else {
            return; // a stopped server's stream: nothing to do
        };
        match r.retired.get_mut(&server) {
            Some(streams) => *streams = streams.saturating_sub(1),
            None => r.streams = r.streams.saturating_sub(1),
        }
        if r.all_streams() > 0 {
            return;
        }
        let lived = r
            .stream_opened_at
            .take()
            .map(|at| now.saturating_duration_since(at));
        if lived.is_some_and(|l| l >= STABLE_STREAM) {
            r.losses_in_a_row = 0;
        }
        // Only a registered resource's loss needs a new registration; one
        // still registering will get its stream from that.
        let registered = current_kubelet.is_some()
            && r.registered
                .is_some_and(|k| Some(k.kubelet) == current_kubelet && k.epoch == r.epoch);
        if !registered && r.draining_until.is_none() && r.in_flight.is_some() {
            r.lost_while_registering = true;
            return;
        }
        if !registered || r.draining_until.is_some() {
            return;
        }
        stream_lost(name, r, grace, now, out);
    }

    fn on_registered(
        &mut self,
        attempt: AttemptId,
        result: Result<(), RegisterFailed>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((name, r)) = self
            .resources
            .iter_mut()
            .find(|(_, r)| r.in_flight.is_some_and(|(a, _)| a == attempt))
        else {
            return; // cancelled or superseded
        };
        let Some((_, key)) = r.in_flight.take() else {
            return;
        };
        match result {
            Ok(()) => {
                r.registered = Some(key);
                r.register_failures = 0;
                r.serve_failures = 0;
                r.register_retry_at = None;
                out.push(Action::Notify(Notice::Registered {
                    resource: name.clone(),
                }));
                let lost = std::mem::take(&mut r.lost_while_registering);
                if r.all_streams() == 0 {
                    if lost {
                        stream_lost(name, r, self.timings.stream_grace, now, out);
                    } else {
                        r.dial_deadline = Some(now + self.timings.stream_grace);
                    }
                }
            }
            Err(error) => {
                r.register_failures = r.register_failures.saturating_add(1);
                let retry_in = delay_after(REGISTER_BACKOFF, r.register_failures);
                r.register_retry_at = Some(now + retry_in);
                out.push(Action::Notify(Notice::RegisterFailed {
                    resource: name.clone(),
                    error: error.0,
                    failures: r.register_failures,
                    retry_in,
                }));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut rebind = Vec::new();
        let mut drained = Vec::new();
        for (name, r) in &mut self.resources {
            if r.draining_until.is_some_and(|at| at <= now) {
                drained.push(name.clone());
                continue;
            }
            if r.dial_deadline.is_some_and(|at| at <= now) {
                r.dial_deadline = None;
                if r.all_streams() == 0 && r.in_flight.is_none() {
                    stream_lost(name, r, self.timings.stream_grace, now, out);
                }
            }
            if r.loss_deadline.is_some_and(|at| at <= now) {
                r.loss_deadline = None;
                if r.all_streams() == 0 {
                    r.epoch += 1;
                    out.push(Action::Notify(Notice::StreamLossConfirmed {
                        resource: name.clone(),
                    }));
                }
            }
            if let Server::RetryAt { at } = r.server
                && at <= now
            {
                rebind.push(name.clone());
            }
        }
        for name in drained {
            if let Some(r) = self.resources.remove(&name) {
                stop_all(&name, &r, out);
            }
        }
        for name in rebind {
            let id = self.new_id();
            if let Some(r) = self.resources.get_mut(&name) {
                r.server = Server::Up(id);
                out.push(Action::Serve {
                    resource: name,
                    server: id,
                });
            }
        }
    }

    fn register_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(kubelet) = self.kubelet else {
            return;
        };
        let mut due = Vec::new();
        for (name, r) in &self.resources {
            let key = Key {
                kubelet,
                epoch: r.epoch,
            };
            if self.wants_register(r) && r.register_retry_at.is_none_or(|at| at <= now) {
                due.push((name.clone(), key));
            }
        }
        for (name, key) in due {
            let attempt = self.new_id();
            if let Some(r) = self.resources.get_mut(&name) {
                r.in_flight = Some((attempt, key));
                r.lost_while_registering = false;
                r.register_retry_at = None;
            }
            out.push(Action::Register {
                resource: name,
                attempt,
                kubelet,
            });
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        self.stopped = true;
        for (name, r) in std::mem::take(&mut self.resources) {
            if let Some((attempt, _)) = r.in_flight {
                out.push(Action::CancelRegister { attempt });
            }
            stop_all(&name, &r, out);
        }
    }
}

/// Stops every live server of a resource that goes away.
fn stop_all(name: &ResourceName, r: &Resource, out: &mut Vec<Action>) {
    for server in r.server_id().into_iter().chain(r.retired.keys().copied()) {
        out.push(Action::Stop {
            resource: name.clone(),
            server,
        });
    }
}

/// The back-off delay after `failures` failures in a row (the first failure
/// waits `backoff`'s first step).
fn delay_after(backoff: Backoff, failures: u32) -> Duration {
    let mut b = backoff;
    for _ in 1..failures.min(32) {
        b.grow();
    }
    b.current()
}

/// A registered resource's last stream is gone: unless one opens first, it
/// registers again after the stream back-off.
fn stream_lost(
    name: &ResourceName,
    r: &mut Resource,
    grace: Duration,
    now: Instant,
    out: &mut Vec<Action>,
) {
    r.losses_in_a_row = r.losses_in_a_row.saturating_add(1);
    let wait = stream_loss_wait(grace, r.losses_in_a_row);
    r.loss_deadline = Some(now + wait);
    out.push(Action::Notify(Notice::StreamLost {
        resource: name.clone(),
        in_a_row: r.losses_in_a_row,
        register_in: wait,
    }));
}

/// How long to wait for a new stream before registering again: the grace
/// for the first loss, doubling for each further short-lived stream.
fn stream_loss_wait(grace: Duration, in_a_row: u32) -> Duration {
    delay_after(
        Backoff::new(grace, MAX_STREAM_LOSS_WAIT.max(grace)),
        in_a_row,
    )
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
