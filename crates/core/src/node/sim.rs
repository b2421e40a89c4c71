//! Deterministic simulation: the node machine against a modelled node (two
//! MIG GPUs and one without MIG, MIG Manager, the Node's labels as the
//! daemon's watcher delivers them, the MIG applier's per-GPU targets, loads
//! that fail, the XID watcher, an MPS control daemon), over random
//! interleavings, with the module's invariants checked after every step.
//!
//! The world executes actions as the shell does: a load reads what the GPUs
//! hold *now* (so a rediscovery during a change reads the old or the new
//! layout, whichever is there), and its outcome is fed back at once. MIG
//! Manager sets `pending`, changes the hardware later, and then sets
//! `success` or `failed`; each label change reaches the machine only while
//! the API server answers, and a watch that comes back relists (the
//! revision grows, as the daemon's Node watcher does after a gap). The
//! applier changes one GPU to a new layout, keeping the instances both
//! layouts have at the same placement: it hands the machine `pending` with
//! that scope directly (its levels never go through the API server), the
//! GPU changes later, and the change ends in `success` or `failed` (the GPU
//! then holds its target or its former layout). A node does one kind of
//! change at a time, as a real one does. The daemon may restart at any
//! point, a change under way included: the new machine starts from the
//! levels it reads then (the applier starts over and checks its target
//! again), and must converge all the same.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::tests::{applied, inventory_of, kept};
use super::*;
use crate::health::{DEFAULT_RECOVER_AFTER, affected};
use crate::node_labels::MIG_TARGET;

const LAYOUTS: [&str; 3] = ["all-1g.5gb", "all-3g.20gb", "all-balanced"];
/// The XIDs thrown at it: timed (94), reset (79, 48), ignored (43, 13).
const XIDS: [u64; 5] = [94, 79, 48, 43, 13];

#[derive(Debug, Clone)]
enum Op {
    /// Time passes (ms); due timers fire on the way.
    Advance(u32),
    /// MIG Manager begins a change to `LAYOUTS[layout]`: `pending`;
    /// `seen: false`: the watcher sees it only together with the next
    /// change (two updates read as one).
    MigBegin {
        layout: usize,
        seen: bool,
    },
    /// MIG Manager has changed the hardware (if a change is under way).
    MigHardware,
    /// MIG Manager, or the applier, ends the change: `success`, or
    /// `failed`.
    MigEnd {
        success: bool,
    },
    /// The applier begins a per-GPU target: MIG GPU `gpu` to
    /// `LAYOUTS[layout]`, keeping the instances both layouts share.
    TargetBegin {
        gpu: usize,
        layout: usize,
    },
    /// The API server stops (true) or starts (false) answering: label
    /// changes are not delivered while it is down; its return relists.
    ApiDown(bool),
    /// The Node watcher's connection drops and relists.
    WatchGap,
    /// Loads from now on: succeed (`None`), find no driver, or are refused.
    Loads(Option<bool>),
    Reload,
    Xid {
        gpu: usize,
        xid: usize,
        instance: Option<usize>,
    },
    Watched {
        gpu: usize,
    },
    Unwatched {
        gpu: usize,
    },
    /// The MPS control daemon exits.
    MpsExited,
    /// Starts of the MPS control daemon succeed (true) or fail from now on.
    MpsStarts(bool),
    Registered(bool),
    /// The daemon restarts (a crash, an upgrade): a new machine that knows
    /// nothing but the levels it reads at start, mid-change or not.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![0u32..50, 0u32..5_000, 0u32..400_000].prop_map(Op::Advance),
        3 => (0usize..LAYOUTS.len(), any::<bool>())
            .prop_map(|(layout, seen)| Op::MigBegin { layout, seen }),
        2 => Just(Op::MigHardware),
        3 => (0usize..2, 0usize..LAYOUTS.len())
            .prop_map(|(gpu, layout)| Op::TargetBegin { gpu, layout }),
        2 => proptest::bool::weighted(0.8).prop_map(|success| Op::MigEnd { success }),
        2 => any::<bool>().prop_map(Op::ApiDown),
        1 => Just(Op::WatchGap),
        1 => proptest::option::weighted(0.3, any::<bool>()).prop_map(Op::Loads),
        2 => Just(Op::Reload),
        2 => (0usize..3, 0usize..XIDS.len(), proptest::option::of(0usize..7))
            .prop_map(|(gpu, xid, instance)| Op::Xid { gpu, xid, instance }),
        1 => (0usize..3).prop_map(|gpu| Op::Watched { gpu }),
        1 => (0usize..3).prop_map(|gpu| Op::Unwatched { gpu }),
        1 => Just(Op::MpsExited),
        1 => proptest::bool::weighted(0.7).prop_map(Op::MpsStarts),
        1 => proptest::bool::weighted(0.8).prop_map(Op::Registered),
        1 => Just(Op::Restart),
    ]
}

/// An XID the machine was handed on a device it advertised.
struct Hit {
    device: String,
    at: Instant,
    /// Needs a reset: never recovers.
    reset: bool,
}

struct World {
    start: Instant,
    now: Instant,
    machine: NodeMachine,
    /// What each MIG GPU holds now.
    hardware: [&'static str; 2],
    /// The layout MIG Manager is moving to, while a change is under way.
    target: Option<&'static str>,
    /// The applier's change under way: the GPU and the layout it moves to.
    applying: Option<(usize, &'static str)>,
    /// The scope of the last levels delivered that withdraw: what a MIG
    /// change may have made Unhealthy.
    last_scope: Option<MigScope>,
    /// The Node's labels (the truth) and the last ones delivered.
    labels: MigLevels,
    delivered: MigLevels,
    api_down: bool,
    loads: Option<bool>,
    /// The MPS control daemon runs and is ready.
    mps_ready: bool,
    /// Whether starting it succeeds now.
    mps_starts: bool,
    registered: bool,
    applied_once: bool,
    /// The watcher's last word per GPU index: watched or not (none yet:
    /// not watched).
    watched: [bool; 3],
    hits: Vec<Hit>,
    log: Vec<String>,
}

impl World {
    fn new() -> World {
        let labels = MigLevels {
            config: Some(LAYOUTS[0].to_owned()),
            state: Some("success".to_owned()),
            revision: 1,
            scope: MigScope::Node,
        };
        let (machine, _) = NodeMachine::new(
            NodeSettings {
                health_watched: true,
            },
            Some(labels.clone()),
        );
        let start = Instant::now();
        let mut world = World {
            start,
            now: start,
            machine,
            hardware: [LAYOUTS[0]; 2],
            target: None,
            applying: None,
            last_scope: None,
            delivered: labels.clone(),
            labels,
            api_down: false,
            loads: None,
            mps_ready: true,
            mps_starts: true,
            registered: false,
            applied_once: false,
            watched: [false; 3],
            hits: Vec::new(),
            log: Vec::new(),
        };
        world.applied_once = true;
        world.feed(NodeEvent::Loaded {
            cause: LoadCause::Start,
            outcome: world.load(),
        });
        world
    }

    fn mps_resource() -> ResourceName {
        ResourceName::parse("nvidia.com/gpu").expect("a valid name")
    }

    /// A load as the shell makes it, of what the hardware holds now.
    fn load(&self) -> LoadOutcome {
        match self.loads {
            Some(true) => LoadOutcome::NotReady("NVML: driver not loaded".into()),
            Some(false) => LoadOutcome::Refused("config: unknown key".into()),
            None => {
                let inventory = inventory_of(self.hardware);
                let mut applied = applied(&inventory);
                applied.mps.insert(
                    Self::mps_resource(),
                    MpsReadiness {
                        gpus: vec![inventory.gpus[2].uuid.clone()],
                        not_ready: (!self.mps_ready).then(|| "not started".to_owned()),
                    },
                );
                LoadOutcome::Applied(Box::new(applied))
            }
        }
    }

    /// Feeds an event and executes what follows, as the shell does.
    fn feed(&mut self, event: NodeEvent) {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            self.log.push(format!("{:?} {event:?}", self.elapsed()));
            for action in self.machine.handle(event, self.now) {
                match action {
                    NodeAction::Load(cause) => {
                        let outcome = self.load();
                        if matches!(outcome, LoadOutcome::Applied(_)) {
                            self.applied_once = true;
                        }
                        queue.push_back(NodeEvent::Loaded { cause, outcome });
                    }
                    NodeAction::RestartMps(resource) => {
                        self.mps_ready = self.mps_starts;
                        let not_ready = (!self.mps_ready).then(|| "did not answer".to_owned());
                        queue.push_back(NodeEvent::MpsRestarted {
                            resource,
                            not_ready,
                        });
                    }
                    NodeAction::Exit(reason) => panic!("exited after start: {reason}"),
                    NodeAction::Advertise
                    | NodeAction::PushHealth
                    | NodeAction::SetReady(_)
                    | NodeAction::TellWithdrawn(_)
                    | NodeAction::Notify(_) => {}
                }
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    /// New levels: MIG Manager's reach the machine through the API server
    /// (`direct: false`), the applier's directly.
    fn set_labels(&mut self, config: Option<&str>, state: &str, scope: MigScope, direct: bool) {
        self.labels = MigLevels {
            config: config.map(str::to_owned),
            state: Some(state.to_owned()),
            revision: self.labels.revision + 1,
            scope,
        };
        if direct || !self.api_down {
            self.deliver();
        }
    }

    fn deliver(&mut self) {
        self.delivered = self.labels.clone();
        if self.labels.withdrawn() {
            self.last_scope = Some(self.labels.scope.clone());
        }
        self.feed(NodeEvent::MigLabels(self.labels.clone()));
    }

    /// A relist: whatever happened in the gap counts as a change.
    fn relist(&mut self) {
        self.labels.revision += 1;
        self.deliver();
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        let mut ticks = 0;
        while let Some(due) = self.machine.next_deadline().filter(|d| *d <= until) {
            self.now = self.now.max(due);
            self.feed(NodeEvent::Tick);
            ticks += 1;
            assert!(ticks < 10_000, "the machine spins");
        }
        self.now = until;
    }

    fn gpu_uuid(&self, gpu: usize) -> String {
        inventory_of(self.hardware).gpus[gpu].uuid.clone()
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(*ms))),
            Op::MigBegin { layout, seen } => {
                if self.applying.is_some() {
                    return;
                }
                let target = LAYOUTS[*layout];
                self.target = Some(target);
                let down = self.api_down;
                self.api_down = down || !seen;
                self.set_labels(Some(target), "pending", MigScope::Node, false);
                self.api_down = down;
            }
            Op::TargetBegin { gpu, layout } => {
                if self.target.is_some() || self.applying.is_some() {
                    return;
                }
                let to = LAYOUTS[*layout];
                let mut after = self.hardware;
                after[*gpu] = to;
                let keep = kept(
                    &inventory_of(self.hardware).gpus[*gpu],
                    &inventory_of(after).gpus[*gpu],
                );
                self.applying = Some((*gpu, to));
                let scope = MigScope::Gpus(BTreeMap::from([(self.gpu_uuid(*gpu), keep)]));
                self.set_labels(Some(MIG_TARGET), "pending", scope, true);
            }
            Op::MigHardware => {
                if let Some(target) = self.target {
                    self.hardware = [target; 2];
                }
                if let Some((gpu, to)) = self.applying {
                    self.hardware[gpu] = to;
                }
            }
            Op::MigEnd { success } => {
                let state = if *success { "success" } else { "failed" };
                if self.target.take().is_some() {
                    let config = self.labels.config.clone();
                    self.set_labels(config.as_deref(), state, MigScope::Node, false);
                }
                if self.applying.take().is_some() {
                    let scope = self.labels.scope.clone();
                    self.set_labels(Some(MIG_TARGET), state, scope, true);
                }
            }
            Op::ApiDown(down) => {
                let was = std::mem::replace(&mut self.api_down, *down);
                if was && !down {
                    self.relist();
                }
            }
            Op::WatchGap => {
                if !self.api_down {
                    self.relist();
                }
            }
            Op::Loads(loads) => self.loads = *loads,
            Op::Reload => {
                let before = self.snapshot();
                let refused = self.loads.is_some();
                self.feed(NodeEvent::ReloadAsked);
                if refused {
                    assert!(
                        self.snapshot() == before,
                        "invariant 2: a refused reload changed what is advertised"
                    );
                }
            }
            Op::Xid { gpu, xid, instance } => {
                let uuid = self.gpu_uuid(*gpu);
                let inv = inventory_of(self.hardware);
                let mig = instance.and_then(|i| inv.gpus[*gpu].mig_devices.get(i));
                let event = XidEvent {
                    gpu_uuid: uuid,
                    xid: XIDS[*xid],
                    gpu_instance: mig.map(|m| m.gpu_instance_id),
                    compute_instance: mig.map(|m| m.compute_instance_id),
                };
                let action = HealthPolicy::new(&Default::default(), None, None).action(event.xid);
                if action != XidAction::Ignore {
                    for resource in self.machine.resources() {
                        for device in affected(&event, resource) {
                            self.hits.push(Hit {
                                device: device.to_owned(),
                                at: self.now,
                                reset: action == XidAction::Reset,
                            });
                        }
                    }
                }
                self.feed(NodeEvent::Xid(event));
            }
            Op::Watched { gpu } => {
                self.watched[*gpu] = true;
                let gpu_uuid = self.gpu_uuid(*gpu);
                self.feed(NodeEvent::Watched { gpu_uuid });
            }
            Op::Unwatched { gpu } => {
                self.watched[*gpu] = false;
                let gpu_uuid = self.gpu_uuid(*gpu);
                self.feed(NodeEvent::Unwatched {
                    gpu_uuid,
                    reason: "nvmlEventSetWait: unknown error".into(),
                });
            }
            // Only a running daemon can exit.
            Op::MpsExited if self.mps_ready => {
                self.mps_ready = false;
                self.feed(NodeEvent::MpsExited {
                    resource: Self::mps_resource(),
                });
            }
            Op::MpsExited => {}
            Op::MpsStarts(yes) => self.mps_starts = *yes,
            Op::Registered(yes) => {
                self.registered = *yes;
                self.feed(NodeEvent::Registration {
                    all_registered: *yes,
                });
            }
            Op::Restart => self.restart(),
        }
    }

    /// The daemon starts again. Following MIG Manager, it reads the Node's
    /// labels (a relist: a new revision); the API server must answer for
    /// that (the start waits for it). Applying a target, the applier starts
    /// over too: its first levels ask for nothing (a node with a target and
    /// no layout label), then it checks the target against the GPUs as they
    /// are: held already (the change finished before the restart) ends in
    /// `success`, otherwise the change runs again with the scope planned
    /// from the GPU now. A config the daemon refuses would end it at start
    /// (restarted until fixed): not modelled.
    fn restart(&mut self) {
        if self.api_down || self.loads == Some(false) {
            return;
        }
        let revision = self.labels.revision + 1;
        self.labels = match self.applying {
            Some(_) => MigLevels {
                revision,
                ..MigLevels::default()
            },
            None => MigLevels {
                revision,
                ..self.labels.clone()
            },
        };
        self.delivered = self.labels.clone();
        // The new machine knows nothing of what the old one withdrew, nor
        // of the XIDs it saw (a restarted daemon forgets them: see the
        // health module).
        self.last_scope = self.labels.withdrawn().then(|| self.labels.scope.clone());
        self.hits.clear();
        self.registered = false;
        self.watched = [false; 3];
        let (machine, _) = NodeMachine::new(
            NodeSettings {
                health_watched: true,
            },
            Some(self.labels.clone()),
        );
        self.machine = machine;
        // A new process starts its MPS control daemons afresh.
        self.mps_ready = self.mps_starts;
        let outcome = self.load();
        self.applied_once = matches!(outcome, LoadOutcome::Applied(_));
        self.feed(NodeEvent::Loaded {
            cause: LoadCause::Start,
            outcome,
        });
        self.feed(NodeEvent::Registration {
            all_registered: false,
        });
        if let Some((gpu, to)) = self.applying {
            if self.hardware[gpu] == to {
                self.applying = None;
                let scope = self.labels.scope.clone();
                self.set_labels(Some(MIG_TARGET), "success", scope, true);
            } else {
                self.applying = None;
                self.step(&Op::TargetBegin {
                    gpu,
                    layout: LAYOUTS.iter().position(|l| *l == to).unwrap_or(0),
                });
            }
        }
    }

    /// What the kubelet is told: (resource, device, Healthy), and readiness.
    fn snapshot(&self) -> (Vec<(String, String, bool)>, bool) {
        (self.advertised(), self.machine.ready())
    }

    fn advertised(&self) -> Vec<(String, String, bool)> {
        let health = self.machine.health();
        self.machine
            .resources()
            .iter()
            .flat_map(|r| {
                r.devices.iter().map(move |d| {
                    (
                        r.name.to_string(),
                        d.id.clone(),
                        health.is_healthy(&d.physical.uuid)
                            && health.is_healthy(&d.physical.gpu_uuid),
                    )
                })
            })
            .collect()
    }

    /// Every device advertised (its physical device) and whether it is
    /// Healthy.
    fn devices(&self) -> Vec<(crate::plan::Physical, bool)> {
        let health = self.machine.health();
        self.machine
            .resources()
            .iter()
            .flat_map(|r| &r.devices)
            .map(|d| {
                let healthy =
                    health.is_healthy(&d.physical.uuid) && health.is_healthy(&d.physical.gpu_uuid);
                (d.physical.clone(), healthy)
            })
            .collect()
    }

    fn check(&self) {
        let health = self.machine.health();
        let mig_gpus: BTreeSet<String> = (0..2).map(|g| self.gpu_uuid(g)).collect();
        // 1. A GPU being repartitioned is never advertised Healthy.
        if self.delivered.withdrawn() && self.delivered.scope == MigScope::Node {
            for resource in self.machine.resources() {
                for d in &resource.devices {
                    assert!(
                        !(mig_gpus.contains(&d.physical.gpu_uuid)
                            && health.is_healthy(&d.physical.uuid)
                            && health.is_healthy(&d.physical.gpu_uuid)),
                        "invariant 1: {} advertised Healthy while the labels say {:?}",
                        d.id,
                        self.delivered
                    );
                }
            }
        }
        // 1b. A device being destroyed is never advertised Healthy: while
        //     a target changes a GPU, no device of it but the kept
        //     instances' is.
        if let (true, MigScope::Gpus(gpus)) = (self.delivered.withdrawn(), &self.delivered.scope) {
            for (device, healthy) in self.devices() {
                let going = gpus.get(&device.gpu_uuid).is_some_and(|keep| {
                    !device.mig.is_some_and(|m| keep.contains(&m.gpu_instance))
                });
                assert!(
                    !(going && healthy),
                    "invariant 1b: {} (GI {:?}) advertised Healthy while a target destroys it",
                    device.uuid,
                    device.mig
                );
            }
        }
        // 8. No collateral withdrawal: a device is Unhealthy because of a
        //    MIG change only inside the scope of the last change asked
        //    for: a whole-node change, any MIG GPU's; a target, the
        //    instances it does not keep on the GPUs it names.
        for (device, _) in self.devices() {
            let repartitioning = [&device.uuid, &device.gpu_uuid]
                .iter()
                .any(|u| health.condition(u, Condition::Repartitioning).is_some());
            if !repartitioning {
                continue;
            }
            let inside = match &self.last_scope {
                None => false,
                Some(MigScope::Node) => mig_gpus.contains(&device.gpu_uuid),
                Some(MigScope::Gpus(gpus)) => gpus.get(&device.gpu_uuid).is_some_and(|keep| {
                    !device.mig.is_some_and(|m| keep.contains(&m.gpu_instance))
                }),
            };
            assert!(
                inside,
                "invariant 8: {} (GPU {}, GI {:?}) withdrawn outside the change asked for: {:?}",
                device.uuid, device.gpu_uuid, device.mig, self.last_scope
            );
        }
        // 3. Ready exactly when applied, registered and the whole node is
        //    not withdrawn (a target leaves the rest serving); a node
        //    that is withdrawn for MIG alone has a rediscovery armed.
        let ready = self.machine.ready();
        let whole = matches!(self.machine.withdrawal(), Some(MigScope::Node));
        assert_eq!(
            ready,
            self.applied_once && self.registered && !whole,
            "invariant 3"
        );
        if self.machine.withdrawn() && !self.delivered.withdrawn() {
            assert!(
                self.machine.next_deadline().is_some(),
                "invariant 3: withdrawn under labels that are not, with no retry armed"
            );
        }
        // 4. An XID holds.
        for hit in &self.hits {
            let holds = hit.reset || self.now < hit.at + DEFAULT_RECOVER_AFTER;
            if holds {
                assert!(
                    !health.is_healthy(&hit.device),
                    "invariant 4: {} Healthy {:?} after an XID",
                    hit.device,
                    self.now - hit.at
                );
            }
        }
        // 7. No blind window: a GPU the watcher does not watch (or has not
        //    reported on yet) has no device advertised Healthy.
        for (index, watched) in self.watched.iter().enumerate() {
            let gpu = self.gpu_uuid(index);
            if !watched {
                for resource in self.machine.resources() {
                    for d in resource
                        .devices
                        .iter()
                        .filter(|d| d.physical.gpu_uuid == gpu)
                    {
                        assert!(
                            !(health.is_healthy(&d.physical.uuid) && health.is_healthy(&gpu)),
                            "invariant 7: {} Healthy on GPU {index}, which is not watched",
                            d.id
                        );
                    }
                }
            }
        }
        // 9. MPS fails closed; 10. a daemon not ready is being restarted.
        let mps = Self::mps_resource();
        if !self.mps_ready
            && let Some(gpus) = self.machine.mps_gpus.get(&mps)
        {
            for gpu in gpus {
                assert!(
                    !health.is_healthy(gpu),
                    "invariant 9: {gpu} Healthy while its MPS control daemon is not ready"
                );
            }
            assert!(
                self.machine
                    .mps_restarts
                    .get(&mps)
                    .is_some_and(|r| r.at.is_some()),
                "invariant 10: the MPS control daemon is not ready and no restart is scheduled"
            );
        }
        // 5. Never spins.
        if let Some(due) = self.machine.next_deadline() {
            assert!(due > self.now, "invariant 5: a deadline already due");
        }
    }

    /// Everything settles: the API answers, MIG Manager finishes, loads
    /// succeed, the MPS daemon and the watcher are fine, time passes.
    fn settle(&mut self) {
        self.loads = None;
        if self.target.is_some() || self.applying.is_some() {
            self.step(&Op::MigHardware);
            self.step(&Op::MigEnd { success: true });
        }
        if self.api_down {
            self.step(&Op::ApiDown(false));
        }
        self.step(&Op::MpsStarts(true));
        self.step(&Op::Registered(true));
        for gpu in 0..3 {
            self.step(&Op::Watched { gpu });
        }
        // Long enough for every back-off and every timed XID.
        self.advance(Duration::from_secs(3_600));
        self.check();
    }

    /// 6. Converged: what is advertised is what the hardware holds, nothing
    ///    is withdrawn, and only XID recoveries may be armed.
    fn check_settled(&self) {
        let want: BTreeSet<String> = applied(&inventory_of(self.hardware))
            .resources
            .iter()
            .flat_map(|r| r.devices.iter().map(|d| d.id.clone()))
            .collect();
        let have: BTreeSet<String> = self
            .machine
            .resources()
            .iter()
            .flat_map(|r| r.devices.iter().map(|d| d.id.clone()))
            .collect();
        assert_eq!(have, want, "invariant 6: not what the GPUs hold");
        assert!(!self.machine.withdrawn(), "invariant 6: still withdrawn");
        assert!(self.machine.ready(), "invariant 6: not ready");
        assert_eq!(
            self.machine.next_deadline(),
            self.machine.health().next_recovery(),
            "invariant 6: a timer other than an XID recovery is armed"
        );
        let health = self.machine.health();
        for resource in self.machine.resources() {
            for d in &resource.devices {
                let healthy =
                    health.is_healthy(&d.physical.uuid) && health.is_healthy(&d.physical.gpu_uuid);
                let held = self.hits.iter().any(|h| {
                    h.reset && (h.device == d.physical.uuid || h.device == d.physical.gpu_uuid)
                });
                assert!(
                    healthy || held,
                    "invariant 6: {} {} Unhealthy after settling",
                    resource.name,
                    d.id
                );
            }
        }
    }
}

fn run(ops: &[Op]) {
    let mut world = World::new();
    world.feed(NodeEvent::Registration {
        all_registered: false,
    });
    world.check();
    for op in ops {
        world.log.push(format!("op {op:?}"));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            world.step(op);
            world.check();
        }));
        if let Err(panic) = outcome {
            eprintln!("{}", world.log.join("\n"));
            std::panic::resume_unwind(panic);
        }
    }
    world.settle();
    world.check_settled();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_node_machine_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

/// The case, replayed as written: the API server fails while MIG
/// Manager goes pending → repartition → success, so the daemon never sees
/// `pending`; when the watch comes back the vanished devices must go.
#[test]
fn a_change_hidden_by_an_api_outage_is_rediscovered_when_the_watch_returns() {
    let mut world = World::new();
    world.step(&Op::Registered(true));
    for gpu in 0..3 {
        world.step(&Op::Watched { gpu });
    }
    let old: Vec<_> = world.advertised();
    world.step(&Op::ApiDown(true));
    world.step(&Op::MigBegin {
        layout: 1,
        seen: true,
    });
    world.step(&Op::MigHardware);
    world.step(&Op::MigEnd { success: true });
    world.check();
    assert_eq!(world.advertised(), old, "nothing seen yet");
    world.step(&Op::ApiDown(false));
    world.check();
    world.check_settled();
}

/// A restart in the middle of a target's change, before and after the GPU
/// changed: the new machine knows nothing of the old one's withdrawal,
/// follows the levels it is handed, and converges to what the GPUs hold.
#[test]
fn a_restart_mid_target_converges_whether_or_not_the_gpu_changed() {
    for hardware_first in [false, true] {
        let mut world = World::new();
        world.step(&Op::Registered(true));
        for gpu in 0..3 {
            world.step(&Op::Watched { gpu });
        }
        world.step(&Op::TargetBegin { gpu: 0, layout: 2 });
        world.check();
        assert!(world.machine.withdrawn() && world.machine.ready());
        if hardware_first {
            world.step(&Op::MigHardware);
        }
        world.step(&Op::Restart);
        world.check();
        // Before the GPU changed, the applier runs the change again (its
        // GPU withdrawn as before); after, it reports success.
        assert_eq!(world.applying.is_some(), !hardware_first);
        assert_eq!(world.machine.withdrawn(), !hardware_first);
        world.step(&Op::MigHardware);
        world.step(&Op::MigEnd { success: true });
        world.check();
        world.settle();
        world.check_settled();
        assert_eq!(world.hardware, [LAYOUTS[2], LAYOUTS[0]]);
    }
}
