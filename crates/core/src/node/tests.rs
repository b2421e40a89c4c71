//! One test per transition of the node machine, with an injected clock.

use super::*;
use crate::config::{Config, MigStrategy};
use crate::gpu::Inventory;
use crate::gpu::simulated::{Topology, TopologyGpu, build};
use crate::health::HealthConfig;

/// Two A100-40GB (MIG, `layout`) and one A10G (no MIG).
pub(super) fn inventory(layout: &str) -> Inventory {
    inventory_of([layout, layout])
}

/// Two A100-40GB (MIG, each in its own layout) and one A10G (no MIG). A
/// GPU's UUIDs depend only on its index and, for a MIG device, on its GPU
/// instance: an instance at the same placement in two layouts is the same
/// device, as a kept instance is on hardware.
pub(super) fn inventory_of(layouts: [&str; 2]) -> Inventory {
    let a100 = |layout: &str| TopologyGpu {
        model: "A100-40GB".into(),
        mig_layout: Some(layout.into()),
        ..TopologyGpu::default()
    };
    let topology = Topology {
        gpus: Some(vec![
            a100(layouts[0]),
            a100(layouts[1]),
            TopologyGpu {
                model: "A10G".into(),
                ..TopologyGpu::default()
            },
        ]),
        uuid_seed: Some("node-machine".into()),
        ..Topology::default()
    };
    build(&topology, "node-machine test").expect("a valid topology")
}

/// The GPU instances a change from `before` to `after` keeps: those at the
/// same placement in both (the same GPU-instance id).
pub(super) fn kept(before: &crate::gpu::Gpu, after: &crate::gpu::Gpu) -> BTreeSet<u32> {
    let ids = |gpu: &crate::gpu::Gpu| -> BTreeSet<u32> {
        gpu.mig_devices.iter().map(|d| d.gpu_instance_id).collect()
    };
    ids(before).intersection(&ids(after)).copied().collect()
}

/// What the shell would report after applying `inventory` (mixed strategy).
pub(super) fn applied(inventory: &Inventory) -> Applied {
    let mut config = Config::default();
    config.flags.mig_strategy = MigStrategy::Mixed;
    let planned = crate::plan::plan(inventory, &config);
    assert!(planned.refusal().is_none(), "{:?}", planned.refusal());
    Applied {
        resources: planned.resources.into_iter().map(Arc::new).collect(),
        gpus: inventory.gpus.iter().map(AdvertisedGpu::of).collect(),
        mig_capable: inventory
            .gpus
            .iter()
            .filter(|g| g.mig_capable)
            .map(|g| g.uuid.clone())
            .collect(),
        unreachable: Vec::new(),
        policy: HealthPolicy::new(&HealthConfig::default(), None, None),
        mps: BTreeMap::new(),
    }
}

fn loaded(cause: LoadCause, applied: Applied) -> NodeEvent {
    NodeEvent::Loaded {
        cause,
        outcome: LoadOutcome::Applied(Box::new(applied)),
    }
}

fn levels(config: Option<&str>, state: Option<&str>, revision: u64) -> MigLevels {
    MigLevels {
        config: config.map(str::to_owned),
        state: state.map(str::to_owned),
        revision,
        scope: MigScope::Node,
    }
}

/// Actions other than notices.
fn acts(actions: Vec<NodeAction>) -> Vec<NodeAction> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, NodeAction::Notify(_)))
        .collect()
}

fn notices(actions: &[NodeAction]) -> Vec<&NodeNotice> {
    actions
        .iter()
        .filter_map(|a| match a {
            NodeAction::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn unwatched() -> NodeSettings {
    NodeSettings {
        health_watched: false,
    }
}

/// Every device of every resource on `gpu` is advertised Healthy.
fn gpu_healthy(machine: &NodeMachine, gpu: &str) -> bool {
    machine
        .resources()
        .iter()
        .flat_map(|r| &r.devices)
        .filter(|d| d.physical.gpu_uuid == gpu)
        .all(|d| {
            machine.health().is_healthy(&d.physical.uuid)
                && machine.health().is_healthy(&d.physical.gpu_uuid)
        })
}

/// A machine with `inventory` applied and registered, at `t0`.
fn running(inventory: &Inventory, mig: Option<MigLevels>, t0: Instant) -> NodeMachine {
    let (mut machine, _) = NodeMachine::new(unwatched(), mig);
    machine.handle(loaded(LoadCause::Start, applied(inventory)), t0);
    machine.handle(
        NodeEvent::Registration {
            all_registered: true,
        },
        t0,
    );
    machine
}

#[test]
fn a_first_load_is_advertised_and_ready_once_registered() {
    let t0 = Instant::now();
    let (mut machine, before) = NodeMachine::new(unwatched(), None);
    assert!(before.is_empty());
    let inventory = inventory("all-1g.5gb");
    let out = machine.handle(loaded(LoadCause::Start, applied(&inventory)), t0);
    assert_eq!(acts(out), vec![NodeAction::Advertise]);
    assert!(!machine.ready(), "not registered yet");
    let out = machine.handle(
        NodeEvent::Registration {
            all_registered: true,
        },
        t0,
    );
    assert_eq!(acts(out), vec![NodeAction::SetReady(true)]);
    assert_eq!(machine.next_deadline(), None, "nothing to retry");
}

#[test]
fn a_refused_first_load_exits() {
    let (mut machine, _) = NodeMachine::new(unwatched(), None);
    let out = machine.handle(
        NodeEvent::Loaded {
            cause: LoadCause::Start,
            outcome: LoadOutcome::Refused("bad config".into()),
        },
        Instant::now(),
    );
    assert_eq!(acts(out), vec![NodeAction::Exit("bad config".into())]);
}

#[test]
fn a_driver_not_ready_is_retried_on_a_growing_back_off_until_discovery_succeeds() {
    let t0 = Instant::now();
    let (mut machine, _) = NodeMachine::new(unwatched(), None);
    let out = machine.handle(
        NodeEvent::Loaded {
            cause: LoadCause::Start,
            outcome: LoadOutcome::NotReady("no driver".into()),
        },
        t0,
    );
    assert!(notices(&out).contains(&&NodeNotice::DiscoveryRetryIn(Duration::from_secs(1))));
    assert_eq!(machine.next_deadline(), Some(t0 + Duration::from_secs(1)));
    // Early: nothing.
    assert!(acts(machine.handle(NodeEvent::Tick, t0 + Duration::from_millis(999))).is_empty());
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t1)),
        vec![NodeAction::Load(LoadCause::Discovery)]
    );
    let out = machine.handle(
        NodeEvent::Loaded {
            cause: LoadCause::Discovery,
            outcome: LoadOutcome::NotReady("still no driver".into()),
        },
        t1,
    );
    assert!(notices(&out).contains(&&NodeNotice::DiscoveryRetryIn(Duration::from_secs(2))));
    let t3 = t1 + Duration::from_secs(2);
    assert_eq!(machine.next_deadline(), Some(t3));
    machine.handle(NodeEvent::Tick, t3);
    let out = machine.handle(
        loaded(LoadCause::Discovery, applied(&inventory("all-1g.5gb"))),
        t3,
    );
    assert!(notices(&out).contains(&&NodeNotice::DiscoverySucceeded));
    assert_eq!(machine.next_deadline(), None);
}

#[test]
fn gpus_that_cannot_be_read_are_retried_and_said_when_they_answer() {
    let t0 = Instant::now();
    let inventory = inventory("all-1g.5gb");
    let mut partial = applied(&inventory);
    partial.unreachable = vec![(3, "nvmlDeviceGetHandleByIndex: GPU is lost".into())];
    let (mut machine, _) = NodeMachine::new(unwatched(), None);
    let out = machine.handle(loaded(LoadCause::Start, partial), t0);
    assert!(
        notices(&out)
            .iter()
            .any(|n| matches!(n, NodeNotice::GpuUnreadable { index: 3, .. }))
    );
    assert!(notices(&out).contains(&&NodeNotice::Undiscovered(1)));
    let t1 = machine.next_deadline().expect("a discovery retry");
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t1)),
        vec![NodeAction::Load(LoadCause::Discovery)]
    );
    let out = machine.handle(loaded(LoadCause::Discovery, applied(&inventory)), t1);
    assert!(notices(&out).contains(&&NodeNotice::GpuAnswersAgain { index: 3 }));
    assert!(notices(&out).contains(&&NodeNotice::Undiscovered(0)));
    assert_eq!(machine.next_deadline(), None);
}

#[test]
fn a_refused_reload_changes_nothing() {
    let t0 = Instant::now();
    let inventory = inventory("all-1g.5gb");
    let mut machine = running(&inventory, None, t0);
    let health = machine.health().clone();
    let resources = machine.resources().to_vec();
    assert_eq!(
        acts(machine.handle(NodeEvent::ReloadAsked, t0)),
        vec![NodeAction::Load(LoadCause::Reload)]
    );
    for outcome in [
        LoadOutcome::Refused("unknown key".into()),
        LoadOutcome::NotReady("driver gone".into()),
    ] {
        let out = machine.handle(
            NodeEvent::Loaded {
                cause: LoadCause::Reload,
                outcome,
            },
            t0,
        );
        assert!(acts(out.clone()).is_empty(), "{out:?}");
        assert!(matches!(
            notices(&out)[..],
            [NodeNotice::ReloadRefused { .. }]
        ));
        assert_eq!(machine.health(), &health);
        assert_eq!(machine.resources(), &resources[..]);
        assert!(machine.ready());
        assert_eq!(machine.next_deadline(), None);
    }
}

#[test]
fn a_mig_change_withdraws_the_mig_gpus_only_and_its_success_rediscovers() {
    let t0 = Instant::now();
    let before = inventory("all-1g.5gb");
    let mut machine = running(&before, Some(levels(None, None, 0)), t0);
    let a10g = before.gpus[2].uuid.clone();
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("pending"), 1)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![
            NodeAction::PushHealth,
            NodeAction::TellWithdrawn(Some(MigScope::Node)),
            NodeAction::SetReady(false)
        ]
    );
    for gpu in &before.gpus[..2] {
        assert!(!gpu_healthy(&machine, &gpu.uuid), "{} withdrawn", gpu.uuid);
    }
    assert!(gpu_healthy(&machine, &a10g), "the A10G is not touched");
    // The same levels again: idempotent.
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("pending"), 1)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![NodeAction::TellWithdrawn(Some(MigScope::Node))]
    );
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 2)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![NodeAction::Load(LoadCause::MigLayout { revision: 2 })]
    );
    let after = inventory("all-3g.20gb");
    let out = machine.handle(
        loaded(LoadCause::MigLayout { revision: 2 }, applied(&after)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![
            NodeAction::Advertise,
            NodeAction::TellWithdrawn(None),
            NodeAction::PushHealth,
            NodeAction::SetReady(true)
        ]
    );
    for gpu in &after.gpus {
        assert!(gpu_healthy(&machine, &gpu.uuid));
    }
    // Acted on: the same revision does nothing, and nothing is armed.
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 2)),
        t0,
    );
    assert!(acts(out).is_empty());
    assert_eq!(machine.next_deadline(), None);
}

#[test]
fn a_pending_never_seen_still_rediscovers() {
    let t0 = Instant::now();
    let mut machine = running(
        &inventory("all-1g.5gb"),
        Some(levels(Some("all-1g.5gb"), Some("success"), 4)),
        t0,
    );
    // pending and success happened in a watch gap: only the revision tells.
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 7)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![NodeAction::Load(LoadCause::MigLayout { revision: 7 })]
    );
}

#[test]
fn a_failed_rediscovery_is_retried_on_a_back_off_and_a_label_change_does_not_wait() {
    let t0 = Instant::now();
    let mut machine = running(&inventory("all-1g.5gb"), Some(levels(None, None, 0)), t0);
    machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("pending"), 1)),
        t0,
    );
    machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 2)),
        t0,
    );
    let failed = |machine: &mut NodeMachine, revision, at| {
        machine.handle(
            NodeEvent::Loaded {
                cause: LoadCause::MigLayout { revision },
                outcome: LoadOutcome::NotReady("NVML: GPU busy".into()),
            },
            at,
        )
    };
    let out = failed(&mut machine, 2, t0);
    assert!(notices(&out).iter().any(|n| matches!(
        n,
        NodeNotice::MigRediscoveryFailed { retry_in, withdrawn: true, .. } if *retry_in == Duration::from_secs(1)
    )));
    assert!(!machine.ready(), "still withdrawn");
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(machine.next_deadline(), Some(t1));
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t1)),
        vec![NodeAction::Load(LoadCause::MigLayout { revision: 2 })]
    );
    failed(&mut machine, 2, t1);
    assert_eq!(machine.next_deadline(), Some(t1 + Duration::from_secs(2)));
    // A new label level is acted on at once, not after the retry.
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 3)),
        t1,
    );
    assert_eq!(
        acts(out),
        vec![NodeAction::Load(LoadCause::MigLayout { revision: 3 })]
    );
    assert_eq!(machine.next_deadline(), None, "the old retry is disarmed");
}

#[test]
fn labels_that_withdraw_at_start_hold_the_first_load_unhealthy() {
    let t0 = Instant::now();
    let (mut machine, before) =
        NodeMachine::new(unwatched(), Some(levels(Some("all-1g.5gb"), None, 1)));
    assert!(before.contains(&NodeAction::TellWithdrawn(Some(MigScope::Node))));
    let inventory = inventory("all-1g.5gb");
    machine.handle(loaded(LoadCause::Start, applied(&inventory)), t0);
    machine.handle(
        NodeEvent::Registration {
            all_registered: true,
        },
        t0,
    );
    assert!(!machine.ready());
    assert!(!gpu_healthy(&machine, &inventory.gpus[0].uuid));
    assert!(gpu_healthy(&machine, &inventory.gpus[2].uuid));
}

#[test]
fn a_rediscovery_that_ends_after_the_labels_moved_on_stays_withdrawn() {
    let t0 = Instant::now();
    let mut machine = running(&inventory("all-1g.5gb"), Some(levels(None, None, 0)), t0);
    machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("success"), 1)),
        t0,
    );
    // A new change began while the rediscovery ran.
    machine.handle(
        NodeEvent::MigLabels(levels(Some("all-1g.5gb"), Some("pending"), 2)),
        t0,
    );
    let after = inventory("all-3g.20gb");
    machine.handle(
        loaded(LoadCause::MigLayout { revision: 1 }, applied(&after)),
        t0,
    );
    assert!(machine.withdrawn());
    assert!(!gpu_healthy(&machine, &after.gpus[0].uuid));
}

#[test]
fn xids_hold_devices_for_the_quiet_period_or_until_reset_and_ignored_ones_do_nothing() {
    let t0 = Instant::now();
    let inventory = inventory("all-1g.5gb");
    let mut machine = running(&inventory, None, t0);
    let gpu = &inventory.gpus[0];
    let mig = &gpu.mig_devices[0];
    let out = machine.handle(
        NodeEvent::Xid(XidEvent {
            gpu_uuid: gpu.uuid.clone(),
            xid: 94,
            gpu_instance: Some(mig.gpu_instance_id),
            compute_instance: Some(mig.compute_instance_id),
        }),
        t0,
    );
    assert_eq!(acts(out), vec![NodeAction::PushHealth]);
    assert!(!machine.health().is_healthy(&mig.uuid));
    assert!(machine.health().is_healthy(&gpu.mig_devices[1].uuid));
    let quiet = crate::health::DEFAULT_RECOVER_AFTER;
    assert_eq!(machine.next_deadline(), Some(t0 + quiet));
    assert!(
        acts(machine.handle(NodeEvent::Tick, t0 + quiet - Duration::from_millis(1))).is_empty()
    );
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t0 + quiet)),
        vec![NodeAction::PushHealth]
    );
    assert!(machine.health().is_healthy(&mig.uuid));
    // 79 (fallen off the bus) needs a reset: no deadline.
    let a10g = &inventory.gpus[2];
    machine.handle(
        NodeEvent::Xid(XidEvent {
            gpu_uuid: a10g.uuid.clone(),
            xid: 79,
            gpu_instance: None,
            compute_instance: None,
        }),
        t0 + quiet,
    );
    assert!(!machine.health().is_healthy(&a10g.uuid));
    assert_eq!(machine.next_deadline(), None);
    // 43 is ignored by default.
    let out = machine.handle(
        NodeEvent::Xid(XidEvent {
            gpu_uuid: gpu.uuid.clone(),
            xid: 43,
            gpu_instance: None,
            compute_instance: None,
        }),
        t0 + quiet,
    );
    assert!(acts(out).is_empty());
    assert!(gpu_healthy(&machine, &gpu.uuid));
}

#[test]
fn with_a_watcher_a_gpu_is_healthy_only_while_watched() {
    let t0 = Instant::now();
    let inventory = inventory("all-1g.5gb");
    let (mut machine, _) = NodeMachine::new(
        NodeSettings {
            health_watched: true,
        },
        None,
    );
    let out = machine.handle(loaded(LoadCause::Start, applied(&inventory)), t0);
    assert!(
        notices(&out)
            .iter()
            .any(|n| matches!(n, NodeNotice::WaitingForWatcher { gpus } if gpus.len() == 3))
    );
    let uuid = inventory.gpus[0].uuid.clone();
    assert!(!gpu_healthy(&machine, &uuid), "not watched yet");
    let out = machine.handle(
        NodeEvent::Watched {
            gpu_uuid: uuid.clone(),
        },
        t0,
    );
    assert_eq!(acts(out), vec![NodeAction::PushHealth]);
    assert!(gpu_healthy(&machine, &uuid));
    let out = machine.handle(
        NodeEvent::Unwatched {
            gpu_uuid: uuid.clone(),
            reason: "nvmlEventSetWait: unknown error".into(),
        },
        t0,
    );
    assert_eq!(acts(out.clone()), vec![NodeAction::PushHealth]);
    assert!(notices(&out).iter().any(|n| matches!(
        n,
        NodeNotice::UnwatchedUnhealthy { devices, .. } if devices.len() == 7
    )));
    assert!(!gpu_healthy(&machine, &uuid));
}

#[test]
fn an_mps_daemon_that_exits_holds_its_gpus_until_it_is_ready_again() {
    let t0 = Instant::now();
    let inventory = inventory("all-1g.5gb");
    let a10g = inventory.gpus[2].uuid.clone();
    let resource = ResourceName::parse("nvidia.com/gpu").expect("name");
    let mut with_mps = applied(&inventory);
    with_mps.mps.insert(
        resource.clone(),
        MpsReadiness {
            gpus: vec![a10g.clone()],
            not_ready: Some("starting".into()),
        },
    );
    let (mut machine, _) = NodeMachine::new(unwatched(), None);
    let out = machine.handle(loaded(LoadCause::Start, with_mps.clone()), t0);
    assert!(!gpu_healthy(&machine, &a10g), "not ready at start");
    assert!(notices(&out).contains(&&NodeNotice::MpsRestartIn {
        resource: resource.clone(),
        delay: Duration::from_secs(1),
    }));
    assert_eq!(machine.next_deadline(), Some(t0 + Duration::from_secs(1)));
    // Ready with a reload: no restart is left.
    with_mps.mps.get_mut(&resource).expect("mps").not_ready = None;
    machine.handle(loaded(LoadCause::Reload, with_mps), t0);
    assert!(gpu_healthy(&machine, &a10g));
    assert_eq!(machine.next_deadline(), None);

    let exited = NodeEvent::MpsExited {
        resource: resource.clone(),
    };
    let out = machine.handle(exited.clone(), t0);
    assert_eq!(acts(out), vec![NodeAction::PushHealth]);
    assert!(!gpu_healthy(&machine, &a10g));
    // Restarted when the back-off ends, not before.
    assert!(acts(machine.handle(NodeEvent::Tick, t0 + Duration::from_millis(999))).is_empty());
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t1)),
        vec![NodeAction::RestartMps(resource.clone())]
    );
    assert_eq!(machine.next_deadline(), None, "one start at a time");
    // It does not answer: the next start waits twice as long.
    let out = machine.handle(
        NodeEvent::MpsRestarted {
            resource: resource.clone(),
            not_ready: Some("did not answer".into()),
        },
        t1,
    );
    assert!(notices(&out).contains(&&NodeNotice::MpsRestartIn {
        resource: resource.clone(),
        delay: Duration::from_secs(2),
    }));
    assert!(!gpu_healthy(&machine, &a10g));
    let t2 = t1 + Duration::from_secs(2);
    assert_eq!(
        acts(machine.handle(NodeEvent::Tick, t2)),
        vec![NodeAction::RestartMps(resource.clone())]
    );
    let out = machine.handle(
        NodeEvent::MpsRestarted {
            resource: resource.clone(),
            not_ready: None,
        },
        t2,
    );
    assert_eq!(acts(out.clone()), vec![NodeAction::PushHealth]);
    assert!(notices(&out).contains(&&NodeNotice::MpsReadyAgain {
        resource: resource.clone(),
    }));
    assert!(gpu_healthy(&machine, &a10g));
    assert_eq!(machine.next_deadline(), None);
    // Ready again resets the back-off: the next exit waits 1 s.
    let out = machine.handle(exited.clone(), t2);
    assert!(notices(&out).contains(&&NodeNotice::MpsRestartIn {
        resource: resource.clone(),
        delay: Duration::from_secs(1),
    }));
    // A load without the MPS resource clears its condition and its restart;
    // a late exit of its stopped daemon changes nothing.
    machine.handle(loaded(LoadCause::Reload, applied(&inventory)), t2);
    assert!(gpu_healthy(&machine, &a10g));
    assert_eq!(machine.next_deadline(), None);
    assert!(machine.handle(exited, t2).is_empty());
}

/// Every device advertised, with whether it is Healthy: (device UUID, GPU
/// UUID, GPU instance, Healthy).
fn devices(machine: &NodeMachine) -> Vec<(String, String, Option<u32>, bool)> {
    let health = machine.health();
    machine
        .resources()
        .iter()
        .flat_map(|r| &r.devices)
        .map(|d| {
            (
                d.physical.uuid.clone(),
                d.physical.gpu_uuid.clone(),
                d.physical.mig.map(|m| m.gpu_instance),
                health.is_healthy(&d.physical.uuid) && health.is_healthy(&d.physical.gpu_uuid),
            )
        })
        .collect()
}

fn target_levels(state: &str, revision: u64, scope: MigScope) -> MigLevels {
    MigLevels {
        config: Some(crate::node_labels::MIG_TARGET.to_owned()),
        state: Some(state.to_owned()),
        revision,
        scope,
    }
}

#[test]
fn a_target_withdraws_only_the_instances_it_destroys_and_the_node_keeps_serving() {
    let t0 = Instant::now();
    let before = inventory("all-1g.5gb");
    let after = inventory_of(["all-balanced", "all-1g.5gb"]);
    let gpu0 = before.gpus[0].uuid.clone();
    let keep = kept(&before.gpus[0], &after.gpus[0]);
    assert!(
        !keep.is_empty() && keep.len() < before.gpus[0].mig_devices.len(),
        "the change keeps some instances and destroys others: {keep:?}"
    );
    let scope = MigScope::Gpus(BTreeMap::from([(gpu0.clone(), keep.clone())]));
    let mut machine = running(&before, Some(levels(None, None, 0)), t0);
    let out = machine.handle(
        NodeEvent::MigLabels(target_levels("pending", 1, scope.clone())),
        t0,
    );
    let destroyed = 7 - keep.len();
    assert!(notices(&out).iter().any(|n| matches!(
        n,
        NodeNotice::MigWithdrawn { gpus: 1, devices, at_start: false, .. } if *devices == destroyed
    )));
    // Withdrawn, told, and still ready: the rest of the node serves.
    assert_eq!(
        acts(out),
        vec![
            NodeAction::PushHealth,
            NodeAction::TellWithdrawn(Some(scope.clone()))
        ]
    );
    assert!(machine.ready());
    for (uuid, gpu, instance, healthy) in devices(&machine) {
        let going = gpu == gpu0 && !instance.is_some_and(|gi| keep.contains(&gi));
        assert_eq!(healthy, !going, "{uuid} on {gpu} (GI {instance:?})");
    }
    // A reload during the change withdraws the same devices (and any the
    // change created meanwhile, which are not rediscovered yet).
    machine.handle(loaded(LoadCause::Reload, applied(&after)), t0);
    for (uuid, gpu, instance, healthy) in devices(&machine) {
        let kept_here = instance.is_some_and(|gi| keep.contains(&gi));
        assert_eq!(healthy, gpu != gpu0 || kept_here, "{uuid} after a reload");
    }
    // Success: one rediscovery, the new devices advertised Healthy with
    // the rest, and the applier told nothing is withdrawn.
    let out = machine.handle(
        NodeEvent::MigLabels(target_levels("success", 2, scope.clone())),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![NodeAction::Load(LoadCause::MigLayout { revision: 2 })]
    );
    let out = machine.handle(
        loaded(LoadCause::MigLayout { revision: 2 }, applied(&after)),
        t0,
    );
    assert_eq!(
        acts(out),
        vec![
            NodeAction::Advertise,
            NodeAction::TellWithdrawn(None),
            NodeAction::PushHealth
        ]
    );
    assert!(
        devices(&machine).iter().all(|d| d.3),
        "{:?}",
        devices(&machine)
    );
    assert!(
        machine
            .health()
            .holding(Condition::Repartitioning)
            .is_empty()
    );
    assert!(machine.ready());
}

#[test]
fn a_whole_node_change_after_a_target_withdraws_every_mig_gpu_and_back() {
    let t0 = Instant::now();
    let before = inventory("all-1g.5gb");
    let gpu0 = before.gpus[0].uuid.clone();
    let scope = MigScope::Gpus(BTreeMap::from([(gpu0, BTreeSet::new())]));
    let mut machine = running(&before, Some(levels(None, None, 0)), t0);
    machine.handle(NodeEvent::MigLabels(target_levels("pending", 1, scope)), t0);
    assert!(machine.ready());
    assert!(gpu_healthy(&machine, &before.gpus[1].uuid));
    // The levels now ask for the whole node (a named layout): by level,
    // every MIG-capable GPU is withdrawn, whatever the last scope was.
    let out = machine.handle(
        NodeEvent::MigLabels(levels(Some("all-3g.20gb"), Some("pending"), 2)),
        t0,
    );
    assert!(acts(out).contains(&NodeAction::TellWithdrawn(Some(MigScope::Node))));
    assert!(!machine.ready());
    for gpu in &before.gpus[..2] {
        assert!(!gpu_healthy(&machine, &gpu.uuid));
    }
    assert!(gpu_healthy(&machine, &before.gpus[2].uuid));
}
