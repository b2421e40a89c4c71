//! Living in a cluster: configuration changes without restarts, kubelet
//! restarts, and the metrics and health endpoints.

use std::io::{Read, Write};
use std::net::TcpStream;

use std::time::Duration;

use crate::common::{
    Daemon, TIMEOUT, aside, expect, free_port, kubelet, start_logged, temp_dir, wait_for,
    wait_for_log, wait_for_metric_line, write_config,
};

const MIXED: &str = "version: v1\nflags:\n  migStrategy: mixed\n";

fn p4d_balanced(config: &std::path::Path) -> Vec<String> {
    [
        "--simulate",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--config-file",
        config.to_str().expect("utf-8 path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn registrations_of(kubelet: &kubelet_sim::Kubelet, resource: &str) -> usize {
    kubelet
        .registrations()
        .iter()
        .filter(|r| r.resource_name == resource && r.accepted)
        .count()
}

/// Replaces the config the way a ConfigMap volume does: a new file renamed
/// over the old one.
fn swap_config(dir: &std::path::Path, text: &str) {
    let staged = aside(dir).join(".config.yaml.new");
    std::fs::write(&staged, text).expect("stage config");
    std::fs::rename(&staged, aside(dir).join("config.yaml")).expect("swap config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_without_restart_and_bad_ones_are_kept_out() {
    let dir = temp_dir();
    let config = write_config(dir.path(), MIXED);
    let kubelet = kubelet(dir.path()).await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut daemon_args = p4d_balanced(&config);
    daemon_args.extend(["--metrics-address".to_string(), address.clone()]);
    let _daemon = Daemon::start(dir.path(), &args(&daemon_args));
    let before = expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &before).await;

    // Share the 1g slices two ways under a new name: that resource goes away
    // (empty list), the new one registers, the other two are left alone.
    swap_config(
        dir.path(),
        "version: v1\nflags:\n  migStrategy: mixed\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/mig-1g.5gb\n      rename: nvidia.com/mig-1g.5gb.shared\n      replicas: 2\n",
    );
    let after = expect(&[
        ("nvidia.com/mig-1g.5gb.shared", 32),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &after).await;
    for unchanged in ["nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb"] {
        assert_eq!(
            registrations_of(&kubelet, unchanged),
            1,
            "{unchanged} was re-registered"
        );
        let endpoint = kubelet.endpoint(unchanged).expect("endpoint");
        assert!(
            !endpoint.stopped,
            "{unchanged} stopped serving: {endpoint:?}"
        );
    }
    assert_eq!(
        kubelet.node_status()["nvidia.com/mig-1g.5gb"].capacity,
        0,
        "the removed resource reads 0"
    );

    // A config that does not validate is refused; the running one stays.
    swap_config(dir.path(), "version: v1\nflags:\n  migStrategy: sideways\n");
    wait_for_metric_line(
        &address,
        "gpu_slicer_config_reloads_total{result=\"rejected\"} 1",
    )
    .await;
    let status = kubelet.node_status();
    for (name, count) in &after {
        assert_eq!(
            status[name].allocatable, *count,
            "{name} changed after a rejected config"
        );
    }
    // An empty file on reload is refused too (it used to be applied as all
    // defaults: a MIG node switched to whole GPUs mid-flight).
    swap_config(dir.path(), "");
    wait_for_metric_line(
        &address,
        "gpu_slicer_config_reloads_total{result=\"rejected\"} 2",
    )
    .await;
    let status = kubelet.node_status();
    for (name, count) in &after {
        assert_eq!(
            status[name].allocatable, *count,
            "{name} changed after an empty config"
        );
    }
    // And a good config after a bad one applies again.
    swap_config(dir.path(), MIXED);
    wait_for(&kubelet, &before).await;
    assert_eq!(registrations_of(&kubelet, "nvidia.com/mig-2g.10gb"), 1);
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_kubelet_restarts_leave_every_resource_registered_once_each() {
    let dir = temp_dir();
    let config = write_config(dir.path(), MIXED);
    let mut options = kubelet_sim::Options::new(dir.path());
    options.restart_delay = std::time::Duration::from_millis(5);
    let mut kubelet = kubelet_sim::Kubelet::start(options).await.expect("kubelet");
    let _daemon = Daemon::start(dir.path(), &args(&p4d_balanced(&config)));
    let want = expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &want).await;
    for round in 1..=100 {
        kubelet.restart().await.expect("restart");
        wait_for(&kubelet, &want).await;
        for name in want.keys() {
            assert_eq!(
                registrations_of(&kubelet, name),
                round + 1,
                "round {round}: {name} registered a wrong number of times: {:#?}",
                kubelet
                    .registrations()
                    .iter()
                    .filter(|r| r.resource_name == *name && r.generation + 3 >= round as u64)
                    .map(|r| (r.generation, r.accepted, r.error.clone(), r.received_at))
                    .collect::<Vec<_>>()
            );
        }
    }
    kubelet.shutdown().await;
}

/// GET `path` on `address`; returns (status line, body).
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to metrics");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_answer() {
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n",
    );
    let address = format!("127.0.0.1:{}", free_port());
    let mut daemon = Daemon::start(
        dir.path(),
        &[
            "--simulate",
            "g5.12xlarge",
            "--config-file",
            config.to_str().expect("utf-8"),
            "--metrics-address",
            &address,
        ],
    );
    // Nothing to register with yet: alive but not ready.
    let mut health = None;
    for _ in 0..300 {
        if TcpStream::connect(&address).is_ok() {
            health = Some(http_get(&address, "/healthz"));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        health.expect("metrics endpoint came up").0,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        http_get(&address, "/readyz").0,
        "HTTP/1.1 503 Service Unavailable"
    );

    let kubelet = kubelet(dir.path()).await;
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 16)])).await;
    let pod = kubelet_sim::Pod::new("one")
        .container(kubelet_sim::Container::new("main").limit("nvidia.com/gpu", 1));
    kubelet.admit(&pod).await.expect("admitted");

    assert_eq!(http_get(&address, "/readyz").0, "HTTP/1.1 200 OK");
    let (status, body) = http_get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "gpu_slicer_devices{resource=\"nvidia.com/gpu\"} 16",
        "gpu_slicer_healthy_devices{resource=\"nvidia.com/gpu\"} 16",
        "gpu_slicer_allocations_total{resource=\"nvidia.com/gpu\",result=\"ok\"} 1",
        "gpu_slicer_registrations_total{resource=\"nvidia.com/gpu\",result=\"ok\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    assert_eq!(http_get(&address, "/nope").0, "HTTP/1.1 404 Not Found");

    // SIGHUP with an invalid file: refused and counted.
    swap_config(dir.path(), "version: v1\nflags: {migStrategy: sideways}\n");
    daemon.signal("HUP");
    let mut rejected = false;
    for _ in 0..300 {
        let (_, body) = http_get(&address, "/metrics");
        if body
            .lines()
            .any(|l| l.starts_with("gpu_slicer_config_reloads_total{result=\"rejected\"}"))
        {
            rejected = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(rejected, "the rejected reload was not counted");
    assert_eq!(kubelet.node_status()["nvidia.com/gpu"].allocatable, 16);
    assert!(daemon.terminate().success());
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_list_and_watch_stream_alone_leads_to_re_registration() {
    let dir = temp_dir();
    let config = write_config(dir.path(), MIXED);
    let kubelet = kubelet(dir.path()).await;
    // The grace before re-registering is shortened: the test need not sit out 2 s.
    let mut owned = p4d_balanced(&config);
    owned.push("--stream-grace-ms=200".to_string());
    let daemon_args = args(&owned);
    let _daemon = Daemon::start(dir.path(), &daemon_args);
    let want = expect(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    wait_for(&kubelet, &want).await;
    // No socket removed, no kubelet.sock re-created: only the stream ends.
    assert!(kubelet.drop_stream("nvidia.com/mig-2g.10gb"));
    assert_eq!(
        kubelet.node_status()["nvidia.com/mig-2g.10gb"].allocatable,
        0
    );
    wait_for(&kubelet, &want).await;
    assert_eq!(registrations_of(&kubelet, "nvidia.com/mig-2g.10gb"), 2);
    assert_eq!(
        registrations_of(&kubelet, "nvidia.com/mig-1g.5gb"),
        1,
        "others untouched"
    );
    kubelet.shutdown().await;
}

/// A kubelet that closes a resource's stream each time it opens (as one
/// does with a message it refuses): the daemon registers again after a
/// growing wait, never in a loop, and says so in its log and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_kubelet_keeps_closing_is_backed_off_and_reported() {
    let dir = temp_dir();
    let config = write_config(dir.path(), MIXED);
    let kubelet = kubelet(dir.path()).await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut owned = p4d_balanced(&config);
    owned.extend([
        "--stream-grace-ms=100".to_string(),
        "--metrics-address".to_string(),
        address.clone(),
    ]);
    let (_daemon, log) = start_logged(dir.path(), &args(&owned), &[]);
    let resource = "nvidia.com/mig-2g.10gb";
    let has_stream = |s: &std::collections::BTreeMap<String, kubelet_sim::Capacity>| {
        s.get(resource).is_some_and(|c| c.allocatable == 8)
    };
    let mut dropped_at = Vec::new();
    let mut back_after = Vec::new();
    for _ in 0..5 {
        kubelet
            .wait_until(has_stream, TIMEOUT)
            .await
            .expect("stream open");
        if let Some(&at) = dropped_at.last() {
            back_after.push(std::time::Instant::now().duration_since(at));
        }
        assert!(kubelet.drop_stream(resource));
        dropped_at.push(std::time::Instant::now());
    }
    kubelet
        .wait_until(has_stream, TIMEOUT)
        .await
        .expect("stream open");
    // One registration per loss, each after the grace doubling: 100, 200,
    // 400, 800 ms at least (lower bounds: the daemon waits them out).
    assert_eq!(registrations_of(&kubelet, resource), 1 + 5);
    for (i, waited) in back_after.iter().enumerate() {
        let floor = Duration::from_millis(100 << i);
        assert!(*waited >= floor, "loss {}: back after {waited:?}", i + 1);
    }
    let line = wait_for_log(&log, "times in a row").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(resource), "{line}");
    wait_for_metric_line(
        &address,
        &format!("gpu_slicer_stream_losses_total{{resource=\"{resource}\"}} 5"),
    )
    .await;
    assert_eq!(
        registrations_of(&kubelet, "nvidia.com/mig-1g.5gb"),
        1,
        "others untouched"
    );
    kubelet.shutdown().await;
}

/// The flood: with a 256-descriptor limit (soft and hard, so the
/// daemon cannot raise it), 300 clients each send half a request line to
/// the metrics endpoint and stay. The kubelet side must not notice: a pod
/// is admitted (Allocate on a new connection), a kubelet restart is
/// followed by a registration (it used to end the daemon with "Too many
/// open files"), and once the clients go the endpoint answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_flood_cannot_reach_the_kubelet_side() {
    use kubelet_sim::{Container, Pod};
    let dir = temp_dir();
    let mut kubelet = kubelet(dir.path()).await;
    let address = format!("127.0.0.1:{}", free_port());
    // `ulimit -n` sets both limits in sh; exec keeps them for the daemon.
    let _daemon = crate::common::start_under_shell(
        dir.path(),
        "ulimit -n 256",
        &["--simulate", "g5.12xlarge", "--metrics-address", &address],
    );
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 4)])).await;
    wait_for_metric_line(
        &address,
        "gpu_slicer_devices{resource=\"nvidia.com/gpu\"} 4",
    )
    .await;

    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(mut stream) = TcpStream::connect(&address) {
            let _ = stream.write_all(b"GET /metr");
            flood.push(stream);
        }
    }
    let pod = Pod::new("during-flood").container(Container::new("main").limit("nvidia.com/gpu", 1));
    kubelet
        .admit(&pod)
        .await
        .expect("admitted during the flood");
    kubelet.restart().await.expect("restart the kubelet");
    wait_for(&kubelet, &expect(&[("nvidia.com/gpu", 4)])).await;
    let generation = kubelet.generation();
    assert!(
        kubelet
            .registrations()
            .iter()
            .any(|r| r.generation == generation && r.accepted),
        "registered with the restarted kubelet"
    );
    drop(flood);
    wait_for_metric_line(
        &address,
        "gpu_slicer_devices{resource=\"nvidia.com/gpu\"} 4",
    )
    .await;
    kubelet.shutdown().await;
}
