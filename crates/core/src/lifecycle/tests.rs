//! One test per transition, with an injected clock.

use super::*;

const A: KubeletId = (1, 10, 100, 0);
const B: KubeletId = (1, 11, 200, 0);

fn name(s: &str) -> ResourceName {
    ResourceName::parse(s).expect("resource name")
}

fn names(list: &[&str]) -> BTreeSet<ResourceName> {
    list.iter().map(|s| name(s)).collect()
}

/// A machine with a clock and the shell's bookkeeping a test needs.
struct Rig {
    machine: Machine,
    now: Instant,
    /// Live servers by resource, as the shell would hold them.
    servers: BTreeMap<ResourceName, ServerId>,
}

impl Rig {
    fn new() -> Self {
        Rig {
            machine: Machine::new(Timings::default()),
            now: Instant::now(),
            servers: BTreeMap::new(),
        }
    }

    /// Feeds an event and applies Serve/Stop to the rig's server table.
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let actions = self.machine.handle(event, self.now);
        for action in &actions {
            match action {
                Action::Serve { resource, server } => {
                    self.servers.insert(resource.clone(), *server);
                }
                Action::Stop { resource, server } if self.servers.get(resource) == Some(server) => {
                    self.servers.remove(resource);
                }
                _ => {}
            }
        }
        actions
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.feed(Event::Tick)
    }

    fn sockets(&self) -> BTreeSet<ServerId> {
        self.servers.values().copied().collect()
    }

    fn observe(&mut self, kubelet: Option<KubeletId>) -> Vec<Action> {
        let sockets = self.sockets();
        self.feed(Event::Observed { kubelet, sockets })
    }

    fn server(&self, resource: &str) -> ServerId {
        self.servers[&name(resource)]
    }

    /// Serves `resources` with kubelet `A` up and answers every Register OK.
    fn registered(resources: &[&str]) -> Self {
        let mut rig = Rig::new();
        rig.feed(Event::Apply(names(resources)));
        let actions = rig.observe(Some(A));
        rig.accept_all(&actions);
        for r in resources {
            let server = rig.server(r);
            rig.feed(Event::StreamOpened { server });
        }
        assert!(rig.machine.all_registered());
        rig
    }

    fn accept_all(&mut self, actions: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for attempt in attempts(actions) {
            out.extend(self.feed(Event::Registered {
                attempt,
                result: Ok(()),
            }));
        }
        out
    }
}

fn registers(actions: &[Action]) -> Vec<(String, KubeletId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Register {
                resource, kubelet, ..
            } => Some((resource.to_string(), *kubelet)),
            _ => None,
        })
        .collect()
}

fn attempts(actions: &[Action]) -> Vec<AttemptId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Register { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn has_notice(actions: &[Action], pred: impl Fn(&Notice) -> bool) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Notify(n) if pred(n)))
}

#[test]
fn applying_a_plan_serves_each_resource_and_waits_for_a_kubelet() {
    let mut rig = Rig::new();
    let actions = rig.feed(Event::Apply(names(&[
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb",
    ])));
    let served: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Serve { .. }))
        .collect();
    assert_eq!(served.len(), 2);
    assert!(
        registers(&actions).is_empty(),
        "no kubelet yet: {actions:?}"
    );
    assert_eq!(rig.machine.next_deadline(), None, "nothing to wait for");
    assert!(registers(&rig.observe(None)).is_empty());
}

#[test]
fn a_kubelet_appearing_gets_one_register_per_resource_and_repeats_change_nothing() {
    let mut rig = Rig::new();
    rig.feed(Event::Apply(names(&[
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb",
    ])));
    let actions = rig.observe(Some(A));
    assert_eq!(
        registers(&actions),
        [
            ("nvidia.com/gpu".to_string(), A),
            ("nvidia.com/mig-1g.5gb".to_string(), A)
        ]
    );
    assert!(
        !has_notice(&actions, |n| matches!(n, Notice::KubeletRestarted)),
        "the first kubelet is not a restart"
    );
    // The late CREATE of the same socket, while Register is in flight.
    assert!(registers(&rig.observe(Some(A))).is_empty());
    rig.accept_all(&actions);
    assert!(rig.machine.all_registered());
    assert!(registers(&rig.observe(Some(A))).is_empty());
    assert!(registers(&rig.advance(Duration::from_secs(60))).is_empty());
}

#[test]
fn a_failed_register_is_retried_at_an_absolute_deadline_that_other_events_do_not_move() {
    let mut rig = Rig::new();
    rig.feed(Event::Apply(names(&[
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb",
    ])));
    let actions = rig.observe(Some(A));
    let failed = attempts(&actions)[0];
    let other = attempts(&actions)[1];
    let after = rig.feed(Event::Registered {
        attempt: failed,
        result: Err("connection refused".into()),
    });
    assert!(has_notice(&after, |n| matches!(
        n,
        Notice::RegisterFailed { failures: 1, retry_in, .. } if *retry_in == Duration::from_millis(10)
    )));
    let deadline = rig.machine.next_deadline().expect("a retry is armed");
    assert_eq!(deadline, rig.now + Duration::from_millis(10));
    // Unrelated events in between: the other resource registers, time passes.
    rig.now += Duration::from_millis(6);
    rig.feed(Event::Registered {
        attempt: other,
        result: Ok(()),
    });
    rig.feed(Event::StreamOpened {
        server: rig.server("nvidia.com/mig-1g.5gb"),
    });
    assert_eq!(rig.machine.next_deadline(), Some(deadline));
    assert!(registers(&rig.advance(Duration::from_millis(3))).is_empty());
    let retry = rig.advance(Duration::from_millis(1));
    assert_eq!(registers(&retry), [("nvidia.com/gpu".to_string(), A)]);
    // The second failure waits twice as long.
    let after = rig.feed(Event::Registered {
        attempt: attempts(&retry)[0],
        result: Err("refused".into()),
    });
    assert!(has_notice(&after, |n| matches!(
        n,
        Notice::RegisterFailed { failures: 2, retry_in, .. } if *retry_in == Duration::from_millis(20)
    )));
}

#[test]
fn the_backoff_caps_at_ten_seconds() {
    assert_eq!(delay_after(REGISTER_BACKOFF, 1), Duration::from_millis(10));
    assert_eq!(delay_after(REGISTER_BACKOFF, 4), Duration::from_millis(80));
    assert_eq!(delay_after(REGISTER_BACKOFF, 40), Duration::from_secs(10));
    assert_eq!(
        delay_after(REGISTER_BACKOFF, u32::MAX),
        Duration::from_secs(10)
    );
}

/// The real sequence: the kubelet dies (its streams end, `kubelet.sock`
/// stays behind), a new one deletes every socket in any order and binds a
/// fresh `kubelet.sock`. One Register per resource, to the new kubelet.
#[test]
fn a_kubelet_restart_is_one_registration_per_resource_whatever_the_order_of_its_signs() {
    for stale_socket_deleted_first in [true, false] {
        let mut rig = Rig::registered(&["nvidia.com/gpu", "nvidia.com/mig-1g.5gb"]);
        let mut sent = Vec::new();
        for r in ["nvidia.com/gpu", "nvidia.com/mig-1g.5gb"] {
            let server = rig.server(r);
            sent.extend(rig.feed(Event::StreamClosed { server }));
        }
        rig.now += Duration::from_millis(500);
        if stale_socket_deleted_first {
            sent.extend(rig.observe(None));
        }
        // Plugin sockets deleted one at a time.
        for r in ["nvidia.com/gpu", "nvidia.com/mig-1g.5gb"] {
            let server = rig.server(r);
            let sockets: BTreeSet<_> = rig.sockets().into_iter().filter(|s| *s != server).collect();
            let kubelet = rig.machine.kubelet();
            let actions = rig.feed(Event::Observed { kubelet, sockets });
            // A register still aimed at the stale socket is refused there.
            for attempt in attempts(&actions) {
                sent.push(Action::Register {
                    resource: name(r),
                    attempt,
                    kubelet: A,
                });
                rig.feed(Event::Registered {
                    attempt,
                    result: Err("connection refused".into()),
                });
            }
            sent.extend(actions);
        }
        sent.extend(rig.observe(None));
        let restart = rig.observe(Some(B));
        assert!(has_notice(&restart, |n| matches!(
            n,
            Notice::KubeletRestarted
        )));
        assert_eq!(
            registers(&restart),
            [
                ("nvidia.com/gpu".to_string(), B),
                ("nvidia.com/mig-1g.5gb".to_string(), B)
            ],
            "one Register per resource at once (deleted first: {stale_socket_deleted_first})"
        );
        rig.accept_all(&restart);
        for r in ["nvidia.com/gpu", "nvidia.com/mig-1g.5gb"] {
            let server = rig.server(r);
            rig.feed(Event::StreamOpened { server });
        }
        // The stream grace of the crash runs out: nothing more.
        assert!(registers(&rig.advance(Duration::from_secs(10))).is_empty());
        assert!(registers(&rig.observe(Some(B))).is_empty());
        assert!(
            registers(&sent).iter().all(|(_, k)| *k == A),
            "nothing reached the new kubelet before it was seen: {sent:?}"
        );
    }
}

#[test]
fn a_register_in_flight_to_the_old_kubelet_is_cancelled_when_a_new_one_appears() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let server = rig.server("nvidia.com/gpu");
    rig.feed(Event::StreamClosed { server });
    // Five seconds down: the grace runs out and a Register goes to the
    // stale socket, where it hangs.
    let retry = rig.advance(Duration::from_secs(2));
    assert!(has_notice(&retry, |n| matches!(
        n,
        Notice::StreamLossConfirmed { .. }
    )));
    let hanging = attempts(&retry);
    assert_eq!(hanging.len(), 1);
    let restart = rig.observe(Some(B));
    assert!(restart.contains(&Action::CancelRegister {
        attempt: hanging[0]
    }));
    assert_eq!(registers(&restart), [("nvidia.com/gpu".to_string(), B)]);
    // The abandoned call's late answer changes nothing.
    let late = rig.feed(Event::Registered {
        attempt: hanging[0],
        result: Ok(()),
    });
    assert!(late.is_empty(), "{late:?}");
    assert!(!rig.machine.all_registered());
}

/// Issue 23, item 2: someone deletes the socket while the kubelet runs and
/// holds the stream. Registering again ended the old stream, and the
/// kubelet (its `runClient` disconnects whichever client it holds by name)
/// then marked every device Unhealthy. Now: served again at once, the old
/// server keeps the kubelet's connection, nothing is registered.
#[test]
fn a_socket_deleted_under_a_live_kubelet_is_served_again_without_registering() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let old = rig.server("nvidia.com/gpu");
    let actions = rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    let new = rig.server("nvidia.com/gpu");
    assert_ne!(old, new);
    assert!(actions.contains(&Action::Serve {
        resource: name("nvidia.com/gpu"),
        server: new
    }));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Stop { .. })),
        "the old server keeps the kubelet's connection: {actions:?}"
    );
    assert!(has_notice(&actions, |n| matches!(
        n,
        Notice::SocketReplaced { .. }
    )));
    assert!(registers(&actions).is_empty(), "{actions:?}");
    assert!(rig.machine.all_registered());
    assert!(registers(&rig.advance(Duration::from_secs(60))).is_empty());
    // A second deletion retires the new (streamless) server at once.
    let again = rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    assert!(again.contains(&Action::Stop {
        resource: name("nvidia.com/gpu"),
        server: new
    }));
    assert!(registers(&again).is_empty());
    // When the kubelet ends the old stream, the old server stops and it is
    // a loss like any other: registered again after the grace.
    let closed = rig.feed(Event::StreamClosed { server: old });
    assert!(closed.contains(&Action::Stop {
        resource: name("nvidia.com/gpu"),
        server: old
    }));
    assert!(has_notice(&closed, |n| matches!(
        n,
        Notice::StreamLost { .. }
    )));
    let later = rig.advance(Duration::from_secs(2));
    assert_eq!(registers(&later), [("nvidia.com/gpu".to_string(), A)]);
}

/// The kubelet dials the plugin from a goroutine after it answers Register,
/// so just after the answer its connection may be to a server whose socket
/// is then deleted. CI caught it (`restarts::a_deleted_socket_under_a_live_kubelet_changes_nothing_the_kubelet_sees`,
/// the socket deleted 6 ms after the answer): that server was stopped at
/// once, having no stream yet, so the kubelet's ListAndWatch failed and
/// nothing registered again. Now every retired server is kept until the
/// kubelet's stream opens (or the grace after the answer ends).
#[test]
fn a_socket_deleted_between_registers_answer_and_the_kubelets_dial_keeps_the_server_it_dialled() {
    let mut rig = Rig::new();
    rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    let actions = rig.observe(Some(A));
    rig.accept_all(&actions);
    let stops = |actions: &[Action]| -> Vec<ServerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { server, .. } => Some(*server),
                _ => None,
            })
            .collect()
    };
    let dialled = rig.server("nvidia.com/gpu");
    let deleted = rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    assert!(stops(&deleted).is_empty(), "{deleted:?}");
    let replacement = rig.server("nvidia.com/gpu");
    let again = rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    assert!(stops(&again).is_empty(), "{again:?}");
    let current = rig.server("nvidia.com/gpu");
    // The stream opens on the server the kubelet dialled: the streamless
    // replacement stops, the dialled one and the current one stay.
    let opened = rig.feed(Event::StreamOpened { server: dialled });
    assert_eq!(stops(&opened), [replacement], "{opened:?}");
    assert!(registers(&opened).is_empty());
    assert!(rig.machine.all_registered());
    let later = rig.advance(Duration::from_secs(60));
    assert!(registers(&later).is_empty(), "{later:?}");
    assert!(stops(&later).is_empty());
    assert_eq!(rig.server("nvidia.com/gpu"), current);
}

/// A kubelet that answers Register but whose stream never opens (its dial
/// failed) has disconnected the plugin: as for a lost stream, the resource
/// registers again after the grace, and the servers retired meanwhile stop.
#[test]
fn a_registration_whose_stream_never_opens_is_registered_again() {
    let mut rig = Rig::new();
    rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    let actions = rig.observe(Some(A));
    rig.accept_all(&actions);
    let grace = Timings::default().stream_grace;
    let dialled = rig.server("nvidia.com/gpu");
    rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    assert_eq!(rig.machine.next_deadline(), Some(rig.now + grace));
    let early = rig.advance(grace - Duration::from_millis(1));
    assert!(registers(&early).is_empty(), "{early:?}");
    let at_grace = rig.advance(Duration::from_millis(1));
    assert!(at_grace.contains(&Action::Stop {
        resource: name("nvidia.com/gpu"),
        server: dialled
    }));
    assert!(has_notice(&at_grace, |n| matches!(
        n,
        Notice::StreamLost { in_a_row: 1, .. }
    )));
    let again = rig.advance(grace);
    assert_eq!(registers(&again), [("nvidia.com/gpu".to_string(), A)]);
}

/// Issue 23, item 1: a crashed kubelet, a Register retry pending against its
/// stale socket, then the restart's two signs (the sockets deleted while
/// the stale `kubelet.sock` is still seen, then the new `kubelet.sock`):
/// the deletion registers nothing, and the new kubelet gets one Register.
#[test]
fn a_restart_after_downtime_with_a_retry_pending_is_one_registration() {
    let mut rig = Rig::registered(&["nvidia.com/mig-3g.20gb"]);
    let server = rig.server("nvidia.com/mig-3g.20gb");
    // The crash: the stream ends; after the grace, a Register to the stale
    // socket fails and a retry is pending.
    rig.feed(Event::StreamClosed { server });
    let tried = rig.advance(Duration::from_secs(2));
    assert_eq!(registers(&tried).len(), 1);
    let failed = rig.feed(Event::Registered {
        attempt: attempts(&tried)[0],
        result: Err("connection refused".into()),
    });
    assert!(has_notice(&failed, |n| matches!(
        n,
        Notice::RegisterFailed { .. }
    )));
    // The new kubelet's clean-up deletes the socket; kubelet.sock still
    // looks like the stale one.
    let deleted = rig.feed(Event::Observed {
        kubelet: Some(A),
        sockets: BTreeSet::new(),
    });
    assert!(registers(&deleted).is_empty(), "{deleted:?}");
    let mut after_restart = Vec::new();
    // The pending retry may fire before the new kubelet.sock is seen: it is
    // aimed at the stale socket (the shell sends nothing to another one).
    let retry = rig.advance(Duration::from_millis(10));
    assert!(registers(&retry).iter().all(|(_, k)| *k == A));
    after_restart.extend(rig.observe(Some(B)));
    after_restart.extend(rig.advance(Duration::from_secs(30)));
    let to_b: Vec<_> = registers(&after_restart)
        .into_iter()
        .filter(|(_, k)| *k == B)
        .collect();
    assert_eq!(to_b, [("nvidia.com/mig-3g.20gb".to_string(), B)]);
}

#[test]
fn a_dropped_stream_alone_registers_again_after_the_grace() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let server = rig.server("nvidia.com/gpu");
    let lost = rig.feed(Event::StreamClosed { server });
    assert!(has_notice(&lost, |n| matches!(
        n,
        Notice::StreamLost { in_a_row: 1, .. }
    )));
    assert!(registers(&rig.advance(Duration::from_millis(1999))).is_empty());
    let again = rig.advance(Duration::from_millis(1));
    assert_eq!(registers(&again), [("nvidia.com/gpu".to_string(), A)]);
}

#[test]
fn a_stream_back_within_the_grace_needs_no_registration() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let server = rig.server("nvidia.com/gpu");
    rig.feed(Event::StreamClosed { server });
    rig.now += Duration::from_secs(1);
    rig.feed(Event::StreamOpened { server });
    assert_eq!(rig.machine.next_deadline(), None);
    assert!(registers(&rig.advance(Duration::from_secs(10))).is_empty());
}

/// A real kubelet opens ListAndWatch as soon as it has taken a
/// registration, before the plugin has read Register's answer; a stream
/// that opens and closes in that window used to be forgotten, and the
/// resource stayed registered with no stream for ever (the end-to-end
/// stream test hung on a loaded machine).
#[test]
fn a_stream_lost_before_the_register_answer_arrives_is_still_a_loss() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let server = rig.server("nvidia.com/gpu");
    rig.feed(Event::StreamClosed { server });
    let again = rig.advance(Duration::from_secs(2));
    assert_eq!(registers(&again), [("nvidia.com/gpu".to_string(), A)]);
    // The kubelet took it, opened a stream and closed it again; then the
    // answer to Register arrives.
    rig.feed(Event::StreamOpened { server });
    rig.feed(Event::StreamClosed { server });
    let answered = rig.accept_all(&again);
    assert!(
        has_notice(&answered, |n| matches!(
            n,
            Notice::StreamLost { in_a_row: 2, .. }
        )),
        "{answered:?}"
    );
    let wait = stream_loss_wait(Timings::default().stream_grace, 2);
    assert_eq!(
        registers(&rig.advance(wait)),
        [("nvidia.com/gpu".to_string(), A)]
    );
}

/// A kubelet that closes every stream (a message over its 4 MiB limit, say)
/// is not answered with a registration every two seconds forever.
#[test]
fn a_stream_the_kubelet_keeps_closing_is_backed_off_and_reported() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let mut waits = Vec::new();
    for _ in 0..10 {
        let server = rig.server("nvidia.com/gpu");
        let lost = rig.feed(Event::StreamClosed { server });
        let wait = lost
            .iter()
            .find_map(|a| match a {
                Action::Notify(Notice::StreamLost { register_in, .. }) => Some(*register_in),
                _ => None,
            })
            .expect("reported");
        waits.push(wait.as_secs());
        let again = rig.advance(wait);
        rig.accept_all(&again);
        rig.now += Duration::from_millis(100);
        rig.feed(Event::StreamOpened { server });
    }
    assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    // A stream that lives past STABLE_STREAM starts the back-off over.
    rig.now += STABLE_STREAM;
    let server = rig.server("nvidia.com/gpu");
    let lost = rig.feed(Event::StreamClosed { server });
    assert!(has_notice(&lost, |n| matches!(
        n,
        Notice::StreamLost { in_a_row: 1, register_in, .. } if *register_in == Duration::from_secs(2)
    )));
}

#[test]
fn a_socket_that_cannot_be_bound_is_retried_with_backoff_not_fatal() {
    let mut rig = Rig::new();
    rig.observe(Some(A));
    let actions = rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    let server = rig.server("nvidia.com/gpu");
    // The Register was issued with the Serve; the bind then fails.
    let failed = rig.feed(Event::ServeFailed {
        server,
        error: "Too many open files".into(),
    });
    assert!(failed.contains(&Action::CancelRegister {
        attempt: attempts(&actions)[0]
    }));
    assert!(has_notice(&failed, |n| matches!(
        n,
        Notice::ServeFailed { failures: 1, retry_in, .. } if *retry_in == Duration::from_millis(100)
    )));
    assert_eq!(
        rig.machine.next_deadline(),
        Some(rig.now + Duration::from_millis(100))
    );
    let retry = rig.advance(Duration::from_millis(100));
    let server = match retry.as_slice() {
        [Action::Serve { server, .. }, Action::Register { .. }] => *server,
        other => panic!("expected a new bind then Register: {other:?}"),
    };
    let failed = rig.feed(Event::ServeFailed {
        server,
        error: "Too many open files".into(),
    });
    assert!(has_notice(&failed, |n| matches!(
        n,
        Notice::ServeFailed { failures: 2, retry_in, .. } if *retry_in == Duration::from_millis(200)
    )));
    let retry = rig.advance(Duration::from_millis(200));
    rig.accept_all(&retry);
    assert!(rig.machine.all_registered());
}

#[test]
fn a_removed_resource_drains_then_stops_at_its_deadline() {
    let mut rig = Rig::registered(&["nvidia.com/gpu", "nvidia.com/gpu.shared"]);
    let shared = rig.server("nvidia.com/gpu.shared");
    let actions = rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    assert_eq!(
        actions,
        [Action::Drain {
            resource: name("nvidia.com/gpu.shared")
        }]
    );
    assert_eq!(rig.machine.planned(), names(&["nvidia.com/gpu"]));
    assert_eq!(rig.machine.next_deadline(), Some(rig.now + DRAIN));
    // Other events do not stop it early nor postpone it.
    rig.now += Duration::from_millis(500);
    rig.feed(Event::Tick);
    assert_eq!(rig.machine.servers().count(), 2);
    let stopped = rig.advance(Duration::from_millis(500));
    assert_eq!(
        stopped,
        [Action::Stop {
            resource: name("nvidia.com/gpu.shared"),
            server: shared
        }]
    );
    assert_eq!(rig.machine.next_deadline(), None);
}

#[test]
fn a_resource_back_before_its_drain_ends_registers_again() {
    let mut rig = Rig::registered(&["nvidia.com/gpu"]);
    let server = rig.server("nvidia.com/gpu");
    rig.feed(Event::Apply(BTreeSet::new()));
    let back = rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    assert_eq!(registers(&back), [("nvidia.com/gpu".to_string(), A)]);
    assert_eq!(rig.server("nvidia.com/gpu"), server, "same server");
    assert!(registers(&rig.advance(DRAIN)).is_empty());
    assert_eq!(rig.machine.servers().count(), 1);
}

#[test]
fn sigterm_stops_every_server_even_one_draining_and_cancels_registers() {
    let mut rig = Rig::registered(&["nvidia.com/gpu", "nvidia.com/gpu.shared"]);
    rig.feed(Event::Apply(names(&[
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.5gb",
    ])));
    let pending = rig.observe(Some(B));
    let actions = rig.feed(Event::Shutdown);
    let stops = actions
        .iter()
        .filter(|a| matches!(a, Action::Stop { .. }))
        .count();
    assert_eq!(stops, 3);
    for attempt in attempts(&pending) {
        assert!(actions.contains(&Action::CancelRegister { attempt }));
    }
    assert!(rig.servers.is_empty());
    assert!(rig.machine.is_stopped());
    assert_eq!(rig.machine.next_deadline(), None);
    assert!(
        rig.feed(Event::Apply(names(&["nvidia.com/gpu"])))
            .is_empty()
    );
    assert!(rig.observe(Some(A)).is_empty());
}

#[test]
fn the_kubelet_going_away_cancels_registers_and_waits_for_the_next() {
    let mut rig = Rig::new();
    rig.feed(Event::Apply(names(&["nvidia.com/gpu"])));
    let actions = rig.observe(Some(A));
    let gone = rig.observe(None);
    assert_eq!(
        gone,
        [Action::CancelRegister {
            attempt: attempts(&actions)[0]
        }]
    );
    assert_eq!(rig.machine.next_deadline(), None);
    assert!(!rig.machine.all_registered());
}
