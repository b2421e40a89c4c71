//! The races a real kubelet exposes: a crash leaving a stale `kubelet.sock`,
//! the restart's clean-up deleting every socket before the new one is bound,
//! plugin sockets deleted under a running kubelet, sockets that cannot be
//! bound, SIGTERM in the middle of a removal. The stand-in kubelet behaves
//! as 1.25–1.35 do: a second registration does not close the first stream,
//! and the end of an older stream tears down the newer client.

use std::time::{Duration, Instant};

use kubelet_sim::{Kubelet, Options};

use crate::common::{Daemon, TIMEOUT, expect, temp_dir, wait_for, write_config};

const MIXED: &str = "version: v1\nflags:\n  migStrategy: mixed\n";
const RESOURCES: [&str; 3] = [
    "nvidia.com/mig-1g.5gb",
    "nvidia.com/mig-2g.10gb",
    "nvidia.com/mig-3g.20gb",
];

fn want() -> std::collections::BTreeMap<String, usize> {
    expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ])
}

fn start_daemon(dir: &std::path::Path, extra: &[&str]) -> Daemon {
    let config = write_config(dir, MIXED);
    let mut args = vec![
        "--simulate",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--config-file",
        config.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

/// Register calls one kubelet instance received for `resource`, accepted or not.
fn registers(kubelet: &Kubelet, generation: u64, resource: &str) -> usize {
    kubelet
        .registrations()
        .iter()
        .filter(|r| r.generation == generation && r.resource_name == resource)
        .count()
}

/// The real sequence, 100 times: the kubelet is killed (its streams end,
/// `kubelet.sock` stays behind), stays down 0–300 ms (below and beyond the
/// daemon's stream grace, shortened to 100 ms), then a new one deletes
/// every socket, binds `kubelet.sock` and accepts 3 ms later. Each restart
/// must bring exactly one Register per resource. How soon is a benchmark's
/// question (`examples/bench.rs`), not this test's: it only prints the
/// slowest, and passes on a machine whose cores are busy (issue 23, item 3:
/// a 100 ms bound failed 3 runs of 3 at load 4.5–7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_kubelet_restarted_after_downtime_gets_one_registration_per_resource() {
    let dir = temp_dir();
    let mut options = Options::new(dir.path());
    options.listen_delay = Duration::from_millis(3);
    let mut kubelet = Kubelet::start(options).await.expect("kubelet");
    let _daemon = start_daemon(dir.path(), &["--stream-grace-ms=100"]);
    wait_for(&kubelet, &want()).await;
    let downtimes = [0u64, 5, 40, 90, 110, 150, 300];
    let mut slowest = Duration::ZERO;
    for round in 0..100 {
        kubelet.crash().await;
        tokio::time::sleep(Duration::from_millis(downtimes[round % downtimes.len()])).await;
        kubelet
            .start_again()
            .await
            .expect("start the kubelet again");
        let listening = kubelet.socket_listening_at().expect("listening");
        let generation = kubelet.generation();
        wait_for(&kubelet, &want()).await;
        for resource in RESOURCES {
            let last = kubelet
                .registrations()
                .iter()
                .filter(|r| r.generation == generation && r.resource_name == resource)
                .map(|r| r.received_at)
                .max()
                .expect("registered");
            slowest = slowest.max(last.saturating_duration_since(listening));
        }
    }
    // Late duplicates would arrive within the stream grace: wait it out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = kubelet.generation() - 99;
    for generation in first..=kubelet.generation() {
        for resource in RESOURCES {
            assert_eq!(
                registers(&kubelet, generation, resource),
                1,
                "kubelet instance {generation}: {resource} registered a wrong number of times"
            );
        }
    }
    for resource in RESOURCES {
        assert_eq!(kubelet.open_streams(resource), 1, "{resource}");
    }
    println!("slowest registration after kubelet.sock accepted: {slowest:?}");
    kubelet.shutdown().await;
}

/// With the default grace (2 s) and 5 s of downtime, as measured on the
/// H200: Register calls to the stale socket fail, and the new kubelet still
/// gets exactly one per resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_down_for_five_seconds_gets_one_registration_per_resource() {
    let dir = temp_dir();
    let mut kubelet = Kubelet::start(Options::new(dir.path()))
        .await
        .expect("kubelet");
    let _daemon = start_daemon(dir.path(), &[]);
    wait_for(&kubelet, &want()).await;
    kubelet.crash().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    kubelet.start_again().await.expect("start again");
    wait_for(&kubelet, &want()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for resource in RESOURCES {
        assert_eq!(registers(&kubelet, kubelet.generation(), resource), 1);
        assert_eq!(kubelet.open_streams(resource), 1);
    }
    kubelet.shutdown().await;
}

/// Someone deletes a plugin socket under a running kubelet (issue 23, item
/// 2): the socket is served again, and nothing the kubelet holds changes: no
/// Register, the same stream, no disconnect (a re-registration used to end
/// the old stream, and the kubelet's `runClient` then disconnected the new
/// client and marked every device unhealthy: allocatable 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_socket_under_a_live_kubelet_changes_nothing_the_kubelet_sees() {
    let dir = temp_dir();
    let kubelet = Kubelet::start(Options::new(dir.path()))
        .await
        .expect("kubelet");
    let _daemon = start_daemon(dir.path(), &[]);
    wait_for(&kubelet, &want()).await;
    let resource = "nvidia.com/mig-2g.10gb";
    let socket = dir.path().join("nvidia-mig-2g.10gb.sock");
    for deletion in 1..=3 {
        std::fs::remove_file(&socket).expect("delete the plugin socket");
        let deadline = Instant::now() + TIMEOUT;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "deletion {deletion}: the socket was not served again within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Whatever the daemon would do wrongly (register, end the stream) it
    // does within its stream grace (2 s) of the deletion: wait past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in RESOURCES {
        assert_eq!(registers(&kubelet, 0, r), 1, "{r} registered again");
        assert_eq!(kubelet.open_streams(r), 1, "{r}");
        assert_eq!(
            kubelet.disconnects(r),
            0,
            "{r}: the kubelet disconnected it"
        );
    }
    let endpoint = kubelet.endpoint(resource).expect("endpoint");
    assert!(!endpoint.stopped);
    assert_eq!(endpoint.stream_error, None);
    wait_for(&kubelet, &want()).await;
    kubelet.shutdown().await;
}

/// A directory planted at a plugin socket's path: that resource is retried
/// with back-off and reported, the others serve, and once the path is free
/// the resource registers. The daemon used to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_cannot_be_bound_is_retried_and_the_daemon_stays_up() {
    let dir = temp_dir();
    let kubelet = Kubelet::start(Options::new(dir.path()))
        .await
        .expect("kubelet");
    let planted = dir.path().join("nvidia-mig-1g.5gb.sock");
    std::fs::create_dir(&planted).expect("plant a directory");
    std::fs::write(planted.join("keep"), "x").expect("fill it");
    let mut daemon = start_daemon(dir.path(), &[]);
    let others = expect(&[("nvidia.com/mig-2g.10gb", 8), ("nvidia.com/mig-3g.20gb", 8)]);
    wait_for(&kubelet, &others).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "the daemon exited"
    );
    std::fs::remove_dir_all(&planted).expect("free the path");
    let started = Instant::now();
    wait_for(&kubelet, &want()).await;
    println!(
        "registered {:?} after the path was freed",
        started.elapsed()
    );
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

/// SIGTERM while a removed resource still serves its empty list: every
/// socket is gone when the daemon exits (the stop used to be a detached
/// task that SIGTERM overtook).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_removal_leaves_no_socket() {
    let dir = temp_dir();
    let kubelet = Kubelet::start(Options::new(dir.path()))
        .await
        .expect("kubelet");
    let mut daemon = start_daemon(dir.path(), &[]);
    wait_for(&kubelet, &want()).await;
    // Whole GPUs instead of MIG: every MIG resource is removed.
    write_config(dir.path(), "version: v1\nflags:\n  migStrategy: none\n");
    daemon.signal("HUP");
    kubelet
        .wait_until(
            |s| s.get("nvidia.com/gpu").is_some_and(|c| c.allocatable == 8),
            TIMEOUT,
        )
        .await
        .expect("the new config applied");
    assert!(daemon.terminate().success());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nvidia-"))
        .collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
    kubelet.shutdown().await;
}

/// The whole device-plugin directory is deleted (a node clean-up, a
/// hostPath re-created): the daemon's inotify watch goes with it. When a
/// kubelet creates the directory again and binds its socket, every resource
/// is served and registered again, the daemon never exits, and the new
/// directory is watched: a later kubelet restart is seen at once, not only
/// after the 2 s stream grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_device_plugin_directory_is_followed_when_it_comes_back() {
    let root = temp_dir();
    let dir = root.path().join("device-plugins");
    let mut kubelet = Kubelet::start(Options::new(&dir)).await.expect("kubelet");
    let mut daemon = start_daemon(&dir, &[]);
    wait_for(&kubelet, &want()).await;
    kubelet.crash().await;
    // `rm -rf` races the daemon serving its deleted sockets again: retried,
    // as one would from a shell, until the directory is gone.
    let mut attempts = 0;
    while let Err(e) = std::fs::remove_dir_all(&dir) {
        attempts += 1;
        assert!(attempts < 100, "cannot delete {}: {e}", dir.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "the daemon exited"
    );
    kubelet.start_again().await.expect("start again");
    wait_for(&kubelet, &want()).await;
    for resource in RESOURCES {
        assert_eq!(registers(&kubelet, kubelet.generation(), resource), 1);
    }

    // The next restart is seen through the new directory's watch.
    kubelet.crash().await;
    kubelet.start_again().await.expect("start again");
    let target = want();
    kubelet
        .wait_until(
            move |status| crate::common::counts(status) == target,
            Duration::from_millis(1500),
        )
        .await
        .expect("registered before the 2 s stream grace: the new directory is watched");
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}
